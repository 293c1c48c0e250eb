"""lyapunov_jax.py - JAX side of bench/lyapunov.lua: the same top-k Lyapunov spectrum as
lyapunov.py, as one jax.jit of the whole loop (lax.scan over the steps; per step jax.vmap
over the k tangents of jax.jvp, then a batched jnp.linalg.qr), float32, checked against
moongrad's saved exponents (sorted descending, within 1e-4). Compiled ahead of the timing
(jit(...).lower(x, Q0).compile()), so that the first run is already the compiled one: it is
the checked run and the first timing; then the median of 3 more, or that run alone when it
took more than benchlib.SINGLE_RUN_SECONDS (meta 'runs CASE METHOD': 3 or 1). Every run waits
for its result (block_until_ready).
Usage: $(bench/venv)/bin/python bench/lyapunov_jax.py DIR [N,k,T ...]   (after bench/lyapunov.lua DIR)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

B.xla_flags()
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

BENCH = "lyapunov"
USAGE = ("usage: $(bench/venv)/bin/python bench/lyapunov_jax.py DIR [N,k,T ...]  "
         "(default 64,16,1000 64,64,1000 256,16,1000 256,256,1000)")
ATOL = 1e-4
METHOD = "jit vmap(jvp) + qr"


def load(directory, case, name):
    return jnp.asarray(B.load_array("lyapunov_jax.py", directory, "%d_%d_%d_%s.npy" % (case + (name,))))


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
    directory = B.data_dir("lyapunov_jax.py", USAGE)
    cases = B.int_cases(sys.argv[2:], 3, "lyapunov_jax.py: bad case '%s', expected N,k,T with 1 <= k <= N; "
                        + USAGE, [(64, 16, 1000), (64, 64, 1000), (256, 16, 1000), (256, 256, 1000)],
                        ok=lambda case: case[1] <= case[0])
    B.jax_meta(BENCH, jax)
    B.settle()
    failed = []
    for case in cases:
        name = "%d,%d,%d" % case
        x, Q0 = load(directory, case, "x"), load(directory, case, "Q0")
        compiled = spectrum(load(directory, case, "kernel"), load(directory, case, "recurrent_kernel"),
                            load(directory, case, "bias"), case[0]).lower(x, Q0).compile()

        def run():
            return compiled(x, Q0).block_until_ready()
        exps, first = B.timed(run)
        got = -np.sort(-np.asarray(exps), axis=1)
        err = float(np.max(np.abs(got - np.asarray(load(directory, case, "exponents")))))
        if not err <= ATOL:
            failed.append("%s: exponents differ by %g" % (name, err))
            continue
        m = B.measure(run, reps=3, inner=1, first=first, single=B.SINGLE_RUN_SECONDS)
        B.result(BENCH, name, METHOD, m)
        B.meta(BENCH, "runs %s %s" % (name, METHOD), m["runs"])
        B.log("%s (%s) %s %10.1f ms CPU, %10.1f ms wall (n=%d; max |diff| %.2g)", B.peer(), name, METHOD,
              m["cpu"] * 1e3, m["wall"] * 1e3, m["runs"], err)
    B.exit_if_failed("lyapunov_jax.py", failed)


main()
