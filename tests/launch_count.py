"""Count every GPU launch of gpunn's GPU code path without a GPU.

CuPy has no hook that sees its kernel launches (its hooks see memory allocations), and this machine
has no CuPy, so the count is taken by a stand-in: `counting_gpu()` installs a module named "cupy"
whose `ndarray` wraps a NumPy array. gpunn then takes its CuPy path for these arrays (CudaOps, the
deferred checks, the optimizer's device branches) and
  - every operation that CuPy would run on the device (element-wise, reduction, copy, cast,
    matmul, fill, memset) is one launch, named after the operation;
  - views, shape queries and allocations (empty, reshape, slicing, broadcast_to, astype and
    ascontiguousarray that copy nothing) are free, as in CuPy;
  - `nc.launch` (gpunn's one way to start a Numba kernel) counts one launch per call and runs the
    kernel on the unwrapped NumPy arrays in Numba's simulator, so values stay exact;
  - reads that make the host wait for the GPU (get, item, bool, float, int) are counted as syncs.
What counts as a launch follows CuPy: `zeros`/`fill(0)` are a cudaMemsetAsync, an operation on the
stream like a kernel, so they count too.
"""
from __future__ import annotations

import contextlib
import sys
import types

import numpy as np

from gpunn.backend import numba_cuda as nc


class Counter:
    def __init__(self):
        self.launches: list[str] = []
        self.syncs: list[str] = []

    def reset(self):
        self.launches.clear()
        self.syncs.clear()


_counter = Counter()


class _Capture:
    """A stream capture in progress: device operations issued while it lasts are recorded, as CUDA
    records them into a graph, and run only when the graph is launched."""

    def __init__(self):
        self.ops = []


_capture = None  # the capture in progress, or None


def _issue(name, run):
    """One device operation: counted and run now, or recorded while a capture is on."""
    if _capture is not None:
        _capture.ops.append(run)
    else:
        _counter.launches.append(name)
        run()


def _sync(name):
    """A host read of device data: counted; refused while a capture is on (as CUDA refuses it)."""
    if _capture is not None:
        raise RuntimeError(f"stand-in CuPy: {name}() waits for the device, which is not permitted while a "
                           "stream is capturing (cudaErrorStreamCaptureUnsupported)")
    _counter.syncs.append(name)


def _unwrap(a):
    return a._a if isinstance(a, ndarray) else a


def _unwrap_all(args):
    if isinstance(args, (list, tuple)):
        return type(args)(_unwrap_all(a) for a in args)
    if isinstance(args, dict):
        return {k: _unwrap_all(v) for k, v in args.items()}
    return _unwrap(args)


def _wrap(r, inputs=()):
    """A result as a stand-in array: a view of one of the stand-in `inputs` gets that input's owner
    as its `base`, as CuPy's views do."""
    if isinstance(r, np.ndarray):
        for i in inputs:
            if isinstance(i, ndarray) and np.shares_memory(r, i._a):
                return ndarray(r, i.base if i.base is not None else i)
        return ndarray(r)
    if isinstance(r, np.generic):  # CuPy reductions give 0-d arrays, never host scalars
        return ndarray(np.asarray(r))
    if isinstance(r, tuple):
        return tuple(_wrap(x) for x in r)
    return r


def _is_view(result, inputs) -> bool:
    """Whether `result` only looks at memory an input already owned (no data moved)."""
    return isinstance(result, np.ndarray) and any(np.shares_memory(result, i) for i in inputs)


_IN_PLACE = set()  # the in-place operators (__iadd__, ...), filled below


