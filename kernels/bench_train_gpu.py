"""Training throughput on one GPU: gpunn (CuPy + its Numba CUDA kernels) vs PyTorch eager, same GPU.

The same MLP (hidden layers with ReLU, identical initial weights), the same data (already on the
device), the same loss and Adam (lr 1e-3); each step is zero_grad, forward, loss, backward, step,
with no host synchronisation inside a round (each library's own per-step syncs, if any, count).
Rounds alternate which library goes first; the figure that matters is the median over rounds of
gpunn samples/s divided by PyTorch samples/s. A third column runs gpunn's step through
gn.compile(cuda_graph=True) (its own copy of the model: the whole step, optimizer included, as one
CUDA graph launch). TF32 is off on both sides.

    PYTHONPATH=. python kernels/bench_train_gpu.py [--quick] [--json out.json]

Needs CuPy on a CUDA GPU; PyTorch with CUDA for the comparison (gpunn alone otherwise).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # kernels/ is a folder of scripts
from bench_dense_gpu import run_main, torch_cuda  # noqa: E402
from bench_train import compiled_step  # noqa: E402

# (name, widths, batch, loss, steps per round, steps per round with --quick)
SHAPES = [
    ("mnist-mlp 784-512-512-10", [784, 512, 512, 10], 256, "ce", 200, 60),
    ("digits-mlp 64-128-10", [64, 128, 10], 64, "ce", 400, 100),
    ("narrow 32-64-64-64-1 (MSE)", [32, 64, 64, 64, 1], 1024, "mse", 300, 80),
    ("wide 4096-4096-4096-10", [4096, 4096, 4096, 10], 4096, "ce", 12, 4),
]


# ------------------------------------------------------------------------------------------ pure helpers

def samples_per_second(batch: int, steps: int, seconds: float) -> float:
    return batch * steps / seconds if seconds > 0 else float("nan")


def summarize(name, batch, steps, g_rates, t_rates):
    """One result row: medians and the per-round ratio gpunn/torch (None without torch)."""
    row = {"shape": name, "batch": batch, "rounds": len(g_rates), "steps_per_round": steps,
           "gpunn_samples_per_s": statistics.median(g_rates) if g_rates else None,
           "torch_samples_per_s": statistics.median(t_rates) if t_rates else None}
    if t_rates and len(t_rates) == len(g_rates):
        ratios = [g / t for g, t in zip(g_rates, t_rates)]
        row.update(ratio_median=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios))
    return row


def parse_shapes(text):
    """--only: comma-separated name prefixes (e.g. "mnist,wide") -> the matching SHAPES."""
    if not text:
        return list(SHAPES)
    keys = [t.strip().lower() for t in text.split(",") if t.strip()]
    picked = [s for s in SHAPES if any(s[0].lower().startswith(k) for k in keys)]
    if not picked:
        raise ValueError(f"--only {text!r} matches none of: {', '.join(s[0] for s in SHAPES)}")
    return picked


# ------------------------------------------------------------------------------------------ GPU parts

def build(widths, torch):
    """(gpunn model on the GPU, torch model on the GPU or None) with the same initial weights."""
    import numpy as np

    import gpunn as gn

    gn.manual_seed(0)
    layers = [gn.nn.Dense(a, b, activation="relu") for a, b in zip(widths[:-2], widths[1:-1])]
    layers.append(gn.nn.Linear(widths[-2], widths[-1]))
    gm = gn.nn.Sequential(*layers).to("gpu")
    tm = None
    if torch is not None:
        mods = []
        for i in range(len(widths) - 1):
            mods.append(torch.nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                mods.append(torch.nn.ReLU())
        tm = torch.nn.Sequential(*mods).cuda()
        import cupy

        for pg, pt in zip(gm.parameters(), tm.parameters()):
            pg.data[...] = cupy.asarray(pt.detach().cpu().numpy().astype(np.float32))
    return gm, tm


def run_gpunn(cp, model, opt, loss_fn, X, y, batch, steps):
    import gpunn as gn

    cp.cuda.get_current_stream().synchronize()
    t0 = time.perf_counter()
    for s in range(steps):
        i = (s * batch) % (X.shape[0] - batch + 1)
        opt.zero_grad()
        loss = loss_fn(model(gn.Tensor(X[i:i + batch])), gn.Tensor(y[i:i + batch]))
        loss.backward()
        opt.step()
    cp.cuda.get_current_stream().synchronize()
    return samples_per_second(batch, steps, time.perf_counter() - t0), float(loss.item())


def run_graph(cp, step, X, y, batch, steps):
    import gpunn as gn

    cp.cuda.get_current_stream().synchronize()
    t0 = time.perf_counter()
    for s in range(steps):
        i = (s * batch) % (X.shape[0] - batch + 1)
        loss = step(gn.Tensor(X[i:i + batch]), gn.Tensor(y[i:i + batch]))
    cp.cuda.get_current_stream().synchronize()
    return samples_per_second(batch, steps, time.perf_counter() - t0), float(loss.item())


def run_torch(torch, model, opt, loss_fn, X, y, batch, steps):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(steps):
        i = (s * batch) % (X.shape[0] - batch + 1)
        opt.zero_grad()
        loss = loss_fn(model(X[i:i + batch]), y[i:i + batch])
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    return samples_per_second(batch, steps, time.perf_counter() - t0), float(loss.item())


def bench(quick=False, rounds=5, only=None, log=print, deadline=None):
    """Rows for the shapes `only` picks (all by default); with `deadline` (time.time() seconds), no new
    shape starts after it (the result lists the ones left out)."""
    import numpy as np

    import gpunn as gn
    from gpunn.backend import numba_cuda as nc

    cp = nc.require_kernels("bench_train_gpu")
    torch = torch_cuda()

    rows, left_out = [], []
    for name, widths, batch, loss, steps, quick_steps in parse_shapes(only):
        if deadline is not None and time.time() > deadline:
            left_out.append(name)
            continue
        steps = quick_steps if quick else steps
        rng = np.random.default_rng(0)
        n = batch * 4
        Xh = rng.standard_normal((n, widths[0])).astype(np.float32)
        yh = (rng.integers(0, widths[-1], n) if loss == "ce" else rng.standard_normal((n, widths[-1]))).astype(
            np.int64 if loss == "ce" else np.float32)
        X, y = cp.asarray(Xh), cp.asarray(yh)
        gm, tm = build(widths, torch)
        gopt = gn.optim.Adam(gm.parameters(), lr=1e-3)
        gl = gn.nn.CrossEntropyLoss() if loss == "ce" else gn.nn.MSELoss()
        run_gpunn(cp, gm, gopt, gl, X, y, batch, 3)  # warm-up: kernels compile, the pool settles
        gm2, _ = build(widths, None)
        # the whole step, optimizer included, as one CUDA graph launch (gpunn/compiler_graph.py)
        gstep = compiled_step(gm2, gn.optim.Adam(gm2.parameters(), lr=1e-3), gl, cuda_graph=True)
        run_graph(cp, gstep, X, y, batch, 6)  # warm-up: two traces, one kernel replay, the capture
        g_rates, t_rates, c_rates, losses = [], [], [], {}
        if tm is not None:
            Xt, yt = torch.as_tensor(Xh, device="cuda"), torch.as_tensor(yh, device="cuda")
            topt = torch.optim.Adam(tm.parameters(), lr=1e-3)
            tl = torch.nn.CrossEntropyLoss() if loss == "ce" else torch.nn.MSELoss()
            run_torch(torch, tm, topt, tl, Xt, yt, batch, 3)
        for r in range(rounds):
            order = ("gpunn", "graph", "torch") if r % 2 == 0 else ("torch", "graph", "gpunn")
            for who in order:
                if who == "graph":
                    rate, losses["graph"] = run_graph(cp, gstep, X, y, batch, steps)
                    c_rates.append(rate)
                elif who == "gpunn":
                    rate, losses["gpunn"] = run_gpunn(cp, gm, gopt, gl, X, y, batch, steps)
                    g_rates.append(rate)
                elif tm is not None:
                    rate, losses["torch"] = run_torch(torch, tm, topt, tl, Xt, yt, batch, steps)
                    t_rates.append(rate)
        row = summarize(name, batch, steps, g_rates, t_rates)
        row["last_loss"] = losses
        row["graph_samples_per_s"] = statistics.median(c_rates)
        row["graph_explain"] = gstep.explain(gn.Tensor(X[:batch]), gn.Tensor(y[:batch]))
        if t_rates:
            row["graph_over_torch_median"] = statistics.median(c / t for c, t in zip(c_rates, t_rates))
        rows.append(row)
        ratio = f"  ratio {row['ratio_median']:.2f}x (min {row['ratio_min']:.2f}, max {row['ratio_max']:.2f})" \
            if "ratio_median" in row else ""
        torch_rate = f"  torch {row['torch_samples_per_s']:11.0f}/s" if row["torch_samples_per_s"] else ""
        graph = f"  graph {row['graph_samples_per_s']:11.0f}/s ({row['graph_explain']})"
        log(f"{name:30s} batch {batch:5d}  gpunn {row['gpunn_samples_per_s']:11.0f}/s{torch_rate}{ratio}{graph}")
        del X, y, gm, gopt, gm2, gstep
        cp.get_default_memory_pool().free_all_blocks()
    return {"device": nc.device_name(), "torch": torch.__version__ if torch else None, "cupy": cp.__version__,
            "python": platform.python_version(), "quick": quick, "rounds": rounds,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows,
            "left_out_for_time": left_out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps per round (about a minute on an H100)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default=None, help="comma-separated shape-name prefixes, e.g. mnist,wide")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    try:
        parse_shapes(args.only)
    except ValueError as err:
        ap.error(str(err))
    return run_main(lambda: bench(args.quick, args.rounds, args.only), args.json)


if __name__ == "__main__":
    sys.exit(main())
