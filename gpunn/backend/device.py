"""Devices: where arrays live and which array module (`xp`) works on them.

A `Device` is a small value object: `Device("cpu")` uses NumPy, `Device("gpu", 0)`
uses CuPy on CUDA device 0. "No GPU" has two causes and gpunn says which one:
CuPy is not installed (install the `gpu` extra), or it is installed but no usable
CUDA device or driver answered (CuPy's own error is quoted).
"""
from __future__ import annotations

import functools
import sys

import numpy as np

_GPU_NAMES = ("gpu", "cuda")
VALID_DEVICE_NAMES = ("auto", "cpu", "gpu", "gpu:N", "cuda", "cuda:N")


class DeviceError(RuntimeError):
    """A device was asked for that cannot be used here; the message says why."""


@functools.lru_cache(maxsize=None)
def gpu_status() -> tuple[bool, str]:
    """Return (usable, reason): whether CuPy can run kernels on a CUDA device here.

    Cached for the process: the answer does not change while it runs.
    """
    try:
        import cupy  # noqa: F401  (imported on first GPU request only)
    except ImportError as err:
        return False, (
            f"CuPy is not installed ({err}); install the GPU extra: "
            "pip install 'gpunn[gpu]' (CUDA 12) or 'gpunn[cuda13]' (CUDA 13)"
        )
    except Exception as err:  # a broken CuPy install raises other errors on import
        return False, f"CuPy is installed but failed to import: {type(err).__name__}: {err}"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:
        return False, f"CuPy is installed but the CUDA driver did not answer: {type(err).__name__}: {err}"
    if n < 1:
        return False, "CuPy is installed but no CUDA device is visible (CUDA_VISIBLE_DEVICES, driver)"
    try:
        x = cupy.arange(4, dtype=cupy.float32)
        float((x * 2).sum())
    except Exception as err:
        return False, f"CuPy sees {n} CUDA device(s) but cannot run a kernel: {type(err).__name__}: {err}"
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    if isinstance(name, bytes):
        name = name.decode()
    return True, f"CUDA device 0 ({name}) is usable through CuPy {cupy.__version__}"


class Device:
    """Where arrays live: `Device("cpu")` or `Device("gpu", index)`.

    `reason` records why `device("auto")` chose it (empty when chosen explicitly).
    """

    __slots__ = ("type", "index", "reason")

    def __init__(self, type: str = "cpu", index: int = 0, reason: str = ""):
        if type not in ("cpu", "gpu"):
            raise ValueError(f"Device type must be 'cpu' or 'gpu', got {type!r}")
        self.type = type
        self.index = int(index) if type == "gpu" else 0
        self.reason = reason

    @property
    def is_gpu(self) -> bool:
        return self.type == "gpu"

    @property
    def xp(self):
        """The array module for this device: numpy or cupy."""
        if self.type == "cpu":
            return np
        import cupy

        return cupy

    def __eq__(self, other) -> bool:
        if isinstance(other, str):
            try:
                other = device(other)
            except (ValueError, DeviceError):
                return False
        return isinstance(other, Device) and (self.type, self.index) == (other.type, other.index)

    def __hash__(self) -> int:
        return hash((self.type, self.index))

    def __str__(self) -> str:
        return "cpu" if self.type == "cpu" else f"gpu:{self.index}"

    def __repr__(self) -> str:
        return f"device('{self}')"


cpu = Device("cpu")


def device(spec="auto") -> Device:
    """Resolve a device name: "auto", "cpu", "gpu", "gpu:N", "cuda", "cuda:N", or a Device.

    "auto" picks the GPU when CuPy can run on one and the CPU otherwise; the
    returned device's `reason` says why. "gpu" where none is usable raises
    DeviceError with the reason. Where a GPU is chosen but gpunn's own kernels cannot
    run on it, a RuntimeWarning says why, once (CuPy arrays then use the reference ops).
    """
    if isinstance(spec, Device):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"device must be a string such as {VALID_DEVICE_NAMES} or a Device, got {type(spec).__name__}")
    name = spec.strip().lower()
    if name == "auto":
        usable, why = gpu_status()
        if usable:
            _say_if_kernels_fall_back()
            return Device("gpu", 0, reason=why)
        return Device("cpu", reason=f"using the CPU: {why}")
    if name == "cpu":
        return cpu
    base, _, idx = name.partition(":")
    if base in _GPU_NAMES:
        if idx and not idx.isdigit():
            raise ValueError(f"Unknown device {spec!r}; valid: {', '.join(VALID_DEVICE_NAMES)}")
        usable, why = gpu_status()
        if not usable:
            raise DeviceError(f"device {spec!r} was asked for but no GPU is usable: {why}")
        index = int(idx) if idx else 0
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
        if index >= count:
            raise DeviceError(f"device {spec!r} was asked for but only {count} CUDA device(s) exist")
        _say_if_kernels_fall_back()
        return Device("gpu", index)
    raise ValueError(f"Unknown device {spec!r}; valid: {', '.join(VALID_DEVICE_NAMES)}")


def _say_if_kernels_fall_back() -> None:
    """Where a GPU is chosen: warn once (RuntimeWarning) if gpunn's own GPU kernels cannot run here,
    so that CuPy arrays use the reference kernels, still on the GPU (numba_cuda.kernel_status runs
    the probe kernel once per process)."""
    from gpunn.backend import numba_cuda

    numba_cuda.fallback_warning(stacklevel=3)


def device_of(array) -> Device:
    """The device an array lives on (NumPy -> cpu, CuPy -> gpu:N)."""
    if isinstance(array, np.ndarray) or np.isscalar(array):
        return cpu
    if is_cupy_array(array):
        return Device("gpu", getattr(getattr(array, "device", None), "id", 0))
    raise TypeError(f"Expected a NumPy or CuPy array, got {type(array).__name__}")


# ----------------------------------------------------------------------------- array kinds
# The one place that answers "is this a CuPy array?" and "which xp?". They sit on hot paths, so
# they are type tests, not Device lookups, and they never import CuPy: an object whose type comes
# from a module named cupy* is a CuPy array, and then CuPy is already in sys.modules.

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
"""The float dtypes gpunn computes in: its CPU and CUDA kernels take these two and no other."""


def is_cupy_array(a) -> bool:
    """Whether `a` is a CuPy array."""
    return type(a).__module__.startswith("cupy")


def is_array(a) -> bool:
    """Whether `a` is a NumPy or CuPy array (not a Tensor, list or scalar)."""
    return isinstance(a, np.ndarray) or is_cupy_array(a)


def on_host(fn):
    """`fn` (NumPy in, one NumPy array out) made callable with CuPy arrays: they are copied to the
    host, fn runs there and its result is copied back. Calls with no CuPy array go straight to fn.
    For reference paths only (a GPU round trip per call)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if not any(is_cupy_array(a) for a in (*args, *kwargs.values())):
            return fn(*args, **kwargs)
        cp = sys.modules["cupy"]

        def host(a):
            return cp.asnumpy(a) if is_cupy_array(a) else a

        return cp.asarray(fn(*map(host, args), **{k: host(v) for k, v in kwargs.items()}))

    return run


def get_array_module(array):
    """numpy for NumPy arrays and scalars (NumPy reductions return scalars), cupy for CuPy arrays;
    TypeError for anything else."""
    if type(array) is np.ndarray or isinstance(array, (np.ndarray, np.generic)):
        return np
    if is_cupy_array(array):
        return sys.modules["cupy"]
    raise TypeError(f"expected a NumPy or CuPy array, got {type(array).__name__}")
