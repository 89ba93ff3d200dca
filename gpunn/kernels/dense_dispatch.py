"""Per-shape choice between the fused dense GEMM and cuBLAS + one fused epilogue kernel.

    impl = choose(n, k, m, dtype, "forward")      # -> ("fused", tile) or ("cublas", None)
    y, saved = dense_forward(x, W, b, code)        # what CudaOps.dense_forward calls
    dx, dW, db = dense_backward(dy, x, W, saved, code)

Order of precedence for the implementation:
  1. the `impl` argument of dense_forward/dense_backward/choose ("fused", "fused:<tile>", "cublas",
     "auto" or None);
  2. the environment variable GPUNN_DENSE_IMPL (same values; read at every call, for profiling);
  3. the committed table of measured timings (gpunn/kernels/dense_table.py): the entry for this
     device, dtype and pass nearest to (n, k, m) in log2 space, if within a factor of 2 on every
     axis;
  4. the default rule (`default_choice`), a guess until measurements exist: fused where the GEMM is
     small (launch-bound: one launch instead of two) and cuBLAS everywhere else.
The fused kernels cannot take more than 65535 row tiles (N > 4,194,240 at 64-row tiles): such
shapes always use cuBLAS.

`autotune()` (needs CuPy on a GPU; run by kernels/gpu_check.sh) times both implementations on a
grid of shapes with CUDA events and writes the table; commit the file it writes.
"""
from __future__ import annotations

import json
import math
import os
import pprint
import statistics
import time

import numpy as np

from gpunn.backend import numba_cuda as nc
from gpunn.kernels import dense_cuda
from gpunn.kernels.activations import RELU, check_code
from gpunn.kernels.dense import check_grad_out

ENV = "GPUNN_DENSE_IMPL"
IMPLS = ("auto", "fused", "cublas")
PASSES = ("forward", "backward")
# Default rule thresholds (multiply-accumulates n*k*m). Guesses, replaced by measurements: below
# them a GEMM takes a few microseconds on an H100, where saving a launch matters more than the
# last few percent of GEMM efficiency; above them cuBLAS's tuned kernels are the safe choice.
FUSED_MAX_MACS = {"forward": 1 << 22, "backward": 1 << 20}


def _parse(impl, where):
    """("fused", tile) / ("cublas", None) / None (auto) from a string."""
    if impl is None:
        return None
    if not isinstance(impl, str):
        raise TypeError(f"{where}: dense implementation must be a string, got {type(impl).__name__}")
    s = impl.strip().lower()
    if s in ("", "auto"):
        return None
    if s == "cublas":
        return "cublas", None
    if s == "fused":
        return "fused", None
    if s.startswith("fused:"):
        tile = impl.strip()[6:]
        if tile not in dense_cuda.TILES:
            raise ValueError(f"{where}: unknown tile {tile!r} in {impl!r}; known: {', '.join(dense_cuda.TILES)}")
        return "fused", tile
    raise ValueError(f"{where}: {impl!r} is not a dense implementation; choose one of "
                     f"{', '.join(IMPLS)} or fused:<tile> with a tile in {', '.join(dense_cuda.TILES)}")


def default_choice(n: int, k: int, m: int, dtype, pass_: str = "forward"):
    """The rule used without a measurement: ("fused", None) for small GEMMs, else ("cublas", None)."""
    if n * k * m <= FUSED_MAX_MACS[pass_]:
        return "fused", None
    return "cublas", None


# ------------------------------------------------------------------------------------------ table

_index = None


def reload_table():
    """Re-read gpunn/kernels/dense_table.py (after autotune wrote it)."""
    global _index
    import importlib

    from gpunn.kernels import dense_table

    importlib.reload(dense_table)
    _index = None
    return dense_table


def _table_index():
    global _index
    if _index is None:
        from gpunn.kernels import dense_table

        idx: dict = {}
        if getattr(dense_table, "FORMAT", None) == 1:
            for e in dense_table.ENTRIES:
                idx.setdefault((e["device"], e["dtype"], e["pass"]), []).append(e)
        _index = idx
    return _index


def table_choice(n, k, m, dtype, pass_, device=None):
    """The measured best for the nearest tabulated shape within a factor 2 per axis, or None."""
    entries = _table_index().get((device or nc.device_name(), np.dtype(dtype).name, pass_))
    if not entries or min(n, k, m) < 1:
        return None
    best, dist = None, None
    for e in entries:
        d = max(abs(math.log2(n / e["n"])), abs(math.log2(k / e["k"])), abs(math.log2(m / e["m"])))
        if dist is None or d < dist:
            best, dist = e, d
    if dist is None or dist > 1.0:
        return None
    return _parse(best["best"], "dense_table")


