"""Glue between CuPy (arrays, memory pool, streams, cuBLAS) and Numba CUDA (gpunn's own kernels).

Nothing here runs at import: `import gpunn` imports neither CuPy nor numba.cuda and compiles no
kernel. The first GPU kernel call goes through `numba_cuda()`, which configures Numba and imports
numba.cuda; each kernel is compiled the first time its signature is needed (`kernel()`), once per
process, and the compile time is recorded (`compile_log()`, shown by `gpunn info --gpu`).

Streams and how arrays reach a kernel. Every Numba kernel is launched on CuPy's *current* stream
(`launch()` -> `stream_for()`: `numba.cuda.external_stream(ptr)`), so Numba kernels, CuPy
element-wise kernels and cuBLAS calls run in the order the Python code issues them, with no
synchronisation between them and none with the host. numba-cuda (0.30) hands a CuPy array to a
kernel through DLPack first (`cupy.ndarray.__dlpack__(stream=<launch stream>)`, via cuda-core's
StridedMemoryView), and only objects without `__dlpack__` through the CUDA Array Interface. CuPy,
as the DLPack producer, orders the streams itself: when the consumer stream differs from its
current stream it records an event on its current stream and makes the consumer wait on it (no
host synchronisation); when they are the same it does nothing. Launching on CuPy's current stream
is therefore what keeps every launch free of extra work. CuPy's default ("null") stream has
pointer 0, which is not a valid DLPack stream; gpunn names it explicitly instead -- the legacy
default stream (CU_STREAM_LEGACY, 1), or the per-thread one (2) when CuPy runs with
CUPY_CUDA_PER_THREAD_DEFAULT_STREAM=1 (CuPy's own rule, `cupy_backends.cuda.stream.
get_default_stream_ptr()`) -- so both libraries mean the same stream whatever the cuda-core version
makes of a stream 0 (None, or a literal 0 that CuPy answers with a warning).

NUMBA_CUDA_ARRAY_INTERFACE_SYNC=0 is still set (before numba.cuda initialises, a value the user set
is respected): it matters only for arrays that reach Numba through the CUDA Array Interface (no
`__dlpack__`), where the default (1) would make the host wait for the producer's stream at every
launch. It does not order anything for CuPy arrays. The same goes for
NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0: Numba would otherwise warn at every launch of fewer than 128
blocks, i.e. at every small layer. Warnings raised while importing numba.cuda or compiling a
kernel are recorded (`KERNELS.warnings`, shown by `gpunn info --gpu`), not raised.

Launch checks. Every kernel is compiled for one explicit signature, and numba-cuda does not check
the arguments of such a kernel at launch: a float64 array passed for float32 or a transposed view
passed for a C-contiguous array would be read as raw memory. `launch()` therefore checks the dtype,
ndim and C-contiguity of every array argument against the signature (`check_launch_args`, the
expected types cached per kernel) and raises LaunchArgumentError naming the kernel and argument.

Whether the kernels run here (`kernel_status()`) is decided by compiling and launching one probe
kernel on CuPy's current stream and checking its result (`probe()`), not by asking the driver.
Before the first compile, `ensure_nvvm()` makes sure numba-cuda will find NVVM: when cuda-pathfinder
finds no libnvvm (no wheel, no CUDA_HOME) it sets CUDA_HOME to the toolkit of the nvcc on PATH or
to /usr/local/cuda, or says exactly what is missing.

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

import contextlib
import functools
import math
import operator
import os
import shutil
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
#   CUDA_ARRAY_INTERFACE_SYNC  0: no host wait per argument that arrives through the CUDA Array
#                              Interface (CuPy arrays arrive through DLPack: module docstring)
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
                if not is_simulator():
                    ensure_nvvm()  # before numba-cuda looks for NVVM (at its first compile)
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
    """(usable, reason): whether gpunn's Numba CUDA kernels run on CuPy arrays here.

    Decided by running them: CuPy on a usable device (`gpu_status()`), numba.cuda on real hardware
    (not the simulator), then the probe kernel compiled, launched on CuPy's current stream and its
    result checked (`probe()`). Never raises; cached for the process.
    """
    from gpunn.backend.device import gpu_status

    usable, why = gpu_status()
    if not usable:
        return False, why
    if is_simulator():
        return False, (f"{SIM_ENV}=1: numba.cuda is Numba's CPU simulator, which cannot run kernels on "
                       "CuPy arrays (unset it to use the GPU kernels)")
    try:
        numba_cuda()
    except Exception as err:  # numba-cuda missing or broken
        return False, f"numba.cuda cannot be imported: {type(err).__name__}: {err} (pip install 'gpunn[gpu]')"
    result = probe(("current",))
    if result.get("current") != "ok":
        failure = result.get("current") or result.get("error", "not run")
        return False, f"the probe kernel failed: {failure} [{NVVM_STATUS or 'NVVM not looked for'}]"
    return True, (f"Numba CUDA kernels on CuPy's current stream (probe kernel compiled in "
                  f"{result['compile_s']:.2f} s, ran and checked; {why})")


_fallback_said = False


def fallback_warning(stacklevel: int = 2) -> bool:
    """True when the GPU kernels run here; else warn ONCE per process (RuntimeWarning) that CuPy
    arrays use the reference kernels (still on the GPU), and why, and return False."""
    global _fallback_said
    usable, why = kernel_status()
    if not usable and not _fallback_said:
        _fallback_said = True
        warnings.warn(f"gpunn: the GPU kernels cannot run, so CuPy arrays use the reference kernels "
                      f"(still on the GPU): {why}", RuntimeWarning, stacklevel=stacklevel + 1)
    return usable


def fallback_warning_said() -> None:
    """Mark the fallback as said (a caller that printed `kernel_status()` itself, e.g. `gpunn info`)."""
    global _fallback_said
    _fallback_said = True


def _probe_kernel(x, out):
    i = cuda.grid(1)  # noqa: F821  (numba.cuda, bound by bind_numba_cuda in probe())
    if i < x.size:
        out[i] = x[i] * 2.0 + 1.0


def probe(streams=("current", "new"), n: int = 1000) -> dict:
    """Compile one tiny kernel and launch it through `launch()` on each of `streams` -- "current"
    (CuPy's current stream: its default stream unless the caller chose another) and "new" (a fresh
    non-blocking CuPy stream) -- checking out = 2x + 1 each time. Returns {"compile_s": seconds,
    <stream>: "ok" or what failed, "error": what stopped the probe before any launch}. Never raises."""
    result: dict = {}
    try:
        import cupy
    except Exception as err:
        result["error"] = f"cupy: {type(err).__name__}: {err}"
        return result
    try:
        bind_numba_cuda(globals())
        t0 = time.perf_counter()
        k = kernel(("probe", "float32"), lambda: jit(void(arr(np.float32), arr(np.float32)), _probe_kernel))
        result["compile_s"] = time.perf_counter() - t0
    except Exception as err:
        result["error"] = f"compile: {type(err).__name__}: {err}"
        return result
    want = np.arange(n, dtype=np.float32) * 2 + 1
    for name in streams:
        try:
            with cupy.cuda.Stream(non_blocking=True) if name == "new" else contextlib.nullcontext():
                x = cupy.arange(n, dtype=cupy.float32)
                out = cupy.zeros(n, dtype=cupy.float32)
                launch(k, math.ceil(n / 128), 128, x, x, out)
                got = out.get()  # on `stream`: waits for the kernel
            bad = int(np.count_nonzero(got != want))
            result[name] = "ok" if bad == 0 else f"wrong result in {bad} of {n} elements"
        except Exception as err:
            result[name] = f"launch: {type(err).__name__}: {err}"
    return result


# ------------------------------------------------------------------------------------------ NVVM

NVVM_STATUS = ""  # what ensure_nvvm() found or did (shown by `gpunn info --gpu`)
TOOLKIT_DEFAULT = "/usr/local/cuda"


def _toolkit_missing(root: str) -> list:
    """The NVVM pieces numba-cuda needs that the CUDA toolkit at `root` lacks (empty: it has them).
    cuda-pathfinder looks for libnvvm under <root>/nvvm/lib64, numba-cuda for libdevice under
    <root>/nvvm/libdevice."""
    missing = []
    lib = os.path.join(root, "nvvm", "lib64")
    if not (os.path.isdir(lib) and any(f.startswith("libnvvm.so") for f in os.listdir(lib))):
        missing.append(os.path.join(lib, "libnvvm.so*"))
    if not os.path.isfile(os.path.join(root, "nvvm", "libdevice", "libdevice.10.bc")):
        missing.append(os.path.join(root, "nvvm", "libdevice", "libdevice.10.bc"))
    return missing


def _pathfinder_nvvm() -> str:
    from cuda import pathfinder

    dl = pathfinder.load_nvidia_dynamic_lib("nvvm")
    return f"{dl.abs_path} (found via {dl.found_via})"


def find_nvvm(environ=None, which=shutil.which, default_root: str = TOOLKIT_DEFAULT, load=_pathfinder_nvvm):
    """(CUDA_HOME to set or None, what was found or exactly what is missing).

    First what numba-cuda itself would do: cuda-pathfinder (`load()`: NVIDIA wheels, conda, the
    system loader, CUDA_HOME/CUDA_PATH). If that finds no libnvvm and neither variable is set, the
    toolkit of the nvcc on PATH, then `default_root`, if it has NVVM."""
    environ = os.environ if environ is None else environ
    try:
        return None, f"NVVM {load()}"
    except Exception as err:
        first = f"{type(err).__name__}: {err}"
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = environ.get(var)
        if root:
            missing = _toolkit_missing(root)
            what = f"{var}={root} lacks {', '.join(missing)}" if missing else f"{var}={root} looks complete"
            return None, f"NVVM not found: {what}; cuda-pathfinder: {first}"
    tried = []
    nvcc = which("nvcc")
    roots = []
    if nvcc:
        roots.append((os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), f"nvcc at {nvcc}"))
    else:
        tried.append("no nvcc on PATH")
    roots.append((default_root, default_root))
    for root, source in roots:
        missing = _toolkit_missing(root)
        if not missing:
            return root, f"NVVM: CUDA_HOME={root} set by gpunn (from {source}; cuda-pathfinder alone: {first})"
        tried.append(f"{source}: no {', '.join(missing)}")
    return None, ("NVVM not found: no NVIDIA NVVM wheel, CUDA_HOME and CUDA_PATH unset, "
                  + "; ".join(tried) + " -- pip install 'gpunn[cuda13]' (numba-cuda[cu13] brings NVVM) "
                  f"or set CUDA_HOME to a CUDA toolkit (cuda-pathfinder: {first})")


def ensure_nvvm() -> str:
    """Run `find_nvvm()` once, set CUDA_HOME if it found the toolkit that way, and record what
    happened in NVVM_STATUS (returned). Never raises: a missing NVVM then fails the probe kernel's
    compile, whose reason quotes this."""
    global NVVM_STATUS
    if not NVVM_STATUS:
        try:
            root, NVVM_STATUS = find_nvvm()
            if root:
                os.environ["CUDA_HOME"] = root
        except Exception as err:  # pragma: no cover - defensive: discovery must never break the import
            NVVM_STATUS = f"NVVM discovery failed: {type(err).__name__}: {err}"
    return NVVM_STATUS


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
CU_STREAM_LEGACY = 1  # the driver's explicit handle of the legacy default stream (CU_STREAM_PER_THREAD is 2)


def _device_id(like) -> int:
    dev = getattr(like, "device", None)
    return int(getattr(dev, "id", 0) or 0)


def default_stream_handle() -> int:
    """The explicit handle of the stream CuPy means by its null stream (pointer 0): CuPy's own
    rule (`cupy_backends.cuda.stream.get_default_stream_ptr()`: per-thread, 2, when CuPy runs with
    CUPY_CUDA_PER_THREAD_DEFAULT_STREAM=1, else legacy, 1); legacy where CuPy does not say."""
    try:
        from cupy_backends.cuda import stream as backend_stream

        return int(backend_stream.get_default_stream_ptr()) or CU_STREAM_LEGACY
    except Exception:
        return CU_STREAM_LEGACY


def stream_for(like):
    """The Numba stream to launch on for arrays like `like`: CuPy's current stream (0 in the
    simulator), its null stream named by its explicit handle (`default_stream_handle()`): 0 is not
    a DLPack stream (module docstring)."""
    if not is_cupy(like):
        return 0
    import cupy

    ptr = cupy.cuda.get_current_stream().ptr or default_stream_handle()
    key = (_device_id(like), ptr)
    s = _streams.get(key)
    if s is None:
        s = numba_cuda().external_stream(ptr)
        _streams[key] = s
    return s


class LaunchArgumentError(TypeError):
    """An argument of a kernel launch does not match the kernel's compiled signature."""


