"""jacobian_jax.py - JAX side of bench/jacobian.lua: the batch Jacobian of
h' = relu(h) @ W + b, J[k, i, j] = dh'[k, i] / dh[k, j], for the W, b, h that jacobian.lua
saved in DIR, checked against moongrad's saved J (within 1e-5 relative to max |J|).

    jit(vmap(jacrev))     jax.jit(jax.vmap(jax.jacrev(f_row)))(h), f_row on one (N,) row
    jit(vmap(jacfwd))     the same in forward mode (N tangents per row)
Each timed call includes the forward pass and waits for the result (block_until_ready);
compilation is not timed (the warm-up call compiles).
Usage: $(bench/venv)/bin/python bench/jacobian_jax.py DIR [B,N ...]   (after bench/jacobian.lua DIR)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

B.xla_flags()
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

BENCH = "jacobian"
RTOL = 1e-5


def main():
    cases = B.jacobian_cases("jacobian_jax.py")
    B.jax_meta(BENCH, jax)
    B.settle()
    failed = []
    for case, W, b, h, J_mg, opts in cases:
        W, b, hj = jnp.asarray(W), jnp.asarray(b), jnp.asarray(h)

        def f(x):
            return jax.nn.relu(x) @ W + b

        for name, transform in (("jit(vmap(jacrev))", jax.jacrev), ("jit(vmap(jacfwd))", jax.jacfwd)):
            fn = jax.jit(jax.vmap(transform(f)))
            B.check_and_time(BENCH, case, name, lambda: fn(hj), J_mg, RTOL, failed,
                             timed=lambda: fn(hj).block_until_ready(), **opts)
    B.exit_if_failed("jacobian_jax.py", failed)


if __name__ == "__main__":
    main()
