"""op_overhead_tf.py - TensorFlow side of bench/op_overhead.lua: per-op cost of a 16-element
float32 add called from Python in TensorFlow's eager mode, n_ops times (default 100,000).
    no_tape            'c = a + b' on tf.constant tensors, no tape
    recorded           the same under a tf.GradientTape watching a and b: every add recorded
    recorded+backward  'x = x + b' chained under a tape, then tape.gradient(sum(x), a)
Usage: $(bench/venv)/bin/python bench/op_overhead_tf.py [n_ops]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

BENCH = "op_overhead"


def main():
    n = B.n_ops("op_overhead_tf.py")
    B.tf_threads(tf)
    B.tf_meta(BENCH, tf)
    a0, b0 = (tf.constant(x) for x in B.add_operands())

    def adds():
        return B.adds(a0, b0, n)

    def recorded():
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(a0)
            tape.watch(b0)
            c = B.adds(a0, b0, n)
        return c, tape

    def chain_backward():
        with tf.GradientTape() as tape:
            tape.watch(a0)
            s = tf.reduce_sum(B.chain(a0, b0, n))
        return tape.gradient(s, a0)

    want = a0.numpy() + b0.numpy()
    if not np.array_equal(adds().numpy(), want):
        sys.exit("op_overhead_tf.py: the add's result is wrong")
    c, tape = recorded()
    if tape.gradient(c, a0) is None:             # the target summed, as gradient does
        sys.exit("op_overhead_tf.py: the add was not recorded")
    del c, tape
    if not np.array_equal(chain_backward().numpy(), np.ones(16, np.float32)):
        sys.exit("op_overhead_tf.py: the gradient is not ones")
    for name, fn in (("no_tape", adds), ("recorded", recorded), ("recorded+backward", chain_backward)):
        B.per_op_result(BENCH, name, "a + b (eager)", B.measure(fn, reps=7, inner=1, warmup=2), n)


if __name__ == "__main__":
    main()
