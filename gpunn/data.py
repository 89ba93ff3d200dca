"""Mini-batches over in-memory arrays.

    for xb, yb in gn.data.batches(X, y, batch_size=32, seed=0):
        ...

`batches` yields `(xb, yb)` pairs of arrays of the kind it was given (NumPy or CuPy), never copies
of the whole data set per batch: when shuffling it gathers the data once in permuted order and then
yields row slices (contiguous views), which is two gathers per epoch instead of two per batch, the
cheaper choice on a GPU where every gather is a kernel launch. With `y=None` it yields
`(xb, None)`, so one loop form serves both cases.

The order is a function of `seed` alone: `seed` may be an int, a sequence of ints (for example
`[seed, epoch]`, which is what `gn.train.fit` passes so that a resumed run sees the same batches)
or a `numpy.random.Generator`; `None` draws from gpunn's generator (`gn.manual_seed`). The
permutation is always drawn on the host with NumPy, so it is the same on the CPU and the GPU.
"""
from __future__ import annotations

import numbers

import numpy as np

from gpunn.autograd.tensor import Tensor
from gpunn.backend import is_array, is_cupy_array
from gpunn.backend import random as _random

__all__ = ["batches", "num_batches", "permutation", "as_array", "rng_from"]


def as_array(a, name: str = "X"):
    """A NumPy or CuPy array from an array, a gpunn Tensor or a nested list (lists become NumPy)."""
    if a is None:
        return None
    if isinstance(a, Tensor):
        a = a.data
    if is_array(a):
        return a
    if isinstance(a, (list, tuple)):
        return np.asarray(a)
    raise TypeError(f"{name} must be a NumPy or CuPy array (or a gpunn Tensor), got {type(a).__name__}")


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"batch_size must be an int >= 1, got {batch_size!r} ({type(batch_size).__name__})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size}")
    return int(batch_size)


def rng_from(seed) -> np.random.Generator:
    """A NumPy Generator from an int, a sequence of ints, a Generator, or None (gpunn's generator)."""
    if seed is None:
        return _random.generator()
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool):
        raise TypeError(f"seed must be an int, a sequence of ints or a numpy Generator, got {seed!r}")
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as err:
        raise type(err)(f"seed must be a non-negative int, a sequence of them or a numpy Generator, "
                         f"got {seed!r}: {err}") from None


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches `batches` yields for n samples."""
    batch_size = _check_batch_size(batch_size)
    return n // batch_size if drop_last else -(-n // batch_size)


def _check_lengths(X, y):
    if X.ndim < 1:
        raise ValueError("X must have at least one dimension (samples first), got a 0-d array")
    if y is not None:
        if y.ndim < 1:
            raise ValueError("y must have at least one dimension (samples first), got a 0-d array")
        if len(X) != len(y):
            raise ValueError(f"X and y must have the same number of samples: len(X) = {len(X)}, "
                             f"len(y) = {len(y)}")
        if is_cupy_array(X) != is_cupy_array(y):
            raise TypeError("X and y must both be NumPy arrays or both be CuPy arrays, got "
                            f"{type(X).__module__}.{type(X).__name__} and {type(y).__module__}.{type(y).__name__}")


def permutation(n: int, seed=None) -> np.ndarray:
    """The sample order `batches(..., shuffle=True, seed=seed)` uses for n samples (int64, host)."""
    return rng_from(seed).permutation(n)


def batches(X, y=None, batch_size: int = 32, shuffle: bool = True, seed=None, drop_last: bool = False):
    """Yield `(xb, yb)` mini-batches of (X, y) along the first axis.

    X, y: NumPy or CuPy arrays (or gpunn Tensors) with the same first dimension; y may be None,
    then `yb` is None. Every sample appears exactly once per call, in an order drawn from `seed`
    when `shuffle` (see the module docstring); with `drop_last` a final short batch is skipped.
    Errors (raised at the call, before the first batch): batch_size not an int >= 1, X/y length
    mismatch (both lengths named), X and y on different kinds of array.
    """
    X = as_array(X, "X")
    y = as_array(y, "y")
    batch_size = _check_batch_size(batch_size)
    _check_lengths(X, y)
    return _batches(X, y, batch_size, shuffle, seed, drop_last)


def _batches(X, y, batch_size, shuffle, seed, drop_last):
    n = len(X)
    if shuffle and n > 1:
        perm = permutation(n, seed)
        if is_cupy_array(X):
            import cupy

            perm = cupy.asarray(perm)
        X = X[perm]
        if y is not None:
            y = y[perm]
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        yield X[start:end], (None if y is None else y[start:end])
