"""Glue between CuPy (arrays, memory pool, streams, cuBLAS) and Numba CUDA (gpunn's own kernels).

Nothing here runs at import: `import gpunn` imports neither CuPy nor numba.cuda and compiles no
kernel. The first GPU kernel call goes through `numba_cuda()`, which configures Numba and imports
numba.cuda; each kernel is compiled the first time its signature is needed (`kernel()`), once per
process, and the compile time is recorded (`compile_log()`, shown by `gpunn info --gpu`).

Streams. Every Numba kernel is launched on CuPy's *current* stream
(`numba.cuda.external_stream(cupy.cuda.get_current_stream().ptr)`; `launch()`), so Numba kernels,
CuPy element-wise kernels and cuBLAS calls run in the order the Python code issues them, with no
synchronisation between them and none with the host.

NUMBA_CUDA_ARRAY_INTERFACE_SYNC=0. A CuPy array handed to a Numba kernel is imported through the
CUDA Array Interface (v3), which carries the stream the producer last used. With the default (1)
Numba *synchronises that stream* for every such argument of every launch: the host waits for all
queued GPU work before each kernel, so nothing overlaps and every launch costs a full GPU
round trip. gpunn launches on the very stream CuPy uses, so stream order already guarantees that a
kernel sees its inputs finished; `numba_cuda()` therefore sets the variable (and Numba's config
attribute, which Numba reads at call time) to 0 before numba.cuda initialises. The price: code
that hands gpunn arrays produced on *another* stream must synchronise that stream itself (as with
any CUDA library). A value the user set explicitly in the environment is respected. The same
goes for NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0: Numba would otherwise warn at every launch of fewer
than 128 blocks, i.e. at every small layer. Warnings raised while importing numba.cuda or
compiling a kernel are recorded (`KERNELS.warnings`, shown by `gpunn info --gpu`), not raised.

TF32. gpunn never enables TF32: float32 GEMMs in cuBLAS use full float32 unless the user sets
CUPY_TF32=1 (CuPy's own switch, off by default); `tf32_status()` reports it.

Simulator. With NUMBA_ENABLE_CUDASIM=1 (set before numba is imported) numba.cuda is Numba's CPU
simulator: kernels run on NumPy arrays, one Python thread per CUDA thread. gpunn's kernel modules
then accept NumPy arrays, launch on stream 0 and use small launch geometries; the tests use this.
CuPy arrays cannot be used with the simulator. Two simulator quirks are handled in `_simulate`:
it copies every array argument back after a launch (so never pass an aliased array for an unused
argument: `dummy()`), and it allocates shared arrays without a lock (patched: see
`_lock_simulator_shared_arrays`).
"""
from __future__ import annotations

import functools
import math
import os
import sys
import threading
import time
import warnings

import numpy as np

# nc.xp_of and nc.is_cupy, as the kernel modules spell them: gpunn.backend.device's one definition of each
from gpunn.backend.device import get_array_module as xp_of, is_cupy_array as is_cupy

SYNC_ENV = "NUMBA_CUDA_ARRAY_INTERFACE_SYNC"
SIM_ENV = "NUMBA_ENABLE_CUDASIM"

_configured = False
_config_lock = threading.Lock()


def _set_config(name: str, value: int) -> None:
    """Set a Numba CUDA setting on every Numba config object that may hold it (built-in numba.cuda
    reads numba.core.config at call time; the numba-cuda package may keep its own)."""
    seen = set()
    for modname in ("numba.core.config", "numba.cuda.core.config", "numba.cuda.config", "numba.cuda.api"):
        mod = sys.modules.get(modname)
        if mod is None:
            continue
        cfg = getattr(mod, "config", mod) if modname.endswith(".api") else mod
        if id(cfg) in seen:
            continue
        seen.add(id(cfg))
        if hasattr(cfg, name) or modname == "numba.core.config":
            try:
                setattr(cfg, name, value)
            except Exception:  # pragma: no cover - an exotic config object
                pass


