#!/usr/bin/env bash
# bench/sweep.sh [REPEATS] [-- sweep.lua options] - wall time of scripts/sweep.lua's sweep on 1
# and on 2 MPI ranks (mpirun -np 1, -np 2: both under mpirun, so both pay the same start-up;
# the time is the one the script prints, mpi.sweep alone, without MPI's start-up), the median
# of REPEATS runs each (default 3), and the speedup. Both sides run one BLAS thread per rank
# (--threads 1), so that 2 ranks on 2 cores do not oversubscribe them. Needs moongrad built
# with MPI (build/lua/moongrad_mpi.so) and mpirun. Default grid: scripts/sweep.lua's, with
# --steps 1500 (a few seconds a run). On a shared, loaded machine the ratio says little.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
build=${MOONGRAD_BUILD:-$root/build}
repeats=${1:-3}; shift || true
[ "${1:-}" = "--" ] && shift
args=("$@"); [ ${#args[@]} -gt 0 ] || args=(--steps 1500)
[ -f "$build/lua/moongrad_mpi.so" ] || { echo "bench/sweep.sh: $build has no moongrad_mpi.so (MPI not found at configure time)" >&2; exit 1; }
flags=(--oversubscribe --mca btl self,vader)
[ "$(id -u)" -ne 0 ] || flags+=(--allow-run-as-root)
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
declare -A med
for np in 1 2; do
  times=()
  for ((i = 0; i < repeats; i++)); do
    t=$(mpirun -np "$np" "${flags[@]}" "$build/moongrad" "$root/scripts/sweep.lua" --out "$out" --threads 1 "${args[@]}" \
        | sed -n 's/^sweep: .* in \([0-9.]*\) s.*/\1/p')
    [ -n "$t" ] || { echo "bench/sweep.sh: no time from the run on $np rank(s)" >&2; exit 1; }
    times+=("$t")
  done
  med[$np]=$(printf '%s\n' "${times[@]}" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
  echo "ranks $np: ${times[*]} s (median ${med[$np]} s)"
done
awk -v a="${med[1]}" -v b="${med[2]}" 'BEGIN { printf "speedup 2 ranks / 1 rank: %.2fx (load average %s)\n", a / b, "'"$(cut -d' ' -f1-3 /proc/loadavg)"'" }'
