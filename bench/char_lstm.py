"""char_lstm.py - PyTorch side of bench/char_lstm.lua: one training step of the char-rnn
model of scripts/char_lstm.lua. ids (32, 50) -> nn.Embedding(76, 64) -> nn.LSTM(64, units,
num_layers=2, dropout=0.2, batch_first=True) -> dropout 0.2 -> Linear(units, 76) on every step
-> cross_entropy -> backward -> clip_grad_norm_(5) -> RMSprop(lr=2e-3, alpha=0.9), float32,
with the data and initial weights char_lstm.lua saved in DIR (Keras layout converted as in
lstm.py, both layers; the embedding table is the same (76, 64) matrix on both sides). Before
timing, the loss and every gradient of one step without dropout are checked against the
float64 reference char_lstm.lua saved (within benchlib.REF_TOL, 1e-5, of the scale of their
terms: benchlib.ref_err). Runs under torch 1.13 and 2.x (only APIs both have).
Usage: python3 bench/char_lstm.py DIR [units ...]   (after bench/char_lstm.lua DIR)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

BENCH = "char_lstm"
USAGE = "usage: /usr/bin/python3 bench/char_lstm.py DIR [units ...]  (default units 128 512)"
V, EMBED, DROPOUT = 76, 64, 0.2


def load(directory, units, name):
    return B.load_saved("char_lstm.py", directory, "%d_%s.npy" % (units, name))


class CharLSTM(torch.nn.Module):
    def __init__(self, units):
        super().__init__()
        self.embedding = torch.nn.Embedding(V, EMBED)
        self.rnn = torch.nn.LSTM(EMBED, units, num_layers=2, dropout=DROPOUT, batch_first=True)
        self.head = torch.nn.Linear(units, V)

    def forward(self, ids):
        out, _ = self.rnn(self.embedding(ids))
        return self.head(F.dropout(out, DROPOUT, self.training))


def set_weights(model, directory, units):
    """Copies moongrad's initial weights; returns (parameter, moongrad name, transposed)."""
    pairs = [(model.embedding.weight, "embedding_embeddings", False)]
    for k, layer in ((0, "lstm_1"), (1, "lstm_2")):
        pairs += [(getattr(model.rnn, "weight_ih_l%d" % k), layer + "_kernel", True),
                  (getattr(model.rnn, "weight_hh_l%d" % k), layer + "_recurrent_kernel", True),
                  (getattr(model.rnn, "bias_ih_l%d" % k), layer + "_bias", False)]
    pairs += [(model.head.weight, "head_kernel", True), (model.head.bias, "head_bias", False)]
    with torch.no_grad():
        for p, name, transposed in pairs:
            v = load(directory, units, name)
            p.copy_(v.t() if transposed else v)
        model.rnn.bias_hh_l0.zero_()
        model.rnn.bias_hh_l1.zero_()
    return pairs


def train_step(model, opt, ids, y):
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(ids).reshape(-1, V), y.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    return loss


def main():
    directory = B.data_dir("char_lstm.py", USAGE)
    sizes = [u for (u,) in B.int_cases(sys.argv[2:], 1, "char_lstm.py: bad units '%s', expected a "
                                       "positive integer; " + USAGE, [(128,), (512,)])]
    B.one_thread()
    B.blas_meta(BENCH)
    failed = []
    for units in sizes:
        ids, y = load(directory, units, "ids").long(), load(directory, units, "y").long()
        model = CharLSTM(units)
        pairs = set_weights(model, directory, units)
        model.eval()                                   # the check: no dropout
        loss = F.cross_entropy(model(ids).reshape(-1, V), y.reshape(-1))
        loss.backward()
        def ref(name):
            return B.reference("char_lstm.py", directory, "%d_" % units, name)
        errs = {"loss": B.ref_err(loss, ref("loss"))}
        for p, name, transposed in pairs:
            errs["grad " + name] = B.ref_err(p.grad.t() if transposed else p.grad, ref("grad_" + name))
        B.check_errors(BENCH, str(units), errs, failed)
        model.train()
        opt = torch.optim.RMSprop(model.parameters(), lr=2e-3, alpha=0.9, eps=1e-7)
        m = B.measure(lambda: train_step(model, opt, ids, y), reps=5, min_time=0.2)
        B.result(BENCH, str(units), "nn.LSTM (2 layers, dropout)", m)
        B.log("pytorch   units %-4d %9.3f ms CPU, %9.3f ms wall", units, m["cpu"] * 1e3, m["wall"] * 1e3)
    if failed:
        B.exit_if_failed("char_lstm.py", failed, "the float64 reference")


if __name__ == "__main__":
    main()
