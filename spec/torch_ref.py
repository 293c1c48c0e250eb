"""PyTorch reference for spec/torch_diff_spec.lua and spec/torch_ops_spec.lua.

usage: /usr/bin/python3 torch_ref.py DIR CASE

Reads DIR/<name>.npy written by the spec (weights in Keras layouts), runs CASE in float64
with PyTorch, and writes DIR/out_<name>.npy, with every gradient mapped back to the Keras
layout (gate orders as docs/cells.md: LSTM i,f,c,o is PyTorch's i,f,g,o; GRU z,r,h is
PyTorch's r,z,n with reset_after=True).

CASE "ops" runs every case listed in DIR/ops.tsv (see ops() below) in this one process.
"""
import math
import sys
import traceback

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
DIR, CASE = sys.argv[1], sys.argv[2]


def load(name):
    return torch.tensor(np.load(f"{DIR}/{name}.npy"), dtype=torch.float64)


def save(name, t):
    t = t.detach()
    if t._is_zerotensor():   # torch 1.13's "efficient zeros" (abs's second derivative from
        t = torch.zeros(t.shape, dtype=t.dtype)   # autograd.grad) have no memory to export
    np.save(f"{DIR}/out_{name}.npy", t.numpy().astype(np.float64))


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


# ---------------------------------------------------------------- ops (torch_ops_spec.lua)

def idx1(t):
    """0-based int64 indices as moongrad's 1-based float indices."""
    return t.double() + 1


def lstm_keras(x, h, c, W, U, b):
    """One LSTM step in Keras layout (gates i, f, c, o) by PyTorch's own cell kernel."""
    h2, c2 = torch.lstm_cell(x, (h, c), W.T, U.T, b, torch.zeros_like(b))
    return h2, c2


def gru_keras(x, h, W, U, b, reset_after=True):
    """One GRU step in Keras layout (gates z, r, h): PyTorch's cell for reset_after=True,
    the formula of docs/cells.md (written out here) for reset_after=False."""
    u = h.shape[1]
    if reset_after:
        return torch.gru_cell(x, h, gru_order(W, u).T, gru_order(U, u).T,
                              gru_order(b[0], u), gru_order(b[1], u))
    Wz, Wr, Wh = W[:, :u], W[:, u:2 * u], W[:, 2 * u:]
    Uz, Ur, Uh = U[:, :u], U[:, u:2 * u], U[:, 2 * u:]
    z = torch.sigmoid(x @ Wz + h @ Uz + b[:u])
    r = torch.sigmoid(x @ Wr + h @ Ur + b[u:2 * u])
    hh = torch.tanh(x @ Wh + (r * h) @ Uh + b[2 * u:])
    return z * h + (1 - z) * hh


# Names a row's torch expression may use.
OPS_SCOPE = {"torch": torch, "F": F, "math": math, "idx1": idx1, "lstm_keras": lstm_keras,
             "gru_keras": gru_keras}
ARGNAMES = "abcdefghijklmnop"


def outputs(r):
    return list(r) if isinstance(r, (tuple, list)) else [r]


def single(outs):
    """The one tensor derivatives are taken of: the output, or all outputs flattened and
    joined (the spec's Lua side builds the same)."""
    return outs[0] if len(outs) == 1 else torch.cat([o.reshape(-1) for o in outs])


def batched(outs):
    """As single(), keeping dim 0 (the batch): outputs joined as (B, -1) blocks."""
    if len(outs) == 1:
        return outs[0]
    return torch.cat([o.reshape(o.shape[0], -1) for o in outs], 1)


def as_f64(t):
    return t.detach().to(torch.float64)


