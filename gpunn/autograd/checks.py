"""Input checks shared by every op: dtypes, devices, shapes. They raise before any kernel runs,
with messages that name the op, what it expected and what it got."""
from __future__ import annotations

import numbers

import numpy as np

from gpunn.backend import FLOAT_DTYPES, device_of, get_array_module


def check_same_device(op: str, *arrays) -> None:
    t0 = type(arrays[0])
    if all(type(a) is t0 for a in arrays) and t0 is np.ndarray:
        return
    devs = [str(device_of(a)) for a in arrays]
    if len(set(devs)) > 1:
        raise RuntimeError(f"{op}: expected all tensors on one device, got {', '.join(devs)}; "
                           "move them with .to(device) first")


def check_same_dtype(op: str, *arrays, names=None) -> None:
    d0 = arrays[0].dtype
    for a in arrays[1:]:
        if a.dtype != d0:
            listing = ", ".join(
                f"{n}={a.dtype}" for n, a in zip(names or [f"input {i}" for i in range(len(arrays))], arrays))
            raise TypeError(f"{op}: dtypes differ ({listing}); gpunn never mixes them silently: "
                            "convert one side with .float() or .double()")


def check_float(op: str, a, name: str = "input") -> None:
    """The kernels run in float32 and float64 only (float16 would reach Numba and fail there)."""
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be a float tensor (float32 or float64), got dtype {a.dtype}")


def check_number(where: str, what: str, value) -> float:
    """A hyperparameter (p, eps, momentum, max_norm, ...) as a float; bools, strings and arrays refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {what} must be a number, got {type(value).__name__}")
    return float(value)


def scalar_like(x, like):
    """A Python/NumPy number as a 0-d array of `like`'s dtype (ints and bools keep exactness)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"expected a tensor or a number, got {type(x).__name__}")
    return get_array_module(like).asarray(x, dtype=like.dtype)


def unbroadcast(g, shape):
    """Sum a broadcast gradient back down to `shape`."""
    if g.shape == shape:
        return g
    nlead = g.ndim - len(shape)
    axes = tuple(range(nlead)) + tuple(i + nlead for i, n in enumerate(shape) if n == 1 and g.shape[i + nlead] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


# ------------------------------------------------------------------ checks deferred on the GPU
# Checking values that live on the GPU (are all labels in range?) makes the host wait for the GPU:
# one synchronisation per training step if done at once. Such checks are deferred instead: the
# condition is computed on the device (no wait), queued here, and evaluated together the next time
# the host reads a value anyway (Tensor.item/numpy/tolist/bool, fit's loss read-backs) or once
# MAX_PENDING are queued. A failed check raises its error then, a few steps after the call that
# failed, as CUDA's own asynchronous errors do; the message says so. On the CPU nothing is deferred.

MAX_PENDING = 64
_pending: list = []


def defer_check(failed, error) -> None:
    """Queue a device-side check. failed: a 0-d boolean array on the device (True = the check
    failed); error: a callable returning the exception to raise (called only on failure)."""
    _pending.append((failed, error))
    if len(_pending) >= MAX_PENDING:
        flush_checks()


def flush_checks() -> None:
    """Evaluate every queued check (one host synchronisation); raise the first failure's error."""
    if not _pending:
        return
    items = _pending[:]
    _pending.clear()
    try:
        xp = get_array_module(items[0][0])
        flags = xp.stack([f.reshape(()) for f, _ in items])
        flags = flags.get() if hasattr(flags, "get") else np.asarray(flags)
    except Exception:  # arrays on different devices: one at a time
        flags = [bool(f) for f, _ in items]
    for ok_flag, (_, error) in zip(flags, items):
        if bool(ok_flag):
            raise error()


def pending_checks() -> int:
    return len(_pending)