def choose(n: int, k: int, m: int, dtype, pass_: str = "forward", impl=None, device=None):
    """("fused", tile-name or None) or ("cublas", None) for one dense pass (see the module docstring)."""
    if pass_ not in PASSES:
        raise ValueError(f"pass must be one of {PASSES}, got {pass_!r}")
    choice = _parse(impl, "impl")
    if choice is None:
        choice = _parse(os.environ.get(ENV), ENV)
    if choice is None:
        choice = table_choice(n, k, m, dtype, pass_, device)
    if choice is None:
        choice = default_choice(n, k, m, dtype, pass_)
    if choice[0] == "fused":
        cfg = dense_cuda.tile_config(choice[1])
        rows = max(n, m) if pass_ == "backward" else n
        if not dense_cuda.fused_fits(rows, cfg):
            return "cublas", None
    return choice


# ------------------------------------------------------------------------------------------ entry points

def _prepare(op, arrays):
    """Same array type and dtype for all (ValueError naming the odd one), C-contiguous copies."""
    first = arrays[0][1]
    xp = nc.xp_of(first)
    out = []
    for name, a in arrays:
        if a is None:
            out.append(None)
            continue
        if type(a) is not type(first):
            raise ValueError(f"{op}: {name} is a {type(a).__name__} but x is a {type(first).__name__}")
        if a.dtype != first.dtype:
            raise ValueError(f"{op}: {name} has dtype {a.dtype} but x has {first.dtype}")
        out.append(xp.ascontiguousarray(a))
    return out


def dense_forward(x, W, b, code: int, negative_slope: float = 0.01, impl=None):
    """y = act(x @ W.T + b) on the GPU; returns (y, saved) as gpunn/kernels/dense.py specifies."""
    check_code(code)
    x, W, b = _prepare("dense_forward", [("x", x), ("W", W), ("b", b)])
    dense_cuda.check_operands("dense_forward", x, W, b)
    n, k = x.shape
    m = W.shape[0]
    kind, tile = choose(n, k, m, x.dtype, "forward", impl)
    if kind == "fused":
        return dense_cuda.forward_fused(x, W, b, code, negative_slope, tile)
    return dense_cuda.forward_cublas(x, W, b, code, negative_slope)


def dense_backward(dy, x, W, saved, code: int, negative_slope: float = 0.01, need_dx: bool = True,
                   need_dw: bool = True, need_db: bool = True, impl=None, dW_out=None, db_out=None):
    """(dx, dW, db) on the GPU, each None where not needed; dW / db written into dW_out / db_out
    when given."""
    check_code(code)
    x, W, dy, saved = _prepare("dense_backward", [("x", x), ("W", W), ("dy", dy), ("saved", saved)])
    if saved is None:
        raise ValueError("dense_backward: saved (what dense_forward returned) is None")
    dense_cuda.check_operands("dense_backward", x, W, None, dy, saved)
    n, k = x.shape
    m = W.shape[0]
    kind, tile = choose(n, k, m, x.dtype, "backward", impl)
    dW_out = check_grad_out("dense_backward", dW_out, W.shape, dy) if need_dw else None
    db_out = check_grad_out("dense_backward", db_out, (m,), dy) if need_db else None
    if kind == "fused":
        return dense_cuda.backward_fused(dy, x, W, saved, code, negative_slope, need_dx, need_dw, need_db, tile,
                                         dW_out=dW_out, db_out=db_out)
    return dense_cuda.backward_cublas(dy, x, W, saved, code, negative_slope, need_dx, need_dw, need_db,
                                      dW_out=dW_out, db_out=db_out)


# ------------------------------------------------------------------------------------------ autotune

AUTOTUNE_BATCHES = (64, 256, 1024, 4096, 16384, 65536)
AUTOTUNE_WIDTHS = ((32, 32), (64, 64), (128, 128), (256, 256), (512, 512), (784, 512), (1024, 1024),
                   (4096, 4096))
QUICK_BATCHES = (64, 256, 1024, 4096)
QUICK_WIDTHS = ((32, 32), (128, 128), (512, 512), (784, 512), (1024, 1024))
MAX_AUTOTUNE_MACS = 1 << 36


def autotune_shapes(quick: bool = False):
    """(n, k, m) triples autotune measures by default (the largest GEMMs are left out)."""
    batches, widths = (QUICK_BATCHES, QUICK_WIDTHS) if quick else (AUTOTUNE_BATCHES, AUTOTUNE_WIDTHS)
    return [(n, k, m) for n in batches for k, m in widths if n * k * m <= MAX_AUTOTUNE_MACS]


def median_time_us(fn, repeat: int = 20, warmup: int = 3, inner: int = 1):
    """Median GPU time of fn() in microseconds, from CUDA events on the current stream."""
    import cupy

    for _ in range(warmup):
        fn()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(repeat):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) * 1000.0 / inner)
    return statistics.median(times)


