"""The fused bias+activation epilogue of a dense layer on the CPU, forward and backward, per activation:
gpunn vs its own bias+ReLU pass and vs PyTorch's ops for the same work.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python kernels/bench_activations.py [--shape 256x512] [--json out.json]

Forward: gpunn's one Numba pass z += b; y = act(z) (gpunn.kernels.dense.bias_act_epilogue, what
dense_forward_cpu runs after its GEMM: in place, y is z, except for GELU, whose backward needs z);
PyTorch: act(z + b). Backward: gpunn's one pass
dz = dy * act'(z or y) with db = column sums of dz (act_grad_colsum); PyTorch: the activation's
backward op (aten.gelu_backward, tanh_backward, sigmoid_backward, threshold_backward) then
dz.sum(0). float32. The bias is zero so that the input keeps its values from call to call (the
work is the same as with any bias). gpunn and PyTorch alternate rounds of >= 0.2 s; each round's
figure is its fastest batch of 10 calls, the figures are best rounds, the ratios best over best.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import blas_info  # noqa: E402

from gpunn.kernels.activations import ACTIVATIONS, activation_forward_ref, needs_preactivation  # noqa: E402
from gpunn.kernels.dense import _epilogue, act_grad_colsum, bias_act_epilogue  # noqa: E402

NAMES = ["relu", "gelu", "gelu_tanh", "tanh", "sigmoid"]


def per_call(fn, min_s=0.2, batch=10):
    """Seconds per call of fn: the fastest batch of `batch` calls within a round of >= min_s (on a
    shared machine a whole round's mean mostly measures who else got the core)."""
    fn()
    best, spent = float("inf"), 0.0
    while spent < min_s:
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        dt = time.perf_counter() - t0
        spent += dt
        best = min(best, dt / batch)
    return best


def torch_ops(torch, name, z, b, dy, s):
    F = torch.nn.functional
    aten = torch.ops.aten
    act = {"relu": torch.relu, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
           "tanh": torch.tanh, "sigmoid": torch.sigmoid}[name]
    back = {"relu": lambda: aten.threshold_backward(dy, s, 0.0),
            "gelu": lambda: aten.gelu_backward(dy, s),
            "gelu_tanh": lambda: aten.gelu_backward(dy, s, approximate="tanh"),
            "tanh": lambda: aten.tanh_backward(dy, s),
            "sigmoid": lambda: aten.sigmoid_backward(dy, s)}[name]

    def fwd():
        return act(z + b)

    def bwd():
        dz = back()
        return dz, dz.sum(0)

    return fwd, bwd


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="256x512")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--torch-threads", type=int, help="torch.set_num_threads (gpunn's pass is one thread; on "
                    "a machine busy with other work, 1 keeps torch's spin-waiting pool out of the figure)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    n, m = map(int, args.shape.lower().split("x"))
    torch = None
    if not args.no_torch:
        import torch

        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"BLAS: {blas_info()}")
    rng = np.random.default_rng(0)
    z0 = (rng.standard_normal((n, m)) * 2).astype(np.float32)
    dy = rng.standard_normal((n, m)).astype(np.float32)
    b = np.zeros(m, np.float32)
    rows = {}
    for name in NAMES:
        code = ACTIVATIONS[name]
        z = z0.copy()
        y = np.empty_like(z) if needs_preactivation(code) else z  # in place where dense_forward_cpu is
        s = z if needs_preactivation(code) else activation_forward_ref(z, code)
        dz, db = np.empty_like(z), np.empty(m, np.float32)
        fwd_k, bwd_k = _epilogue(bias_act_epilogue, code, z.dtype), _epilogue(act_grad_colsum, code, z.dtype)
        g_fwd = lambda: fwd_k(z, b, True, 0.01, y)  # noqa: E731
        g_bwd = lambda: bwd_k(dy, s, 0.01, dz, db, True)  # noqa: E731
        fns = {"gpunn_fwd": g_fwd, "gpunn_bwd": g_bwd}
        if torch is not None:
            t_fwd, t_bwd = torch_ops(torch, name, torch.from_numpy(z), torch.from_numpy(b),
                                     torch.from_numpy(dy), torch.from_numpy(np.ascontiguousarray(s)))
            fns.update(torch_fwd=t_fwd, torch_bwd=t_bwd)
        best = {k: float("inf") for k in fns}
        keys = list(fns)
        for r in range(args.rounds):
            for k in (keys if r % 2 == 0 else keys[::-1]):
                best[k] = min(best[k], per_call(fns[k]))
        rows[name] = {k: v * 1e6 for k, v in best.items()}
    relu = rows["relu"]
    print(f"\nbias+activation epilogue over {n}x{m} float32, best of {args.rounds} alternating rounds (us per call)")
    head = f"{'activation':11s} {'fwd us':>8s} {'/relu':>6s} {'bwd us':>8s} {'/relu':>6s}"
    if torch is not None:
        head += f" {'torch fwd':>9s} {'torch/gpunn':>11s} {'torch bwd':>9s} {'torch/gpunn':>11s}"
    print(head)
    for name, r in rows.items():
        line = (f"{name:11s} {r['gpunn_fwd']:8.1f} {r['gpunn_fwd'] / relu['gpunn_fwd']:5.2f}x "
                f"{r['gpunn_bwd']:8.1f} {r['gpunn_bwd'] / relu['gpunn_bwd']:5.2f}x")
        if torch is not None:
            line += (f" {r['torch_fwd']:9.1f} {r['torch_fwd'] / r['gpunn_fwd']:10.2f}x"
                     f" {r['torch_bwd']:9.1f} {r['torch_bwd'] / r['gpunn_bwd']:10.2f}x")
        print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shape": [n, m], "rounds": args.rounds, "us_per_call": rows, "blas": blas_info()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
