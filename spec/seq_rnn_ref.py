"""seq_rnn_ref.py - PyTorch side of spec/seq_rnn_spec.lua: one torch.nn.LSTM / torch.nn.GRU
layer (float64, batch_first) with the weights moongrad wrote in DIR (Keras layout: weight_ih =
kernel.T, weight_hh = recurrent_kernel.T; LSTM bias_ih = bias, bias_hh = 0; GRU reset_after
bias rows: input, recurrent), run from the given initial states; writes the outputs, final
states and the gradients of sum(out * R) + sum(h_T * Rh) w.r.t. x, h0 (c0), and the weights.
Usage: /usr/bin/python3 spec/seq_rnn_ref.py DIR lstm|gru
"""
import os
import sys

import numpy as np
import torch


def main():
    d, kind = sys.argv[1], sys.argv[2]

    def get(name):
        return torch.from_numpy(np.load(os.path.join(d, name + ".npy"))).double()

    def put(name, t):
        np.save(os.path.join(d, "out_" + name + ".npy"), t.detach().numpy())

    x, R, Rh, h0 = get("x"), get("R"), get("Rh"), get("h0")
    W, U, b = get("kernel"), get("recurrent_kernel"), get("bias")
    u = h0.shape[1]
    cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    m = cls(x.shape[2], u, batch_first=True).double()
    with torch.no_grad():
        m.weight_ih_l0.copy_(W.t())
        m.weight_hh_l0.copy_(U.t())
        if kind == "lstm":
            m.bias_ih_l0.copy_(b)
            m.bias_hh_l0.zero_()
        else:
            m.bias_ih_l0.copy_(b[0])
            m.bias_hh_l0.copy_(b[1])
    # Keras gate order z, r, h against torch's r, z, n: permute the GRU's blocks
    if kind == "gru":
        with torch.no_grad():
            for p in (m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0):
                z, r, n = p.data.split(u, 0)
                p.data.copy_(torch.cat([r, z, n], 0))
    x.requires_grad_(True)
    h0.requires_grad_(True)
    if kind == "lstm":
        c0 = get("c0").requires_grad_(True)
        out, (h, c) = m(x, (h0[None], c0[None]))
    else:
        out, h = m(x, h0[None])
    loss = (out * R).sum() + (h[0] * Rh).sum()
    loss.backward()
    put("out", out)
    put("h", h[0])
    put("gx", x.grad)
    put("gh0", h0.grad)
    if kind == "lstm":
        put("c", c[0])
        put("gc0", c0.grad)
    gW, gU = m.weight_ih_l0.grad.t(), m.weight_hh_l0.grad.t()
    gbi, gbh = m.bias_ih_l0.grad, m.bias_hh_l0.grad
    if kind == "gru":
        def back(t, dim):
            r, z, n = t.split(u, dim)
            return torch.cat([z, r, n], dim)
        gW, gU, gbi, gbh = back(gW, 1), back(gU, 1), back(gbi, 0), back(gbh, 0)
        put("gbias", torch.stack([gbi, gbh]))
    else:
        put("gbias", gbi)
    put("gkernel", gW)
    put("grecurrent_kernel", gU)


if __name__ == "__main__":
    main()
