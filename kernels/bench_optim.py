"""Optimizer step: gpunn's fused flat-buffer update vs PyTorch's CPU optimizers, side by side.

One gpunn step is one kernel call per parameter group; PyTorch's default CPU path runs several
ops per parameter tensor. Alternating rounds, median ratio (torch time / gpunn time).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python kernels/bench_optim.py
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

import gpunn as gn

MODELS = {
    "64-128-10": [64, 128, 10],
    "784-512-512-10": [784, 512, 512, 10],
}
OPTIMIZERS = {
    "SGD(momentum=0.9)": (lambda p: gn.optim.SGD(p, lr=1e-2, momentum=0.9),
                          lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9)),
    "Adam": (lambda p: gn.optim.Adam(p, lr=1e-3), lambda p: torch.optim.Adam(p, lr=1e-3)),
    "AdamW": (lambda p: gn.optim.AdamW(p, lr=1e-3), lambda p: torch.optim.AdamW(p, lr=1e-3)),
    "RMSprop": (lambda p: gn.optim.RMSprop(p, lr=1e-3), lambda p: torch.optim.RMSprop(p, lr=1e-3)),
    "Adagrad": (lambda p: gn.optim.Adagrad(p, lr=1e-2), lambda p: torch.optim.Adagrad(p, lr=1e-2)),
}


def shapes_of(widths):
    out = []
    for a, b in zip(widths[:-1], widths[1:]):
        out += [(b, a), (b,)]
    return out


def timed(step, n):
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def main(rounds=7, n=50):
    rng = np.random.default_rng(0)
    print(f"{'model':16s} {'optimizer':18s} {'gpunn us':>9s} {'torch us':>9s} {'speed-up':>9s}")
    for mname, widths in MODELS.items():
        init = [rng.standard_normal(s).astype(np.float32) for s in shapes_of(widths)]
        for oname, (make_g, make_t) in OPTIMIZERS.items():
            gp = [gn.Parameter(a.copy()) for a in init]
            tp = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
            gopt, topt = make_g(gp), make_t(tp)
            for p, a in zip(gp, init):
                p.grad = gn.tensor(rng.standard_normal(a.shape).astype(np.float32))
            for p in tp:
                p.grad = torch.randn_like(p)
            gopt.step(), topt.step()
            g_t, t_t = [], []
            for r in range(rounds):
                pair = [(gopt.step, g_t), (topt.step, t_t)]
                for step, acc in (pair if r % 2 == 0 else pair[::-1]):
                    acc.append(timed(step, n))
            ratio = statistics.median(t / g for g, t in zip(g_t, t_t))
            print(f"{mname:16s} {oname:18s} {statistics.median(g_t) * 1e6:9.1f} "
                  f"{statistics.median(t_t) * 1e6:9.1f} {ratio:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
