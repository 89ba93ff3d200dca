"""Reductions: sum, mean, max over an axis (or all axes).

Sum: the gradient is broadcast back.  Mean: divided by the count.
Max: the gradient is shared equally among the tied maxima (PyTorch's amax rule).
"""
from __future__ import annotations

import operator

from gpunn.autograd.tensor import Function
from gpunn.backend import get_array_module


def _normalise_axis(axis, ndim):
    """axis (None, an int or a sequence of ints, negatives allowed) as a sorted tuple of axes >= 0.

    A 0-d tensor accepts axis 0 or -1 (as PyTorch does) and reduces over nothing.
    """
    if axis is None:
        return tuple(range(ndim))
    try:
        axes = (operator.index(axis),)
    except TypeError:
        try:
            axes = tuple(operator.index(ax) for ax in axis)
        except TypeError:
            raise TypeError(f"axis/dim must be an int or a tuple of ints, got {axis!r}") from None
    out = []
    for ax in axes:
        if not -max(ndim, 1) <= ax < max(ndim, 1):
            raise ValueError(f"axis {ax} is out of range for a tensor with {ndim} dimension(s)")
        if ndim:
            out.append(ax % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"axis {axis!r} names the same dimension twice")
    return tuple(sorted(out))


def _expand(g, shape, axes, keepdims):
    if not keepdims:
        for ax in sorted(axes):
            g = get_array_module(g).expand_dims(g, ax)
    return get_array_module(g).broadcast_to(g, shape)


def _reduced_shape(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else n for i, n in enumerate(shape))
    return tuple(n for i, n in enumerate(shape) if i not in axes)


class Sum(Function):
    saves_inputs = False
    saves_output = False

    def forward(self, a, axis=None, keepdims=False):
        self.shape, self.axes, self.keepdims = a.shape, _normalise_axis(axis, a.ndim), keepdims
        return a.sum(axis=self.axes, keepdims=keepdims)

    def backward(self, g):
        return (_expand(g, self.shape, self.axes, self.keepdims),)


class Mean(Function):
    saves_inputs = False
    saves_output = False

    def forward(self, a, axis=None, keepdims=False):
        self.shape, self.axes, self.keepdims = a.shape, _normalise_axis(axis, a.ndim), keepdims
        n = 1
        for ax in self.axes:
            n *= a.shape[ax]
        self.n = n
        if n == 0:  # NaN, as PyTorch gives, without NumPy's "Mean of empty slice" warning
            return get_array_module(a).full(_reduced_shape(a.shape, self.axes, keepdims), float("nan"), dtype=a.dtype)
        return a.mean(axis=self.axes, keepdims=keepdims)

    def backward(self, g):
        if self.n == 0:  # nothing was averaged: the (empty) input gets no gradient
            return (get_array_module(g).zeros(self.shape, dtype=g.dtype),)
        return (_expand(g / g.dtype.type(self.n), self.shape, self.axes, self.keepdims),)


class Max(Function):
    def forward(self, a, axis=None, keepdims=False):
        self.a, self.axes, self.keepdims = a, _normalise_axis(axis, a.ndim), keepdims
        empty = [ax for ax in self.axes if a.shape[ax] == 0]
        if empty:
            raise ValueError(f"max() over dimension {empty[0]} of size 0 (tensor shape {a.shape}) has no value")
        self.out = a.max(axis=self.axes, keepdims=True)
        return self.out if keepdims else self.out.reshape([n for i, n in enumerate(a.shape) if i not in self.axes])

    def backward(self, g):
        mask = (self.a == self.out).astype(g.dtype)
        count = mask.sum(axis=self.axes, keepdims=True)
        g = g if self.keepdims else g.reshape(self.out.shape)
        return (mask * (g / count),)