def _run(name, fn, args, kwargs, owner=None):
    """Run a NumPy operation on unwrapped operands; one launch unless the result is a view (an
    in-place operator or an `out=` argument writes, so it is always a launch). While a capture is
    on, a write is only recorded, and a new result is allocated now and recomputed into the same
    memory at each launch of the graph."""
    uargs, ukw = _unwrap_all(args), _unwrap_all(kwargs)
    if name in _IN_PLACE or "out" in ukw:
        _issue(name, lambda: fn(*uargs, **ukw))
        return args[0] if name in _IN_PLACE else kwargs["out"]
    r = fn(*uargs, **ukw)  # reads only
    if isinstance(r, np.generic):  # CuPy reductions give 0-d arrays, never host scalars
        r = np.asarray(r)
    flat = [a for a in [_unwrap(owner), *uargs, *ukw.values()] if isinstance(a, np.ndarray)]
    if not _is_view(r, flat):
        if _capture is not None:
            if not isinstance(r, np.ndarray):
                raise NotImplementedError(f"stand-in CuPy: {name} under a capture")
            _capture.ops.append(lambda: np.copyto(r, fn(*uargs, **ukw)))
        else:
            _counter.launches.append(name)
    return _wrap(r, [a for a in [owner, *args, *kwargs.values()] if isinstance(a, ndarray)])


class _Device:
    id = 0

    def __init__(self, index=0):
        self.id = index

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Flags:
    def __init__(self, a):
        self._a = a

    @property
    def c_contiguous(self):
        return self._a.flags.c_contiguous

    @property
    def f_contiguous(self):
        return self._a.flags.f_contiguous


class _MemoryPointer:
    """CuPy's MemoryPointer, as far as gpunn uses it: an owner's memory plus a byte offset."""

    def __init__(self, owner, offset):
        self.owner, self.offset = owner, offset
        self.ptr = owner._a.__array_interface__["data"][0] + offset

    def __add__(self, nbytes):
        return _MemoryPointer(self.owner, self.offset + nbytes)


class ndarray:
    """A CuPy-like array over a NumPy array (see the module docstring). Views know their owner
    (`base`) and an array can be made over another's memory (`ndarray(shape, dtype, memptr=,
    strides=)`), as in CuPy."""

    __module__ = "cupy"
    __slots__ = ("_a", "_base")
    __array_priority__ = 100

    def __init__(self, a, dtype=None, memptr=None, strides=None, base=None):
        if memptr is not None:  # CuPy's ndarray(shape, dtype, memptr=..., strides=...): a view, free
            owner = memptr.owner
            a = np.ndarray(a, dtype, buffer=owner._a, offset=memptr.offset, strides=strides)
            base = owner
        elif isinstance(dtype, ndarray):  # ndarray(view, owner): made by _wrap
            base = dtype
        self._a, self._base = a, base

    base = property(lambda self: self._base)
    data = property(lambda self: _MemoryPointer(self if self._base is None else self._base,
                                                self._a.__array_interface__["data"][0]
                                                - (self if self._base is None else self._base)._a.__array_interface__["data"][0]))

    # free: metadata and views
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    flags = property(lambda self: _Flags(self._a))
    device = property(lambda self: _Device())
    T = property(lambda self: _wrap(self._a.T, [self]))

    @property
    def __cuda_array_interface__(self):  # CuPy's arrays have it (gpunn tells device arrays by it)
        ai = self._a.__array_interface__
        return {"shape": ai["shape"], "typestr": ai["typestr"], "data": ai["data"], "strides": ai["strides"],
                "version": 3}

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"standin_cupy.ndarray({self._a!r})"

    def __getattr__(self, name):  # any other method: a launch unless it returns a view
        attr = getattr(self._a, name)
        if not callable(attr):
            return attr
        return lambda *a, **k: _run(name, attr, a, k, self)

    def reshape(self, *shape, **kw):
        return _run("reshape(copy)", self._a.reshape, shape, kw, self)

    def astype(self, dtype, copy=True, **kw):
        if np.dtype(dtype) == self._a.dtype and not copy:
            return self
        return _run(f"astype({np.dtype(dtype)})", self._a.astype, (dtype,), kw, self)

    def fill(self, value):
        a = self._a
        _issue("memset" if value == 0 and a.flags.c_contiguous else "fill", lambda: a.fill(value))

    def __getitem__(self, index):
        index = _unwrap_all(index)
        r = self._a[index]
        if isinstance(r, np.generic):  # CuPy: an integer index gives a 0-d view, not a scalar
            r = self._a[(index if isinstance(index, tuple) else (index,)) + (Ellipsis,)]
        if not _is_view(r, [self._a]):
            if _capture is not None:
                a = self._a
                _capture.ops.append(lambda: np.copyto(r, a[index]))
            else:
                _counter.launches.append("getitem(copy)")
        return _wrap(r, [self]) if isinstance(r, np.ndarray) else r

    def __setitem__(self, index, value):
        a, index, value = self._a, _unwrap_all(index), _unwrap(value)
        _issue("setitem", lambda: a.__setitem__(index, value))

    def set(self, arr, stream=None):
        """A host-to-device copy of arr's values as they are now (CuPy's ndarray.set)."""
        if _capture is not None:
            raise RuntimeError("stand-in CuPy: a host-to-device copy inside a stream capture")
        a, snap = self._a, np.array(arr, dtype=self._a.dtype).reshape(self._a.shape)
        _issue("host_to_device", lambda: np.copyto(a, snap))

    # host reads: synchronise
    def get(self):
        _sync("get")
        return self._a.copy()

    def item(self):
        _sync("item")
        return self._a.item()

    def tolist(self):
        _sync("tolist")
        return self._a.tolist()

    def __bool__(self):
        _sync("bool")
        return bool(self._a)

    def __float__(self):
        _sync("float")
        return float(self._a)

    def __int__(self):
        _sync("int")
        return int(self._a)

    __index__ = __int__

    def __array__(self, dtype=None, copy=None):
        raise TypeError("implicit conversion of a stand-in CuPy array to NumPy (CuPy refuses it too); use .get()")


