"""Elementwise losses and their gradients (unreduced; the caller reduces).

All functions take same-shape float arrays (the caller has checked the shapes) and work on
NumPy and CuPy alike. They are single fused array expressions: memory-bound and cheap next to
the dense layers, so the reference serves every backend until a GPU kernel replaces it.

BCE with logits, as ATen computes it (stable for any x):
  mv = max(-x, 0);  l = (1 - y) x + mv + log(exp(-mv) + exp(-x - mv))
  with pos_weight w: l = (1 - y) x + (1 + (w - 1) y) (log(exp(-mv) + exp(-x - mv)) + mv)
  dl/dx = sigmoid(x) - y  (with pos_weight: (1 + (w - 1) y) sigmoid(x) - w y)
MSE: l = (x - y)^2, dl/dx = 2 (x - y).   L1: l = |x - y|, dl/dx = sign(x - y) (0 at x == y).
"""
from __future__ import annotations

import numpy as np

from gpunn.backend import get_array_module as _xp
from gpunn.kernels.activations import SIGMOID, activation_forward_ref


def bce_with_logits_forward(x, y, pos_weight=None):
    """Per-element BCE-with-logits losses."""
    xp = _xp(x)
    mv = xp.maximum(-x, x.dtype.type(0))
    log_term = xp.log(xp.exp(-mv) + xp.exp(-x - mv)) + mv
    if pos_weight is None:
        return (1 - y) * x + log_term
    return (1 - y) * x + (1 + (pos_weight - 1) * y) * log_term


def bce_with_logits_backward(g, x, y, pos_weight=None):
    """d loss / d x, times the upstream gradient g (broadcastable to x)."""
    s = activation_forward_ref(x, SIGMOID)
    if pos_weight is None:
        return g * (s - y)
    return g * ((1 + (pos_weight - 1) * y) * s - pos_weight * y)


def mse_forward(x, y):
    d = x - y
    return d * d


def mse_backward(g, x, y):
    return g * (2 * (x - y))


def l1_forward(x, y):
    return _xp(x).abs(x - y)


def l1_backward(g, x, y):
    return g * _xp(x).sign(x - y)


# ----------------------------------------------------------------------------- cost model
# (flops, bytes) of one call from the shapes alone, for the profiler (conventions: activations.py).
# FLOPs per element are counted from the expressions above; operands that broadcast (the upstream
# gradient of a reduced loss, pos_weight) count their distinct elements once.
from gpunn.kernels.activations import operand_bytes  # noqa: E402


def _elementwise_cost(per_element, out, *operands):
    return per_element * out.size, out.size * out.dtype.itemsize + sum(operand_bytes(a) for a in operands)


def bce_with_logits_forward_cost(x, y, pos_weight=None):
    """13 FLOPs per element (17 with pos_weight); read x, y, pos_weight; write the losses."""
    return _elementwise_cost(13 if pos_weight is None else 17, x, x, y, pos_weight)


def bce_with_logits_backward_cost(g, x, y, pos_weight=None):
    """sigmoid (5), subtract, multiply: 7 FLOPs per element (12 with pos_weight); read g, x, y, pos_weight."""
    return _elementwise_cost(7 if pos_weight is None else 12, x, g, x, y, pos_weight)


def mse_forward_cost(x, y):
    """(x - y)^2: 2 FLOPs per element; read x, y; write the losses."""
    return _elementwise_cost(2, x, x, y)


def mse_backward_cost(g, x, y):
    """g * 2 (x - y): 3 FLOPs per element; read g, x, y; write dx."""
    return _elementwise_cost(3, x, g, x, y)


def l1_forward_cost(x, y):
    """|x - y|: 2 FLOPs per element; read x, y; write the losses."""
    return _elementwise_cost(2, x, x, y)


def l1_backward_cost(g, x, y):
    """g * sign(x - y): 3 FLOPs per element; read g, x, y; write dx."""
    return _elementwise_cost(3, x, g, x, y)


COSTS = {"bce_with_logits_forward": bce_with_logits_forward_cost,
         "bce_with_logits_backward": bce_with_logits_backward_cost,
         "mse_forward": mse_forward_cost, "mse_backward": mse_backward_cost,
         "l1_forward": l1_forward_cost, "l1_backward": l1_backward_cost}