# Numba settings gpunn chooses (each overridable by setting its variable in the environment):
#   CUDA_ARRAY_INTERFACE_SYNC  0: no stream synchronisation per CuPy argument (module docstring)
#   CUDA_LOW_OCCUPANCY_WARNINGS 0: no NumbaPerformanceWarning for grids under 128 blocks -- a small
#                              layer is a small grid by nature, and the warning would fire on every
#                              such launch (and fail code that turns warnings into errors)
_SETTINGS = {"CUDA_ARRAY_INTERFACE_SYNC": SYNC_ENV,
             "CUDA_LOW_OCCUPANCY_WARNINGS": "NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS"}


def _int_env(env: str, default: str) -> int:
    value = os.environ.setdefault(env, default)
    try:
        return int(value)
    except ValueError:
        return int(default)


def numba_cuda():
    """numba.cuda, configured for CuPy interoperation (see the module docstring). Lazy and idempotent."""
    global _configured
    if not _configured:
        with _config_lock:
            if not _configured:
                settings = {name: _int_env(env, "0") for name, env in _SETTINGS.items()}
                import numba.core.config  # noqa: F401  (numba itself is already loaded by the CPU kernels)

                for name, value in settings.items():
                    _set_config(name, value)
                with warnings.catch_warnings(record=True) as caught:  # kept for `gpunn info --gpu`
                    warnings.simplefilter("always")
                    import numba.cuda  # noqa: F401
                KERNELS.warnings.extend(("import numba.cuda", f"{w.category.__name__}: {w.message}") for w in caught)

                for name, value in settings.items():  # again: numba.cuda may have its own config module
                    _set_config(name, value)
                _configured = True
    import numba.cuda

    return numba.cuda


def bind_numba_cuda(namespace: dict):
    """numba.cuda (`numba_cuda()`), also stored as `namespace["cuda"]`: a kernel module calls this
    with its globals() before building kernels, because kernels must reach numba.cuda as a module
    global (Numba's simulator swaps module globals that are numba.cuda, not closure variables)."""
    cuda = namespace.get("cuda")
    if cuda is None:
        cuda = namespace["cuda"] = numba_cuda()
    return cuda


