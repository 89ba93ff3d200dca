"""Tensor creation with PyTorch's names and dtype rules: zeros, ones, full, empty, rand, randn,
arange, linspace, eye, the *_like forms, from_numpy, as_tensor; and the dtype names (gn.float32, ...).

Defaults as PyTorch: floats are float32 (rand, randn, linspace, arange with any float argument,
full with a float value), integers int64 (arange of ints, full with an int value), bools bool.
`device=` takes "cpu", "gpu"/"cuda[:N]" or a Device. Random values are drawn from gpunn's seeded
generator (gn.manual_seed) on the host, so a seed gives the same values on every device.
"""
from __future__ import annotations

import builtins
import numbers

import numpy as np

from gpunn.autograd.tensor import Tensor
from gpunn.backend import device as resolve_device, generator as default_generator, is_array

float16 = half = np.dtype(np.float16)
float32 = float = np.dtype(np.float32)
float64 = double = np.dtype(np.float64)
int8 = np.dtype(np.int8)
uint8 = np.dtype(np.uint8)
int16 = short = np.dtype(np.int16)
int32 = int = np.dtype(np.int32)
int64 = long = np.dtype(np.int64)
bool = np.dtype(np.bool_)  # noqa: A001  (torch.bool)

DTYPES = ("float16", "half", "float32", "float", "float64", "double", "int8", "uint8", "int16", "short",
          "int32", "int", "int64", "long", "bool")


def _dtype(op, dtype, default):
    if dtype is None:
        return np.dtype(default)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{op}: dtype must be a gpunn/NumPy dtype such as gn.float32 or gn.int64, got {dtype!r}") from None
    if dt.kind not in "biuf":
        raise TypeError(f"{op}: dtype must be numeric (bool, int or float), got {dt}")
    return dt


def _size(op, size):
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    out = []
    for n in size:
        if isinstance(n, (builtins.bool, np.bool_)) or not isinstance(n, numbers.Integral):
            raise TypeError(f"{op}: sizes must be ints, got {tuple(size)!r}")
        if n < 0:
            raise ValueError(f"{op}: negative dimension {n} in size {tuple(size)}")
        out.append(builtins.int(n))
    return tuple(out)


def _finish(op, arr, device, requires_grad):
    """Move a host array to `device` and wrap it."""
    if device is not None:
        dev = resolve_device(device)
        if dev.is_gpu:
            arr = dev.xp.asarray(arr)
    return _make(op, arr, requires_grad)


def _xp_for(device):
    return np if device is None else resolve_device(device).xp


def zeros(*size, dtype=None, device=None, requires_grad: builtins.bool = False) -> Tensor:
    """A tensor of zeros of shape `size` (float32 unless dtype says otherwise)."""
    shape, dt = _size("zeros", size), _dtype("zeros", dtype, float32)
    return _make("zeros", _xp_for(device).zeros(shape, dtype=dt), requires_grad)


def ones(*size, dtype=None, device=None, requires_grad: builtins.bool = False) -> Tensor:
    """A tensor of ones of shape `size` (float32 unless dtype says otherwise)."""
    shape, dt = _size("ones", size), _dtype("ones", dtype, float32)
    return _make("ones", _xp_for(device).ones(shape, dtype=dt), requires_grad)


def empty(*size, dtype=None, device=None, requires_grad: builtins.bool = False) -> Tensor:
    """An uninitialised tensor of shape `size` (float32 unless dtype says otherwise)."""
    shape, dt = _size("empty", size), _dtype("empty", dtype, float32)
    return _make("empty", _xp_for(device).empty(shape, dtype=dt), requires_grad)


def _fill_dtype(value):
    if isinstance(value, (builtins.bool, np.bool_)):
        return bool
    if isinstance(value, numbers.Integral):
        return int64
    if isinstance(value, numbers.Real):
        return float32
    raise TypeError(f"full: fill_value must be a number, got {type(value).__name__}")


def full(size, fill_value, *, dtype=None, device=None, requires_grad: builtins.bool = False) -> Tensor:
    """A tensor of shape `size` filled with fill_value (dtype from the value: bool, int64 or float32)."""
    shape = _size("full", (size,) if not isinstance(size, (tuple, list)) else (tuple(size),))
    dt = _dtype("full", dtype, _fill_dtype(fill_value))
    return _make("full", _xp_for(device).full(shape, fill_value, dtype=dt), requires_grad)


def _make(op, arr, requires_grad):
    if requires_grad and arr.dtype.kind != "f":
        raise TypeError(f"{op}: only float tensors can require grad, got dtype {arr.dtype}")
    return Tensor(arr, requires_grad=requires_grad)


def _like(op, t, dtype, device):
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(t).__name__}")
    return t.shape, (t.dtype if dtype is None else _dtype(op, dtype, None)), (t.device if device is None else device)


def _rng(op, gen):
    if gen is None:
        return default_generator()
    if not isinstance(gen, np.random.Generator):
        raise TypeError(f"{op}: generator must be a numpy.random.Generator, got {type(gen).__name__}")
    return gen


