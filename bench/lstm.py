"""lstm.py - PyTorch side of bench/lstm.lua: one training step of an LSTM regressor.
x (16, 100, 8) -> LSTM(8, units) over all steps -> Linear(units, 1) on every step -> MSE
against y (16, 100, 1) -> backward -> Adam step, float32, with the data and initial weights
that lstm.lua saved in DIR (Keras layout converted: weight_ih = kernel.T, weight_hh =
recurrent_kernel.T, bias_ih = bias, bias_hh = 0; the gate order i, f, g, o is the same).
    nn.LSTM fused                  torch.nn.LSTM(batch_first=True)
    LSTMCell loop + retain_grad    torch.nn.LSTMCell stepped in Python, retain_grad() on
                                   every h_t (the way to get dL/dh_t in PyTorch)
Before timing, both are checked against moongrad's loss, parameter gradients and dL/dh_t
(within 1e-4 relative to each array's largest magnitude: float32 through 100 steps).
Usage: /usr/bin/python3 bench/lstm.py DIR [units ...]   (after bench/lstm.lua DIR)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

BENCH = "lstm"
USAGE = "usage: /usr/bin/python3 bench/lstm.py DIR [units ...]  (default units 6 32 256)"
RTOL = 1e-4
RSS_STEPS = 200


def load(directory, units, name):
    path = os.path.join(directory, "%d_%s.npy" % (units, name))
    if not os.path.exists(path):
        sys.exit("lstm.py: %s is missing; run bench/lstm.lua %s first" % (path, directory))
    return torch.from_numpy(np.load(path))


class Fused(torch.nn.Module):
    def __init__(self, units):
        super().__init__()
        self.rnn = torch.nn.LSTM(8, units, batch_first=True)
        self.head = torch.nn.Linear(units, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out), None


class CellLoop(torch.nn.Module):
    def __init__(self, units):
        super().__init__()
        self.cell = torch.nn.LSTMCell(8, units)
        self.head = torch.nn.Linear(units, 1)
        self.units = units

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.units)
        c = x.new_zeros(x.shape[0], self.units)
        hs = []
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
            h.retain_grad()
            hs.append(h)
        return self.head(torch.stack(hs, 1)), hs


def set_weights(model, directory, units):
    """Copies moongrad's initial weights; returns (torch parameter, moongrad name, transposed)
    triples for the gradient check."""
    rnn = model.rnn if isinstance(model, Fused) else model.cell
    sfx = "_l0" if isinstance(model, Fused) else ""
    w_ih, w_hh = getattr(rnn, "weight_ih" + sfx), getattr(rnn, "weight_hh" + sfx)
    b_ih, b_hh = getattr(rnn, "bias_ih" + sfx), getattr(rnn, "bias_hh" + sfx)
    pairs = [(w_ih, "lstm_kernel", True), (w_hh, "lstm_recurrent_kernel", True),
             (b_ih, "lstm_bias", False), (model.head.weight, "dense_kernel", True),
             (model.head.bias, "dense_bias", False)]
    with torch.no_grad():
        for p, name, transposed in pairs:
            v = load(directory, units, name)
            p.copy_(v.t() if transposed else v)
        b_hh.zero_()
    return pairs


def relerr(a, ref):
    return (a - ref).abs().max().item() / max(ref.abs().max().item(), 1e-30)


def check(model, pairs, directory, units, x, y):
    """Loss, parameter gradients and (for the cell loop) dL/dh_t against moongrad's."""
    model.zero_grad(set_to_none=True)
    pred, hs = model(x)
    loss = torch.nn.functional.mse_loss(pred, y)
    loss.backward()
    errs = {"loss": relerr(loss.detach(), load(directory, units, "loss"))}
    for p, name, transposed in pairs:
        g = load(directory, units, "grad_" + name)
        errs["grad " + name] = relerr(p.grad.t() if transposed else p.grad, g)
    if hs is not None:
        errs["dL/dh_t"] = relerr(torch.stack([h.grad for h in hs], 1),
                                 load(directory, units, "dL_dh"))
    model.zero_grad(set_to_none=True)
    return errs


def train_step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    pred, _ = model(x)
    loss = torch.nn.functional.mse_loss(pred, y)
    loss.backward()
    opt.step()
    return loss


def main():
    if len(sys.argv) < 2:
        sys.exit("lstm.py: no data directory given; " + USAGE)
    directory = sys.argv[1]
    if not os.path.isdir(directory):
        sys.exit("lstm.py: directory '%s' does not exist" % directory)
    sizes = []
    for a in sys.argv[2:]:
        if not a.isdigit() or int(a) < 1:
            sys.exit("lstm.py: bad units '%s', expected a positive integer; %s" % (a, USAGE))
        sizes.append(int(a))
    B.one_thread()
    B.blas_meta(BENCH)
    failed = []
    for units in sizes or [6, 32, 256]:
        x, y = load(directory, units, "x"), load(directory, units, "y")
        for name, cls in (("nn.LSTM fused", Fused), ("LSTMCell loop + retain_grad", CellLoop)):
            model = cls(units)
            pairs = set_weights(model, directory, units)
            for what, err in check(model, pairs, directory, units, x, y).items():
                B.meta(BENCH, "relerr %d %s %s" % (units, name, what), "%.3g" % err)
                if not err <= RTOL:
                    failed.append("units %d, %s: %s differs from moongrad's by %g relative"
                                  % (units, name, what, err))
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            m = B.measure(lambda: train_step(model, opt, x, y), reps=7, min_time=0.2)
            B.result(BENCH, str(units), name, m)
            B.log("pytorch   units %-4d %-28s %9.3f ms CPU, %9.3f ms wall",
                  units, name, m["cpu"] * 1e3, m["wall"] * 1e3)
            if name == "nn.LSTM fused":
                # the peak RSS once RSS_STEPS steps in all have run (as lstm.lua)
                for _ in range(max(0, RSS_STEPS - m["calls"])):
                    train_step(model, opt, x, y)
                rss = B.peak_rss_mib()
                if rss is not None:
                    B.meta(BENCH, "peak_rss_mib_torch %d" % units, "%.1f" % rss)
                    B.log("pytorch   units %-4d peak RSS after %d steps: %.1f MiB",
                          units, max(RSS_STEPS, m["calls"]), rss)
    if failed:
        sys.exit("lstm.py: results differ from moongrad's:\n  " + "\n  ".join(failed))


if __name__ == "__main__":
    main()
