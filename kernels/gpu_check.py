"""The Python stages of kernels/gpu_check.sh; each writes its JSON file as it goes, so whatever it
measured is on disk when its time limit stops it.

    python3 kernels/gpu_check.py probe    --json F   versions, NVVM, the probe kernel on two streams
    python3 kernels/gpu_check.py bench    --json F   launch overhead, fused vs cuBLAS, training vs PyTorch
    python3 kernels/gpu_check.py autotune --json F   dense_dispatch autotune, shape by shape

GPUNN_STAGE_DEADLINE (time.time() seconds, set by gpu_check.sh): no new measurement starts after it.
The benchmark and autotune parts are the functions of bench_dense_gpu.py, bench_train_gpu.py and
gpunn.kernels.dense_dispatch, called with a deadline.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # kernels/ is a folder of scripts

# The launch-overhead benchmark's dense layer, and the fused-vs-cuBLAS shapes (batch, width)
LAUNCH_DENSE = (64, 512, 512)
DENSE_GRID = [(64, 512), (1024, 1024), (16384, 1024)]
TRAIN_SHAPES = ("mnist", "digits", "narrow", "wide")  # bench_train.py's three CPU shapes + 4096^3 at 4096


def deadline() -> float:
    """The stage's deadline (time.time() seconds) from GPUNN_STAGE_DEADLINE; far away without it."""
    try:
        return float(os.environ.get("GPUNN_STAGE_DEADLINE", "") or "inf")
    except ValueError:
        return float("inf")


class Report:
    """A JSON document written (atomically) to `path` every time `write()` is called."""

    def __init__(self, path, stage):
        self.path = path
        self.data = {"stage": stage, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "finished": False}
        self.t0 = time.perf_counter()

    def write(self, finished=False):
        self.data["seconds"] = round(time.perf_counter() - self.t0, 1)
        self.data["finished"] = finished
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=str)
        os.replace(tmp, self.path)


def _version(dist):
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _try(fn):
    try:
        return fn()
    except Exception as err:
        return f"{type(err).__name__}: {err}"


def versions() -> dict:
    """Versions of everything the GPU path depends on (None: not installed)."""
    out = {"python": platform.python_version()}
    for dist in ("numpy", "numba", "numba-cuda", "cuda-core", "cuda-bindings", "cuda-pathfinder", "cupy-cuda13x",
                 "cupy-cuda12x", "torch", "jax", "pytest", "pytest-timeout"):
        out[dist] = _version(dist)
    out["pytest_timeout_importable"] = importlib.util.find_spec("pytest_timeout") is not None
    try:
        import cupy

        rt = cupy.cuda.runtime
        out["driver"] = _try(rt.driverGetVersion)
        out["cuda_runtime"] = _try(rt.runtimeGetVersion)
        props = rt.getDeviceProperties(0)
        name = props["name"]
        out["device"] = name.decode() if isinstance(name, bytes) else str(name)
        out["compute_capability"] = f"{props['major']}.{props['minor']}"
    except Exception as err:
        out["cupy"] = f"{type(err).__name__}: {err}"
    return out


def stage_probe(path) -> int:
    """Versions, where NVVM was found, and the probe kernel launched on CuPy's default stream and on
    a new non-blocking stream (result checked). Exit status 1 if a launch failed."""
    from gpunn.backend import numba_cuda as nc

    rep = Report(path, "probe")
    rep.data["versions"] = versions()
    rep.write()
    rep.data["cuda_home_before"] = os.environ.get("CUDA_HOME")
    rep.data["numba_cuda_import"] = _try(lambda: bool(nc.numba_cuda()) and "ok")
    rep.data["nvvm_gpunn"] = nc.NVVM_STATUS
    rep.data["cuda_home_after"] = os.environ.get("CUDA_HOME")
    rep.data["default_stream_handle"] = nc.default_stream_handle()
    rep.write()

    def numba_paths():
        from numba.cuda.cuda_paths import get_cuda_paths

        return {k: list(v) if isinstance(v, tuple) else str(v) for k, v in get_cuda_paths().items()}

    rep.data["numba_cuda_paths"] = _try(numba_paths)
    rep.data["probe"] = nc.probe(("current", "new"))
    rep.data["kernel_status"] = list(nc.kernel_status())
    rep.write(finished=True)
    v = rep.data["versions"]
    print("versions:", ", ".join(f"{k} {v[k]}" for k in ("driver", "cuda_runtime", "device", "cupy-cuda13x",
                                                          "cupy-cuda12x", "numba", "numba-cuda", "cuda-core", "torch")
                                 if v.get(k)))
    print("nvvm:", rep.data["nvvm_gpunn"])
    print("probe:", json.dumps(rep.data["probe"], default=str))
    print("kernel_status:", rep.data["kernel_status"])
    ok = all(rep.data["probe"].get(s) == "ok" for s in ("current", "new"))
    return 0 if ok else 1


def _host_us_per_call(fn, calls, sync):
    """Host microseconds per call of `fn` over `calls` calls (queued, then one sync), best of 3."""
    best = float("inf")
    for _ in range(3):
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter()
        sync()
        best = min(best, (t1 - t0) / calls * 1e6)
    return round(best, 2)


