"""PyTorch reference for spec/torch_diff_spec.lua.

usage: /usr/bin/python3 torch_ref.py DIR CASE

Reads DIR/<name>.npy written by the spec (weights in Keras layouts), runs CASE in float64
with PyTorch, and writes DIR/out_<name>.npy, with every gradient mapped back to the Keras
layout (gate orders as docs/cells.md: LSTM i,f,c,o is PyTorch's i,f,g,o; GRU z,r,h is
PyTorch's r,z,n with reset_after=True).
"""
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
DIR, CASE = sys.argv[1], sys.argv[2]


def load(name):
    return torch.tensor(np.load(f"{DIR}/{name}.npy"), dtype=torch.float64)


def save(name, t):
    np.save(f"{DIR}/out_{name}.npy", t.detach().numpy().astype(np.float64))


def gru_order(m, u):
    """Swap the first two gate blocks of the last dimension: Keras (z, r, h) <-> PyTorch (r, z, n)."""
    return torch.cat([m[..., u:2 * u], m[..., :u], m[..., 2 * u:]], -1)


def identity(m, u):
    return m


def set_layer(layer, kind, sfx, pre, u):
    """Copy Keras weights pre+kernel etc. into layer's parameters of direction sfx."""
    order = gru_order if kind == "gru" else identity
    W, U, b = load(pre + "kernel"), load(pre + "recurrent_kernel"), load(pre + "bias")
    with torch.no_grad():
        getattr(layer, "weight_ih_l0" + sfx).copy_(order(W, u).T)
        getattr(layer, "weight_hh_l0" + sfx).copy_(order(U, u).T)
        if kind == "gru":                      # bias (2, 3u): input row, recurrent row
            getattr(layer, "bias_ih_l0" + sfx).copy_(order(b[0], u))
            getattr(layer, "bias_hh_l0" + sfx).copy_(order(b[1], u))
        else:                                  # Keras's one bias = bias_ih + bias_hh
            getattr(layer, "bias_ih_l0" + sfx).copy_(b)
            getattr(layer, "bias_hh_l0" + sfx).zero_()


def save_grads(layer, kind, sfx, pre, u):
    order = gru_order if kind == "gru" else identity
    save("g" + pre + "kernel", order(getattr(layer, "weight_ih_l0" + sfx).grad.T, u))
    save("g" + pre + "recurrent_kernel", order(getattr(layer, "weight_hh_l0" + sfx).grad.T, u))
    gi = order(getattr(layer, "bias_ih_l0" + sfx).grad, u)
    if kind == "gru":
        save("g" + pre + "bias", torch.stack([gi, order(getattr(layer, "bias_hh_l0" + sfx).grad, u)]))
    else:
        save("g" + pre + "bias", gi)


def recurrent(kind, bidirectional):
    x = load("x").requires_grad_()
    _, _, d = x.shape
    u = load("recurrent_kernel").shape[0]
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
    layer = cls(d, u, batch_first=True, bidirectional=bidirectional)
    dirs = [("", "")] + ([("_reverse", "b_")] if bidirectional else [])
    for sfx, pre in dirs:
        set_layer(layer, kind, sfx, pre, u)
    h0 = torch.stack([load(pre + "h0") for _, pre in dirs]).requires_grad_()
    if kind == "lstm":
        c0 = torch.stack([load(pre + "c0") for _, pre in dirs]).requires_grad_()
        out, (hn, cn) = layer(x, (h0, c0))
    else:
        out, hn = layer(x, h0)
    loss = (out * load("R")).sum()
    for k, (_, pre) in enumerate(dirs):
        loss = loss + (hn[k] * load(pre + "Rh")).sum()
        if kind == "lstm":
            loss = loss + (cn[k] * load(pre + "Rc")).sum()
    loss.backward()
    save("out", out)
    save("gx", x.grad)
    for k, (sfx, pre) in enumerate(dirs):
        save(pre + "h", hn[k])
        save("g" + pre + "h0", h0.grad[k])
        if kind == "lstm":
            save(pre + "c", cn[k])
            save("g" + pre + "c0", c0.grad[k])
        save_grads(layer, kind, sfx, pre, u)


def optimizer(kind):
    p = torch.nn.Parameter(load("p0"))
    cfg = load("cfg").tolist()                # lr, a, b, eps, nesterov, steps
    lr, a, b, eps, nesterov, steps = cfg
    if kind == "adam":
        opt = torch.optim.Adam([p], lr=lr, betas=(a, b), eps=eps)
    else:
        opt = torch.optim.SGD([p], lr=lr, momentum=a, nesterov=bool(nesterov))
    for s in range(int(steps)):
        p.grad = load(f"g{s + 1}")
        opt.step()
    save("p", p)


def losses():
    logits = load("logits").requires_grad_()
    labels = load("labels").long() - 1         # 1-based in moongrad
    probs = load("probs")
    p = load("p").requires_grad_()
    t = load("t")
    z = load("z").requires_grad_()
    pred = load("pred").requires_grad_()
    target = load("target")
    results = {
        "ce_idx": (F.cross_entropy(logits, labels), logits),
        "ce_prob": (F.cross_entropy(logits, probs), logits),
        "bce": (F.binary_cross_entropy(p, t), p),
        "bce_logits": (F.binary_cross_entropy_with_logits(z, t), z),
        "mse": (F.mse_loss(pred, target), pred),
    }
    for name, (value, wrt) in results.items():
        (g,) = torch.autograd.grad(value, wrt)
        save(name, value)
        save("g" + name, g)


if CASE in ("lstm", "gru", "rnn"):
    recurrent(CASE, False)
elif CASE == "bilstm":
    recurrent("lstm", True)
elif CASE == "bigru":
    recurrent("gru", True)
elif CASE in ("adam", "sgd"):
    optimizer(CASE)
elif CASE == "losses":
    losses()
else:
    sys.exit(f"torch_ref.py: unknown case {CASE}")
