"""lstm.py - PyTorch side of bench/lstm.lua: one training step of an LSTM (or GRU) regressor.
x (B, 100, 8) -> LSTM(8, units) over all steps -> Linear(units, 1) on every step -> MSE
against y (B, 100, 1) -> backward -> Adam step, float32, with the data and initial weights
that lstm.lua saved in DIR (Keras layout converted: weight_ih = kernel.T, weight_hh =
recurrent_kernel.T; LSTM: bias_ih = bias, bias_hh = 0, the gate order i, f, g, o is the
same; GRU (reset_after): bias_ih, bias_hh = the bias rows, Keras's gate order z, r, h
reordered to torch's r, z, n). Cases as lstm.lua's: units (LSTM, batch 16) or
kind:units:batch (lstm:512:64, gru:256:16).
    nn.LSTM fused                  torch.nn.LSTM / nn.GRU (batch_first=True)
    LSTMCell loop + retain_grad    torch.nn.LSTMCell / nn.GRUCell stepped in Python,
                                   retain_grad() on every h_t (the way to get dL/dh_t)
Before timing, both are checked against the float64 reference of the step that lstm.lua
saved: loss, parameter gradients and dL/dh_t, each within benchlib.REF_TOL (1e-5) of the
scale of its terms (benchlib.ref_err; bench/README.md, "How results are checked"). At case
256, the peak RSS of 200 steps of the fused model alone, in a fresh process (this script
again with MG_BENCH_RSS=1), as lstm.lua measures moongrad's.
Usage: /usr/bin/python3 bench/lstm.py DIR [case ...]   (after bench/lstm.lua DIR)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

BENCH = "lstm"
USAGE = B.lstm_usage("/usr/bin/python3 bench/lstm.py")
RSS_STEPS, RSS_CASE = B.LSTM_RSS_STEPS, B.LSTM_RSS_CASE


def load(directory, key, name):
    path = os.path.join(directory, "%s_%s.npy" % (key, name))
    if not os.path.exists(path):
        sys.exit("lstm.py: %s is missing; run bench/lstm.lua %s first" % (path, directory))
    return torch.from_numpy(np.load(path))


class Fused(torch.nn.Module):
    def __init__(self, kind, units):
        super().__init__()
        self.kind = kind
        self.rnn = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(8, units, batch_first=True)
        self.head = torch.nn.Linear(units, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out), None


class CellLoop(torch.nn.Module):
    def __init__(self, kind, units):
        super().__init__()
        self.kind = kind
        self.cell = (torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell)(8, units)
        self.head = torch.nn.Linear(units, 1)
        self.units = units

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.units)
        c = x.new_zeros(x.shape[0], self.units)
        hs = []
        for t in range(x.shape[1]):
            if self.kind == "lstm":
                h, c = self.cell(x[:, t], (h, c))
            else:
                h = self.cell(x[:, t], h)
            h.retain_grad()
            hs.append(h)
        return self.head(torch.stack(hs, 1)), hs


def gru_order(t, units, dim):
    """Keras's GRU gate blocks z, r, h along 'dim' as torch's r, z, n (its own inverse)."""
    z, r, n = t.split(units, dim)
    return torch.cat([r, z, n], dim)


def set_weights(model, directory, key, units):
    """Copies moongrad's initial weights; returns (torch parameter, moongrad name, to_keras)
    triples for the gradient check, to_keras mapping the torch gradient to moongrad's layout."""
    rnn = model.rnn if isinstance(model, Fused) else model.cell
    sfx = "_l0" if isinstance(model, Fused) else ""
    w_ih, w_hh = getattr(rnn, "weight_ih" + sfx), getattr(rnn, "weight_hh" + sfx)
    b_ih, b_hh = getattr(rnn, "bias_ih" + sfx), getattr(rnn, "bias_hh" + sfx)
    kind = model.kind
    if kind == "lstm":
        def order(t, dim):
            return t
    else:
        def order(t, dim):
            return gru_order(t, units, dim)
    pairs = [(w_ih, kind + "_kernel", lambda g: order(g, 0).t()),
             (w_hh, kind + "_recurrent_kernel", lambda g: order(g, 0).t()),
             (model.head.weight, "dense_kernel", lambda g: g.t()),
             (model.head.bias, "dense_bias", lambda g: g)]
    with torch.no_grad():
        for p, name, _ in pairs:
            p.copy_(load(directory, key, name).t())
        for p in (w_ih, w_hh):
            p.copy_(order(p, 0))
        b = load(directory, key, kind + "_bias")
        if kind == "lstm":
            b_ih.copy_(b)
            b_hh.zero_()
        else:
            b_ih.copy_(order(b[0], 0))
            b_hh.copy_(order(b[1], 0))
    if kind == "lstm":
        pairs.append((b_ih, "lstm_bias", lambda g: g))
    else:
        pairs.append(((b_ih, b_hh), "gru_bias", None))
    return pairs


