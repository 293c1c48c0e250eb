"""keras_weights_ref.py: the Keras side of spec/keras_spec.lua, run by the test venv's Python.

  keras_weights_ref.py make DIR     Keras 3 (JAX backend): each model of MODELS with random weights
                            (biases too), saved with save_weights as DIR/<m>.weights.h5 and,
                            through Keras's own legacy writer (legacy_h5_format), as
                            DIR/<m>.legacy.h5; the input DIR/<m>.x.npy (token ids: moongrad's) and the output
                            DIR/<m>.out.npy
  keras_weights_ref.py check DIR    for each model, a fresh Keras model load_weights(DIR/<m>.ours.weights.h5)
                            (written by moongrad's nn.save_keras); prints "RESULT <m> <the largest relative
                            difference of its output on DIR/<m>.x.npy from DIR/<m>.ours_out.npy>"
  keras_weights_ref.py tf DIR       tf-keras (Keras 2): the same models saved with save_weights as
                            DIR/<m>.tf.h5, outputs DIR/<m>.tf_out.npy
"""
import os
import sys

import numpy as np

mode, root = sys.argv[1], sys.argv[2]
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"           # a venv with tensorflow (tools/venv --tf)
if mode == "tf":
    import tf_keras as keras
else:
    os.environ["KERAS_BACKEND"] = "jax"
    import keras


def models():
    L = keras.layers
    return {
        "bi_lstm_gru_dense": [L.Bidirectional(L.LSTM(4, return_sequences=True)), L.GRU(2), L.Dense(1)],
        "rnn_gru_lstm_dense": [L.SimpleRNN(4, return_sequences=True),
                               L.GRU(3, reset_after=False, return_sequences=True), L.LSTM(2),
                               L.Dense(2, activation="tanh")],
        # token ids; mask_zero: padding 0 masked through the stacked cells
        "emb_stacked_ln_td": [L.Embedding(10, 4, mask_zero=True),
                              L.RNN([L.LSTMCell(3), L.GRUCell(2)], return_sequences=True),
                              L.LayerNormalization(), L.TimeDistributed(L.Dense(2))],
        "emb_bi_stacked_dense": [L.Embedding(8, 3),
                                 L.Bidirectional(L.RNN(L.StackedRNNCells([L.LSTMCell(2), L.SimpleRNNCell(2)]))),
                                 L.Dense(1)],
        "ln_lstm_dense": [L.LayerNormalization(), L.LSTM(4), L.Dense(2)],
    }


# The models over token ids, and the offset from Keras's ids to moongrad's (1-based; with
# mask_zero both have 0 as padding and the same ids). x.npy holds moongrad's ids.
IDS = {"emb_stacked_ln_td": 0, "emb_bi_stacked_dense": 1}


def build(layers, name):
    return keras.Sequential([keras.Input((5,), dtype="int32") if name in IDS else keras.Input((5, 3))] + layers)


def inputs(name, rng):
    if name not in IDS:
        return rng.standard_normal((2, 5, 3)).astype(np.float32)
    if IDS[name] == 0:
        ids = rng.integers(1, 10, (2, 5))
        ids[0, 3:] = 0                               # padding at the end of one sequence
        return ids.astype(np.float64)
    return rng.integers(0, 8, (2, 5)).astype(np.float64) + 1


def keras_input(name, x):
    return (x - IDS[name]).astype(np.int32) if name in IDS else x


def path(name, suffix):
    return os.path.join(root, name + suffix)


def make():
    from keras.src.legacy.saving import legacy_h5_format
    import h5py
    rng = np.random.default_rng(7)
    for name, layers in models().items():
        m = build(layers, name)
        m.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.5 for w in m.get_weights()])
        x = inputs(name, rng)
        m.save_weights(path(name, ".weights.h5"))
        with h5py.File(path(name, ".legacy.h5"), "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, m)
        np.save(path(name, ".x.npy"), x)
        np.save(path(name, ".out.npy"), np.asarray(m(keras_input(name, x))))


def tf():
    rng = np.random.default_rng(8)
    for name, layers in models().items():
        m = build(layers, name)
        m.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.5 for w in m.get_weights()])
        x = np.load(path(name, ".x.npy"))
        m.save_weights(path(name, ".tf.h5"))
        np.save(path(name, ".tf_out.npy"), np.asarray(m(keras_input(name, x))))


def check():
    for name, layers in models().items():
        m = build(layers, name)
        m.load_weights(path(name, ".ours.weights.h5"))
        got = np.asarray(m(keras_input(name, np.load(path(name, ".x.npy")))))
        want = np.load(path(name, ".ours_out.npy"))
        print("RESULT", name, repr(float(np.max(np.abs(got - want) / np.maximum(1, np.abs(want))))))


{"make": make, "check": check, "tf": tf}[mode]()
