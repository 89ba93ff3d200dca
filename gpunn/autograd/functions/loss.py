"""Losses as single graph nodes with hand-written backward passes.

reduction: "mean" (average over elements; for cross-entropy over non-ignored targets),
"sum", or "none" (per element / per row).
"""
from __future__ import annotations

import numpy as np

from gpunn.autograd.checks import defer_check
from gpunn.autograd.tensor import Function, replayed
from gpunn.backend import get_array_module
from gpunn.kernels import ops_for, registry


class _LossNode(Function):
    """A loss node: the profiler files its forward under the "loss" phase and layer."""

    phase = "loss"
    layer = "loss"


def _divide(a, n, dtype):
    """a / n for the "mean" reduction (n a count, or a 0-d array: a sum of weights); NaN when n is
    0 (as PyTorch)."""
    if isinstance(n, int):
        return a / dtype.type(n) if n else a * dtype.type(float("nan"))
    with np.errstate(divide="ignore", invalid="ignore"):  # weights summing to 0: inf or NaN, as PyTorch
        return a / n


def _label_error(op, labels, stats, classes, ignore_index, deferred):
    """The ValueError for the first bad label that the forward kernel reported in `stats`
    (softmax_ce.STATS). Reads the labels and stats on the host: only called to raise."""
    st = stats.get() if hasattr(stats, "get") else stats
    bad, ignored = int(st[1]), int(st[2])  # row numbers + 1 (stats[0] and [3] are sums of weights)
    rows = [bad - 1] if bad else []
    if ignore_index is None and ignored:  # no ignore_index: the stand-in value -100 is out of range too
        rows.append(ignored - 1)
    i = min(rows)
    value = int(labels[i:i + 1].get()[0] if hasattr(labels, "get") else labels[i])
    when = (" (labels on the GPU are checked at the next host synchronisation, so this may be raised "
            "a few steps after the call that failed)") if deferred else ""
    valid = f"0..{classes - 1}" + ("" if ignore_index is None else f" or ignore_index={ignore_index}")
    return ValueError(f"{op}: target[{i}] = {value} is out of range for {classes} classes (valid: {valid}){when}")


@replayed(host_only=True)
def _check_labels(op, rows, classes, labels, stats, ignore_index):
    """Raise (CPU) or queue (GPU, checks.defer_check) the label check of a forward's stats, over
    `rows` labels of `classes` classes. It reads stats and labels only to build the error."""
    if not rows:
        return
    flags = (1,) if ignore_index is not None else (1, 2)

    def error(deferred):
        return _label_error(op, labels, stats, classes, ignore_index, deferred)

    if get_array_module(stats) is np:
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

    kernel_replay = True  # one kernel each way, and the label check of the forward's stats

    def forward(self, logits, labels, reduction="mean", ignore_index=-100, weight=None, label_smoothing=0.0):
        ign = -100 if ignore_index is None else ignore_index
        loss, self.probs, self.stats = ops_for(logits).softmax_cross_entropy_forward(
            logits, labels, ign, reduction, weight, label_smoothing)
        self.labels, self.reduction, self.ignore = labels, reduction, ign
        self.weight, self.smoothing = weight, label_smoothing
        _check_labels("cross_entropy", logits.shape[0], logits.shape[1], labels, self.stats, ignore_index)
        return loss

    def backward(self, g):
        return ops_for(self.probs).softmax_cross_entropy_backward(
            g, self.probs, self.labels, self.ignore, self.reduction, self.stats, self.weight, self.smoothing), None


class NLL(_LossNode):
    """Negative log-likelihood of log-probabilities (N, C): -w_y logp_{i,y}, reduced as cross-entropy;
    the same label check."""

    kernel_replay = True  # one kernel each way, and the label check of the forward's stats

    def forward(self, logp, labels, reduction="mean", ignore_index=-100, weight=None):
        ign = -100 if ignore_index is None else ignore_index
        loss, self.stats = ops_for(logp).nll_loss_forward(logp, labels, ign, reduction, weight)
        self.logp, self.labels, self.reduction, self.ignore, self.weight = logp, labels, reduction, ign, weight
        _check_labels("nll_loss", logp.shape[0], logp.shape[1], labels, self.stats, ignore_index)
        return loss

    def backward(self, g):
        return ops_for(self.logp).nll_loss_backward(
            g, self.logp, self.labels, self.ignore, self.reduction, self.stats, self.weight), None


# ElementwiseLoss's glue around its kernels, replayed with them by gn.compile.

@replayed
def _weighted(losses, weight):
    return losses * weight


@replayed
def _weight_total(weight, shape, dtype):
    """The sum of the weights broadcast to the input's shape: "mean"'s divisor for weighted_mean="weights"."""
    return get_array_module(weight).broadcast_to(weight, shape).sum(dtype=dtype)


@replayed
def _reduce(losses, reduction, denominator, dtype):
    if reduction == "none":
        return losses
    total = losses.sum(dtype=losses.dtype)
    # a 0-d array, never a NumPy scalar: what the node returns is the array a replay rebuilds
    return get_array_module(losses).asarray(total if reduction == "sum" else _divide(total, denominator, dtype))


@replayed
def _upstream(g, reduction, denominator, weight, dtype):
    """The upstream gradient of each element: g ("mean": g / the divisor; "mean"/"sum": one value,
    which the kernels read once for every element), times the weights; an array, as g is."""
    if reduction == "mean":
        g = get_array_module(g).asarray(_divide(g, denominator, dtype))
    return g if weight is None else g * weight


@replayed
def _negate(a):
    return -a


class ElementwiseLoss(_LossNode):
    """Any registered elementwise loss (gpunn/kernels/registry.py `LOSSES`) with its reduction.

    losses = loss(x, y, operand, scalar) per element, times `weight` (a per-element rescaling that
    broadcasts to x; it receives no gradient); "sum" adds them, "mean" divides the sum by the
    number of elements, or by the sum of the weights for the losses whose registry entry says
    weighted_mean="weights" (torch's mse_loss and l1_loss). The target's gradient is the registry's
    grad_target formula, or minus the input's for the losses of x - y."""

    kernel_replay = True  # its kernels and the glue functions above

    @property
    def name(self) -> str:
        return f"{getattr(self, 'loss_name', 'elementwise')}_loss"

    def forward(self, x, y, name="mse", reduction="mean", operand=None, scalar=None, weight=None):
        m = registry.loss(name)
        self.x, self.y, self.loss_name, self.reduction = x, y, name, reduction
        self.operand, self.scalar, self.weight = operand, scalar, weight
        self.target_formula = m.grad_target is not None
        losses = ops_for(x).loss_forward(name, x, y, operand, scalar)
        self.denominator = x.size
        if weight is not None:
            losses = _weighted(losses, weight)
            if m.weighted_mean == "weights" and reduction == "mean":
                self.denominator = _weight_total(weight, x.shape, x.dtype)
        return _reduce(losses, reduction, self.denominator, x.dtype)

    def backward(self, g):
        x, y = self.x, self.y
        gu = _upstream(g, self.reduction, self.denominator, self.weight, x.dtype)
        ops = ops_for(x)
        need_x, need_y = self.needs_grad[0], self.needs_grad[1]
        gx = gy = None
        if need_x or (need_y and not self.target_formula):
            gx = ops.loss_backward(self.loss_name, gu, x, y, self.operand, self.scalar)
        if need_y:
            gy = (ops.loss_backward(self.loss_name, gu, x, y, self.operand, self.scalar, wrt="target")
                  if self.target_formula else _negate(gx))
        return (gx if need_x else None), gy
