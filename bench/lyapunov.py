"""lyapunov.py - PyTorch side of bench/lyapunov.lua: the top-k Lyapunov spectrum of the GRU
that lyapunov.lua saved in DIR (Keras layout, reset_after: the step written out in torch ops),
over its inputs x (B, T, 8) from its initial tangents Q0 (B, N, k), two ways, each checked
against moongrad's saved exponents (sorted descending, within 1e-4):

    jacobian + qr     the published way: per step the full Jacobian by
                      torch.autograd.functional.jacobian (vectorize=True, of the batch sum,
                      which holds the (B, N, N) diagonal blocks because trajectories do not
                      interact), then torch.linalg.qr(J @ Q)
    vmap(jvp) + qr    the best way: per step vmap over the k tangents of jvp (k JVPs at
                      once, no N x N Jacobian; torch.func in torch 2.x, functorch in 1.13),
                      then a batched QR
Both accumulate log|diag R| in float32, as moongrad does. Timed: the whole T-step run, the
checked run then the median of 3 more, or the checked run alone when it took more than
benchlib.SINGLE_RUN_SECONDS (meta 'runs CASE METHOD': 3 or 1).
Usage: /usr/bin/python3 bench/lyapunov.py DIR [N,k,T ...]   (after bench/lyapunov.lua DIR);
any Python with torch 1.13 or 2.x will do (bench/run's venv for current torch)
"""
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)   # torch 2.x on torch.jit, imported by torch.func
import torch  # noqa: E402

try:                        # torch 2.x: torch.func; Debian's 1.13: the functorch package
    from torch.func import jvp, vmap  # noqa: E402
    FUNC = "torch.func"
except ImportError:
    from functorch import jvp, vmap  # noqa: E402
    FUNC = "functorch"

BENCH = "lyapunov"
USAGE = ("usage: /usr/bin/python3 bench/lyapunov.py DIR [N,k,T ...]  "
         "(default 64,16,1000 64,64,1000 256,16,1000 256,256,1000)")
ATOL = 1e-4


def parse_cases(args):
    return B.int_cases(args, 3, "lyapunov.py: bad case '%s', expected N,k,T with 1 <= k <= N; " + USAGE,
                       [(64, 16, 1000), (64, 64, 1000), (256, 16, 1000), (256, 256, 1000)],
                       ok=lambda case: case[1] <= case[0])


def load(directory, case, name):
    return B.load_saved("lyapunov.py", directory, "%d_%d_%d_%s.npy" % (case + (name,)))


def gru_step(W, U, b, n):
    """Keras GRU, reset_after: h' = z h + (1 - z) tanh(m_x[h] + r m_h[h])."""
    def step(x, h):
        mx, mh = x @ W + b[0], h @ U + b[1]
        z = torch.sigmoid(mx[..., :n] + mh[..., :n])
        r = torch.sigmoid(mx[..., n:2 * n] + mh[..., n:2 * n])
        hh = torch.tanh(mx[..., 2 * n:] + r * mh[..., 2 * n:])
        return z * h + (1 - z) * hh
    return step


def log_diag(R):
    return torch.log(torch.abs(torch.diagonal(R, dim1=-2, dim2=-1)))


def published(step, x, Q0):
    def run():
        B_, T, _ = x.shape
        h = torch.zeros(B_, Q0.shape[1])
        Q, s = Q0, torch.zeros(B_, Q0.shape[2])
        for t in range(T):
            xt = x[:, t]
            J = torch.autograd.functional.jacobian(lambda hh: step(xt, hh).sum(0), h,
                                                   vectorize=True).permute(1, 0, 2)
            with torch.no_grad():
                h = step(xt, h)
                Q, R = torch.linalg.qr(J @ Q)
                s = s + log_diag(R)
        return s / T
    return run


def best(step, x, Q0):
    def run():
        B_, T, _ = x.shape
        h = torch.zeros(B_, Q0.shape[1])
        tan = Q0.permute(2, 0, 1).contiguous()
        s = torch.zeros(B_, Q0.shape[2])
        for t in range(T):
            xt = x[:, t]
            f = lambda hh: step(xt, hh)  # noqa: E731
            D = vmap(lambda v: jvp(f, (h,), (v,))[1])(tan)   # (k, B, N)
            with torch.no_grad():
                h = f(h)
                Q, R = torch.linalg.qr(D.permute(1, 2, 0))
                tan = Q.permute(2, 0, 1)
                s = s + log_diag(R)
        return s / T
    return run


def main():
    if len(sys.argv) < 2:
        sys.exit("lyapunov.py: no directory given; " + USAGE)
    directory = sys.argv[1]
    B.one_thread()
    B.blas_meta(BENCH)
    B.meta(BENCH, "vmap_jvp_from", FUNC)
    failures = []
    for case in parse_cases(sys.argv[2:]):
        name = "%d,%d,%d" % case
        n = case[0]
        step = gru_step(load(directory, case, "kernel"), load(directory, case, "recurrent_kernel"),
                        load(directory, case, "bias"), n)
        x, Q0, want = load(directory, case, "x"), load(directory, case, "Q0"), load(directory, case, "exponents")
        for impl, make in (("jacobian + qr", published), ("vmap(jvp) + qr", best)):
            run = make(step, x, Q0)
            exps, first = B.timed(run)            # the checked run, also the first timing
            got = torch.sort(exps, dim=1, descending=True).values
            err = (got - want).abs().max().item()
            if not err <= ATOL:
                failures.append("%s %s: exponents differ from moongrad's by %g" % (name, impl, err))
                continue
            m = B.measure(run, reps=3, inner=1, first=first, single=B.SINGLE_RUN_SECONDS)
            B.result(BENCH, name, impl, m)
            B.meta(BENCH, "runs %s %s" % (name, impl), m["runs"])
            B.log("pytorch   (%s) %-15s %10.1f ms CPU, %10.1f ms wall (n=%d; max |diff| %.2g)", name, impl,
                  m["cpu"] * 1e3, m["wall"] * 1e3, m["runs"], err)
    if failures:
        sys.exit("lyapunov.py: " + "; ".join(failures))


main()
