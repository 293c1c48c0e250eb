"""op_overhead.py - PyTorch side of bench/op_overhead.lua: per-op cost of a 16-element
float32 add called from Python, 100,000 times.
    no_tape            'c = a + b' under torch.no_grad(), and under torch.inference_mode()
                       (no version counters either: PyTorch's cheapest mode)
    recorded           a, b with requires_grad=True: every add builds a graph node
    recorded+backward  'x = x + b' chained 100,000 times, then sum(x).backward() into a
Runs under Debian's torch 1.13 and the bench venv's current torch (bench/run runs both).
Usage: PYTHON bench/op_overhead.py [n_ops]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402
import torch  # noqa: E402

BENCH = "op_overhead"


def main():
    n = B.n_ops("op_overhead.py")
    B.one_thread()
    B.blas_meta(BENCH)
    a0, b0 = (torch.from_numpy(x) for x in B.add_operands())

    def adds_under(mode):
        def adds():
            with mode():
                return B.adds(a0, b0, n)
        return adds
    adds, adds_inference = adds_under(torch.no_grad), adds_under(torch.inference_mode)

    a1 = a0.clone().requires_grad_(True)
    b1 = b0.clone().requires_grad_(True)

    def recorded():
        return B.adds(a1, b1, n)

    def chain_backward():
        a = a0.clone().requires_grad_(True)
        B.chain(a, b0, n).sum().backward()
        return a.grad

    assert torch.equal(adds(), a0 + b0), "op_overhead: no_tape result is wrong"
    assert torch.equal(adds_inference(), a0 + b0), "op_overhead: inference_mode result is wrong"
    assert recorded().grad_fn is not None, "op_overhead: add was not recorded"
    assert torch.equal(chain_backward(), torch.ones(16)), "op_overhead: gradient is not ones"

    for name, impl, fn in (("no_tape", "a + b", adds), ("no_tape", "a + b, inference_mode", adds_inference),
                           ("recorded", "a + b", recorded), ("recorded+backward", "a + b", chain_backward)):
        B.per_op_result(BENCH, name, impl, B.measure(fn, reps=7, inner=1, warmup=2), n)


if __name__ == "__main__":
    main()
