"""Keras 3 reference for spec/layers_spec.lua.

usage: KERAS_BACKEND=jax <venv python> keras_ref.py DIR

Reads DIR/cases.json, a list of cases the spec wrote (arrays as DIR/<name>.npy, float32, in
Keras's layouts), builds each case's Keras objects, sets the spec's weights, runs the inputs
and writes every result as DIR/out_<case>_<i>.npy (i = 1, 2, ... over the flattened results:
output(s), then states). Dropout masks the spec drew are put into the Keras cells' mask caches
(DropoutRNNCell._dropout_mask, which RNN.call uses for the whole sequence), so the formulas
are compared with the same masks. A failing case writes DIR/err_<case>.txt and the script
goes on; the exit status is 1 if any case failed.
"""
import json
import os
import sys
import traceback

os.environ.setdefault("KERAS_BACKEND", "jax")
import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_disable_jit", True)     # small cases: running beats compiling each scan
import keras  # noqa: E402

DIR = sys.argv[1]


def load(name):
    return np.load(os.path.join(DIR, name + ".npy"))


def save(case, i, a):
    np.save(os.path.join(DIR, f"out_{case}_{i}.npy"), np.asarray(a, dtype=np.float64))


def flatten(x):
    if isinstance(x, (list, tuple)):
        out = []
        for e in x:
            out.extend(flatten(e))
        return out
    return [x]


def masks(spec):
    """A mask name or a list of names -> an array or a list of arrays (None stays None)."""
    if spec is None:
        return None
    if isinstance(spec, list):
        return [load(n) for n in spec]
    return load(spec)


def set_cell_masks(cell, spec):
    if spec is None:
        return
    cell._dropout_mask = masks(spec.get("dp"))
    cell._recurrent_dropout_mask = masks(spec.get("rdp"))


def cells_of(layer):
    """The cells of an RNN layer in order (StackedRNNCells gives its cells)."""
    cell = layer.cell
    if isinstance(cell, keras.layers.StackedRNNCells):
        return list(cell.cells)
    return [cell]


def make_layer(spec):
    cls = getattr(keras.layers, spec["layer"])
    cfg = dict(spec.get("config", {}))
    if cfg.get("merge_mode") == "none":       # JSON has no None: "none" is Keras's None
        cfg["merge_mode"] = None
    if "cells" in spec:
        return cls([make_layer(c) for c in spec["cells"]], **cfg)
    if "inner" in spec:
        inner = make_layer(spec["inner"])
        if "backward" in spec:
            cfg["backward_layer"] = make_layer(spec["backward"])
        return cls(inner, **cfg)
    return cls(**cfg)


def call_kwargs(case):
    kw = {}
    if case.get("mask"):
        kw["mask"] = load(case["mask"]).astype(bool)
    if case.get("initial_state"):
        kw["initial_state"] = [load(n) for n in case["initial_state"]]
    if case.get("training"):
        kw["training"] = True
    return kw


def run_layer(case):
    layer = make_layer(case["spec"])
    x = load(case["x"])
    layer(x)                                   # builds the weights
    if case.get("weights") is not None:
        layer.set_weights([load(n) for n in case["weights"]])
    if case.get("dropout"):                   # one entry per cell, in cells_of order
        cells = []
        if isinstance(layer, keras.layers.Bidirectional):
            cells = cells_of(layer.forward_layer) + cells_of(layer.backward_layer)
        else:
            cells = cells_of(layer)
        for cell, spec in zip(cells, case["dropout"]):
            set_cell_masks(cell, spec)
    if case.get("x2"):                        # stateful: two calls from zero states
        layer.reset_state()
        first = flatten(layer(x, **call_kwargs(case)))
        return first + flatten(layer(load(case["x2"]), **call_kwargs(case)))
    out = layer(x, **call_kwargs(case))
    return flatten(out)


def run_sequential(case):
    model = keras.Sequential([make_layer(s) for s in case["layers"]])
    x = load(case["x"])
    model(x)
    model.set_weights([load(n) for n in case["weights"]])
    return flatten(model(x, **call_kwargs(case)))


def run_activation(case):
    f = keras.activations.get(case["activation"])
    return [f(load(case["x"]))]


CONSTRAINTS = {"max_norm": "MaxNorm", "min_max_norm": "MinMaxNorm", "non_neg": "NonNeg",
               "unit_norm": "UnitNorm"}
REGULARIZERS = {"l1": "L1", "l2": "L2", "l1_l2": "L1L2"}


def run_constraint(case):
    c = getattr(keras.constraints, CONSTRAINTS[case["constraint"]])(**case.get("config", {}))
    return [c(load(case["x"]))]


def run_regularizer(case):
    r = getattr(keras.regularizers, REGULARIZERS[case["regularizer"]])(**case.get("config", {}))
    return [r(load(case["x"]))]


def run_activity(case):
    """The layer's losses after one call (weights set): Keras's activity_regularizer terms."""
    layer = make_layer(case["spec"])
    x = load(case["x"])
    layer(x)
    layer.set_weights([load(n) for n in case["weights"]])
    layer(x)
    return [sum(float(l) for l in layer.losses)]


KINDS = {"layer": run_layer, "sequential": run_sequential, "activation": run_activation,
         "constraint": run_constraint, "regularizer": run_regularizer, "activity": run_activity}


def main():
    with open(os.path.join(DIR, "cases.json")) as f:
        cases = json.load(f)
    failed = False
    for case in cases:
        try:
            for i, a in enumerate(KINDS[case["kind"]](case), 1):
                save(case["name"], i, a)
        except Exception:
            failed = True
            with open(os.path.join(DIR, f"err_{case['name']}.txt"), "w") as f:
                f.write(traceback.format_exc())
    sys.exit(1 if failed else 0)


main()
