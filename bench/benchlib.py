"""Timing and reporting helpers shared by the peers' sides of the pairs: bench/NAME.py
(PyTorch), bench/NAME_jax.py (JAX), bench/NAME_tf.py (TensorFlow).

Mirrors bench/benchlib.lua: a warm-up call, a calibrated number of calls per repetition,
several repetitions, the median per call, on two clocks: the process's CPU time and the
wall clock.  Results go to standard output as tab-separated lines read by bench/report.lua:
    result <bench> <case> <impl> <CPU seconds per call> <wall seconds per call> <peer>
    meta <bench> <key> <value> <peer>
where <peer> names the framework and its version ("PyTorch 2.5.1", "JAX 0.4.35"): set by
set_peer, else PyTorch's when torch is loaded, so that a torch script run by two
interpreters (Debian's torch 1.13, the bench venv's current torch) gives two peers.
Human-readable progress goes to standard error. torch is imported only by the functions
that need it, so that the JAX and TensorFlow sides do not load it.
"""
import ctypes
import gc
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np

_peer = None


def set_peer(name, version):
    """The peer this process's result and meta lines belong to, e.g. set_peer("JAX", v)."""
    global _peer
    _peer = "%s %s" % (name, version)


def peer():
    """The peer label of this process's lines (PyTorch's version when torch is loaded)."""
    global _peer
    if _peer is None and "torch" in sys.modules:
        _peer = "PyTorch " + sys.modules["torch"].__version__
    return _peer or "?"


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


def lstm_case(a):
    """(kind, units, batch, label, file key) of a bench/lstm case argument, or None: 'units'
    (an LSTM, batch 16) or 'kind:units:batch' with kind lstm or gru (lstm:512:64, gru:256:16),
    as bench/lstm.lua parses them and names its files."""
    if a.isdigit() and int(a) >= 1:
        return ("lstm", int(a), 16, a, a)
    parts = a.split(":")
    if (len(parts) != 3 or parts[0] not in ("lstm", "gru") or not parts[1].isdigit()
            or not parts[2].isdigit() or int(parts[1]) < 1 or int(parts[2]) < 1):
        return None
    return (parts[0], int(parts[1]), int(parts[2]), a, "%s_%s_%s" % tuple(parts))


# bench/lstm's sides: the peak RSS at case LSTM_RSS_CASE only (the model), of
# LSTM_RSS_STEPS training steps (lstm.py and lstm.lua: the plain steps alone, in a process
# that runs nothing else).
LSTM_RSS_STEPS, LSTM_RSS_CASE = 200, "256"

# bench/lstm's and bench/char_lstm's checks: every side's float32 results against the float64
# reference of the same step that the Lua side saved (ref_<name>.npy) with its scale
# (scale_<name>.npy: the largest entry of the sum of the magnitudes of the terms summed, which
# is what float32 rounding errors scale with; benchlib.lua's check_reference, which checks
# moongrad's own results the same way, says why). The error max |a - ref| / scale must be
# <= REF_TOL, as benchlib.lua's (which says why 1e-5).
REF_TOL = 1e-5


def reference(script, directory, prefix, name):
    """(ref, scale) of result 'name' ("loss", "grad_lstm_kernel", "dL_dh") from the Lua side's
    files '<prefix>ref_<name>.npy' and '<prefix>scale_<name>.npy' in 'directory'."""
    ref = load_array(script, directory, "%sref_%s.npy" % (prefix, name))
    scale = load_array(script, directory, "%sscale_%s.npy" % (prefix, name))
    return ref.astype(np.float64), float(scale.reshape(-1)[0])


def ref_err(a, ref_scale):
    """max |a - ref| / scale of an array (anything np.asarray takes; torch tensors detached)
    against reference()'s (ref, scale), in float64; inf when the shapes differ."""
    ref, scale = ref_scale
    if hasattr(a, "detach"):
        a = a.detach().numpy()
    a = np.asarray(a, dtype=np.float64)
    if a.shape != ref.shape:
        return float("inf")
    return float(np.abs(a - ref).max() / scale)


def check_errors(bench, label, errs, failed, what="", tol=None):
    """Writes each of errs (name -> ref_err) as the meta line 'referr LABEL [WHAT ]NAME' and
    appends a message to 'failed' for each beyond tol (default REF_TOL)."""
    tol = REF_TOL if tol is None else tol
    prefix = (what + " ") if what else ""
    for name, err in errs.items():
        meta(bench, "referr %s %s%s" % (label, prefix, name), "%.3g" % err)
        if not err <= tol:
            failed.append("case %s, %s%s: error %.3g of the float64 reference's scale (bound %g)"
                          % (label, prefix, name, err, tol))


