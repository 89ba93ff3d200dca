"""Losses as single graph nodes with hand-written backward passes.

reduction: "mean" (average over elements; for cross-entropy over non-ignored targets),
"sum", or "none" (per element / per row).
"""
from __future__ import annotations

import numpy as np

from gpunn.autograd.tensor import Function
from gpunn.backend import get_array_module
from gpunn.kernels import ops_for


class _LossNode(Function):
    """A loss node: the profiler files its forward under the "loss" phase and layer."""

    phase = "loss"
    layer = "loss"


def _divide(a, n, dtype):
    """a / n for the "mean" reduction; NaN when n == 0 (as PyTorch). n: a Python int, or a 0-d
    integer array on the GPU (a count that stays there: reading it would synchronise)."""
    if not isinstance(n, int):
        return a / n.astype(dtype)  # 0 / 0 is NaN on the device, with no warning to silence
    return a / dtype.type(n) if n else a * dtype.type(float("nan"))


def _reduce(losses, reduction, count=None):
    if reduction == "none":
        return losses
    total = losses.sum(dtype=losses.dtype)
    if reduction == "sum":
        return total
    return _divide(total, losses.size if count is None else count, losses.dtype)


def _upstream(g, reduction, shape, dtype, count=None):
    """The gradient of each unreduced element, given the gradient g of the reduced loss."""
    if reduction == "none":
        return g
    xp = get_array_module(g)
    if reduction == "mean":
        n = 1
        for s in shape:
            n *= s
        g = _divide(g, n if count is None else count, dtype)
    return xp.broadcast_to(g, shape)


class CrossEntropy(_LossNode):
    def forward(self, logits, labels, reduction="mean", ignore_index=-100):
        ops = ops_for(logits)
        losses, self.probs = ops.softmax_cross_entropy_forward(logits, labels, ignore_index)
        self.labels, self.reduction, self.ignore = labels, reduction, ignore_index
        self.count = None
        if reduction == "mean":  # non-ignored rows; on the GPU the count stays there (no sync)
            count = (labels != ignore_index).sum()
            self.count = int(count) if get_array_module(labels) is np else count
        return _reduce(losses, reduction, self.count)

    def backward(self, g):
        rows = _upstream(g, self.reduction, (self.probs.shape[0],), self.probs.dtype, self.count)
        return ops_for(self.probs).softmax_cross_entropy_backward(rows, self.probs, self.labels, self.ignore), None


class BCEWithLogits(_LossNode):
    def forward(self, x, y, reduction="mean", pos_weight=None):
        self.x, self.y, self.reduction, self.pw = x, y, reduction, pos_weight
        return _reduce(ops_for(x).bce_with_logits_forward(x, y, pos_weight), reduction)

    def backward(self, g):
        x, y, pw = self.x, self.y, self.pw
        gu = _upstream(g, self.reduction, x.shape, x.dtype)
        gx = ops_for(x).bce_with_logits_backward(gu, x, y, pw) if self.needs_grad[0] else None
        gy = None
        if self.needs_grad[1]:
            # d/dy [(1 - y) x + (1 + (w - 1) y) L] = -x + (w - 1) L, with L = log(1 + exp(-x))
            if pw is None:
                gy = -gu * x
            else:
                xp = get_array_module(x)
                mv = xp.maximum(-x, x.dtype.type(0))
                L = xp.log(xp.exp(-mv) + xp.exp(-x - mv)) + mv
                gy = gu * (-x + (pw - 1) * L)
        return gx, gy


class _Pointwise(_LossNode):
    kind = ""

    def forward(self, x, y, reduction="mean"):
        self.x, self.y, self.reduction = x, y, reduction
        return _reduce(getattr(ops_for(x), self.kind + "_forward")(x, y), reduction)

    def backward(self, g):
        gu = _upstream(g, self.reduction, self.x.shape, self.x.dtype)
        gx = getattr(ops_for(self.x), self.kind + "_backward")(gu, self.x, self.y)
        return (gx if self.needs_grad[0] else None), (-gx if self.needs_grad[1] else None)


class MSE(_Pointwise):
    kind = "mse"


class L1(_Pointwise):
    kind = "l1"
