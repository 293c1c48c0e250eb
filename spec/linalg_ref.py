"""torch.linalg reference for spec/linalg_lapack_spec.lua.

usage: /usr/bin/python3 linalg_ref.py DIR CASE...

For each CASE reads DIR/<CASE>_<i>.npy (i = 0, 1, ...: the inputs the spec wrote, float64),
applies CASES[CASE] with torch (1.13) in float64, and writes DIR/out_<CASE>_<j>.npy for every
output j.
"""
import math
import os
import sys

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
DIR = sys.argv[1]
inf = math.inf

CASES = {
    "qr_reduced": lambda A: torch.linalg.qr(A, mode="reduced"),
    "qr_complete": lambda A: torch.linalg.qr(A, mode="complete"),
    "svd": lambda A: torch.linalg.svd(A, full_matrices=False),
    "svd_full": lambda A: torch.linalg.svd(A, full_matrices=True),
    "svdvals": lambda A: [torch.linalg.svdvals(A)],
    "eigh": lambda A: torch.linalg.eigh(A),
    "eigvalsh": lambda A: [torch.linalg.eigvalsh(A)],
    "eigvals": lambda A: [torch.from_numpy(np.sort_complex(np.linalg.eigvals(A.numpy())).real.copy()),
                          torch.from_numpy(np.sort_complex(np.linalg.eigvals(A.numpy())).imag.copy())],
    "solve": lambda A, B: [torch.linalg.solve(A, B)],
    "inv": lambda A: [torch.linalg.inv(A)],
    "det": lambda A: [torch.linalg.det(A)],
    "slogdet": lambda A: list(torch.linalg.slogdet(A)),
    "cholesky": lambda A: [torch.linalg.cholesky(A)],
    "lstsq": lambda A, B: [torch.linalg.pinv(A) @ B],
    "pinv": lambda A: [torch.linalg.pinv(A)],
    "matrix_exp": lambda A: [torch.linalg.matrix_exp(A)],
    "matrix_power3": lambda A: [torch.linalg.matrix_power(A, 3)],
    "matrix_power_m2": lambda A: [torch.linalg.matrix_power(A, -2)],
    "matrix_norms": lambda A: [torch.linalg.matrix_norm(A, o) for o in ("fro", "nuc", 2, -2, 1, -1, inf, -inf)],
    "vector_norms": lambda x: [torch.linalg.vector_norm(x, o) for o in (2, 1, 3, 0.5, 0, inf, -inf)],
    "vector_norm_dim": lambda x: [torch.linalg.vector_norm(x, 3, dim=(0, 2), keepdim=True)],
    "cond": lambda A: [torch.linalg.cond(A, p) for p in (None, -2, "fro", "nuc", 1, inf)],
    "grad_svdvals": lambda A: [torch.autograd.grad(torch.linalg.svdvals(A.requires_grad_()).sum(), A)[0]],
    "grad_det": lambda A: [torch.autograd.grad(torch.linalg.det(A.requires_grad_()).sum(), A)[0]],
    "grad_eigh": lambda A: [torch.autograd.grad(
        (lambda w, V: w.sum() + (V ** 4).sum())(*torch.linalg.eigh(A.requires_grad_())), A)[0]],
}


def main():
    for case in sys.argv[2:]:
        n = 0
        while os.path.exists(f"{DIR}/{case}_{n}.npy"):
            n += 1
        args = [torch.from_numpy(np.load(f"{DIR}/{case}_{i}.npy")) for i in range(n)]
        for j, t in enumerate(CASES[case](*args)):
            np.save(f"{DIR}/out_{case}_{j}.npy", t.detach().numpy().astype(np.float64))


main()