def lstm_usage(command):
    """The usage line of a bench/lstm side run as 'command'."""
    return ("usage: %s DIR [case ...]  (a case: units, or kind:units:batch with kind lstm or gru; "
            "default 6 32 256)" % command)


def lstm_cases(script, usage):
    """bench/lstm's command line after DIR: its cases (lstm_case), default 6 32 256; a bad one
    exits with a message naming 'script'."""
    cases = []
    for a in sys.argv[2:]:
        c = lstm_case(a)
        if c is None:
            sys.exit("%s: bad case '%s', expected units or kind:units:batch; %s" % (script, a, usage))
        cases.append(c)
    return cases or [lstm_case(a) for a in ("6", "32", "256")]


def data_dir(script, usage):
    """The data directory a pair's Lua side saved into: the first command-line argument, which
    must exist; exits naming 'script' otherwise."""
    if len(sys.argv) < 2:
        sys.exit("%s: no data directory given; %s" % (script, usage))
    if not os.path.isdir(sys.argv[1]):
        sys.exit("%s: directory '%s' does not exist" % (script, sys.argv[1]))
    return sys.argv[1]


def n_ops(script):
    """op_overhead's command line: the number of adds (default 100,000)."""
    a = sys.argv[1] if len(sys.argv) > 1 else "100000"
    if not a.isdigit() or int(a) < 1:
        sys.exit("%s: n_ops must be a positive integer, got '%s'" % (script, a))
    return int(a)


def per_op_result(bench, mode, impl, m, n):
    """One op_overhead result line (measure's m over n ops) and its readable line."""
    result(bench, mode, impl, m, n)
    log("%s %-18s %-22s %7.3f us/op CPU (repetitions %.3f .. %.3f), %7.3f wall", peer(), mode, impl,
        m["cpu"] / n * 1e6, min(m["cpu_reps"]) / n * 1e6, max(m["cpu_reps"]) / n * 1e6, m["wall"] / n * 1e6)


def relerr(a, ref):
    """max |a - ref| / max |ref| of two arrays (anything np.asarray takes); inf when the shapes
    differ."""
    a, ref = np.asarray(a), np.asarray(ref)
    if a.shape != ref.shape:
        return float("inf")
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-30))


def check_and_time(bench, case, name, fn, ref, rtol, failed, timed=None, **opts):
    """Runs fn() once and compares its result with moongrad's 'ref' (relerr, written as the
    meta line 'relerr CASE NAME'; beyond rtol a message is appended to 'failed'), then times
    'timed' (default fn; e.g. one that also waits for an asynchronous result) with measure's
    'opts' and writes the result line and a readable one. Returns the measurement."""
    err = relerr(fn(), ref)
    meta(bench, "relerr %s %s" % (case, name), "%.3g" % err)
    if not err <= rtol:
        failed.append("(%s) %s: relative error %g vs moongrad (shape %s expected)"
                      % (case, name, err, tuple(np.shape(ref))))
    m = measure(timed or fn, **opts)
    result(bench, case, name, m)
    log("%s (%s) %-28s %10.4f ms CPU, %10.4f ms wall; rel. err. vs moongrad %.2g",
        peer(), case, name, m["cpu"] * 1e3, m["wall"] * 1e3, err)
    return m


def exit_if_failed(script, failed, against="moongrad's"):
    """Exits with every message in 'failed', after all the result lines were written."""
    if failed:
        sys.exit("%s: results differ from %s:\n  %s" % (script, against, "\n  ".join(failed)))


def add_operands():
    """op_overhead's two 16-element float32 operands, from a fixed seed, as NumPy arrays."""
    rng = np.random.default_rng(0)
    return rng.standard_normal(16, dtype=np.float32), rng.standard_normal(16, dtype=np.float32)


def adds(a, b, n):
    """op_overhead's loop: n adds c = a + b from Python; the last c."""
    c = None
    for _ in range(n):
        c = a + b
    return c


def chain(a, b, n):
    """op_overhead's chain: x = a, then x = x + b n times; the last x."""
    x = a
    for _ in range(n):
        x = x + b
    return x


JACOBIAN_SIZES = [(1, 100), (32, 100), (32, 512), (8, 1024)]