def is_simulator() -> bool:
    """True when numba.cuda is Numba's CPU simulator (NUMBA_ENABLE_CUDASIM=1 before numba's import)."""
    try:
        from numba.core import config

        return bool(getattr(config, "ENABLE_CUDASIM", 0))
    except ImportError:  # pragma: no cover
        return os.environ.get(SIM_ENV, "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def kernel_status() -> tuple[bool, str]:
    """(usable, reason): whether gpunn's Numba CUDA kernels can run on CuPy arrays here.

    Needs CuPy on a usable device (`gpu_status()`), numba.cuda on real hardware (not the
    simulator) and a CUDA driver Numba can use. Cached for the process.
    """
    from gpunn.backend.device import gpu_status

    usable, why = gpu_status()
    if not usable:
        return False, why
    if is_simulator():
        return False, (f"{SIM_ENV}=1: numba.cuda is Numba's CPU simulator, which cannot run kernels on "
                       "CuPy arrays (unset it to use the GPU kernels)")
    try:
        cuda = numba_cuda()
    except Exception as err:  # numba-cuda missing or broken
        return False, f"numba.cuda cannot be imported: {type(err).__name__}: {err} (pip install 'gpunn[gpu]')"
    try:
        if not cuda.is_available():
            return False, "numba.cuda sees no usable CUDA device or driver (numba -s explains why)"
    except Exception as err:  # pragma: no cover - driver trouble
        return False, f"numba.cuda failed to probe the driver: {type(err).__name__}: {err}"
    return True, f"Numba CUDA kernels on CuPy's current stream ({why})"


class KernelsUnavailable(RuntimeError):
    """Raised by `require_kernels` where gpunn's GPU kernels cannot run (the message says why)."""


def require_kernels(what: str):
    """CuPy, for `what` (a tool that needs gpunn's GPU kernels: autotune, the GPU benchmarks);
    KernelsUnavailable with the reason where they cannot run (`kernel_status`)."""
    usable, why = kernel_status()
    if not usable:
        raise KernelsUnavailable(f"{what}: needs the GPU kernels, which cannot run here: {why}")
    import cupy

    return cupy


def tf32_status() -> str:
    """Whether float32 cuBLAS GEMMs may use TF32 (only if the user set CUPY_TF32=1; gpunn never does)."""
    v = os.environ.get("CUPY_TF32", "")
    if v and v != "0":
        return f"TF32 ENABLED by the environment (CUPY_TF32={v!r}): float32 cuBLAS GEMMs lose precision"
    return "TF32 off (CUPY_TF32 unset; gpunn never enables it)"


# ------------------------------------------------------------------------------------------ streams

_streams: dict = {}


def _device_id(like) -> int:
    dev = getattr(like, "device", None)
    return int(getattr(dev, "id", 0) or 0)


def stream_for(like):
    """The Numba stream to launch on for arrays like `like`: CuPy's current stream (0 in the simulator)."""
    if not is_cupy(like):
        return 0
    import cupy

    ptr = cupy.cuda.get_current_stream().ptr
    if ptr == 0:  # CuPy's legacy default stream is Numba's default stream 0
        return 0
    key = (_device_id(like), ptr)
    s = _streams.get(key)
    if s is None:
        s = numba_cuda().external_stream(ptr)
        _streams[key] = s
    return s


def launch(kernel, grid, block, like, *args) -> None:
    """Launch `kernel[grid, block, stream](*args)` on CuPy's current stream for `like`'s device."""
    stream = stream_for(like)
    if not is_cupy(like):
        _simulate(kernel, grid, block, args)
        return
    dev = _device_id(like)
    if dev:
        with numba_cuda().gpus[dev]:
            kernel[grid, block, stream](*args)
    else:
        kernel[grid, block, stream](*args)


_simulator_patched = False


def _lock_simulator_shared_arrays() -> None:
    """Numba's simulator allocates a block's shared arrays without a lock (FakeCUDAShared.array
    looks the array up by the caller's file and line, then creates and stores it), so two threads
    that reach a `cuda.shared.array` line together can get DIFFERENT arrays and the block computes
    garbage, now and then. Replace it (once, simulator only) by the same lookup under a lock."""
    global _simulator_patched
    if _simulator_patched:
        return
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    cls = kernelapi.FakeCUDAShared
    original = cls.array
    lock = threading.Lock()

    def array(self, shape, dtype):
        if shape == 0:  # dynamic shared memory: one buffer, no lookup
            return original(self, shape, dtype)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            res = self._allocations.get(key)
            if res is None:
                res = np.empty(shape, dtype)
                self._allocations[key] = res
        return res

    cls.array = array
    _simulator_patched = True


def _simulate(kernel, grid, block, args) -> None:
    """A launch on NumPy arrays (Numba's simulator). It copies every array argument back after the
    launch, so read-only ones are passed as copies. Its scheduler busy-polls its block threads;
    a short GIL switch interval during the launch makes it several times faster. Its shared-array
    allocation is made thread-safe first (`_lock_simulator_shared_arrays`)."""
    _lock_simulator_shared_arrays()
    args = tuple(a.copy() if isinstance(a, np.ndarray) and not a.flags.writeable else a for a in args)
    old = sys.getswitchinterval()
    sys.setswitchinterval(min(old, 2e-4))
    try:
        kernel[grid, block, 0](*args)
    finally:
        sys.setswitchinterval(old)


# ------------------------------------------------------------------------------------------ kernels

class KernelRegistry:
    """Compiled kernels by key (family, dtype, specialisation constants, geometry). Each is built
    once per process, on first use, and its build (compile) time is recorded."""

    def __init__(self):
        self._kernels: dict = {}
        self._log: list = []
        self._lock = threading.RLock()  # a build may ask for the device functions it calls
        self._nested = 0.0
        self.warnings: list = []  # (key, text) of warnings raised while importing numba.cuda or compiling

    def get(self, key, build):
        k = self._kernels.get(key)
        if k is None:
            with self._lock:
                k = self._kernels.get(key)
                if k is None:
                    outer_nested, self._nested = self._nested, 0.0
                    t0 = time.perf_counter()
                    try:
                        # Compiler warnings are recorded, not raised: a first call made under
                        # warnings-as-errors (as the tests do) must not fail because Numba/NVVM
                        # had something to say while compiling. `gpunn info --gpu` lists them.
                        with warnings.catch_warnings(record=True) as caught:
                            warnings.simplefilter("always")
                            k = build()
                        self.warnings.extend((key, f"{w.category.__name__}: {w.message}") for w in caught)
                    finally:
                        total = time.perf_counter() - t0
                        inner, self._nested = self._nested, outer_nested + total
                    self._log.append((key, total - inner))  # this build's own time
                    self._kernels[key] = k
        return k

    def compile_log(self) -> list:
        """[(key, seconds)] in compile order."""
        return list(self._log)

    def __len__(self) -> int:
        return len(self._kernels)


KERNELS = KernelRegistry()


def kernel(key, build):
    """The compiled kernel for `key`, built by `build()` on first use (see KernelRegistry)."""
    return KERNELS.get(key, build)


def compile_log() -> list:
    return KERNELS.compile_log()


# Set by gpunn.backend.cuda_offline.offline_build: compile for a target architecture, not a device.
_jit_override = None


def jit(sig, fn, launch_bounds=None):
    """Compile the kernel `fn` for exactly one explicit signature (eagerly on a GPU; the simulator
    only wraps it). A call with other argument types is then a TypeError, never a silent recompile.
    launch_bounds: (max threads per block, min blocks per SM) or None; the simulator ignores it."""
    if _jit_override is not None:
        return _jit_override(sig, fn, launch_bounds)
    cuda = numba_cuda()
    if launch_bounds is None or is_simulator():
        return cuda.jit(sig)(fn)
    try:
        decorate = cuda.jit(sig, launch_bounds=launch_bounds)
    except TypeError as err:
        raise RuntimeError(f"kernel {fn.__name__}: launch bounds {launch_bounds} need a numba-cuda that "
                           f"supports them (pip install -U numba-cuda): {err}") from None
    return decorate(fn)


def device_jit(fn):
    """A device function (typed when the kernel that calls it is compiled)."""
    return numba_cuda().jit(device=True)(fn)


# ------------------------------------------------------------------------------------------ types

def nbtype(dtype):
    """The Numba scalar type of a NumPy dtype."""
    import numba

    return numba.from_dtype(np.dtype(dtype))


def arr(dtype, ndim: int = 1):
    """A C-contiguous Numba array type."""
    from numba.core import types

    return types.Array(nbtype(dtype), ndim, "C")


def void(*argtypes):
    from numba.core import types

    return types.void(*argtypes)


# ------------------------------------------------------------------------------------------ geometry

@functools.lru_cache(maxsize=None)
def sm_count(device_id: int = 0) -> int:
    """Streaming multiprocessors of a device (1 in the simulator, 132 assumed if it cannot be read)."""
    if is_simulator():
        return 1
    try:
        import cupy

        return int(cupy.cuda.Device(device_id).attributes["MultiProcessorCount"])
    except Exception:
        return 132


@functools.lru_cache(maxsize=None)
def device_name(device_id: int = 0) -> str:
    """The CUDA device's name ("simulator" under the simulator)."""
    if is_simulator():
        return "simulator"
    try:
        import cupy

        name = cupy.cuda.runtime.getDeviceProperties(device_id)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return "unknown"


ELEMENTWISE_THREADS = 256


def elementwise_geometry(n: int, like) -> tuple[int, int]:
    """(blocks, threads) for a grid-stride loop over n elements: 256 threads per block, at most 32
    blocks per SM (the loop covers the rest); 8 threads and at most 2 blocks in the simulator."""
    if not is_cupy(like):
        threads = 8
        return max(1, min(math.ceil(n / threads), 2)), threads
    threads = ELEMENTWISE_THREADS
    return max(1, min(math.ceil(n / threads), 32 * sm_count(_device_id(like)))), threads


_dummies: dict = {}


def dummy(like, dtype=None, ndim: int = 1):
    """A cached one-element array (of `like`'s kind, device and dtype) to pass for a kernel argument
    the specialised kernel never touches. Never pass an aliased real array instead: the simulator
    copies every argument back after a launch, so an unused alias would undo the real writes."""
    dt = np.dtype(dtype or like.dtype)
    key = (type(like), _device_id(like) if is_cupy(like) else -1, dt.str, ndim)
    d = _dummies.get(key)
    if d is None:
        xp = xp_of(like)
        if is_cupy(like):
            with xp.cuda.Device(_device_id(like)):
                d = xp.zeros((1,) * ndim, dtype=dt)
        else:
            d = xp.zeros((1,) * ndim, dtype=dt)
        _dummies[key] = d
    return d