def _binary(op):
    f = getattr(np.ndarray, op)
    return lambda self, other: _run(op, f, (self, other), {})


for _op in ("add", "sub", "mul", "truediv", "floordiv", "pow", "mod", "matmul", "and", "or", "xor",
            "eq", "ne", "lt", "le", "gt", "ge"):
    for _form in ("__%s__", "__r%s__", "__i%s__"):
        _name = _form % _op
        if hasattr(np.ndarray, _name):
            setattr(ndarray, _name, _binary(_name))
            if _form == "__i%s__":
                _IN_PLACE.add(_name)
for _name in ("__neg__", "__abs__", "__invert__", "__pos__"):
    setattr(ndarray, _name, (lambda f, n: lambda self: _run(n, f, (self,), {}))(getattr(np.ndarray, _name), _name))


def _ensure(a, dtype=None):
    """`asarray`: a host array is a host-to-device copy (counted as a launch), a device one is free."""
    if isinstance(a, ndarray):
        if dtype is None or np.dtype(dtype) == a.dtype:
            return a
        return a.astype(dtype)
    if _capture is not None:  # the graph would keep reading the host buffer of this one call
        raise RuntimeError("stand-in CuPy: a host-to-device copy inside a stream capture")
    _counter.launches.append("host_to_device")
    return ndarray(np.array(a, dtype=dtype))


def _zeros(*a, **k):
    r = np.zeros(*_unwrap_all(a), **_unwrap_all(k))
    _issue("memset", lambda: r.fill(0))
    return ndarray(r)


def _zeros_like(x, *a, **k):
    r = np.zeros_like(_unwrap(x), *a, **k)
    _issue("memset", lambda: r.fill(0))
    return ndarray(r)


def _free(fn):
    return lambda *a, **k: _wrap(fn(*_unwrap_all(a), **_unwrap_all(k)), [*a, *k.values()])


def _ascontiguousarray(a, dtype=None):
    if isinstance(a, ndarray) and a._a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    return _run("ascontiguousarray(copy)", np.ascontiguousarray, (_ensure(a),), {"dtype": dtype})


class _Graph:
    """cupy.cuda.Graph: the operations recorded by a capture; launch() runs them, one launch."""

    def __init__(self, ops):
        self._ops = ops

    def launch(self, stream=None):
        _counter.launches.append("graph")
        for op in self._ops:
            op()