def _empty_kernel():
    pass


def launch_overhead(cp, torch) -> dict:
    """Host time per launch: an empty Numba kernel (raw numba launch vs gpunn's launch()), the
    argument check alone on 5 CuPy arrays, one gpunn dense forward at batch 64 vs torch."""
    import numpy as np

    from gpunn.backend import numba_cuda as nc
    from gpunn.kernels import dense_dispatch
    from gpunn.kernels.activations import RELU

    sync = cp.cuda.get_current_stream().synchronize
    out = {}
    empty = nc.kernel(("gpu_check_empty",), lambda: nc.jit(nc.void(), _empty_kernel))
    like = cp.zeros(1, cp.float32)
    stream = nc.stream_for(like)
    out["empty_kernel_numba_us"] = _host_us_per_call(lambda: empty[1, 1, stream](), 2000, sync)
    out["empty_kernel_gpunn_launch_us"] = _host_us_per_call(lambda: nc.launch(empty, 1, 1, like), 2000, sync)
    n, k, m = LAUNCH_DENSE
    x = cp.random.standard_normal((n, k), dtype=np.float32)
    W = cp.random.standard_normal((m, k), dtype=np.float32)
    b = cp.zeros(m, cp.float32)
    spec_kernel = nc.kernel(("gpu_check_spec",), lambda: nc.jit(
        nc.void(*(nc.arr(np.float32, 2),) * 5), _empty_kernel5))
    args = (x, W, x, x, x)
    out["check_launch_args_5_arrays_us"] = _host_us_per_call(lambda: nc.check_launch_args(spec_kernel, args),
                                                             20000, sync)
    for impl in ("fused", "cublas"):
        dense_dispatch.dense_forward(x, W, b, RELU, impl=impl)
        out[f"dense_forward_{n}x{k}x{m}_{impl}_us"] = _host_us_per_call(
            lambda impl=impl: dense_dispatch.dense_forward(x, W, b, RELU, impl=impl), 500, sync)
    if torch is not None:
        tx, tW, tb = (torch.as_tensor(a, device="cuda") for a in (x, W, b))
        out[f"torch_addmm_relu_{n}x{k}x{m}_us"] = _host_us_per_call(
            lambda: torch.relu(torch.addmm(tb, tx, tW.t())), 500, torch.cuda.synchronize)
    return out


def _empty_kernel5(a, b, c, d, e):
    pass


def stage_bench(path) -> int:
    """Launch overhead, then fused dense vs cuBLAS+epilogue on DENSE_GRID, then training steps vs
    PyTorch eager on TRAIN_SHAPES, in this one process, writing after each part/shape."""
    import bench_dense_gpu
    import bench_train_gpu

    from gpunn.backend import numba_cuda as nc

    rep = Report(path, "bench")
    cp = nc.require_kernels("gpu_check bench")
    torch = bench_dense_gpu.torch_cuda()
    rep.data.update(device=nc.device_name(), torch=torch.__version__ if torch else None, cupy=cp.__version__)
    rep.data["launch"] = _try(lambda: launch_overhead(cp, torch))
    print("launch overhead:", json.dumps(rep.data["launch"]), flush=True)
    rep.write()
    rep.data["dense"] = bench_dense_gpu.run(rounds=3, grid=DENSE_GRID, deadline=deadline())
    rep.write()
    rep.data["train"] = []
    for prefix in TRAIN_SHAPES:
        result = bench_train_gpu.bench(quick=True, rounds=3, only=prefix, deadline=deadline())
        rep.data["train"].extend(result["rows"])
        rep.data.setdefault("train_left_out_for_time", []).extend(result["left_out_for_time"])
        rep.write()
    rep.write(finished=True)
    return 0


def stage_autotune(path) -> int:
    """dense_dispatch's autotune on its --quick shapes, one shape at a time until the deadline; the
    JSON holds the entries measured so far and the dense_table.py text they make."""
    from gpunn.kernels import dense_dispatch as dd

    rep = Report(path, "autotune")
    shapes = dd.autotune_shapes(quick=True)
    rep.data.update(shapes=[list(s) for s in shapes], entries=[], left_out_for_time=[])
    rep.write()
    for shape in shapes:
        if time.time() > deadline():
            rep.data["left_out_for_time"].append(list(shape))
            continue
        rep.data["entries"].extend(dd.autotune(shapes=[shape], repeat=10, write=False))
        rep.data["dense_table_py"] = dd.table_source(rep.data["entries"])
        rep.write()
    rep.write(finished=True)
    return 0


STAGES = {"probe": stage_probe, "bench": stage_bench, "autotune": stage_autotune}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=sorted(STAGES))
    ap.add_argument("--json", default=None, help="write the stage's results here (as it goes)")
    args = ap.parse_args(argv)
    from gpunn.backend.numba_cuda import KernelsUnavailable

    try:
        return STAGES[args.stage](args.json)
    except KernelsUnavailable as err:
        print(err, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
