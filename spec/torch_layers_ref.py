"""PyTorch reference for spec/rnn_layers_spec.lua: stacked LSTMs and packed (padded) sequences.

usage: /usr/bin/python3 torch_layers_ref.py DIR CASE

Reads DIR/<name>.npy (weights in Keras layouts, float64), runs CASE with PyTorch in float64
and writes DIR/out_<name>.npy, gradients mapped back to Keras layouts (gate orders as in
torch_ref.py: LSTM i,f,c,o = PyTorch i,f,g,o; GRU z,r,h = PyTorch r,z,n).
  stacked  2-layer nn.LSTM on x with initial states h0_l, c0_l: outputs, h_n, c_n, and the
           gradients of sum(out * R) w.r.t. x and every layer's kernel, recurrent kernel, bias
  packed_lstm / packed_gru  one layer over pack_padded_sequence(x, lengths): padded outputs
           (zeros past each length), final states at each row's length, the gradient w.r.t. x
"""
import sys

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

torch.set_default_dtype(torch.float64)
DIR, CASE = sys.argv[1], sys.argv[2]


def load(name):
    return torch.tensor(np.load(f"{DIR}/{name}.npy"), dtype=torch.float64)


def save(name, t):
    np.save(f"{DIR}/out_{name}.npy", t.detach().numpy().astype(np.float64))


def gru_order(m, u):
    return torch.cat([m[..., u:2 * u], m[..., :u], m[..., 2 * u:]], -1)


def set_layer(layer, kind, l, pre, u):
    order = gru_order if kind == "gru" else (lambda m, _: m)
    W, U, b = load(pre + "kernel"), load(pre + "recurrent_kernel"), load(pre + "bias")
    with torch.no_grad():
        getattr(layer, f"weight_ih_l{l}").copy_(order(W, u).T)
        getattr(layer, f"weight_hh_l{l}").copy_(order(U, u).T)
        if kind == "gru":
            getattr(layer, f"bias_ih_l{l}").copy_(order(b[0], u))
            getattr(layer, f"bias_hh_l{l}").copy_(order(b[1], u))
        else:
            getattr(layer, f"bias_ih_l{l}").copy_(b)
            getattr(layer, f"bias_hh_l{l}").zero_()


def stacked():
    x = load("x").requires_grad_()
    u = int(load("units").item())
    layer = torch.nn.LSTM(x.shape[2], u, num_layers=2, batch_first=True)
    for l in range(2):
        set_layer(layer, "lstm", l, f"l{l + 1}_", u)
    h0 = torch.stack([load("h0_1"), load("h0_2")])
    c0 = torch.stack([load("c0_1"), load("c0_2")])
    out, (hn, cn) = layer(x, (h0, c0))
    (out * load("R")).sum().backward()
    save("out", out)
    save("h1", hn[0]); save("c1", cn[0]); save("h2", hn[1]); save("c2", cn[1])
    save("gx", x.grad)
    for l in range(2):
        save(f"gl{l + 1}_kernel", getattr(layer, f"weight_ih_l{l}").grad.T)
        save(f"gl{l + 1}_recurrent_kernel", getattr(layer, f"weight_hh_l{l}").grad.T)
        save(f"gl{l + 1}_bias", getattr(layer, f"bias_ih_l{l}").grad)


def packed(kind):
    x = load("x").requires_grad_()
    u = int(load("units").item())
    lengths = load("lengths").long()
    cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    layer = cls(x.shape[2], u, batch_first=True)
    set_layer(layer, kind, 0, "", u)
    packed_x = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, hn = layer(packed_x)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    (out * load("R")).sum().backward()
    save("out", out)
    if kind == "lstm":
        save("h", hn[0][0]); save("c", hn[1][0])
    else:
        save("h", hn[0])
    save("gx", x.grad)


{"stacked": stacked, "packed_lstm": lambda: packed("lstm"), "packed_gru": lambda: packed("gru")}[CASE]()
