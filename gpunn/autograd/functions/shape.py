"""Shape ops: reshape, transpose, indexing (basic and advanced) and gather along an axis.

Their gradients move values back to where they came from; indexing scatters with addition,
so an index that repeats receives the sum of its gradients.
"""
from __future__ import annotations

import operator

import numpy as np

from gpunn.autograd.tensor import Function
from gpunn.backend import get_array_module


class Reshape(Function):
    saves_inputs = False
    saves_output = False

    def forward(self, a, shape):
        self.shape = a.shape
        try:
            return a.reshape(shape)
        except ValueError:
            raise ValueError(f"cannot reshape a tensor of shape {a.shape} ({a.size} elements) to {shape}") from None

    def backward(self, g):
        return (g.reshape(self.shape),)


class Transpose(Function):
    saves_inputs = False
    saves_output = False

    def forward(self, a, axes=None):
        if axes:
            try:
                axes = tuple(operator.index(ax) for ax in axes)
            except TypeError:
                raise TypeError(f"transpose: axes must be ints, got {axes!r}") from None
            n = a.ndim
            if len(axes) != n or any(not -n <= ax < n for ax in axes) or sorted(ax % n for ax in axes) != list(range(n)):
                raise ValueError(f"transpose: axes {axes} are not a permutation of the {n} axes of shape {a.shape}")
            axes = tuple(ax % n for ax in axes)  # negative axes: the backward permutation needs them >= 0
        self.axes = axes
        return a.transpose(axes) if axes else a.T

    def backward(self, g):
        if not self.axes:
            return (g.T,)
        return (g.transpose(np.argsort(self.axes)),)


class Cat(Function):
    """Concatenation along `axis`; the gradient is split back at the same offsets."""

    saves_inputs = False
    saves_output = False

    def forward(self, *arrays, axis=0):
        self.axis = axis
        self.sizes = [a.shape[axis] for a in arrays]
        return get_array_module(arrays[0]).concatenate(arrays, axis=axis)

    def backward(self, g):
        xp = get_array_module(g)
        bounds = np.cumsum(self.sizes)[:-1].tolist()
        parts = xp.split(g, bounds, axis=self.axis)
        return tuple(p if need else None for p, need in zip(parts, self.needs_grad))


def _scatter_add(xp, target, index, values):
    if xp is np:
        np.add.at(target, index, values)
    else:
        import cupyx

        cupyx.scatter_add(target, index, values)


class GetItem(Function):
    saves_inputs = False
    saves_output = False

    def forward(self, a, index):
        self.shape, self.index = a.shape, index
        return a[index]

    def backward(self, g):
        xp = get_array_module(g)
        out = xp.zeros(self.shape, dtype=g.dtype)
        _scatter_add(xp, out, self.index, g)
        return (out,)


class Gather(Function):
    """out[i][j] = a[i][index[i][j]] along `axis` (torch.gather)."""

    saves_inputs = False
    saves_output = False

    def forward(self, a, index, axis):
        self.shape, self.index, self.axis = a.shape, index, axis
        return get_array_module(a).take_along_axis(a, index, axis=axis)

    def backward(self, g):
        xp = get_array_module(g)
        out = xp.zeros(self.shape, dtype=g.dtype)
        idx = list(xp.indices(self.index.shape, sparse=True))
        idx[self.axis] = self.index
        _scatter_add(xp, out, tuple(idx), g)
        return (out, None)