# id(kernel) -> (kernel, name, number of arguments or None, ((index, dtype, ndim) of each array argument))
_launch_specs: dict = {}


def _register_signature(k, name: str, sig) -> None:
    """Remember, for `check_launch_args`, what kernel `k` (compiled for `sig`) takes."""
    from numba.core import types
    from numba.np import numpy_support

    argtypes = tuple(getattr(sig, "args", ()))
    checks = tuple((i, numpy_support.as_dtype(t.dtype), t.ndim) for i, t in enumerate(argtypes)
                   if isinstance(t, types.Array))
    _launch_specs[id(k)] = (k, name, len(argtypes), checks)


def _launch_spec(kernel):
    """The launch spec of a kernel jit() did not build: read from a dispatcher compiled for one
    signature, else nothing to check against."""
    overloads = list(getattr(kernel, "overloads", {}) or {})
    name = getattr(getattr(kernel, "py_func", None), "__name__", type(kernel).__name__)
    if len(overloads) == 1:
        from numba.core import types

        _register_signature(kernel, name, types.void(*overloads[0]))
        return _launch_specs[id(kernel)]
    spec = _launch_specs[id(kernel)] = (kernel, name, None, ())
    return spec


def _describe(a) -> str:
    if not hasattr(a, "dtype") or not hasattr(a, "flags"):
        return f"{type(a).__name__} {a!r}"[:80]
    layout = "C-contiguous" if a.flags.c_contiguous else f"not C-contiguous (strides {a.strides})"
    return f"{a.ndim}-d {a.dtype} {type(a).__module__.split('.')[0]} array, {layout}"