class _Stream:
    """cupy.cuda.Stream: a current-stream stack (`with stream:`) and capture (begin/end_capture)."""

    _stack: list = []

    def __init__(self, null=False, non_blocking=False):
        self.ptr = 0 if null else id(self)

    def __enter__(self):
        _Stream._stack.append(self)
        return self

    def __exit__(self, *exc):
        _Stream._stack.pop()
        return False

    def begin_capture(self, mode=None):
        global _capture
        if self.ptr == 0:
            raise RuntimeError("cannot capture on the default (legacy) stream")
        if _capture is not None:
            raise RuntimeError("stand-in CuPy: a capture is already on")
        _capture = _Capture()

    def end_capture(self):
        global _capture
        graph, _capture = _Graph(_capture.ops), None
        return graph

    def is_capturing(self):
        return _capture is not None

    def synchronize(self):
        _sync("synchronize")


_NULL_STREAM = _Stream(null=True)


def _stream():
    return _Stream._stack[-1] if _Stream._stack else _NULL_STREAM


class _MemoryPool:
    """cupy.cuda.MemoryPool: NumPy owns the stand-in's memory; an array lives while referenced."""

    def malloc(self, nbytes):
        raise NotImplementedError("stand-in CuPy: arrays are NumPy's")


@contextlib.contextmanager
def _using_allocator(allocator=None):
    yield


def _module():
    m = types.ModuleType("cupy")
    m.__doc__ = "stand-in CuPy that counts launches (tests/launch_count.py)"
    m.ndarray = ndarray
    m.asarray = _ensure
    m.array = lambda a, dtype=None, **k: _ensure(a, dtype).copy() if isinstance(a, ndarray) else _ensure(a, dtype)
    m.empty = _free(np.empty)
    m.empty_like = _free(np.empty_like)
    m.broadcast_to = _free(np.broadcast_to)
    m.zeros = _zeros
    m.zeros_like = _zeros_like
    m.ascontiguousarray = _ascontiguousarray
    m.cuda = types.SimpleNamespace(Device=_Device, get_current_stream=_stream, Stream=_Stream, Graph=_Graph,
                                   MemoryPool=_MemoryPool, using_allocator=_using_allocator)
    for name in ("float16", "float32", "float64", "int32", "int64", "uint32", "uint64", "bool_", "intp",
                 "dtype", "newaxis", "inf", "nan", "pi", "e"):
        setattr(m, name, getattr(np, name))

    def __getattr__(name):  # any other function: a launch unless it returns a view
        fn = getattr(np, name)
        if not callable(fn):
            return fn
        return lambda *a, **k: _run(name, fn, a, k)

    m.__getattr__ = __getattr__
    return m


@contextlib.contextmanager
def counting_gpu(monkeypatch):
    """(stand-in cupy module, Counter): gpunn's GPU path on stand-in CuPy arrays, every launch counted."""
    from gpunn.autograd import checks
    import importlib

    tensor_mod = importlib.import_module("gpunn.autograd.tensor")  # gpunn.autograd.tensor is also a function
    from gpunn.kernels import ops as ops_mod, softmax_ce_cuda
    from gpunn.kernels.cuda_ops import CudaOps

    fake = _module()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(ops_mod, "_gpu_ops", CudaOps())
    monkeypatch.setattr(ops_mod, "_choice", "fused")
    # caches of device arrays: the stand-in's must not outlive it
    monkeypatch.setattr(nc, "_dummies", {})
    monkeypatch.setattr(softmax_ce_cuda, "_tickets", {})
    monkeypatch.setattr(tensor_mod, "_seeds", {})
    real_launch = nc.launch

    def launch(kernel, grid, block, like, *args):
        name = getattr(kernel, "__name__", None) or getattr(getattr(kernel, "py_func", None), "__name__", repr(kernel))
        like, args = _unwrap(like), [_unwrap(a) for a in args]
        _issue(name, lambda: real_launch(kernel, grid, block, like, *args))

    monkeypatch.setattr(nc, "launch", launch)
    _counter.reset()
    try:
        yield fake, _counter
        checks.flush_checks()  # deferred checks on stand-in arrays are evaluated while it exists
    finally:
        checks._pending.clear()
        _counter.reset()
        global _capture
        _capture = None
        _Stream._stack.clear()
