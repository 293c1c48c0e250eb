"""lstm_tf.py - TensorFlow side of bench/lstm.lua: one training step of the same LSTM (or GRU)
regressor in Keras on the TensorFlow backend (KERAS_BACKEND=tensorflow), the seeds' way:
keras.layers.LSTM(units, return_sequences=True) (or GRU, reset_after) on x (batch, 100, 8) ->
keras.layers.Dense(1) on
every step, compiled with loss "mse" and keras.optimizers.Adam(1e-3), one
model.train_on_batch(x, y) per step, float32, from the data and initial weights that
lstm.lua saved in DIR (the layouts are Keras's, gate order i, f, g, o; GRU z, r, h).
    train_on_batch (graph)  compile(jit_compile=False): a tf.function train step
    train_on_batch (XLA)    compile(jit_compile=True): the same step compiled by XLA
Before timing, each model's loss and parameter gradients (under a tf.GradientTape) and the
loss train_on_batch returns on its first call are checked against the float64 reference
lstm.lua saved (within benchlib.REF_TOL, 1e-5, of the scale of their terms:
benchlib.ref_err). Tracing and compiling are not timed (the warm-up call does them). After
the timing, the peak RSS once 200 steps in all have run.
Usage: $(bench/venv)/bin/python bench/lstm_tf.py DIR [case ...]   (after bench/lstm.lua DIR;
cases as lstm.lua's: units, or kind:units:batch)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

BENCH = "lstm"
USAGE = B.lstm_usage("$(bench/venv)/bin/python bench/lstm_tf.py")
RSS_STEPS, RSS_CASE = B.LSTM_RSS_STEPS, B.LSTM_RSS_CASE


def model_for(kind, units, batch, load, jit):
    inp = keras.Input((100, 8), batch_size=batch)
    rnn = (keras.layers.LSTM if kind == "lstm" else keras.layers.GRU)(units, return_sequences=True)
    dense = keras.layers.Dense(1)
    model = keras.Model(inp, dense(rnn(inp)))
    rnn.set_weights([load(kind + "_kernel"), load(kind + "_recurrent_kernel"), load(kind + "_bias")])
    dense.set_weights([load("dense_kernel"), load("dense_bias")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", jit_compile=jit)
    grads_of = [(kind + "_kernel", rnn.cell.kernel), (kind + "_recurrent_kernel", rnn.cell.recurrent_kernel),
                (kind + "_bias", rnn.cell.bias), ("dense_kernel", dense.kernel), ("dense_bias", dense.bias)]
    return model, grads_of


def main():
    directory = B.data_dir("lstm_tf.py", USAGE)
    cases = B.lstm_cases("lstm_tf.py", USAGE)
    B.tf_threads(tf)
    B.tf_meta(BENCH, tf)
    B.meta(BENCH, "keras_version", keras.__version__)
    failed = []
    for kind, units, batch, label, key in cases:
        def load(name):
            return B.load_array("lstm_tf.py", directory, "%s_%s.npy" % (key, name))

        def ref(name):
            return B.reference("lstm_tf.py", directory, key + "_", name)
        x, y = load("x"), load("y")
        for name, jit in (("train_on_batch (graph)", False), ("train_on_batch (XLA)", True)):
            model, grads_of = model_for(kind, units, batch, load, jit)
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
            grads = tape.gradient(loss, [v.value for _, v in grads_of])
            errs = {"loss": B.ref_err(loss, ref("loss"))}
            for (n, _), g in zip(grads_of, grads):
                errs["grad " + n] = B.ref_err(g, ref("grad_" + n))
            errs["train_on_batch loss"] = B.ref_err(model.train_on_batch(x, y), ref("loss"))
            B.check_errors(BENCH, label, errs, failed, name)
            m = B.measure(lambda: model.train_on_batch(x, y), reps=7, min_time=0.2)
            B.result(BENCH, label, name, m)
            B.log("%s case %-12s %-24s %9.3f ms CPU, %9.3f ms wall", B.peer(), label, name,
                  m["cpu"] * 1e3, m["wall"] * 1e3)
            if not jit and label == RSS_CASE:
                for _ in range(max(0, RSS_STEPS - m["calls"] - 1)):
                    model.train_on_batch(x, y)
                rss = B.peak_rss_mib()
                if rss is not None:
                    B.meta(BENCH, "peak_rss_mib_peer %s" % label, "%.1f" % rss)
                    B.log("%s case %-12s peak RSS after %d steps: %.1f MiB", B.peer(), label,
                          max(RSS_STEPS, m["calls"] + 1), rss)
    B.exit_if_failed("lstm_tf.py", failed, "the float64 reference")


if __name__ == "__main__":
    main()
