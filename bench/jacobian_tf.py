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
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

BENCH = "jacobian"
USAGE = ("usage: $(bench/venv)/bin/python bench/jacobian_tf.py DIR [B,N ...]  "
         "(default sizes 1,100 32,100 32,512 8,1024)")
RTOL = 1e-5


def main():
    if len(sys.argv) < 2:
        sys.exit("jacobian_tf.py: no data directory given; " + USAGE)
    directory = sys.argv[1]
    if not os.path.isdir(directory):
        sys.exit("jacobian_tf.py: directory '%s' does not exist" % directory)
    cases = B.int_cases(sys.argv[2:], 2, "jacobian_tf.py: bad size '%s', expected B,N with positive "
                        "integers; " + USAGE, [(1, 100), (32, 100), (32, 512), (8, 1024)])
    tf.get_logger().setLevel("ERROR")      # eager batch_jacobian retraces pfor at each call, and says so
    B.tf_threads(tf)
    B.tf_meta(BENCH, tf)
    failed = []
    for nb, n in cases:
        case = "%d,%d" % (nb, n)
        W, b, h, J_mg = (B.load_array("jacobian_tf.py", directory, "%d_%d_%s.npy" % (nb, n, k))
                         for k in ("W", "b", "h", "J"))
        W, b, ht = tf.constant(W), tf.constant(b), tf.constant(h)

        def batch_jacobian(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.nn.relu(x) @ W + b
            return tape.batch_jacobian(y, x)

        scale = np.abs(J_mg).max()
        big = nb * n * n > 1e6
        for name, fn in (("batch_jacobian (tf.function)", tf.function(batch_jacobian)),
                         ("batch_jacobian (eager)", batch_jacobian)):
            J = fn(ht).numpy()
            err = np.abs(J - J_mg).max() / scale if J.shape == J_mg.shape else float("inf")
            B.meta(BENCH, "relerr %s %s" % (case, name), "%.3g" % err)
            if not err <= RTOL:
                failed.append("(%s) %s: shape %s, relative error %g vs moongrad" % (case, name, J.shape, err))
            del J
            m = B.measure(lambda: fn(ht), reps=5 if big else 11, min_time=0 if big else 0.05)
            B.result(BENCH, case, name, m)
            B.log("%s (%s) %-28s %10.4f ms CPU, %10.4f ms wall; rel. err. vs moongrad %.2g",
                  B.peer(), case, name, m["cpu"] * 1e3, m["wall"] * 1e3, err)
    if failed:
        sys.exit("jacobian_tf.py: results differ from moongrad's:\n  " + "\n  ".join(failed))


if __name__ == "__main__":
    main()
