#!/bin/sh
# tests/install_test.sh BUILD_DIR SOURCE_DIR - what README's "Install and embed" says, against
# the installed files only: 'cmake --install' into a temporary prefix, then
#  - a stock lua5.4 requires moongrad (and moongrad.plot on its own) with LUA_CPATH naming
#    only the prefix's Lua module directory,
#  - the installed moongrad executable runs (its rpath finds the installed libmoongrad),
#  - README's minimal C host (its first ```c block), compiled with
#    'pkg-config --cflags --libs moongrad' from the prefix's moongrad.pc, runs and prints
#    the gradient it computed.
# Under MG_SANITIZE, ctest sets MG_TEST_PRELOAD to the ASan runtime: the programs run here
# (not the compiler) get it as LD_PRELOAD.
set -eu
build=$(cd "$1" && pwd); src=$(cd "$2" && pwd)
run() { if [ -n "${MG_TEST_PRELOAD:-}" ]; then LD_PRELOAD=$MG_TEST_PRELOAD "$@"; else "$@"; fi; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
cmake --install "$build" --prefix "$prefix" >"$tmp/install.log"
for f in lib/libmoongrad.so lib/pkgconfig/moongrad.pc lib/lua/5.4/moongrad.so \
         include/moongrad/moongrad.h include/moongrad/mg.h bin/moongrad; do
  [ -e "$prefix/$f" ] || { echo "install_test: $f was not installed"; cat "$tmp/install.log"; exit 1; }
done
cd "$tmp"

echo "== stock lua5.4, LUA_CPATH=$prefix/lib/lua/5.4/?.so"
out=$(run env -u LUA_PATH -u LUA_INIT LUA_CPATH="$prefix/lib/lua/5.4/?.so" lua5.4 -e '
  local plot = require "moongrad.plot"
  local mg = require "moongrad"
  assert(mg.plot == plot)
  local x = mg.tensor({1, 5, 6}, {dtype = "float64"})
  local tape = mg.GradientTape()
  tape:watch(x)
  io.write(table.concat(tape:gradient((x ^ 2):sum(), x):totable(), " "))')
[ "$out" = "2.0 10.0 12.0" ] || { echo "install_test: stock lua5.4 printed '$out'"; exit 1; }

echo "== the installed executable"
out=$(run "$prefix/bin/moongrad" -e 'io.write(mg.ones(2, 3):sum():item())')
[ "$out" = "6" ] || { echo "install_test: bin/moongrad printed '$out'"; exit 1; }

echo "== README's C host, built with pkg-config against the prefix"
awk '/^```c$/ { on = 1; next } on && /^```$/ { exit } on' "$src/README.md" >host.c
[ -s host.c ] || { echo "install_test: no \`\`\`c block in README.md"; exit 1; }
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
flags=$(pkg-config --cflags --libs moongrad)
case $flags in *"-I$prefix/include/moongrad"*"-L$prefix/lib"*|*"-L$prefix/lib"*"-I$prefix/include/moongrad"*) ;;
  *) echo "install_test: pkg-config gave '$flags', not the prefix"; exit 1 ;; esac
# shellcheck disable=SC2086
cc -std=c11 -Wall -Wextra -Werror -o host host.c $flags -Wl,-rpath,"$(pkg-config --variable=libdir moongrad)"
out=$(run ./host)
[ "$out" = "dy/dx = 2 10 12" ] || { echo "install_test: the host printed '$out'"; exit 1; }
ldd ./host | grep -q "$prefix/lib/libmoongrad.so" || { echo "install_test: host did not link the installed library"; ldd ./host; exit 1; }
echo "install_test: ok"
