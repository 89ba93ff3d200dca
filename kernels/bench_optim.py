"""Optimizer step: gpunn's fused flat-buffer update vs PyTorch's CPU optimizers, side by side.

One gpunn step is one kernel call per parameter group; PyTorch's default CPU path runs several
ops per parameter tensor. Alternating rounds of at least --min-seconds each; each side's best
round (noise on a shared machine only slows a round), and the ratio of the two (torch / gpunn).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python kernels/bench_optim.py [--rounds 7] [--torch-threads 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import blas_info  # noqa: E402

import gpunn as gn  # noqa: E402

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


def round_time(step, min_s):
    """Seconds per step over one round of at least min_s."""
    n, t0 = 0, time.perf_counter()
    while True:
        for _ in range(10):
            step()
        n += 10
        dt = time.perf_counter() - t0
        if dt >= min_s:
            return dt / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-seconds", type=float, default=0.3, help="length of one round")
    ap.add_argument("--torch-threads", type=int, help="torch.set_num_threads (gpunn's update is one thread)")
    args = ap.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; BLAS: {blas_info()}")
    print(f"best of {args.rounds} alternating rounds of >= {args.min_seconds} s, us per step")
    rng = np.random.default_rng(0)
    print(f"{'model':16s} {'optimizer':18s} {'gpunn us':>9s} {'torch us':>9s} {'torch/gpunn':>12s}")
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
            best = {"gpunn": float("inf"), "torch": float("inf")}
            for r in range(args.rounds):
                pair = [("gpunn", gopt.step), ("torch", topt.step)]
                for side, step in (pair if r % 2 == 0 else pair[::-1]):
                    best[side] = min(best[side], round_time(step, args.min_seconds))
            print(f"{mname:16s} {oname:18s} {best['gpunn'] * 1e6:9.1f} {best['torch'] * 1e6:9.1f} "
                  f"{best['torch'] / best['gpunn']:11.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
