"""torch_state_ref.py: the PyTorch side of spec/torch_interop_spec.lua (run by /usr/bin/python3,
which has torch; the test venv, which has safetensors, turns the .npy files into safetensors).

  torch_state_ref.py make DIR   for each case and dtype, a directory DIR/<case>_<dtype> with
                                the model's state_dict as <name>.npy, an input x.npy, a
                                cotangent cot.npy, the output out.npy and the input gradient
                                gx.npy of sum(out * cot)
  torch_state_ref.py check DIR  loads each DIR/<case>_<dtype>/ours.npz (written by moongrad's
                                nn.to_torch) into a freshly seeded model of the case with
                                load_state_dict(strict=True) and prints its largest relative
                                output difference from out.npy
"""
import os
import sys

import numpy as np
import torch

CASES = {
    "lstm_2layer_bi": lambda: torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True),
    "gru": lambda: torch.nn.GRU(3, 4, batch_first=True),
    "gru_2layer_bi": lambda: torch.nn.GRU(3, 4, num_layers=2, bidirectional=True, batch_first=True),
    "rnn_tanh": lambda: torch.nn.RNN(3, 4, batch_first=True),
    "rnn_relu_2layer": lambda: torch.nn.RNN(3, 4, num_layers=2, nonlinearity="relu", batch_first=True),
    "linear": lambda: torch.nn.Linear(3, 2),
}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def run(model, x):
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


def make(root):
    for case, ctor in CASES.items():
        for dname, dt in DTYPES.items():
            torch.manual_seed(1234)
            model = ctor().to(dt)
            x = torch.randn(2, 5, 3, dtype=dt, requires_grad=True)
            out = run(model, x)
            cot = torch.randn_like(out)
            (out * cot).sum().backward()
            d = os.path.join(root, case + "_" + dname)
            os.makedirs(os.path.join(d, "state"), exist_ok=True)
            for k, v in model.state_dict().items():
                np.save(os.path.join(d, "state", k + ".npy"), v.numpy())
            for k, v in {"x": x, "cot": cot, "out": out, "gx": x.grad}.items():
                np.save(os.path.join(d, k + ".npy"), v.detach().numpy())


def check(root):
    for case, ctor in CASES.items():
        for dname, dt in DTYPES.items():
            d = os.path.join(root, case + "_" + dname)
            torch.manual_seed(99)                  # other weights until the state is loaded
            model = ctor().to(dt)
            with np.load(os.path.join(d, "ours.npz")) as z:
                sd = {k: torch.from_numpy(z[k]) for k in z.files}
            model.load_state_dict(sd, strict=True)
            x = torch.from_numpy(np.load(os.path.join(d, "x.npy")))
            want = np.load(os.path.join(d, "out.npy"))
            with torch.no_grad():
                got = run(model, x).numpy()
            rel = np.max(np.abs(got - want) / np.maximum(1, np.abs(want)))
            print(case, dname, repr(float(rel)))


if __name__ == "__main__":
    {"make": make, "check": check}[sys.argv[1]](sys.argv[2])
