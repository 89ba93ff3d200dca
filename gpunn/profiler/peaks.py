"""The device's peaks, which "% of peak" and the roofline's roofs are drawn against.

A GPU is looked up in `KNOWN_DEVICES` (vendor figures, FP32 without tensor cores). Anything else (a
CPU, an unlisted GPU) is measured once by `calibrate`: the best of a few large GEMMs (GFLOP/s, per
float dtype) and of a large array copy (GB/s, bytes read plus bytes written, as STREAM's copy
counts them). Measurements are cached in `peaks.json` under `$GPUNN_CACHE_DIR` (default
`$XDG_CACHE_HOME/gpunn`, else `~/.cache/gpunn`), keyed by the device and the BLAS-related
environment, so the calibration runs once per machine. A figure measured while the machine was busy
is too low: a profile that achieves more than 100% of a cached peak measures it again (once), and
`gpunn profile --remeasure-peaks` measures it again before profiling. A profile can be given peaks instead
(`profile(peaks={"gflops": ..., "gbps": ...})`).
"""
from __future__ import annotations

import json
import os
import platform
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date

import numpy as np

__all__ = ["Peaks", "KNOWN_DEVICES", "device_peaks", "calibrate", "cache_path"]

# (pattern matched against the upper-cased device name, label, FP32 TFLOP/s, FP64 TFLOP/s or None, TB/s)
KNOWN_DEVICES = (
    (r"\bH200\b", "H200", 67.0, 34.0, 4.8),
    (r"\bH100\b.*\bPCIE\b", "H100 PCIe", 51.0, 26.0, 2.0),
    (r"\bH100\b.*\bNVL\b", "H100 NVL", 60.0, 30.0, 3.9),
    (r"\bH100\b", "H100 SXM", 67.0, 34.0, 3.35),
    (r"\bA100\b.*\b80GB\b.*\bPCIE\b", "A100 80GB PCIe", 19.5, 9.7, 1.935),
    (r"\bA100\b.*\b80GB\b", "A100 80GB SXM", 19.5, 9.7, 2.039),
    (r"\bA100\b", "A100 40GB", 19.5, 9.7, 1.555),
    (r"\bL40S\b", "L40S", 91.6, None, 0.864),
    (r"\bL4\b", "L4", 30.3, None, 0.3),
    (r"\bV100\b", "V100", 15.7, 7.8, 0.9),
    (r"\bT4\b", "T4", 8.1, None, 0.32),
    (r"\bRTX 4090\b", "GeForce RTX 4090", 82.6, None, 1.008),
)

# Environment variables that change a CPU's GEMM or copy speed: part of the cache key.
_BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
             "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


@dataclass(frozen=True)
class Peaks:
    """Peak compute (GFLOP/s per float dtype) and memory bandwidth (GB/s) of one device."""

    device: str
    name: str
    gflops: dict = field(default_factory=dict)
    gbps: float | None = None
    source: str = ""
    cached: bool = False  # read from the cache of an earlier measurement (see Profile: re-measured if exceeded)

    def flops_for(self, dtype) -> float | None:
        """Peak GFLOP/s for a dtype name ("float32"); float32's when the dtype is not listed."""
        if dtype in self.gflops:
            return self.gflops[dtype]
        return self.gflops.get("float32")

    def describe(self) -> str:
        parts = [f"{v:,.0f} GFLOP/s {k}" for k, v in self.gflops.items() if v]
        if self.gbps:
            parts.append(f"{self.gbps:,.1f} GB/s")
        return f"{self.name}: {', '.join(parts) or 'unknown'} ({self.source})"


