# probe_ref.py: PyTorch reference for d2v-probe's softmax regression: standardisation, the L2-regularised cross-entropy and its gradient, and its minimiser, to HDF5.
"""Writes one HDF5 file with the groups:

- "point": features X (N, D) with a different offset and scale per column, labels y, their
  column mean and population std, parameters wb = [W (K, D) row-major | b (K)] (the layout of
  softmax_loss in include/d2v/probe.h), attribute l2, and at wb the loss
  mean_i CE(W x_i + b, y_i) + l2 / 2 ||W||^2 (the bias not penalised) and its gradient.
- "opt_a", "opt_b": the minimiser wb of that loss on the standardised X for two L2 strengths
  (attribute l2), found by torch.optim.LBFGS with a strong-Wolfe line search in float64,
  polished by Newton steps and confirmed by its gradient norm.

The loss is F.cross_entropy (mean reduction) plus the penalty, written here from the
definition in docs/evaluation.md, independently of src/eval/probe.c. Data are synthetic (a
noisy linear teacher), as the probe's own unit tests are.

Usage: /usr/bin/python3 tests/ref/probe_ref.py OUT.h5
"""
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

N, D, K = 150, 7, 4


def fail(msg):
    sys.exit(f"probe_ref.py: {msg}")


def loss_fn(x, y, wb, l2):
    W, b = wb[:K * D].reshape(K, D), wb[K * D:]
    return F.cross_entropy(x @ W.T + b, y) + 0.5 * l2 * (W * W).sum()


def minimise(x, y, l2):
    wb = torch.zeros(K * D + K, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([wb], lr=1, max_iter=5000, tolerance_grad=1e-13,
                            tolerance_change=1e-16, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        f = loss_fn(x, y, wb, l2)
        f.backward()
        return f

    opt.step(closure)
    w = wb.detach().clone()
    for _ in range(5):  # Newton polish: the loss is smooth and strictly convex
        h = torch.autograd.functional.hessian(lambda v: loss_fn(x, y, v, l2), w)
        (gr,) = torch.autograd.grad(loss_fn(x, y, w.requires_grad_(True), l2), w)
        w = (w.detach() - torch.linalg.solve(h, gr)).detach()
    wb = w.requires_grad_(True)
    f = loss_fn(x, y, wb, l2)
    (g,) = torch.autograd.grad(f, wb)
    if not g.norm().item() < 1e-12:
        fail(f"l2 {l2}: gradient norm {g.norm().item():.3e} at the optimum")
    return wb.detach(), f.item()


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: probe_ref.py OUT.h5")
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(4321)
    z = torch.randn(N, D, generator=gen, dtype=torch.float64)
    teacher = torch.randn(K, D, generator=gen, dtype=torch.float64)
    y = (z @ teacher.T + 0.8 * torch.randn(N, K, generator=gen, dtype=torch.float64)).argmax(1)
    offset = torch.linspace(-20, 30, D, dtype=torch.float64)
    scale = torch.linspace(0.5, 9, D, dtype=torch.float64)
    x = (z * scale + offset).float().double()  # float32 values, as the C side holds them
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    xs = ((x - mean) / std).float().double()  # standardised in float32 (as C), then exact

    wb0 = (0.6 * torch.randn(K * D + K, generator=gen, dtype=torch.float64)).float().double()
    wb0.requires_grad_(True)
    l2 = 0.05
    f0 = loss_fn(x, y, wb0, l2)
    (g0,) = torch.autograd.grad(f0, wb0)

    with h5py.File(sys.argv[1], "w") as f:
        g = f.create_group("point")
        g.attrs["l2"] = np.float64(l2)
        g.attrs["loss"] = np.float64(f0.item())
        for k, v in {"x": x, "mean": mean, "std": std, "wb": wb0.detach(), "grad": g0}.items():
            g.create_dataset(k, data=v.numpy().astype(np.float32))
        g.create_dataset("y", data=y.numpy().astype(np.int32))
        g.create_dataset("x_std", data=xs.numpy().astype(np.float32))
        for name, lam in (("opt_a", 1e-2), ("opt_b", 1e-3)):
            wb, fo = minimise(xs, y, lam)
            o = f.create_group(name)
            o.attrs["l2"] = np.float64(lam)
            o.attrs["loss"] = np.float64(fo)
            o.create_dataset("wb", data=wb.numpy().astype(np.float32))
    print(f"wrote {sys.argv[1]}")


if __name__ == "__main__":
    main()