def jacobian_cases(script):
    """jacobian's command line, DIR [B,N ...], checked, then (case, W, b, h, J, opts) per size: the NumPy
    arrays bench/jacobian.lua saved in DIR (J is moongrad's batch Jacobian) and measure's
    options for that size (one call per repetition for the large ones)."""
    usage = ("usage: PYTHON bench/%s DIR [B,N ...]  (default sizes %s)"
             % (script, " ".join("%d,%d" % s for s in JACOBIAN_SIZES)))
    directory = data_dir(script, usage)
    sizes = int_cases(sys.argv[2:], 2, script + ": bad size '%s', expected B,N with positive integers; "
                      + usage, JACOBIAN_SIZES)

    def load():
        for nb, n in sizes:
            W, b, h, J = (load_array(script, directory, "%d_%d_%s.npy" % (nb, n, k)) for k in ("W", "b", "h", "J"))
            big = nb * n * n > 1e6
            yield "%d,%d" % (nb, n), W, b, h, J, {"reps": 5 if big else 11, "min_time": 0 if big else 0.05, "warmup": 3 if big else 1}
    return load()      # the command line is checked now, the arrays read one size at a time


def load_saved(script, directory, filename):
    """The array bench/<script's stem>.lua saved in 'directory' as 'filename', as a tensor;
    exits saying which run is missing when it is not there ('script' names bench/*.py)."""
    path = os.path.join(directory, filename)
    import torch
    return torch.from_numpy(load_array(script, directory, filename))


def load_array(script, directory, filename):
    """As load_saved, as a NumPy array; the pair's Lua side is the part of 'script' before
    its first '.' or '_jax'/'_tf' suffix."""
    path = os.path.join(directory, filename)
    if not os.path.exists(path):
        lua = script.split(".")[0]
        for suffix in ("_jax", "_tf"):
            lua = lua[:-len(suffix)] if lua.endswith(suffix) else lua
        sys.exit("%s: %s is missing; run bench/%s.lua %s first" % (script, path, lua, directory))
    return np.load(path)


def _openblas():
    """The OpenBLAS this process already loaded (Debian's torch; the same soname gives the
    same handle), or None: torch wheels from PyPI link MKL statically and load no OpenBLAS,
    and loading the system's here would describe a library nobody calls."""
    try:
        with open("/proc/self/maps") as f:
            if "libopenblas" not in f.read():
                return None
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


def rss_child():
    """Whether this process is the peak RSS run that peak_rss_in_child started."""
    return os.environ.get("MG_BENCH_RSS") == "1"


def peak_rss_in_child(args):
    """The peak RSS of one loop alone, as benchlib.lua's: this script again in a fresh process
    (the same interpreter) with MG_BENCH_RSS=1, on 'args', which there runs that loop only and
    ends with report_peak_rss(). Returns the child's figure in MiB, or None (reason logged)."""
    r = subprocess.run([sys.executable, os.path.abspath(sys.argv[0])] + list(args),
                       env=dict(os.environ, MG_BENCH_RSS="1"), stdout=subprocess.PIPE)
    for line in r.stdout.decode().splitlines():
        if r.returncode == 0 and line.startswith("peak_rss_mib\t"):
            return float(line.split("\t")[1])
    log("benchlib: the peak RSS run failed (exit status %d)", r.returncode)
    return None


def report_peak_rss():
    """The child's report: its peak RSS so far (VmHWM), for peak_rss_in_child."""
    rss = peak_rss_mib()
    if rss is not None:
        sys.stdout.write("peak_rss_mib\t%.1f\n" % rss)
        sys.stdout.flush()


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
    import torch
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


def torch_config():
    """What torch.__config__.show() says about the CPU kernels, as one line: its BLAS and
    LAPACK (BLAS_INFO, LAPACK_INFO: "open" is OpenBLAS, "mkl" Intel's MKL), the MKL and
    oneDNN (MKL-DNN) versions, the OpenMP, and the CPU capability its kernels use."""
    import torch
    text = torch.__config__.show()
    keep = []
    for line in text.splitlines():
        line = line.strip().lstrip("- ").strip()
        if line.startswith(("Intel(R)", "OpenMP", "LAPACK is", "CPU capability")):
            keep.append(line.split(" (Git Hash")[0].replace(" for Intel(R) 64 architecture applications", ""))
        elif line.startswith("Build settings:"):
            for kv in line[len("Build settings:"):].split(","):
                kv = kv.strip()
                if kv.split("=")[0] in ("BLAS_INFO", "LAPACK_INFO", "USE_MKLDNN", "USE_OPENMP"):
                    keep.append(kv)
    return "; ".join(keep)