def cache_path() -> str:
    """Where measured peaks are kept: $GPUNN_CACHE_DIR/peaks.json (default ~/.cache/gpunn)."""
    root = os.environ.get("GPUNN_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "gpunn")
    return os.path.join(root, "peaks.json")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _gpu_index(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else 0


def _device_name(device: str) -> str:
    """"AMD EPYC (2 cpus)" for "cpu"; CUDA's name ("NVIDIA H100 80GB HBM3") for "gpu:N"."""
    if device == "cpu":
        return f"{_cpu_name()} ({os.cpu_count()} cpus)"
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(_gpu_index(device))["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def _key(device: str, name: str) -> str:
    if device != "cpu":
        return f"{device}|{name}"
    env = ",".join(f"{k}={os.environ[k]}" for k in _BLAS_ENV if k in os.environ)
    return f"cpu|{name}|{os.cpu_count()} cpus|{env}"


def _table(name: str, device: str) -> Peaks | None:
    upper = name.upper()
    for pattern, label, fp32, fp64, tbs in KNOWN_DEVICES:
        if re.search(pattern, upper):
            gflops = {"float32": fp32 * 1e3}
            if fp64 is not None:
                gflops["float64"] = fp64 * 1e3
            return Peaks(device, name, gflops, tbs * 1e3, f"table: {label}")
    return None


def _load_cache() -> dict:
    try:
        with open(cache_path()) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(key: str, entry: dict) -> None:
    """Add one entry atomically (temp file + rename); an unwritable cache is not an error."""
    path = cache_path()
    data = _load_cache()
    data[key] = entry
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".peaks-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass


def _best(fn, reps: int) -> float:
    """The shortest of `reps` timed calls of fn (seconds); fn returns after its work is done."""
    fn()  # warm-up: page faults, BLAS thread start, CUDA context and kernels
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _measure(xp, sync, gemm_n=1024, copy_mib=128, reps=4) -> tuple[dict, float, str]:
    """GEMM GFLOP/s per float dtype and copy GB/s with array module xp (numpy or cupy)."""
    gflops = {}
    for dtype, n in (("float32", gemm_n), ("float64", max(gemm_n * 3 // 4, 64))):
        a = xp.ones((n, n), dtype=dtype)
        b = xp.ones((n, n), dtype=dtype)
        c = xp.empty((n, n), dtype=dtype)

        def gemm():
            xp.matmul(a, b, out=c)
            sync()

        gflops[dtype] = 2.0 * n ** 3 / _best(gemm, reps) / 1e9
    n = copy_mib * 2 ** 20 // 4
    src = xp.ones(n, dtype=np.float32)
    dst = xp.empty_like(src)

    def copy():
        dst[...] = src
        sync()

    gbps = 2.0 * src.nbytes / _best(copy, reps + 1) / 1e9
    how = (f"measured {date.today().isoformat()}: best of {reps} GEMMs of {gemm_n}^2 (float32), "
           f"copy of {copy_mib} MiB")
    return gflops, gbps, how


def calibrate(device: str = "cpu", *, save: bool = True, **sizes) -> Peaks:
    """Measure the peaks of "cpu" or "gpu:N" now (about a second) and cache them (`save`)."""
    name = _device_name(device)
    if device == "cpu":
        gflops, gbps, how = _measure(np, lambda: None, **sizes)
    else:
        import cupy

        sizes = {"gemm_n": 4096, "copy_mib": 512, **sizes}  # large enough to fill a data-centre GPU
        with cupy.cuda.Device(_gpu_index(device)):
            gflops, gbps, how = _measure(cupy, cupy.cuda.get_current_stream().synchronize, **sizes)
    peaks = Peaks(device, name, gflops, gbps, how)
    if save:
        _save_cache(_key(device, name), {"name": name, "gflops": gflops, "gbps": gbps, "source": how})
    return peaks


def device_peaks(device: str = "cpu", *, recalibrate: bool = False) -> Peaks:
    """The peaks of "cpu" or "gpu:N": the table for a known GPU, else the cached measurement, else
    a calibration run (cached for next time)."""
    name = _device_name(device)
    if device != "cpu" and not recalibrate:
        known = _table(name, device)
        if known is not None:
            return known
    if not recalibrate:
        hit = _load_cache().get(_key(device, name))
        if isinstance(hit, dict) and isinstance(hit.get("gflops"), dict):
            return Peaks(device, hit.get("name", name), dict(hit["gflops"]), hit.get("gbps"),
                         f"{hit.get('source', 'measured')}; cached in {cache_path()}", cached=True)
    return calibrate(device)
