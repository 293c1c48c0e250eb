"""jacobian_tf.py - TensorFlow side of bench/jacobian.lua: the batch Jacobian of
h' = relu(h) @ W + b, J[k, i, j] = dh'[k, i] / dh[k, j], for the W, b, h that jacobian.lua
saved in DIR, the way the seeds do it (tf.GradientTape.batch_jacobian, which vectorizes with
pfor), checked against moongrad's saved J (within 1e-5 relative to max |J|).

    batch_jacobian (tf.function)  the forward pass under a tape and tape.batch_jacobian(y, x),
                                  traced once into a tf.function (graph mode)
    batch_jacobian (eager)        the same, eagerly
Each timed call includes the forward pass; tracing is not timed (the warm-up call traces).
Usage: $(bench/venv)/bin/python bench/jacobian_tf.py DIR [B,N ...]   (after bench/jacobian.lua DIR)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

BENCH = "jacobian"
RTOL = 1e-5


def main():
    cases = B.jacobian_cases("jacobian_tf.py")
    tf.get_logger().setLevel("ERROR")      # eager batch_jacobian retraces pfor at each call, and says so
    B.tf_threads(tf)
    B.tf_meta(BENCH, tf)
    failed = []
    for case, W, b, h, J_mg, opts in cases:
        W, b, ht = tf.constant(W), tf.constant(b), tf.constant(h)

        def batch_jacobian(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.nn.relu(x) @ W + b
            return tape.batch_jacobian(y, x)

        for name, fn in (("batch_jacobian (tf.function)", tf.function(batch_jacobian)),
                         ("batch_jacobian (eager)", batch_jacobian)):
            B.check_and_time(BENCH, case, name, lambda: fn(ht), J_mg, RTOL, failed, **opts)
    B.exit_if_failed("jacobian_tf.py", failed)


if __name__ == "__main__":
    main()
