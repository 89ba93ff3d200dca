"""Dense layer on the GPU: gpunn's fused kernels vs cuBLAS with separate bias/activation kernels vs PyTorch.

For each (batch, width) -- a square layer, in = out = width -- and each pass (forward; backward
with dx, dW and db), this times:
  fused        gpunn's own tiled GEMM with the bias/activation epilogue (dense_dispatch impl "fused")
  cublas+epi   cuBLAS (CuPy matmul) + ONE fused gpunn epilogue kernel (impl "cublas")
  cublas+sep   cuBLAS + separate CuPy kernels for the bias and the activation (the reference Ops on CuPy)
  torch        PyTorch: addmm + relu forward; autograd backward (same GPU, its own stream)
with CUDA events, in alternating rounds (the order rotates every round so drift favours no one),
and reports median microseconds, TFLOP/s (forward 2NKM flops, backward 4NKM), the fraction of
the card's FP32 (non-tensor-core) peak, and the median per-round ratio of every implementation's
time to fused's. TF32 stays off (CuPy's default; torch.backends.cuda.matmul.allow_tf32 = False).

    PYTHONPATH=. python kernels/bench_dense_gpu.py [--quick] [--json out.json]

Needs CuPy on a CUDA GPU (and PyTorch with CUDA for the torch column, skipped otherwise).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import re
import statistics
import sys
import time
from datetime import datetime, timezone

BATCHES = (64, 256, 1024, 4096, 16384, 65536)
WIDTHS = (32, 128, 512, 1024, 4096)
QUICK_BATCHES = (64, 1024, 16384)
QUICK_WIDTHS = (32, 256, 1024, 4096)
MAX_MACS = 1 << 36            # skip the largest GEMMs (65536 x 4096 x 4096 takes ~0.1 s per call)
QUICK_MAX_MACS = 1 << 34
IMPLS = ("fused", "cublas+epi", "cublas+sep", "torch")

# FP32 peak without tensor cores, TFLOP/s (vendor figures), matched on the CUDA device name.
PEAK_FP32_TFLOPS = {
    "H100 SXM": 67.0, "H100 80GB HBM3": 67.0, "H100 PCIe": 51.0, "H100 NVL": 60.0, "H200": 67.0,
    "A100": 19.5, "L40S": 91.6, "L4": 30.3, "A10": 31.2, "V100": 15.7, "T4": 8.1, "RTX 4090": 82.6,
}


# ------------------------------------------------------------------------------------------ pure helpers

def peak_tflops(device_name: str, override: float | None = None) -> float | None:
    """The FP32 peak for a device name (the longest matching key wins), or None if unknown."""
    if override:
        return float(override)
    best = None
    for key, value in PEAK_FP32_TFLOPS.items():
        if key.lower() in device_name.lower() and (best is None or len(key) > len(best[0])):
            best = (key, value)
    return best[1] if best else None


def flops(n: int, k: int, m: int, pass_: str) -> int:
    """Floating-point operations of one dense pass: 2NKM forward, 4NKM backward (dx and dW)."""
    return (2 if pass_ == "forward" else 4) * n * k * m


def tflops(n, k, m, pass_, microseconds) -> float:
    return flops(n, k, m, pass_) / (microseconds * 1e-6) / 1e12 if microseconds > 0 else float("nan")


def shape_grid(batches, widths, max_macs):
    """(batch, width) pairs whose GEMM has at most max_macs multiply-accumulates."""
    return [(n, w) for n in batches for w in widths if n * w * w <= max_macs]


def round_orders(names, rounds):
    """The implementation order of each round: rotated by one every round."""
    names = list(names)
    return [names[r % len(names):] + names[:r % len(names)] for r in range(rounds)]


def median_ratios(times: dict, base: str = "fused") -> dict:
    """{impl: median over rounds of time[impl] / time[base]} for the impls timed in every round."""
    out = {}
    for impl, ts in times.items():
        if impl == base or len(ts) != len(times.get(base, ())):
            continue
        out[impl] = statistics.median(t / b for t, b in zip(ts, times[base]))
    return out


def card_slug(name: str) -> str:
    """A file-name-safe, lower-case form of a device name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def results_stem(device_name: str, date: str | None = None) -> str:
    """kernels/results/<card>-<date>: the stem of the files a GPU check writes."""
    date = date or datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return f"kernels/results/{card_slug(device_name)}-{date}"


# ------------------------------------------------------------------------------------------ GPU parts

