"""Losses as single graph nodes with hand-written backward passes.

reduction: "mean" (average over elements; for cross-entropy over non-ignored targets),
"sum", or "none" (per element / per row).
"""
from __future__ import annotations

import numpy as np

from gpunn.autograd.checks import defer_check
from gpunn.autograd.tensor import Function
from gpunn.backend import get_array_module
from gpunn.kernels import ops_for


class _LossNode(Function):
    """A loss node: the profiler files its forward under the "loss" phase and layer."""

    phase = "loss"
    layer = "loss"


def _divide(a, n: int, dtype):
    """a / n for the "mean" reduction; NaN when n == 0 (as PyTorch)."""
    return a / dtype.type(n) if n else a * dtype.type(float("nan"))


def _reduce(losses, reduction):
    if reduction == "none":
        return losses
    total = losses.sum(dtype=losses.dtype)
    if reduction == "sum":
        return total
    return _divide(total, losses.size, losses.dtype)


def _upstream(g, reduction, shape, dtype):
    """The gradient of each unreduced element, given the gradient g of the reduced loss."""
    if reduction == "none":
        return g
    xp = get_array_module(g)
    if reduction == "mean":
        n = 1
        for s in shape:
            n *= s
        g = _divide(g, n, dtype)
    return xp.broadcast_to(g, shape)


def _label_error(op, labels, stats, classes, ignore_index, deferred):
    """The ValueError for the first bad label that the forward kernel reported in `stats`
    (softmax_ce.STATS). Reads the labels and stats on the host: only called to raise."""
    st = [int(v) for v in (stats.get() if hasattr(stats, "get") else stats)]
    rows = [st[1] - 1] if st[1] else []
    if ignore_index is None and st[2]:  # no ignore_index: the stand-in value -100 is out of range too
        rows.append(st[2] - 1)
    i = min(rows)
    value = int(labels[i:i + 1].get()[0] if hasattr(labels, "get") else labels[i])
    when = (" (labels on the GPU are checked at the next host synchronisation, so this may be raised "
            "a few steps after the call that failed)") if deferred else ""
    valid = f"0..{classes - 1}" + ("" if ignore_index is None else f" or ignore_index={ignore_index}")
    return ValueError(f"{op}: target[{i}] = {value} is out of range for {classes} classes (valid: {valid}){when}")


def _check_labels(op, logits, labels, stats, ignore_index):
    """Raise (CPU) or queue (GPU, checks.defer_check) the label check of a forward's stats."""
    if not logits.shape[0]:
        return
    flags = (1,) if ignore_index is not None else (1, 2)
    classes = logits.shape[1]

    def error(deferred):
        return _label_error(op, labels, stats, classes, ignore_index, deferred)

    if get_array_module(logits) is np:
        if any(stats[k] for k in flags):
            raise error(False)
    else:
        for k in flags:
            defer_check(stats[k], lambda: error(True))


class CrossEntropy(_LossNode):
    """Softmax cross-entropy (class weights, label smoothing) with its reduction, divisor and label
    check in the kernel (softmax_ce.py). The weights are data: they get no gradient (as in PyTorch).

    The kernel reports bad labels in its stats. On the CPU the error is raised at once; on the GPU
    reading stats would wait for the GPU, so the check is deferred (checks.defer_check) to the next
    value the host reads: no launch and no synchronisation per step. ignore_index=None (no label is
    ignored) runs the kernels with -100 and counts a -100 label as out of range."""

    def forward(self, logits, labels, reduction="mean", ignore_index=-100, weight=None, label_smoothing=0.0):
        ign = -100 if ignore_index is None else ignore_index
        loss, self.probs, self.stats = ops_for(logits).softmax_cross_entropy_forward(
            logits, labels, ign, reduction, weight, label_smoothing)
        self.labels, self.reduction, self.ignore = labels, reduction, ign
        self.weight, self.smoothing = weight, label_smoothing
        _check_labels("cross_entropy", logits, labels, self.stats, ignore_index)
        return loss

    def backward(self, g):
        return ops_for(self.probs).softmax_cross_entropy_backward(
            g, self.probs, self.labels, self.ignore, self.reduction, self.stats, self.weight, self.smoothing), None


class NLL(_LossNode):
    """Negative log-likelihood of log-probabilities (N, C): -w_y logp_{i,y}, reduced as cross-entropy;
    the same label check."""

    def forward(self, logp, labels, reduction="mean", ignore_index=-100, weight=None):
        ign = -100 if ignore_index is None else ignore_index
        loss, self.stats = ops_for(logp).nll_loss_forward(logp, labels, ign, reduction, weight)
        self.logp, self.labels, self.reduction, self.ignore, self.weight = logp, labels, reduction, ign, weight
        _check_labels("nll_loss", logp, labels, self.stats, ignore_index)
        return loss

    def backward(self, g):
        return ops_for(self.logp).nll_loss_backward(
            g, self.logp, self.labels, self.ignore, self.reduction, self.stats, self.weight), None


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