def check(model, pairs, directory, key, x, y):
    """Loss, parameter gradients and (for the cell loop) dL/dh_t against the float64
    reference lstm.lua saved (benchlib.ref_err)."""
    def ref(name):
        return B.reference("lstm.py", directory, key + "_", name)
    model.zero_grad(set_to_none=True)
    pred, hs = model(x)
    loss = torch.nn.functional.mse_loss(pred, y)
    loss.backward()
    errs = {"loss": B.ref_err(loss, ref("loss"))}
    for p, name, to_keras in pairs:
        if to_keras is None:       # the GRU's two bias rows
            units = p[0].shape[0] // 3
            mine = torch.stack([gru_order(q.grad, units, 0) for q in p])
        else:
            mine = to_keras(p.grad)
        errs["grad " + name] = B.ref_err(mine, ref("grad_" + name))
    if hs is not None:
        errs["dL/dh_t"] = B.ref_err(torch.stack([h.grad for h in hs], 1), ref("dL_dh"))
    model.zero_grad(set_to_none=True)
    return errs


def train_step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    pred, _ = model(x)
    loss = torch.nn.functional.mse_loss(pred, y)
    loss.backward()
    opt.step()
    return loss


def rss_run(directory, case):
    """The peak RSS run (benchlib.peak_rss_in_child): RSS_STEPS steps of the fused model, from
    moongrad's initial weights, and nothing else."""
    kind, units, _, _, key = case
    x, y = load(directory, key, "x"), load(directory, key, "y")
    model = Fused(kind, units)
    set_weights(model, directory, key, units)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(RSS_STEPS):
        train_step(model, opt, x, y)
    B.report_peak_rss()


def main():
    directory = B.data_dir("lstm.py", USAGE)
    cases = B.lstm_cases("lstm.py", USAGE)
    B.one_thread()
    if B.rss_child():
        return rss_run(directory, cases[0])
    B.blas_meta(BENCH)
    failed = []
    for kind, units, _, label, key in cases:
        x, y = load(directory, key, "x"), load(directory, key, "y")
        for name, cls in (("nn.LSTM fused", Fused), ("LSTMCell loop + retain_grad", CellLoop)):
            model = cls(kind, units)
            pairs = set_weights(model, directory, key, units)
            B.check_errors(BENCH, label, check(model, pairs, directory, key, x, y), failed, name)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            m = B.measure(lambda: train_step(model, opt, x, y), reps=7, min_time=0.2)
            B.result(BENCH, label, name, m)
            B.log("pytorch   %-12s %-28s %9.3f ms CPU, %9.3f ms wall",
                  label, name, m["cpu"] * 1e3, m["wall"] * 1e3)
            if name == "nn.LSTM fused" and label == RSS_CASE:
                # the peak RSS of RSS_STEPS steps alone, in a fresh process (as lstm.lua)
                rss = B.peak_rss_in_child([directory, label])
                if rss is not None:
                    B.meta(BENCH, "peak_rss_mib_torch %s" % label, "%.1f" % rss)
                    B.log("pytorch   %-12s peak RSS of %d steps alone: %.1f MiB",
                          label, RSS_STEPS, rss)
    if failed:
        sys.exit("lstm.py: results differ from the float64 reference:\n  " + "\n  ".join(failed))


if __name__ == "__main__":
    main()
