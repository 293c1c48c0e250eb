"""Timing and reporting helpers shared by the PyTorch side of bench/*.py.

Mirrors bench/benchlib.lua: a warm-up call, a calibrated number of calls per repetition,
several repetitions, the median per call, on two clocks: the process's CPU time and the
wall clock.  Results go to standard output as tab-separated lines read by bench/report.lua:
    result <bench> <case> <impl> <CPU seconds per call> <wall seconds per call>
    meta <bench> <key> <value>
Human-readable progress goes to standard error.
"""
import ctypes
import gc
import math
import os
import statistics
import sys
import time

import numpy as np
import torch


def int_cases(args, n, message, default, ok=lambda case: True):
    """The command-line cases 'args', each n positive integers joined by commas ("32,100"), as
    tuples; 'default' when there are none. A malformed one, or one 'ok' refuses, exits with
    message % arg."""
    cases = []
    for a in args:
        parts = a.split(",")
        if len(parts) != n or not all(p.isdigit() and int(p) > 0 for p in parts) \
                or not ok(tuple(int(p) for p in parts)):
            sys.exit(message % a)
        cases.append(tuple(int(p) for p in parts))
    return cases or default


def load_saved(script, directory, filename):
    """The array bench/<script's stem>.lua saved in 'directory' as 'filename', as a tensor;
    exits saying which run is missing when it is not there ('script' names bench/*.py)."""
    path = os.path.join(directory, filename)
    if not os.path.exists(path):
        sys.exit("%s: %s is missing; run bench/%s.lua %s first" % (script, path, script[:-3], directory))
    return torch.from_numpy(np.load(path))


def _openblas():
    """The OpenBLAS that torch loaded (same soname, so the same handle), or None."""
    try:
        lib = ctypes.CDLL("libopenblas.so.0")
        lib.openblas_get_corename.restype = ctypes.c_char_p
        return lib
    except (OSError, AttributeError):
        return None


def threads():
    """The thread count of both sides: MOONGRAD_BENCH_THREADS (bench/run sets 2 for its
    2-thread run), else 1 (as benchlib.lua)."""
    v = os.environ.get("MOONGRAD_BENCH_THREADS")
    if v is None:
        return 1
    if not v.isdigit() or int(v) < 1:
        sys.exit("benchlib: bad MOONGRAD_BENCH_THREADS '%s'" % v)
    return int(v)


def peak_rss_mib():
    """Peak resident set size of this process so far, in MiB (VmHWM), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def one_thread():
    """torch intra-op threads and torch's OpenBLAS threads both set to threads() (1 unless
    MOONGRAD_BENCH_THREADS says otherwise).

    Debian's torch calls OpenBLAS (pthread build), which torch.set_num_threads does not
    reach, so its thread count is set directly too."""
    n = threads()
    torch.set_num_threads(n)
    lib = _openblas()
    if lib is not None:
        lib.openblas_set_num_threads(n)
    settle()


SETTLE_SECONDS = 0.3


def settle():
    """Let the BLAS worker threads finish the spin they start with (OpenBLAS: about 0.1 s),
    so that their CPU time is not charged to the first measurements (as benchlib.lua)."""
    t = time.perf_counter()
    while time.perf_counter() - t < SETTLE_SECONDS:
        pass


def blas_meta(bench):
    lib = _openblas()
    if lib is not None:
        meta(bench, "torch_blas_core", lib.openblas_get_corename().decode())
        meta(bench, "torch_blas_threads", lib.openblas_get_num_threads())
    meta(bench, "torch_threads", torch.get_num_threads())
    meta(bench, "torch_version", torch.__version__)


def measure(fn, reps=7, min_time=0.1, warmup=1, inner=None, collect=False):
    """Timings of fn() as benchlib.lua's measure: a dict with cpu, wall (median seconds per
    call), cpu_reps, wall_reps (per repetition) and calls (how many calls of fn ran)."""
    t0 = time.process_time()
    for _ in range(warmup):
        fn()
    once = (time.process_time() - t0) / warmup
    if inner is None:
        inner = max(1, math.ceil(min_time / max(once, 1e-9)))
    cpu, wall = [], []
    for _ in range(reps):
        if collect:
            gc.collect()
        c, w = time.process_time(), time.perf_counter()
        for _ in range(inner):
            fn()
        wall.append((time.perf_counter() - w) / inner)
        cpu.append((time.process_time() - c) / inner)
    return {"cpu": statistics.median(cpu), "wall": statistics.median(wall),
            "cpu_reps": cpu, "wall_reps": wall, "calls": warmup + reps * inner}


def result(bench, case, impl, m, per=1):
    """One result line from measure's m, divided by per (e.g. the ops a call ran)."""
    sys.stdout.write("result\t%s\t%s\t%s\t%.9g\t%.9g\n"
                     % (bench, case, impl, m["cpu"] / per, m["wall"] / per))
    sys.stdout.flush()


def meta(bench, key, value):
    sys.stdout.write("meta\t%s\t%s\t%s\n" % (bench, key, value))
    sys.stdout.flush()


def log(fmt, *args):
    sys.stderr.write((fmt % args if args else fmt) + "\n")
