"""Inverted dropout: y = x * mask, mask = [u >= p] / (1 - p), u ~ U[0, 1) drawn in x's dtype on x's
device from the generator given (gpunn.backend.generator_for). p = 1 gives mask = 0 (y = x * 0, as
PyTorch). The scale is 1 / (1 - p) rounded to x's dtype, the value PyTorch multiplies by.
Backward: dx = g * mask, the same mask."""
from __future__ import annotations

from gpunn.backend import get_array_module as _xp


def dropout_forward(x, p: float, generator):
    """(y, mask)."""
    dt = x.dtype
    if p >= 1:
        mask = _xp(x).zeros_like(x)
    else:
        u = generator.random(x.shape, dtype=dt)
        mask = (u >= dt.type(p)).astype(dt) * (dt.type(1) / dt.type(1 - p))
    return x * mask, mask


def dropout_backward(g, mask):
    return g * mask


def dropout_forward_cost(x, p: float, generator):
    """Per element: draw, compare, scale, multiply; read x; write y and the mask (the draws' bytes
    are generated, not read)."""
    return 4 * x.size, 3 * x.size * x.dtype.itemsize


def dropout_backward_cost(g, mask):
    """g * mask: 1 FLOP per element; read g and the mask; write dx."""
    return g.size, 3 * g.size * g.dtype.itemsize


COSTS = {"dropout_forward": dropout_forward_cost, "dropout_backward": dropout_backward_cost}