def autotune(shapes=None, dtypes=("float32",), code: int = RELU, tiles=None, repeat: int = 20,
             quick: bool = False, write: bool = True, path=None, log=print):
    """Time cublas and each fused tile for the forward and backward pass of each shape; return the
    entries and (write=True) merge them into the table file (default: gpunn/kernels/dense_table.py)."""
    cp = nc.require_kernels("autotune")
    shapes = autotune_shapes(quick) if shapes is None else [tuple(s) for s in shapes]
    tiles = list(dense_cuda.TILES) if tiles is None else list(tiles)
    device = nc.device_name()
    rng = cp.random.default_rng(0)
    entries = []
    broken = set()  # fused tiles that failed to build or run here: skipped from then on, said once
    t0 = time.perf_counter()
    for dtype in dtypes:
        dt = np.dtype(dtype)
        for n, k, m in shapes:
            x = rng.standard_normal((n, k), dtype=np.float64).astype(dt)
            W = (rng.standard_normal((m, k), dtype=np.float64) / math.sqrt(k)).astype(dt)
            b = rng.standard_normal(m, dtype=np.float64).astype(dt)
            dy = rng.standard_normal((n, m), dtype=np.float64).astype(dt)
            impls = ["cublas"] + [f"fused:{t}" for t in tiles]
            for pass_ in PASSES:
                us = {}
                for impl in impls:
                    if impl in broken:
                        continue
                    if impl != "cublas":
                        cfg = dense_cuda.tile_config(impl[6:])
                        if not dense_cuda.fused_fits(max(n, m), cfg):
                            continue
                    try:
                        _, saved = dense_forward(x, W, b, code, impl=impl)
                        if pass_ == "forward":
                            fn = (lambda impl=impl: dense_forward(x, W, b, code, impl=impl))
                        else:
                            fn = (lambda impl=impl, saved=saved: dense_backward(dy, x, W, saved, code, impl=impl))
                        us[impl] = round(median_time_us(fn, repeat), 3)
                    except Exception as err:  # one tile this numba-cuda cannot build must not sink the run
                        if impl == "cublas":
                            raise
                        broken.add(impl)
                        if log:
                            log(f"autotune: {impl} skipped from now on: {type(err).__name__}: {err}")
                best = min(us, key=us.get)
                entries.append({"device": device, "dtype": dt.name, "pass": pass_, "n": n, "k": k, "m": m,
                                "act": "relu" if code == RELU else str(code), "us": us, "best": best})
                if log:
                    log(f"autotune {dt.name} {pass_:8s} n={n:<6d} k={k:<5d} m={m:<5d} "
                        + " ".join(f"{key}={v:.1f}us" for key, v in us.items()) + f" -> {best}")
            del x, W, b, dy
            cp.get_default_memory_pool().free_all_blocks()
    if log:
        log(f"autotune: {len(entries)} entries in {time.perf_counter() - t0:.1f} s on {device}")
    if write:
        write_table(entries, path)
    return entries


def table_source(entries) -> str:
    """The text of dense_table.py holding `entries` (sorted, one dict per entry)."""
    from gpunn.kernels import dense_table

    doc = dense_table.__doc__ or ""
    key = lambda e: (e["device"], e["dtype"], e["pass"], e["n"], e["k"], e["m"])  # noqa: E731
    body = "".join(f"    {pprint.pformat(e, width=120, sort_dicts=True)},\n" for e in sorted(entries, key=key))
    return f'"""{doc}"""\n\nFORMAT = 1\n\nENTRIES = [\n{body}]\n'


def merge_entries(old, new):
    """old entries with those of `new` replacing the ones measured for the same device/dtype/pass/shape."""
    key = lambda e: (e["device"], e["dtype"], e["pass"], e["n"], e["k"], e["m"])  # noqa: E731
    merged = {key(e): e for e in old}
    for e in new:
        merged[key(e)] = e
    return list(merged.values())


def write_table(entries, path=None):
    """Merge `entries` into the table file (default: the installed gpunn/kernels/dense_table.py)."""
    from gpunn.kernels import dense_table

    path = path or dense_table.__file__
    merged = merge_entries(getattr(dense_table, "ENTRIES", []), entries)
    text = table_source(merged)
    compile(text, path, "exec")  # never write a file that does not import
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    reload_table()
    return path


def _main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m gpunn.kernels.dense_dispatch",
                                description="Measure fused vs cuBLAS dense layers and write the dispatch table.")
    p.add_argument("--quick", action="store_true", help="fewer shapes (a few minutes at most)")
    p.add_argument("--dtype", action="append", choices=("float32", "float64"), help="repeatable; default float32")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--out", default=None, help="table file to write (default: gpunn/kernels/dense_table.py)")
    p.add_argument("--json", default=None, help="also write the measured entries as JSON here")
    args = p.parse_args(argv)
    try:
        entries = autotune(dtypes=tuple(args.dtype or ("float32",)), repeat=args.repeat, quick=args.quick,
                           path=args.out)
    except RuntimeError as err:
        print(f"{p.prog}: {err}", file=__import__("sys").stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump(entries, f, indent=1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