def blas_meta(bench):
    """The peer's kernels (peer_blas: torch_config, and OpenBLAS's core when torch calls
    OpenBLAS) and threads (peer_threads), as meta lines; the old keys too (torch_*)."""
    import torch
    blas = torch_config()
    lib = _openblas()
    threads_text = "torch %d" % torch.get_num_threads()
    if lib is not None:
        core = lib.openblas_get_corename().decode()
        meta(bench, "torch_blas_core", core)
        meta(bench, "torch_blas_threads", lib.openblas_get_num_threads())
        blas = "OpenBLAS %s kernels; %s" % (core, blas)
        threads_text += ", OpenBLAS %d" % lib.openblas_get_num_threads()
    meta(bench, "torch_threads", torch.get_num_threads())
    meta(bench, "torch_version", torch.__version__)
    meta(bench, "peer_blas", blas)
    meta(bench, "peer_threads", threads_text)


def xla_flags():
    """Sets XLA_FLAGS (before jax is imported) so that XLA's CPU backend runs threads()
    threads: one Eigen thread and one intra-op thread by default. Flags already set are kept
    in front."""
    n = threads()
    flags = ("--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" if n == 1
             else "--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=%d" % n)
    old = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (old + " " + flags).strip()
    return os.environ["XLA_FLAGS"]


def jax_meta(bench, jax):
    """JAX's peer label, its backend and the XLA flags as meta lines."""
    set_peer("JAX", jax.__version__)
    try:
        import jaxlib
        version = "jaxlib " + jaxlib.__version__
    except (ImportError, AttributeError):
        version = "jaxlib ?"
    dev = jax.devices()[0]
    meta(bench, "peer_blas", "XLA:%s (%s; dots compiled by XLA, no external BLAS)"
         % (dev.platform.upper(), version))
    meta(bench, "peer_threads", "XLA_FLAGS=%s" % os.environ.get("XLA_FLAGS", ""))


def tf_threads(tf):
    """TensorFlow's intra-op pool set to threads() threads and its inter-op pool to one
    (ops run one at a time, each on threads() threads), before any op runs."""
    n = threads()
    tf.config.threading.set_intra_op_parallelism_threads(n)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    settle()


def tf_meta(bench, tf):
    set_peer("TensorFlow", tf.__version__)
    try:
        from tensorflow.python.util import _pywrap_util_port
        onednn = "oneDNN %s" % ("on" if _pywrap_util_port.IsMklEnabled() else "off")
    except (ImportError, AttributeError):
        onednn = "oneDNN ?"
    onednn += " (TF_ENABLE_ONEDNN_OPTS=%s)" % os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset")
    meta(bench, "peer_blas", "Eigen; %s" % onednn)
    meta(bench, "peer_threads", "intra-op %d, inter-op %d"
         % (tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads()))


# A call that takes longer than this (CPU seconds) is timed once (as benchlib.lua's).
SINGLE_RUN_SECONDS = 3


def timed(fn):
    """Calls fn once; returns its result and the call's timing {cpu, wall}, for measure's
    'first' (e.g. the run whose result is checked)."""
    c, w = time.process_time(), time.perf_counter()
    r = fn()
    return r, {"cpu": time.process_time() - c, "wall": time.perf_counter() - w}


def measure(fn, reps=7, min_time=0.1, warmup=1, inner=None, collect=False, first=None, single=None):
    """Timings of fn() as benchlib.lua's measure: a dict with cpu, wall (median seconds per
    call), cpu_reps, wall_reps (per repetition), calls (how many calls of fn ran) and runs
    (how many timed repetitions). 'first' is the timing of a call already made (timed's): it
    stands for the warm-up; when 'single' is given too and that call took more than 'single'
    CPU seconds, it is the only measurement (runs 1, no further call)."""
    if first is not None and single is not None and first["cpu"] > single:
        return {"cpu": first["cpu"], "wall": first["wall"], "cpu_reps": [first["cpu"]],
                "wall_reps": [first["wall"]], "calls": 0, "runs": 1}
    if first is not None:
        warmup, once = 0, first["cpu"]
    else:
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
            "cpu_reps": cpu, "wall_reps": wall, "calls": warmup + reps * inner, "runs": reps}


def result(bench, case, impl, m, per=1):
    """One result line from measure's m, divided by per (e.g. the ops a call ran)."""
    sys.stdout.write("result\t%s\t%s\t%s\t%.9g\t%.9g\t%s\n"
                     % (bench, case, impl, m["cpu"] / per, m["wall"] / per, peer()))
    sys.stdout.flush()


def meta(bench, key, value):
    sys.stdout.write("meta\t%s\t%s\t%s\t%s\n" % (bench, key, value, peer()))
    sys.stdout.flush()


def log(fmt, *args):
    sys.stderr.write((fmt % args if args else fmt) + "\n")
