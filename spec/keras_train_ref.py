"""Keras 3 and PyTorch references for spec/training_spec.lua (optimizers, clipping, schedules,
losses).

usage: PYTHON keras_train_ref.py DIR FRAMEWORK

FRAMEWORK "keras": run with the test venv's Python (Keras 3, KERAS_BACKEND=jax, float32);
FRAMEWORK "torch": run with /usr/bin/python3 (PyTorch 1.13, float64).
Reads DIR/cases.txt, one case a line, "name<TAB>python-literal dict" (see the kinds below), and
the arrays DIR/<name>_*.npy the spec wrote; writes DIR/out_<name>_*.npy. A case that fails
writes DIR/out_<name>_error.txt and the others still run.
"""
import ast
import os
import sys
import traceback

import numpy as np

DIR, FRAMEWORK = sys.argv[1], sys.argv[2]


def load(name):
    return np.load(f"{DIR}/{name}.npy")


def save(name, a):
    np.save(f"{DIR}/out_{name}.npy", np.asarray(a, dtype=np.float64))


if FRAMEWORK == "keras":
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import jax
    import jax.numpy as jnp
    import keras
    from keras.src.losses.loss import reduce_weighted_values

    def opt_case(name, c):
        """Keras optimizer c["opt"](**c["kw"]) applied c["steps"] times to float32 Variables."""
        ps = [keras.Variable(load(f"{name}_p{k}").astype(np.float32)) for k in range(c["nparams"])]
        kw = dict(c["kw"])
        if "schedule" in c:
            s = c["schedule"]
            kw["learning_rate"] = getattr(keras.optimizers.schedules, s["cls"])(**s["kw"])
        opt = getattr(keras.optimizers, c["opt"])(**kw)
        for s in range(1, c["steps"] + 1):
            gs = [jnp.asarray(load(f"{name}_g{s}_{k}").astype(np.float32)) for k in range(c["nparams"])]
            opt.apply(gs, ps)
        for k, p in enumerate(ps):
            save(f"{name}_p{k}", np.asarray(p.numpy()))

    def sched_case(name, c):
        """A Keras learning-rate schedule at the steps c["steps"]."""
        s = getattr(keras.optimizers.schedules, c["cls"])(**c["kw"])
        save(name, [float(s(step)) for step in c["steps"]])

    def loss_case(name, c):
        """keras.losses.<fn> per-sample values, reduced as Keras's Loss.__call__; the value and
        its gradient with respect to pred (float32)."""
        fn = getattr(keras.losses, c["fn"])
        t = jnp.asarray(load(f"{name}_target").astype(np.int32 if c.get("sparse") else np.float32))
        sw = jnp.asarray(load(f"{name}_sw").astype(np.float32)) if c.get("sw") else None
        mask = jnp.asarray(load(f"{name}_mask").astype(np.float32)) if c.get("mask") else None

        def f(p):
            values = fn(t, p, **dict(c["kw"]))
            return reduce_weighted_values(values, sw, mask, c.get("reduction", "sum_over_batch_size"))

        p = jnp.asarray(load(f"{name}_pred").astype(np.float32))
        v, g = jax.value_and_grad(f)(p)
        save(f"{name}_loss", np.asarray(v))
        save(f"{name}_grad", np.asarray(g))

    def fit_case(name, c):
        """keras.Model.fit of Dense(c["units"]) from the weights <name>_kernel/_bias on
        <name>_x, <name>_y with loss c["loss"] and SGD(**c["sgd"]), shuffle=False; the
        history's losses and the final weights."""
        x, y = load(f"{name}_x").astype(np.float32), load(f"{name}_y").astype(np.float32)
        model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(y.shape[1])])
        model.layers[0].set_weights([load(f"{name}_kernel").astype(np.float32),
                                     load(f"{name}_bias").astype(np.float32)])
        model.compile(optimizer=keras.optimizers.SGD(**c["sgd"]), loss=c["loss"])
        h = model.fit(x, y, batch_size=c["batch_size"], epochs=c["epochs"], shuffle=False, verbose=0)
        save(f"{name}_loss", h.history["loss"])
        kernel, bias = model.layers[0].get_weights()
        save(f"{name}_kernel", kernel)
        save(f"{name}_bias", bias)

    KINDS = {"opt": opt_case, "sched": sched_case, "loss": loss_case, "fit": fit_case}

elif FRAMEWORK == "torch":
    import torch
    import torch.nn.functional as F

    torch.set_default_dtype(torch.float64)

    def tload(name):
        return torch.tensor(load(name), dtype=torch.float64)

    def opt_case(name, c):
        """torch.optim.<opt>(**kw) for c["steps"] steps on float64 parameters; c["clip"] is
        {"global": max_norm} (clip_grad_norm_ over all), {"each": max_norm} (per parameter)
        or {"value": v} (clip_grad_value_), applied before each step."""
        ps = [tload(f"{name}_p{k}").requires_grad_() for k in range(c["nparams"])]
        kw = dict(c["kw"])
        if "betas" in kw:
            kw["betas"] = tuple(kw["betas"])
        opt = getattr(torch.optim, c["opt"])(ps, **kw)
        clip = c.get("clip")
        for s in range(1, c["steps"] + 1):
            for k, p in enumerate(ps):
                p.grad = tload(f"{name}_g{s}_{k}")
            if clip and "global" in clip:
                torch.nn.utils.clip_grad_norm_(ps, clip["global"])
            elif clip and "each" in clip:
                for p in ps:
                    torch.nn.utils.clip_grad_norm_([p], clip["each"])
            elif clip and "value" in clip:
                torch.nn.utils.clip_grad_value_(ps, clip["value"])
            opt.step()
        for k, p in enumerate(ps):
            save(f"{name}_p{k}", p.detach().numpy())

    def loss_case(name, c):
        """c["expr"], a torch expression of p (pred, float64, requires grad), t (target) and
        w (DIR/<name>_sw.npy when c["sw"]); its value and gradient with respect to p."""
        p = tload(f"{name}_pred").requires_grad_()
        t = tload(f"{name}_target")
        if c.get("sparse"):
            t = t.long()
        w = tload(f"{name}_sw") if c.get("sw") else None
        v = eval(c["expr"], {"torch": torch, "F": F, "p": p, "t": t, "w": w})
        v.backward()
        save(f"{name}_loss", v.detach().numpy())
        save(f"{name}_grad", p.grad.numpy())

    def clip_case(name, c):
        """torch.nn.utils.clip_grad_norm_ over the tensors DIR/<name>_g<k>.npy: the clipped
        tensors and the total norm it returns."""
        ps = [torch.zeros(load(f"{name}_g{k}").shape, requires_grad=True) for k in range(c["n"])]
        for k, p in enumerate(ps):
            p.grad = tload(f"{name}_g{k}")
        total = torch.nn.utils.clip_grad_norm_(ps, c["max_norm"])
        for k, p in enumerate(ps):
            save(f"{name}_g{k}", p.grad.numpy())
        save(f"{name}_norm", total.numpy())

    KINDS = {"opt": opt_case, "loss": loss_case, "clip": clip_case}

else:
    sys.exit(f"unknown framework {FRAMEWORK}")

with open(f"{DIR}/cases.txt") as f:
    for line in f:
        if not line.strip():
            continue
        name, lit = line.rstrip("\n").split("\t", 1)
        case = ast.literal_eval(lit)
        try:
            KINDS[case["kind"]](name, case)
        except Exception:
            with open(f"{DIR}/out_{name}_error.txt", "w") as e:
                e.write(traceback.format_exc())
