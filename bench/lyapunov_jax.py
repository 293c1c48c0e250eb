"""lyapunov_jax.py - JAX side of bench/lyapunov.lua: the same top-k Lyapunov spectrum as
lyapunov.py, as one jax.jit of the whole loop (lax.scan over the steps; per step jax.vmap
over the k tangents of jax.jvp, then a batched jnp.linalg.qr), float32, checked against
moongrad's saved exponents (sorted descending, within 1e-4). Compilation is excluded from
the time (a warm-up call). Result lines as benchlib.py's (impl "jax jit vmap(jvp) + qr").
Runs in the test virtual environment (tools/venv: JAX, no torch):
    $(tools/venv)/bin/python bench/lyapunov_jax.py DIR [N,k,T ...]   (after bench/lyapunov.lua DIR)
"""
import os
import statistics
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

BENCH = "lyapunov"
ATOL = 1e-4


def parse_cases(args):
    cases = [tuple(int(p) for p in a.split(",")) for a in args]
    return cases or [(64, 16, 1000), (64, 64, 1000), (256, 16, 1000), (256, 256, 1000)]


def load(directory, case, name):
    path = os.path.join(directory, "%d_%d_%d_%s.npy" % (case + (name,)))
    if not os.path.exists(path):
        sys.exit("lyapunov_jax.py: %s is missing; run bench/lyapunov.lua %s first" % (path, directory))
    return jnp.asarray(np.load(path))


def spectrum(W, U, b, n):
    def step(x, h):
        mx, mh = x @ W + b[0], h @ U + b[1]
        z = jax.nn.sigmoid(mx[..., :n] + mh[..., :n])
        r = jax.nn.sigmoid(mx[..., n:2 * n] + mh[..., n:2 * n])
        hh = jnp.tanh(mx[..., 2 * n:] + r * mh[..., 2 * n:])
        return z * h + (1 - z) * hh

    @jax.jit
    def run(x, Q0):
        B_, T, _ = x.shape

        def body(carry, xt):
            h, tan, s = carry
            f = lambda hh: step(xt, hh)  # noqa: E731
            D = jax.vmap(lambda v: jax.jvp(f, (h,), (v,))[1])(tan)          # (k, B, N)
            Q, R = jnp.linalg.qr(jnp.transpose(D, (1, 2, 0)))
            s = s + jnp.log(jnp.abs(jnp.diagonal(R, axis1=-2, axis2=-1)))
            return (f(h), jnp.transpose(Q, (2, 0, 1)), s), None

        init = (jnp.zeros((B_, Q0.shape[1]), x.dtype), jnp.transpose(Q0, (2, 0, 1)),
                jnp.zeros((B_, Q0.shape[2]), x.dtype))
        (_, _, s), _ = jax.lax.scan(body, init, jnp.swapaxes(x, 0, 1))
        return s / T
    return run


def main():
    if len(sys.argv) < 2:
        sys.exit("lyapunov_jax.py: no directory given")
    directory = sys.argv[1]
    sys.stdout.write("meta\t%s\tjax_version\t%s\n" % (BENCH, jax.__version__))
    for case in parse_cases(sys.argv[2:]):
        name = "%d,%d,%d" % case
        run = spectrum(load(directory, case, "kernel"), load(directory, case, "recurrent_kernel"),
                       load(directory, case, "bias"), case[0])
        x, Q0 = load(directory, case, "x"), load(directory, case, "Q0")
        got = -np.sort(-np.asarray(run(x, Q0).block_until_ready()), axis=1)
        err = float(np.max(np.abs(got - np.asarray(load(directory, case, "exponents")))))
        if not err <= ATOL:
            sys.exit("lyapunov_jax.py: %s: exponents differ from moongrad's by %g" % (name, err))
        cpu, wall = [], []
        for _ in range(3):
            c, w = time.process_time(), time.perf_counter()
            run(x, Q0).block_until_ready()
            wall.append(time.perf_counter() - w)
            cpu.append(time.process_time() - c)
        sys.stdout.write("result\t%s\t%s\t%s\t%.9g\t%.9g\n" % (BENCH, name, "jax jit vmap(jvp) + qr",
                         statistics.median(cpu), statistics.median(wall)))
        sys.stdout.flush()
        sys.stderr.write("jax       (%s) jit vmap(jvp) + qr %10.1f ms CPU, %10.1f ms wall (max |diff| %.2g)\n"
                         % (name, statistics.median(cpu) * 1e3, statistics.median(wall) * 1e3, err))


main()
