"""Reductions: sum, mean, max over an axis (or all axes).

Sum: the gradient is broadcast back.  Mean: divided by the count.
Max: the gradient is shared equally among the tied maxima (PyTorch's amax rule).
"""
from __future__ import annotations

from gpunn.autograd.checks import xp_of
from gpunn.autograd.tensor import Function


def _normalise_axis(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for ax in axes:
        if not -ndim <= ax < max(ndim, 1):
            raise ValueError(f"axis {ax} is out of range for a tensor with {ndim} dimension(s)")
        out.append(ax % ndim if ndim else 0)
    return tuple(out)


def _expand(g, shape, axes, keepdims):
    if not keepdims:
        for ax in sorted(axes):
            g = xp_of(g).expand_dims(g, ax)
    return xp_of(g).broadcast_to(g, shape)


class Sum(Function):
    def forward(self, a, axis=None, keepdims=False):
        self.shape, self.axes, self.keepdims = a.shape, _normalise_axis(axis, a.ndim), keepdims
        return a.sum(axis=self.axes, keepdims=keepdims)

    def backward(self, g):
        return (_expand(g, self.shape, self.axes, self.keepdims),)


class Mean(Function):
    def forward(self, a, axis=None, keepdims=False):
        self.shape, self.axes, self.keepdims = a.shape, _normalise_axis(axis, a.ndim), keepdims
        n = 1
        for ax in self.axes:
            n *= a.shape[ax]
        self.n = n
        return a.mean(axis=self.axes, keepdims=keepdims)

    def backward(self, g):
        return (_expand(g / g.dtype.type(self.n), self.shape, self.axes, self.keepdims),)


class Max(Function):
    def forward(self, a, axis=None, keepdims=False):
        if a.size == 0:
            raise ValueError("max() of an empty tensor has no value")
        self.a, self.axes, self.keepdims = a, _normalise_axis(axis, a.ndim), keepdims
        self.out = a.max(axis=self.axes, keepdims=True)
        return self.out if keepdims else self.out.reshape([n for i, n in enumerate(a.shape) if i not in self.axes])

    def backward(self, g):
        mask = (self.a == self.out).astype(g.dtype)
        count = mask.sum(axis=self.axes, keepdims=True)
        g = g if self.keepdims else g.reshape(self.out.shape)
        return (mask * (g / count),)