_contiguity: dict = {}  # array type -> its cheapest "C-contiguous?" getter


def _contiguity_getter(tp):
    """CuPy arrays answer through their `_c_contiguous` attribute (no flags object built per call),
    others (NumPy) through flags.c_contiguous."""
    getter = operator.attrgetter("_c_contiguous" if hasattr(tp, "_c_contiguous") else "flags.c_contiguous")
    _contiguity[tp] = getter
    return getter


def check_launch_args(kernel, args) -> None:
    """Raise LaunchArgumentError unless `args` fit the signature `kernel` was compiled for: the
    number of arguments, and the dtype, ndim and C-contiguity of every array argument. On the launch
    path: the expected types are cached per kernel, and the common case costs a few attribute reads
    per array."""
    spec = _launch_specs.get(id(kernel))
    if spec is None or spec[0] is not kernel:
        spec = _launch_spec(kernel)
    _, name, nargs, checks = spec
    if nargs is not None and len(args) != nargs:
        raise LaunchArgumentError(f"kernel {name}: {len(args)} arguments given, its signature takes {nargs}")
    for i, dt, nd in checks:
        a = args[i]
        try:
            contiguous = _contiguity.get(type(a)) or _contiguity_getter(type(a))
            ok = (a.dtype is dt or a.dtype == dt) and a.ndim == nd and contiguous(a)
        except AttributeError:
            ok = False
        if not ok:
            raise LaunchArgumentError(f"kernel {name}: argument {i} must be a {nd}-d {dt} C-contiguous array "
                                      f"(its compiled signature), got a {_describe(a)}")


def launch(kernel, grid, block, like, *args) -> None:
    """Launch `kernel[grid, block, stream](*args)` on CuPy's current stream for `like`'s device,
    after checking the arguments against the kernel's signature (`check_launch_args`)."""
    check_launch_args(kernel, args)
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

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory (one buffer, no lookup);
            return original(self, shape, dtype, alignment)  # an alignment: the simulator refuses it
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
        k = cuda.jit(sig)(fn)
    else:
        try:
            decorate = cuda.jit(sig, launch_bounds=launch_bounds)
        except TypeError as err:
            raise RuntimeError(f"kernel {fn.__name__}: launch bounds {launch_bounds} need a numba-cuda that "
                               f"supports them (pip install -U numba-cuda): {err}") from None
        k = decorate(fn)
    _register_signature(k, fn.__name__, sig)
    return k


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