def _float_dtype(op, dtype):
    dt = _dtype(op, dtype, float32)
    if dt.kind != "f":
        raise TypeError(f"{op}: needs a float dtype, got {dt}")
    return dt


def rand(*size, generator=None, dtype=None, device=None, requires_grad: builtins.bool = False) -> Tensor:
    """Uniform [0, 1) values of shape `size` (float32), from gpunn's seeded generator."""
    shape, dt = _size("rand", size), _float_dtype("rand", dtype)
    return _finish("rand", _rng("rand", generator).random(shape).astype(dt), device, requires_grad)


def randn(*size, generator=None, dtype=None, device=None, requires_grad: builtins.bool = False) -> Tensor:
    """Standard normal values of shape `size` (float32), from gpunn's seeded generator."""
    shape, dt = _size("randn", size), _float_dtype("randn", dtype)
    return _finish("randn", _rng("randn", generator).standard_normal(shape).astype(dt), device, requires_grad)


def _check_number(op, name, v):
    if isinstance(v, Tensor):
        v = v.item()
    if isinstance(v, (builtins.bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{op}: {name} must be a number, got {type(v).__name__}")
    return v


def arange(start, end=None, step=1, *, dtype=None, device=None, requires_grad: builtins.bool = False) -> Tensor:
    """[start, end) in steps of step; int64 when all are ints, float32 when any is a float (as PyTorch)."""
    if end is None:
        start, end = 0, start
    start, end, step = (_check_number("arange", n, v) for n, v in (("start", start), ("end", end), ("step", step)))
    if step == 0:
        raise ValueError("arange: step must be nonzero")
    if (end - start) * step < 0:
        raise ValueError(f"arange: upper bound and larger bound inconsistent with step sign "
                         f"(start={start}, end={end}, step={step})")
    all_int = all(isinstance(v, numbers.Integral) for v in (start, end, step))
    dt = _dtype("arange", dtype, int64 if all_int else float32)
    # computed in float64 (or exact ints) and then cast, so float32 results do not drift with the length
    arr = np.arange(start, end, step, dtype=np.int64 if all_int else np.float64).astype(dt)
    return _finish("arange", arr, device, requires_grad)


def linspace(start, end, steps, *, dtype=None, device=None, requires_grad: builtins.bool = False) -> Tensor:
    """steps evenly spaced values from start to end inclusive (float32 by default)."""
    start, end = _check_number("linspace", "start", start), _check_number("linspace", "end", end)
    if isinstance(steps, (builtins.bool, np.bool_)) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"linspace: steps must be a non-negative int, got {steps!r}")
    dt = _dtype("linspace", dtype, float32)
    return _finish("linspace", np.linspace(start, end, builtins.int(steps)).astype(dt), device, requires_grad)


def eye(n, m=None, *, dtype=None, device=None, requires_grad: builtins.bool = False) -> Tensor:
    """The n x m identity matrix (m = n by default; float32 unless dtype says otherwise)."""
    shape = _size("eye", (n,) if m is None else (n, m))
    dt = _dtype("eye", dtype, float32)
    return _make("eye", _xp_for(device).eye(shape[0], shape[-1], dtype=dt), requires_grad)


def _like_of(make):
    """make_like(input, ...): `make` with input's shape, and its dtype and device unless given."""
    def like(input, *args, dtype=None, device=None, requires_grad: builtins.bool = False) -> Tensor:
        shape, dt, dev = _like(like.__name__, input, dtype, device)
        return make(shape, *args, dtype=dt, device=dev, requires_grad=requires_grad)

    like.__name__ = like.__qualname__ = f"{make.__name__}_like"
    like.__doc__ = f"gn.{make.__name__} shaped like input, with its dtype and device unless given."
    return like


zeros_like, ones_like, full_like, rand_like, randn_like = map(_like_of, (zeros, ones, full, rand, randn))


def from_numpy(array) -> Tensor:
    """A CPU tensor sharing memory with a NumPy array (writes show through both ways), as PyTorch."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy: expected a numpy.ndarray, got {type(array).__name__}")
    if array.dtype.kind not in "biuf":
        raise TypeError(f"from_numpy: can't convert an array of dtype {array.dtype}; numeric dtypes only")
    return Tensor(array)


def as_tensor(data, dtype=None, device=None) -> Tensor:
    """A tensor sharing `data`'s memory where it already has the dtype and device asked for, else a copy."""
    from gpunn.autograd.tensor import tensor

    if isinstance(data, Tensor):
        arr = data.data
    elif is_array(data):
        arr = data
    else:
        return tensor(data, dtype=dtype, device=device)
    same_dtype = dtype is None or np.dtype(dtype) == arr.dtype
    same_device = device is None or resolve_device(device) == Tensor(arr).device
    if not (same_dtype and same_device):
        return tensor(arr, dtype=dtype, device=device)
    if isinstance(data, Tensor):
        return data
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"as_tensor: numeric data only, got dtype {arr.dtype}")
    return Tensor(arr)


__all__ = ["zeros", "ones", "empty", "full", "zeros_like", "ones_like", "full_like", "rand", "randn", "rand_like",
           "randn_like", "arange", "linspace", "eye", "from_numpy", "as_tensor", *DTYPES]