def op_case(cid, modes, nargs, diff, bsrc, expr):
    """One case: DIR/c<id>_a<k>.npy are the arguments, _ct the cotangent of single(outputs),
    _t<k> the tangents of the differentiable arguments. Writes out_c<id>_y<k> (forward),
    _g<k> (VJP), _jvp, _J<k> (full Jacobians of single(outputs)), _h<k> (the gradient of <VJP(ct), u>, _u<k> the second cotangents),
    and for each (1-based) argument k in 'bsrc' _bjac<k> (the batch
    Jacobian) and _mix<k> (the largest derivative of batch entry b's outputs w.r.t. another
    entry's inputs: the op mixes the batch when it is not 0)."""
    fn = eval("lambda " + ", ".join(ARGNAMES[:nargs]) + ": " + expr, OPS_SCOPE)
    pre = f"c{cid}"
    args = [load(f"{pre}_a{k + 1}") for k in range(nargs)]
    dk = [k for k in range(nargs) if diff[k] == "1"]
    for k in dk:
        args[k].requires_grad_()
    outs = outputs(fn(*args))
    for k, o in enumerate(outs):
        save(f"{pre}_y{k + 1}", as_f64(o))
    if "v" in modes:
        y = single(outs)
        gs = torch.autograd.grad(y, [args[k] for k in dk], load(f"{pre}_ct"), allow_unused=True)
        for k, g in zip(dk, gs):
            save(f"{pre}_g{k + 1}", torch.zeros_like(args[k]) if g is None else g)
    if "h" in modes:                     # the gradient of <VJP(ct), u>: second order
        xs = [a.detach().requires_grad_() if diff[k] == "1" else a.detach() for k, a in enumerate(args)]
        gs = torch.autograd.grad(single(outputs(fn(*xs))), [xs[k] for k in dk], load(f"{pre}_ct"),
                                 create_graph=True, allow_unused=True)
        terms = [(g * load(f"{pre}_u{k + 1}")).sum() for k, g in zip(dk, gs)
                 if g is not None and g.requires_grad]
        hs = [None] * len(dk)
        if terms:
            hs = torch.autograd.grad(sum(terms), [xs[k] for k in dk], allow_unused=True)
        for k, h in zip(dk, hs):
            save(f"{pre}_h{k + 1}", torch.zeros_like(args[k]) if h is None else h)
    detached = [a.detach() for a in args]

    def with_diff(*xs):
        full = list(detached)
        for k, x in zip(dk, xs):
            full[k] = x
        return full

    if "j" in modes:
        _, t = torch.autograd.functional.jvp(lambda *xs: single(outputs(fn(*with_diff(*xs)))),
                                             tuple(detached[k] for k in dk),
                                             tuple(load(f"{pre}_t{k + 1}") for k in dk))
        save(f"{pre}_jvp", t)
    if "J" in modes:                     # full Jacobians w.r.t. every differentiable argument
        Js = torch.autograd.functional.jacobian(lambda *xs: single(outputs(fn(*with_diff(*xs)))),
                                                tuple(detached[k] for k in dk))
        for k, J in zip(dk, Js):
            save(f"{pre}_J{k + 1}", J)
    for k in bsrc:                       # "b": the batch Jacobian w.r.t. each of them
        def f1(x):
            full = list(detached)
            full[k - 1] = x
            return batched(outputs(fn(*full)))
        x = detached[k - 1]
        J = torch.autograd.functional.jacobian(f1, x)
        B = x.shape[0]
        ys = J.shape[:J.dim() - x.dim()]
        J4 = J.reshape(B, -1, B, max(1, x[0].numel()))
        r = torch.arange(B)
        save(f"{pre}_bjac{k}", J4[r, :, r, :].reshape(tuple(ys) + tuple(x.shape[1:])))
        off = J4.clone()
        off[r, :, r, :] = 0
        save(f"{pre}_mix{k}", off.abs().max() if off.numel() else torch.tensor(0.0))


def ops():
    """Every line of DIR/ops.tsv is: id, modes, number of arguments, a 0/1 flag per argument
    (differentiable), the batch Jacobians' arguments (comma-separated, 0 for none), the torch
    expression; tab-separated. A
    case that raises writes its traceback to out_c<id>.err and the others go on."""
    torch.set_num_threads(1)             # tiny tensors: threads only cost time on a busy machine
    with open(f"{DIR}/ops.tsv") as f:
        lines = [ln.rstrip("\n").split("\t") for ln in f if ln.strip()]
    for cid, modes, nargs, diff, bsrc, expr in lines:
        try:
            op_case(cid, modes, int(nargs), diff, [int(k) for k in bsrc.split(",") if k != "0"], expr)
        except Exception:
            with open(f"{DIR}/out_c{cid}.err", "w") as e:
                e.write(traceback.format_exc())


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
elif CASE == "ops":
    ops()
else:
    sys.exit(f"torch_ref.py: unknown case {CASE}")
