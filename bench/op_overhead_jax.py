"""op_overhead_jax.py - JAX side of bench/op_overhead.lua: per-op cost of a 16-element
float32 add called from Python, n_ops times (default 100,000), in JAX's eager mode: each
`jnp` call is dispatched on its own, outside any `jit` (eager dispatch; JAX records nothing,
so only the no-tape row has a JAX column). The result of the last add is waited for
(block_until_ready) and checked.
Usage: $(bench/venv)/bin/python bench/op_overhead_jax.py [n_ops]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

B.xla_flags()
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

BENCH = "op_overhead"


def main():
    n = B.n_ops("op_overhead_jax.py")
    B.jax_meta(BENCH, jax)
    a0, b0 = (jnp.asarray(x) for x in B.add_operands())

    def adds():
        return B.adds(a0, b0, n).block_until_ready()

    if not np.array_equal(np.asarray(adds()), np.asarray(a0) + np.asarray(b0)):
        sys.exit("op_overhead_jax.py: the add's result is wrong")
    B.per_op_result(BENCH, "no_tape", "a + b (eager dispatch)", B.measure(adds, reps=7, inner=1, warmup=2), n)


if __name__ == "__main__":
    main()
