"""Fused softmax cross-entropy (and NLL): loss and gradient from logits and integer labels.

logits (N, C) float; labels (N,) integer, meant to lie in [0, C) or equal ignore_index; weight
None or (C,) class weights w of the logits' dtype; label_smoothing eps in [0, 1] (PyTorch's
semantics, aten/src/ATen/native/LossNLL.cpp). Per row i with label y, m = max_j x_ij,
lse_i = m + log(sum_j exp(x_ij - m)), logp_ij = x_ij - lse_i, w_j = 1 without weights:
  q_ij   = (1 - eps) w_y [j == y] + (eps / C) w_j          (what the row's loss weighs -logp by)
  loss_i = -sum_j q_ij logp_ij = (1 - eps) w_y (lse_i - x_iy) + (eps / C) sum_j w_j (lse_i - x_ij)
           (0 where y == ignore_index; NaN for a label out of range)
  p_ij   = exp(logp_ij)                                     (kept for backward)
  dx_ij  = g_i (S_i p_ij - q_ij), S_i = sum_j q_ij = (1 - eps) w_y + (eps / C) W, W = sum_j w_j
           (g_i = the upstream gradient of loss_i; 0 where ignored, NaN for a label out of range)
With no weight and eps = 0 this is loss_i = lse_i - x_iy, dx = g (p - onehot): the fast path,
whose loops are the ones without the extra terms. The weights get no gradient (as in PyTorch).
Reductions (PyTorch's): "none" -> the N row losses; "sum" -> their sum; "mean" -> that sum divided
by the sum of w_y over the rows whose label is not ignore_index (their count without weights;
NaN when it is 0). Sums run in float64 over the rows in order and are rounded once.
NLL (nll_loss_*: the input holds log-probabilities, no smoothing): loss_i = -w_y logp_iy, dlogp = -g q.

forward(logits, labels, ignore_index=-100, reduction="none", weight=None, label_smoothing=0.0)
  -> (loss, probs, stats): loss (N,) for "none", 0-d for "sum"/"mean"; probs (N, C); stats (4,)
  float64 (STATS): [the mean's divisor: sum of w_y over the rows not ignored (a bad label counts 1),
  1 + the first row whose label is neither in [0, C) nor ignore_index (0: none), 1 + the first row
  whose label == ignore_index (0: none), W]. The label check is the caller's to raise
  (gpunn/autograd/functions/loss.py): the kernels compute it, so on the GPU it needs no launch and
  no host synchronisation of its own.
backward(grad, probs, labels, ignore_index=-100, reduction="none", stats=None, weight=None,
         label_smoothing=0.0) -> dlogits
  grad (N,) for "none", one value (0-d, or a stride-0 view) for "sum"/"mean"; "mean", weights
  and smoothing need the forward's stats (the divisor, W).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from gpunn.backend import get_array_module as array_module

REDUCTIONS = ("none", "sum", "mean")
STATS = ("divisor", "first_bad_plus_1", "first_ignored_plus_1", "weight_total")


def check_reduction(op, reduction, stats=None, backward=False, general=False):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if backward and stats is None and (reduction == "mean" or general):
        raise ValueError(f"{op}: reduction={reduction!r}" + (" with class weights or label smoothing" if general
                         else "") + " needs the forward's stats (its divisor and weight total)")


def check_options(op, classes: int, dtype, weight, label_smoothing) -> bool:
    """Validate weight ((C,), the logits' dtype) and label_smoothing ([0, 1]); True when either
    is in use (the general path), False for the fast path. Array checks only: no value is read."""
    if not 0.0 <= label_smoothing <= 1.0:  # NaN fails too
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if weight is None:
        return label_smoothing != 0.0
    if getattr(weight, "shape", None) != (classes,):
        raise ValueError(f"{op}: weight must have shape ({classes},) (one per class of the input's {classes}), "
                         f"got {getattr(weight, 'shape', type(weight).__name__)}")
    if weight.dtype != dtype:
        raise ValueError(f"{op}: weight has dtype {weight.dtype} but the input has {dtype}")
    return True


def _rows(xp, labels, c, ignore_index, weight, dtype):
    """Per row: (valid: not ignored, bad: label out of range, safe label (0 where not good), w_y)."""
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= c))
    safe = xp.where(valid & ~bad, labels, 0).astype(xp.int64)
    wy = weight[safe] if weight is not None and c else xp.ones(labels.shape, dtype)
    return valid, bad, safe, wy


def _stats(xp, valid, bad, wy, weight, c):
    """STATS (the module docstring) in float64."""
    n = valid.shape[0]
    divisor = xp.where(bad, 1.0, xp.where(valid, wy.astype(xp.float64), 0.0)).sum()
    total = weight.astype(xp.float64).sum() if weight is not None else xp.asarray(float(c))

    def first(flags):
        return xp.where(flags.any(), xp.argmax(flags) + 1, 0) if n else xp.zeros((), xp.int64)

    return xp.stack([xp.asarray(divisor, xp.float64), first(bad).astype(xp.float64),
                     first(~valid).astype(xp.float64), xp.asarray(total, xp.float64)])


def _reduce_ref(xp, rows, stats, reduction, dtype):
    if reduction == "none":
        return rows
    total = xp.asarray(rows.astype(xp.float64).sum())
    if reduction == "mean":
        d = stats[0]
        total = xp.where(d != 0, total / xp.where(d != 0, d, 1.0), np.nan)
    return total.astype(dtype)


def _nll_ref(logp, labels, ignore_index, reduction, weight, label_smoothing):
    """(loss, stats) of -sum_j q_ij logp_ij (the module docstring) for log-probabilities logp."""
    xp = array_module(logp)
    n, c = logp.shape
    valid, bad, safe, wy = _rows(xp, labels, c, ignore_index, weight, logp.dtype)
    picked = xp.take_along_axis(logp, safe[:, None], axis=1)[:, 0] if n and c else xp.zeros(n, logp.dtype)
    losses = -wy * picked
    if label_smoothing:
        # the sum over classes only where smoothing asks for it: an NLL input may hold log(0) = -inf
        per_class = logp if weight is None else logp * weight
        losses = (1 - label_smoothing) * losses - (label_smoothing / c) * per_class.sum(axis=1)
    losses = xp.where(valid, losses, logp.dtype.type(0))
    losses = xp.where(bad, logp.dtype.type(np.nan), losses).astype(logp.dtype, copy=False)
    stats = _stats(xp, valid, bad, wy, weight, c)
    return _reduce_ref(xp, losses, stats, reduction, logp.dtype), stats


def _q_ref(xp, shape, labels, ignore_index, weight, label_smoothing, dtype):
    """(q (N, C) as in the module docstring, 0 on ignored rows; valid; bad)."""
    n, c = shape
    valid, bad, safe, wy = _rows(xp, labels, c, ignore_index, weight, dtype)
    good = valid & ~bad
    q = xp.zeros(shape, dtype)
    rows = xp.arange(n)
    q[rows[good], safe[good]] = ((1 - label_smoothing) * wy[good]).astype(dtype)
    if label_smoothing:
        spread = (label_smoothing / c) * (xp.ones(c, dtype) if weight is None else weight)
        q += xp.where(good[:, None], spread[None, :], 0).astype(dtype)
    return q, valid, bad


def softmax_cross_entropy_forward_ref(logits, labels, ignore_index: int = -100, reduction: str = "none",
                                      weight=None, label_smoothing: float = 0.0):
    """Reference: (loss, probs (N, C), stats (4,) float64)."""
    op = "softmax_cross_entropy_forward"
    check_reduction(op, reduction)
    check_options(op, logits.shape[1], logits.dtype, weight, label_smoothing)
    xp = array_module(logits)
    n, c = logits.shape
    m = logits.max(axis=1, keepdims=True) if c else xp.zeros((n, 1), logits.dtype)
    shifted = logits - m
    logp = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    loss, stats = _nll_ref(logp, labels, ignore_index, reduction, weight, label_smoothing)
    return loss, xp.exp(logp), stats


def _row_weights(op, grad, n, reduction, stats, dtype, xp, general=False):
    """The upstream gradient of each row loss: grad itself ("none"), or the one value of a "sum" /
    "mean" (divided by the divisor) broadcast over the rows."""
    check_reduction(op, reduction, stats, backward=True, general=general)
    if reduction == "none":
        return grad
    g = grad.reshape(-1)[:1] if grad.ndim else grad.reshape(1)
    if reduction == "mean":
        # a divisor of 0 (every row ignored, or the weights of the counted ones summing to 0) makes
        # the gradient NaN, as PyTorch's; an ignored row's stays 0 (the kernels never read it)
        if xp is np:
            d = float(stats[0])
            g = g / dtype.type(d) if d else np.full(1, np.nan, dtype)
        else:
            g = xp.where(stats[:1] != 0, g / stats[:1].astype(dtype), np.nan)
    g = g.astype(dtype, copy=False)
    if xp is np:  # the same stride-0 view as broadcast_to, without its argument handling (a step's glue)
        return np.ndarray((n,), dtype, buffer=g, strides=(0,))
    return xp.broadcast_to(g, (n,))


def _backward_ref(op, grad, shape, dtype, labels, ignore_index, reduction, stats, weight, label_smoothing,
                  softmax_probs=None):
    """dlogits = g (S p - q) for softmax_probs p, else dlogp = -g q (NLL); 0 on ignored rows."""
    xp = array_module(labels)
    general = check_options(op, shape[1], dtype, weight, label_smoothing)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = _row_weights(op, grad, shape[0], reduction, stats, dtype, xp, general)
    q, valid, bad = _q_ref(xp, shape, labels, ignore_index, weight, label_smoothing, dtype)
    g = xp.where(valid, xp.where(bad, np.nan, g), 0).astype(dtype, copy=False)[:, None]
    if softmax_probs is None:
        return -g * q
    return g * (q.sum(axis=1, keepdims=True) * softmax_probs - q)


def softmax_cross_entropy_backward_ref(grad, probs, labels, ignore_index: int = -100, reduction: str = "none",
                                       stats=None, weight=None, label_smoothing: float = 0.0):
    """Reference: dlogits = g[:, None] * (S p - q), 0 on ignored rows."""
    return _backward_ref("softmax_cross_entropy_backward", grad, probs.shape, probs.dtype, labels, ignore_index,
                         reduction, stats, weight, label_smoothing, softmax_probs=probs)


def nll_loss_forward(logp, labels, ignore_index: int = -100, reduction: str = "none", weight=None):
    """NLL on log-probabilities logp (N, C): (loss, stats), stats as the softmax forward's. Array
    expressions (NumPy or CuPy): a gather and a sum, nothing for a fused kernel to save."""
    op = "nll_loss_forward"
    check_reduction(op, reduction)
    check_options(op, logp.shape[1], logp.dtype, weight, 0.0)
    return _nll_ref(logp, labels, ignore_index, reduction, weight, 0.0)


def nll_loss_backward(grad, logp, labels, ignore_index: int = -100, reduction: str = "none", stats=None,
                      weight=None):
    """dlogp = -g[:, None] * q (q: w_y at the label, 0 elsewhere and on ignored rows); logp gives
    the shape and dtype only."""
    return _backward_ref("nll_loss_backward", grad, logp.shape, logp.dtype, labels, ignore_index, reduction,
                         stats, weight, 0.0)


# ----------------------------------------------------------------------------- CPU kernels

@njit(cache=True)
def _softmax_ce_fwd(logits, labels, ignore_index, weight, weighted, smoothing, losses, probs, stats):
    """Row losses and probs, stats as the module docstring says; returns the float64 sum of the
    row losses (ignored rows add 0, rows with a bad label NaN). weight is read only when weighted."""
    n, c = logits.shape
    general = weighted or smoothing != 0.0
    keep = 1.0 - smoothing
    spread = smoothing / c if c else 0.0
    divisor = 0.0
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
        if lab < 0 or lab >= c:
            divisor += 1.0
            losses[i] = np.nan
            if bad == 0:
                bad = i + 1
        elif general:
            lse = m + math.log(s)
            wy = float(weight[lab]) if weighted else 1.0
            loss = keep * wy * (lse - float(logits[i, lab]))
            if smoothing != 0.0:
                acc = 0.0
                for j in range(c):
                    acc += (float(weight[j]) if weighted else 1.0) * (lse - float(logits[i, j]))
                loss += spread * acc
            losses[i] = loss
            divisor += wy
        else:
            divisor += 1.0
            losses[i] = m + math.log(s) - float(logits[i, lab])
        total += float(losses[i])
    w_total = float(c)
    if weighted:
        w_total = 0.0
        for j in range(c):
            w_total += float(weight[j])
    stats[0] = divisor
    stats[1] = bad
    stats[2] = ignored
    stats[3] = w_total
    return total


@njit(cache=True)
def _softmax_ce_bwd(row_grads, probs, labels, ignore_index, weight, weighted, smoothing, w_total, dlogits):
    n, c = probs.shape
    general = weighted or smoothing != 0.0
    keep = 1.0 - smoothing
    spread = smoothing / c if c else 0.0
    for i in range(n):
        lab = labels[i]
        if lab == ignore_index or lab < 0 or lab >= c:
            for j in range(c):
                dlogits[i, j] = 0.0 if lab == ignore_index else np.nan
            continue
        w = row_grads[i]
        if general:
            wy = float(weight[lab]) if weighted else 1.0
            s_i = keep * wy + spread * w_total
            for j in range(c):
                dlogits[i, j] = w * (s_i * probs[i, j] - spread * (float(weight[j]) if weighted else 1.0))
            dlogits[i, lab] = w * (s_i * probs[i, lab] - spread * wy - keep * wy)
        else:
            for j in range(c):
                dlogits[i, j] = w * probs[i, j]
            dlogits[i, lab] = w * (probs[i, lab] - 1.0)


# The fast path's kernels: the general ones with no weight and no smoothing as constants (Numba
# inlines them, so the extra terms compile away) and the fewer arguments to dispatch on.
@njit(cache=True)
def _softmax_ce_fwd_plain(logits, labels, ignore_index, losses, probs, stats):
    return _softmax_ce_fwd(logits, labels, ignore_index, losses, False, 0.0, losses, probs, stats)


@njit(cache=True)
def _softmax_ce_bwd_plain(row_grads, probs, labels, ignore_index, dlogits):
    _softmax_ce_bwd(row_grads, probs, labels, ignore_index, row_grads, False, 0.0, 0.0, dlogits)


def reduce_rows(total, divisor, reduction, dtype):
    """The "sum"/"mean" value (a 0-d array of dtype) from the float64 sum of the row losses."""
    if reduction == "mean":
        total = total / divisor if divisor else math.nan
    return np.asarray(total, dtype=dtype)


_no_weight: dict = {}


def _weight_arg(weight, dtype):
    """(weight array, weighted) for the kernels: a cached one-element stand-in when there is none."""
    if weight is not None:
        return np.ascontiguousarray(weight), True
    w = _no_weight.get(dtype)
    if w is None:
        w = _no_weight[dtype] = np.zeros(1, dtype)
    return w, False


def softmax_cross_entropy_forward_cpu(logits, labels, ignore_index: int = -100, reduction: str = "none",
                                      weight=None, label_smoothing: float = 0.0):
    """CPU fast path: one pass per row. Returns (loss, probs, stats)."""
    op = "softmax_cross_entropy_forward"
    check_reduction(op, reduction)
    logits = np.ascontiguousarray(logits)
    labels = np.ascontiguousarray(labels)
    losses = np.empty(logits.shape[0], dtype=logits.dtype)
    probs = np.empty_like(logits)
    stats = np.zeros(4, dtype=np.float64)
    if weight is None and not label_smoothing:
        total = _softmax_ce_fwd_plain(logits, labels, ignore_index, losses, probs, stats)
    else:
        check_options(op, logits.shape[1], logits.dtype, weight, label_smoothing)
        w, weighted = _weight_arg(weight, logits.dtype)
        total = _softmax_ce_fwd(logits, labels, ignore_index, w, weighted, float(label_smoothing), losses, probs,
                                stats)
    if reduction == "none":
        return losses, probs, stats
    return reduce_rows(total, float(stats[0]), reduction, logits.dtype), probs, stats


def softmax_cross_entropy_backward_cpu(grad, probs, labels, ignore_index: int = -100, reduction: str = "none",
                                       stats=None, weight=None, label_smoothing: float = 0.0):
    """CPU fast path: dlogits in one pass."""
    op = "softmax_cross_entropy_backward"
    n = probs.shape[0]
    general = weight is not None or label_smoothing != 0.0
    if general:
        check_options(op, probs.shape[1], probs.dtype, weight, label_smoothing)
        with np.errstate(divide="ignore", invalid="ignore"):  # a divisor from class weights may be 0
            g = _row_weights(op, grad, n, reduction, stats, probs.dtype, np, general)
    else:  # the divisor is a row count (0 is handled in _row_weights): no floating-point state to set
        g = _row_weights(op, grad, n, reduction, stats, probs.dtype, np, general)
    d = np.empty_like(probs)
    if g.strides != (0,) or g.dtype != probs.dtype:  # "sum"/"mean": one value broadcast over the rows, read as is
        g = np.ascontiguousarray(g, dtype=probs.dtype)
    labels = np.ascontiguousarray(labels)
    if general:
        w, weighted = _weight_arg(weight, probs.dtype)
        _softmax_ce_bwd(g, probs, labels, ignore_index, w, weighted, float(label_smoothing), float(stats[3]), d)
    else:
        _softmax_ce_bwd_plain(g, probs, labels, ignore_index, d)
    return d


# ----------------------------------------------------------------------------- cost model
# (flops, bytes) of one call from the shapes alone, for the profiler (conventions: activations.py).
from gpunn.kernels.activations import operand_bytes  # noqa: E402


def softmax_cross_entropy_forward_cost(logits, labels, ignore_index: int = -100, reduction: str = "none",
                                       weight=None, label_smoothing: float = 0.0):
    """Per element max, subtract, exp, sum, normalise (5NC); per row log, add, subtract, reciprocal
    (4N), and one add per row for a "sum"/"mean" reduction. Weights: a multiply and an add per row
    (2N) and the weight total (C); smoothing: subtract, multiply, add per element (3NC) and a
    multiply-add per row (2N). Read logits, labels and the weights; write the row losses and probs."""
    n, c = logits.shape
    s = logits.dtype.itemsize
    flops = 5 * n * c + 4 * n + (n if reduction != "none" else 0)
    if weight is not None:
        flops += 2 * n + c
    if label_smoothing:
        flops += 3 * n * c + 2 * n
    return flops, 2 * n * c * s + n * s + operand_bytes(labels) + operand_bytes(weight)


def softmax_cross_entropy_backward_cost(grad, probs, labels, ignore_index: int = -100, reduction: str = "none",
                                        stats=None, weight=None, label_smoothing: float = 0.0):
    """dlogits = g (p - onehot): one multiply per element and one subtract per row (NC + N); with
    weights or smoothing g (S p - q): two multiplies and a subtract per element, S and the label's
    term per row (3NC + 5N). Read the upstream gradient (one value for "sum"/"mean"), probs,
    labels and the weights; write dlogits."""
    n, c = probs.shape
    flops = 3 * n * c + 5 * n if weight is not None or label_smoothing else n * c + n
    return flops, 2 * n * c * probs.dtype.itemsize + operand_bytes(grad) + operand_bytes(labels) + \
        operand_bytes(weight)


def nll_loss_forward_cost(logp, labels, ignore_index: int = -100, reduction: str = "none", weight=None):
    """A gather, a negate and (weights) a multiply per row (3N), the reduction's add per row. Read
    the picked log-probabilities, labels and weights; write the row losses."""
    n = logp.shape[0]
    s = logp.dtype.itemsize
    return 3 * n + (n if reduction != "none" else 0), 2 * n * s + operand_bytes(labels) + operand_bytes(weight)


def nll_loss_backward_cost(grad, logp, labels, ignore_index: int = -100, reduction: str = "none", stats=None,
                           weight=None):
    """dlogp = -g q: zero fill, and a multiply per row (N). Read grad, labels, weights; write dlogp."""
    n, c = logp.shape
    return n, n * c * logp.dtype.itemsize + operand_bytes(grad) + operand_bytes(labels) + operand_bytes(weight)


COSTS = {"softmax_cross_entropy_forward": softmax_cross_entropy_forward_cost,
         "softmax_cross_entropy_backward": softmax_cross_entropy_backward_cost,
         "nll_loss_forward": nll_loss_forward_cost,
         "nll_loss_backward": nll_loss_backward_cost}
