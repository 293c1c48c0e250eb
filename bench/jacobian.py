"""jacobian.py - PyTorch side of bench/jacobian.lua: the batch Jacobian of
h' = relu(h) @ W + b, J[k, i, j] = dh'[k, i] / dh[k, j], for the W, b, h that jacobian.lua
saved in DIR, each way PyTorch offers, each checked against moongrad's saved J (within 1e-5
relative to max |J|). Runs under Debian's torch 1.13 and under the bench venv's current torch
(bench/run runs both); the function transforms come from torch.func where it exists (2.x),
else from functorch (1.13's spelling).

    vmap(jacrev)          vmap(jacrev(f_row))(h), f_row on one (N,) row
    vmap(jacfwd)          vmap(jacfwd(f_row))(h): forward mode, N tangents per row
    jacobian(vec) full    torch.autograd.functional.jacobian(f, h, vectorize=True): the
                          whole (B, N, B, N) Jacobian, then its diagonal blocks
    jacobian(vec) sum     the same of h -> f(h).sum(0): (N, B, N), which holds the diagonal
                          blocks because rows do not interact; permuted to (B, N, N)
    N backward passes     one forward, then autograd.grad of f(h)[:, i].sum() for each i
                          (what TensorFlow's batch_jacobian falls back to without pfor)
    closed form           W.T * relu'(h), by hand: a floor, not an autodiff method
Every timed call includes the forward pass, as mg.batch_jacobian's does.
Usage: PYTHON bench/jacobian.py DIR [B,N ...]   (after bench/jacobian.lua DIR)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

# torch 2.x's jacfwd warns that torch.jit.script, which it calls inside, is deprecated
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
try:
    from torch.func import jacfwd, jacrev, vmap  # noqa: E402  (torch >= 2.0)
except ImportError:
    from functorch import jacfwd, jacrev, vmap  # noqa: E402  (torch 1.13)

BENCH = "jacobian"
RTOL = 1e-5


def methods(W, b):
    def f(x):
        return torch.relu(x) @ W + b

    def vmap_jacrev(h):
        return vmap(jacrev(f))(h)

    def vmap_jacfwd(h):
        return vmap(jacfwd(f))(h)

    def jac_full(h):
        full = torch.autograd.functional.jacobian(f, h, vectorize=True)   # (B, N, B, N)
        return torch.diagonal(full, dim1=0, dim2=2).permute(2, 0, 1)    # (B, N, N)

    def jac_sum(h):
        js = torch.autograd.functional.jacobian(lambda x: f(x).sum(0), h, vectorize=True)
        return js.permute(1, 0, 2)                                      # (N, B, N) -> (B, N, N)

    def backward_loop(h):
        x = h.detach().requires_grad_(True)
        y = f(x)
        rows = [torch.autograd.grad(y[:, i].sum(), x, retain_graph=True)[0]
                for i in range(y.shape[1])]
        return torch.stack(rows, 1)

    def closed_form(h):
        return W.t().unsqueeze(0) * (h > 0).to(h.dtype).unsqueeze(1)

    return [("vmap(jacrev)", vmap_jacrev), ("vmap(jacfwd)", vmap_jacfwd), ("jacobian(vec) full", jac_full),
            ("jacobian(vec) sum", jac_sum), ("N backward passes", backward_loop),
            ("closed form", closed_form)]


def main():
    cases = B.jacobian_cases("jacobian.py")
    B.one_thread()
    B.blas_meta(BENCH)
    failed = []
    for case, W, b, h, J_mg, opts in cases:
        W, b, h = torch.from_numpy(W), torch.from_numpy(b), torch.from_numpy(h)
        for name, fn in methods(W, b):
            B.check_and_time(BENCH, case, name, lambda: fn(h), J_mg, RTOL, failed, **opts)
    B.exit_if_failed("jacobian.py", failed)


if __name__ == "__main__":
    main()
