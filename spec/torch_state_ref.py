"""torch_state_ref.py: the PyTorch side of spec/torch_interop_spec.lua (run by /usr/bin/python3,
which has torch; the test venv, which has safetensors, turns the .npy files into safetensors).

  torch_state_ref.py make DIR   for each case and dtype, a directory DIR/<case>_<dtype> with
                                the model's state_dict as state/<name>.npy, an input x.npy
                                (the models over token ids: ids.npy, moongrad's 1-based ids),
                                a cotangent cot.npy, the output out.npy, the input gradient
                                gx.npy of sum(out * cot) and its parameter gradients as
                                grad/<name>.npy
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
    "lstm_3layer": lambda: torch.nn.LSTM(3, 4, num_layers=3, batch_first=True),
}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class SeqLSTM(torch.nn.LSTM):
    """An LSTM that gives only its outputs, to sit in a torch.nn.Sequential."""

    def forward(self, x):
        return super().forward(x)[0]


class Tagger(torch.nn.Module):
    """A custom module: Embedding, LSTM, LayerNorm, Linear (submodules emb, lstm, norm, fc)."""

    def __init__(self, padding_idx):
        super().__init__()
        self.emb = torch.nn.Embedding(11 if padding_idx is not None else 10, 6, padding_idx=padding_idx)
        self.lstm = torch.nn.LSTM(6, 5, batch_first=True)
        self.norm = torch.nn.LayerNorm(5, eps=1e-5)
        self.fc = torch.nn.Linear(5, 3)

    def forward(self, ids):
        return self.fc(self.norm(self.lstm(self.emb(ids))[0]))


# Models over token ids: the ctor, and the offset from torch's ids to moongrad's (moongrad's
# ids are 1-based; with mask_zero / padding_idx=0, id 0 is padding in both and ids agree).
ID_CASES = {
    "tagger_pad": (lambda: Tagger(0), 0),
    "tagger": (lambda: Tagger(None), 1),
    "emb_pad_linear": (lambda: torch.nn.Sequential(torch.nn.Embedding(8, 4, padding_idx=0), torch.nn.Linear(4, 2)), 0),
    "seq_emb_bilstm2_ln_linear": (lambda: torch.nn.Sequential(
        torch.nn.Embedding(9, 4), SeqLSTM(4, 3, num_layers=2, bidirectional=True, batch_first=True),
        torch.nn.LayerNorm(6), torch.nn.Linear(6, 2)), 1),
}
# Models over float inputs (x, with its gradient), beside CASES.
X_CASES = {
    "seq_lstm_ln_linear": lambda: torch.nn.Sequential(SeqLSTM(3, 4, batch_first=True),
                                                      torch.nn.LayerNorm(4, eps=1e-5), torch.nn.Linear(4, 2)),
}


def ids_for(case, model):
    """Token ids (2, 5) for the model's first layer (an Embedding): 1.. in tagger_pad, whose
    LSTM must not see padding (torch does not mask), else from 0; and the offset."""
    n = next(iter(model.parameters())).shape[0]
    g = torch.Generator().manual_seed(5)
    return torch.randint(1 if case == "tagger_pad" else 0, n, (2, 5), generator=g), ID_CASES[case][1]


def run(model, x):
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


def save_case(d, model, tensors):
    os.makedirs(os.path.join(d, "state"), exist_ok=True)
    os.makedirs(os.path.join(d, "grad"), exist_ok=True)
    for k, v in model.state_dict().items():
        np.save(os.path.join(d, "state", k + ".npy"), v.numpy())
    for k, v in model.named_parameters():
        if v.grad is not None:
            np.save(os.path.join(d, "grad", k + ".npy"), v.grad.numpy())
    for k, v in tensors.items():
        np.save(os.path.join(d, k + ".npy"), v.detach().numpy())


def make_more(root):
    for case in list(ID_CASES) + list(X_CASES):
        for dname, dt in DTYPES.items():
            torch.manual_seed(4321)
            if case in ID_CASES:
                model = ID_CASES[case][0]().to(dt)
                with torch.no_grad():                  # every weight away from its initial value
                    for p in model.parameters():
                        p.add_(torch.randn_like(p) * 0.3)
                    if case in ("tagger_pad", "emb_pad_linear"):
                        list(model.parameters())[0][0].zero_()   # the padding row stays zero
                ids, offset = ids_for(case, model)
                if case == "emb_pad_linear":
                    ids[0, 1] = ids[1, 3] = 0         # padding ids: a zero vector in both
                out = run(model, ids)
                inputs = {"ids": (ids + offset).to(torch.float64)}
            else:
                model = X_CASES[case]().to(dt)
                x = torch.randn(2, 5, 3, dtype=dt, requires_grad=True)
                out = run(model, x)
                inputs = {"x": x}
            cot = torch.randn_like(out)
            (out * cot).sum().backward()
            inputs.update({"cot": cot, "out": out})
            if "x" in inputs:
                inputs["gx"] = inputs["x"].grad
            save_case(os.path.join(root, case + "_" + dname), model, inputs)


def make(root):
    make_more(root)
    for case, ctor in CASES.items():
        for dname, dt in DTYPES.items():
            torch.manual_seed(1234)
            model = ctor().to(dt)
            x = torch.randn(2, 5, 3, dtype=dt, requires_grad=True)
            out = run(model, x)
            cot = torch.randn_like(out)
            (out * cot).sum().backward()
            save_case(os.path.join(root, case + "_" + dname), model, {"x": x, "cot": cot, "out": out, "gx": x.grad})


def check(root):
    ctors = dict(CASES)
    ctors.update(X_CASES)
    ctors.update({k: v[0] for k, v in ID_CASES.items()})
    for case, ctor in ctors.items():
        for dname, dt in DTYPES.items():
            d = os.path.join(root, case + "_" + dname)
            torch.manual_seed(99)                  # other weights until the state is loaded
            model = ctor().to(dt)
            with np.load(os.path.join(d, "ours.npz")) as z:
                sd = {k: torch.from_numpy(z[k]) for k in z.files}
            model.load_state_dict(sd, strict=True)
            if case in ID_CASES:
                x = torch.from_numpy(np.load(os.path.join(d, "ids.npy"))).long() - ID_CASES[case][1]
            else:
                x = torch.from_numpy(np.load(os.path.join(d, "x.npy")))
            want = np.load(os.path.join(d, "out.npy"))
            with torch.no_grad():
                got = run(model, x).numpy()
            rel = np.max(np.abs(got - want) / np.maximum(1, np.abs(want)))
            print(case, dname, repr(float(rel)))


if __name__ == "__main__":
    {"make": make, "check": check}[sys.argv[1]](sys.argv[2])