def torch_cuda():
    """PyTorch on CUDA with TF32 off (the peer in the GPU benchmarks), or None without it."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch


def _time_cupy(cp, fn, inner):
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(inner):
        fn()
    end.record()
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) * 1000.0 / inner


def _time_torch(torch, fn, inner):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(inner):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1000.0 / inner


def bench_shape(cp, torch, n, w, pass_, rounds, code, budget_s=0.05):
    """{impl: [microseconds per round]} for one shape and pass."""
    import numpy as np

    from gpunn.kernels import dense, dense_dispatch

    rng = cp.random.default_rng(0)
    x = rng.standard_normal((n, w), dtype=np.float32)
    W = (rng.standard_normal((w, w), dtype=np.float32) / math.sqrt(w)).astype(np.float32)
    b = rng.standard_normal(w, dtype=np.float32)
    dy = rng.standard_normal((n, w), dtype=np.float32)
    fns = {}
    for impl, kind in (("fused", "fused"), ("cublas+epi", "cublas")):
        _, saved = dense_dispatch.dense_forward(x, W, b, code, impl=kind)
        if pass_ == "forward":
            fns[impl] = (lambda kind=kind: dense_dispatch.dense_forward(x, W, b, code, impl=kind))
        else:
            fns[impl] = (lambda kind=kind, saved=saved: dense_dispatch.dense_backward(dy, x, W, saved, code, impl=kind))
    _, saved_ref = dense.dense_forward_ref(x, W, b, code)
    fns["cublas+sep"] = ((lambda: dense.dense_forward_ref(x, W, b, code)) if pass_ == "forward"
                         else (lambda: dense.dense_backward_ref(dy, x, W, saved_ref, code)))
    tfns = {}
    if torch is not None:
        tx = torch.as_tensor(x, device="cuda")
        tW = torch.as_tensor(W, device="cuda").requires_grad_(pass_ == "backward")
        tb = torch.as_tensor(b, device="cuda").requires_grad_(pass_ == "backward")
        tdy = torch.as_tensor(dy, device="cuda")
        txg = tx.clone().requires_grad_(pass_ == "backward")
        if pass_ == "forward":
            tfns["torch"] = lambda: torch.relu(torch.addmm(tb, tx, tW.t()))
        else:
            def tb_fn():
                out = torch.relu(torch.addmm(tb, txg, tW.t()))
                torch.autograd.grad(out, (txg, tW, tb), tdy)
            tfns["torch"] = tb_fn
    # inner repetitions so that one timing lasts about budget_s (launch noise averages out)
    first = _time_cupy(cp, fns["fused"], 1)
    inner = max(1, min(200, int(budget_s * 1e6 / max(first, 1.0))))
    for fn in fns.values():
        fn()
    for impl, fn in tfns.items():
        with torch.set_grad_enabled(pass_ == "backward"):
            fn()
        torch.cuda.synchronize()
    cp.cuda.get_current_stream().synchronize()
    times = {k: [] for k in list(fns) + list(tfns)}
    for order in round_orders(times, rounds):
        for impl in order:
            if impl in fns:
                times[impl].append(_time_cupy(cp, fns[impl], inner))
            else:
                with torch.set_grad_enabled(pass_ == "backward"):
                    times[impl].append(_time_torch(torch, tfns[impl], inner))
    return times, inner


def run(quick=False, rounds=5, peak=None, log=print, grid=None, deadline=None):
    """The benchmark over `grid` ((batch, width) pairs; default: the --quick or full grid); with
    `deadline` (time.time() seconds), no new shape starts after it (the result says which were left)."""
    from gpunn.backend import numba_cuda as nc
    from gpunn.kernels.activations import RELU

    cp = nc.require_kernels("bench_dense_gpu")
    torch = torch_cuda()

    name = nc.device_name()
    pk = peak_tflops(name, peak)
    if grid is None:
        grid = shape_grid(QUICK_BATCHES if quick else BATCHES, QUICK_WIDTHS if quick else WIDTHS,
                          QUICK_MAX_MACS if quick else MAX_MACS)
    rows, left_out = [], []
    t0 = time.perf_counter()
    for n, w in grid:
        if deadline is not None and time.time() > deadline:
            left_out.append([n, w])
            continue
        for pass_ in ("forward", "backward"):
            times, inner = bench_shape(cp, torch, n, w, pass_, rounds, RELU)
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {"batch": n, "width": w, "pass": pass_, "inner": inner, "rounds": rounds,
                   "median_us": med,
                   "tflops": {k: tflops(n, w, w, pass_, v) for k, v in med.items()},
                   "fraction_of_peak": ({k: tflops(n, w, w, pass_, v) / pk for k, v in med.items()} if pk else None),
                   "ratio_to_fused": median_ratios(times)}
            rows.append(row)
            log(f"{pass_:8s} batch {n:6d} width {w:5d}  " + "  ".join(
                f"{k} {v:9.1f}us {row['tflops'][k]:6.2f}TF" for k, v in med.items())
                + "  ratios " + " ".join(f"{k}={r:.2f}" for k, r in row["ratio_to_fused"].items()))
            cp.get_default_memory_pool().free_all_blocks()
    return {
        "device": name, "peak_fp32_tflops": pk, "torch": (torch.__version__ if torch else None),
        "cupy": cp.__version__, "python": platform.python_version(), "quick": quick,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1), "rows": rows, "left_out_for_time": left_out,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes (about a minute on an H100)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=None, help="FP32 peak to compare with (default: by name)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    return run_main(lambda: run(args.quick, args.rounds, args.peak_tflops), args.json)


def run_main(compute, json_path=None) -> int:
    """A GPU benchmark's main(): run compute(), write its result to json_path; exit status 2 with
    the reason (and no traceback) where gpunn's GPU kernels cannot run."""
    from gpunn.backend.numba_cuda import KernelsUnavailable

    try:
        result = compute()
    except KernelsUnavailable as err:
        print(err, file=sys.stderr)
        return 2
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
