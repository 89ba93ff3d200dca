"""Fused softmax cross-entropy: loss and gradient from logits and integer labels.

logits (N, C) float, labels (N,) integer, meant to lie in [0, C) or equal ignore_index.
Per row, with m = max_j x_j and lse = m + log(sum_j exp(x_j - m)):
  loss_i = lse - x_{i, y_i}          (0 where y_i == ignore_index; NaN for a label out of range)
  p_ij   = exp(x_ij - lse)           (kept for backward)
  dx_ij  = w_i (p_ij - [j == y_i])   (w_i = the upstream gradient of loss_i; 0 where ignored, NaN
                                      for a label out of range)
Reductions (PyTorch's): "none" -> the N row losses; "sum" -> their sum; "mean" -> the sum over the
`count` rows whose label is not ignore_index, divided by count (NaN when count == 0). Sums run in
float64 over the rows in order and are rounded once.

forward(logits, labels, ignore_index=-100, reduction="none") -> (loss, probs, stats)
  loss  (N,) for "none", 0-d for "sum"/"mean"; probs (N, C); stats (3,) int64 (STATS):
  [count, 1 + the first row whose label is neither in [0, C) nor ignore_index (0: none),
  1 + the first row whose label == ignore_index (0: none)]. The label check is the caller's to
  raise (gpunn/autograd/functions/loss.py): the kernels compute it, so on the GPU it needs no
  launch and no host synchronisation of its own.
backward(grad, probs, labels, ignore_index=-100, reduction="none", stats=None) -> dlogits
  grad (N,) for "none", one value (0-d, or a stride-0 view) for "sum"/"mean"; "mean" needs the
  forward's stats and divides grad by count.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from gpunn.backend import get_array_module as array_module

REDUCTIONS = ("none", "sum", "mean")
STATS = ("count", "first_bad_plus_1", "first_ignored_plus_1")


def check_reduction(op, reduction, stats=None, backward=False):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if backward and reduction == "mean" and stats is None:
        raise ValueError(f"{op}: reduction='mean' needs the forward's stats (its count of non-ignored rows)")


def softmax_cross_entropy_forward_ref(logits, labels, ignore_index: int = -100, reduction: str = "none"):
    """Reference: (loss, probs (N, C), stats (3,) int64)."""
    check_reduction("softmax_cross_entropy_forward", reduction)
    xp = array_module(logits)
    n, c = logits.shape
    m = logits.max(axis=1, keepdims=True) if c else xp.zeros((n, 1), logits.dtype)
    shifted = logits - m
    lse = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    logp = shifted - lse
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= c))
    safe = xp.where(valid & ~bad, labels, 0)
    picked = xp.take_along_axis(logp, safe[:, None].astype(xp.int64), axis=1)[:, 0] if n else logp[:, 0]
    losses = xp.where(valid, -picked, logits.dtype.type(0))
    losses = xp.where(bad, logits.dtype.type(np.nan), losses).astype(logits.dtype, copy=False)
    count = valid.sum(dtype=xp.int64)

    def first(flags):
        return xp.where(flags.any(), xp.argmax(flags) + 1, 0) if n else xp.zeros((), xp.int64)

    stats = xp.stack([count, first(bad), first(~valid)]).astype(xp.int64)
    if reduction == "none":
        return losses, xp.exp(logp), stats
    total = xp.asarray(losses.astype(xp.float64).sum())
    if reduction == "mean":
        total = xp.where(count > 0, total / xp.maximum(count, 1), np.nan)
    return total.astype(logits.dtype), xp.exp(logp), stats


def _row_weights(op, grad, n, reduction, stats, dtype, xp):
    """The upstream gradient of each row loss: grad itself ("none"), or the one value of a "sum" /
    "mean" (divided by the count) broadcast over the rows."""
    check_reduction(op, reduction, stats, backward=True)
    if reduction == "none":
        return grad
    g = grad.reshape(-1)[:1] if grad.ndim else grad.reshape(1)
    if reduction == "mean":
        g = g / stats[:1].astype(dtype)  # 0 / 0 gives NaN, used by no row: all of them are ignored
    return xp.broadcast_to(g.astype(dtype, copy=False), (n,))


def softmax_cross_entropy_backward_ref(grad, probs, labels, ignore_index: int = -100, reduction: str = "none",
                                       stats=None):
    """Reference: dlogits = w[:, None] * (probs - onehot(labels)), 0 on ignored rows."""
    xp = array_module(probs)
    n = probs.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        w = _row_weights("softmax_cross_entropy_backward", grad, n, reduction, stats, probs.dtype, xp)
    valid = labels != ignore_index
    good = valid & (labels >= 0) & (labels < probs.shape[1])
    onehot = xp.zeros_like(probs)
    rows = xp.arange(n)
    onehot[rows[good], labels[good]] = 1
    w = xp.where(valid, xp.where(good, w, np.nan), 0).astype(probs.dtype, copy=False)
    return (probs - onehot) * w[:, None]


@njit(cache=True)
def _softmax_ce_fwd(logits, labels, ignore_index, losses, probs, stats):
    """Row losses and probs, stats as the module docstring says; returns the float64 sum of the
    row losses (ignored rows add 0, rows with a bad label NaN)."""
    n, c = logits.shape
    count = 0
    bad = 0
    ignored = 0
    total = 0.0
    for i in range(n):
        m = -np.inf
        for j in range(c):
            if logits[i, j] > m:
                m = logits[i, j]
        s = 0.0
        for j in range(c):
            e = math.exp(float(logits[i, j]) - m)
            probs[i, j] = e
            s += e
        inv = 1.0 / s
        for j in range(c):
            probs[i, j] = probs[i, j] * inv
        lab = labels[i]
        if lab == ignore_index:
            losses[i] = 0.0
            if ignored == 0:
                ignored = i + 1
            continue
        count += 1
        if lab < 0 or lab >= c:
            losses[i] = np.nan
            if bad == 0:
                bad = i + 1
        else:
            losses[i] = m + math.log(s) - float(logits[i, lab])
        total += float(losses[i])
    stats[0] = count
    stats[1] = bad
    stats[2] = ignored
    return total


@njit(cache=True)
def _softmax_ce_bwd(row_grads, probs, labels, ignore_index, dlogits):
    n, c = probs.shape
    for i in range(n):
        lab = labels[i]
        if lab == ignore_index or lab < 0 or lab >= c:
            for j in range(c):
                dlogits[i, j] = 0.0 if lab == ignore_index else np.nan
            continue
        w = row_grads[i]
        for j in range(c):
            dlogits[i, j] = w * probs[i, j]
        dlogits[i, lab] = w * (probs[i, lab] - 1.0)


def reduce_rows(total, count, reduction, dtype):
    """The "sum"/"mean" value (a 0-d array of dtype) from the float64 sum of the row losses."""
    if reduction == "mean":
        total = total / count if count else math.nan
    return np.asarray(total, dtype=dtype)


def softmax_cross_entropy_forward_cpu(logits, labels, ignore_index: int = -100, reduction: str = "none"):
    """CPU fast path: one pass per row. Returns (loss, probs, stats)."""
    check_reduction("softmax_cross_entropy_forward", reduction)
    logits = np.ascontiguousarray(logits)
    labels = np.ascontiguousarray(labels)
    losses = np.empty(logits.shape[0], dtype=logits.dtype)
    probs = np.empty_like(logits)
    stats = np.zeros(3, dtype=np.int64)
    total = _softmax_ce_fwd(logits, labels, ignore_index, losses, probs, stats)
    if reduction == "none":
        return losses, probs, stats
    return reduce_rows(total, int(stats[0]), reduction, logits.dtype), probs, stats


def softmax_cross_entropy_backward_cpu(grad, probs, labels, ignore_index: int = -100, reduction: str = "none",
                                       stats=None):
    """CPU fast path: dlogits in one pass."""
    n = probs.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        w = _row_weights("softmax_cross_entropy_backward", grad, n, reduction, stats, probs.dtype, np)
    d = np.empty_like(probs)
    _softmax_ce_bwd(np.ascontiguousarray(w, dtype=probs.dtype), probs, np.ascontiguousarray(labels), ignore_index, d)
    return d


# ----------------------------------------------------------------------------- cost model
# (flops, bytes) of one call from the shapes alone, for the profiler (conventions: activations.py).
from gpunn.kernels.activations import operand_bytes  # noqa: E402


def softmax_cross_entropy_forward_cost(logits, labels, ignore_index: int = -100, reduction: str = "none"):
    """Per element max, subtract, exp, sum, normalise (5NC); per row log, add, subtract, reciprocal
    (4N), and one add per row for a "sum"/"mean" reduction. Read logits and labels; write the row
    losses and probs."""
    n, c = logits.shape
    s = logits.dtype.itemsize
    return 5 * n * c + 4 * n + (n if reduction != "none" else 0), 2 * n * c * s + n * s + operand_bytes(labels)


def softmax_cross_entropy_backward_cost(grad, probs, labels, ignore_index: int = -100, reduction: str = "none",
                                        stats=None):
    """dlogits = w (p - onehot): one multiply per element and one subtract per row (NC + N).
    Read the upstream gradient (one value for "sum"/"mean"), probs and labels; write dlogits."""
    n, c = probs.shape
    return n * c + n, 2 * n * c * probs.dtype.itemsize + operand_bytes(grad) + operand_bytes(labels)


COSTS = {"softmax_cross_entropy_forward": softmax_cross_entropy_forward_cost,
         "softmax_cross_entropy_backward": softmax_cross_entropy_backward_cost}
