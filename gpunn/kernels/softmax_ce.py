"""Fused softmax cross-entropy: loss and gradient from logits and integer labels.

logits (N, C) float, labels (N,) integer in [0, C) or == ignore_index.
Per row, with m = max_j x_j and lse = m + log(sum_j exp(x_j - m)):
  loss_i = lse - x_{i, y_i}          (0 where y_i == ignore_index)
  p_ij   = exp(x_ij - lse)           (kept for backward)
  dx_ij  = w_i (p_ij - [j == y_i])   (w_i = the upstream gradient of loss_i; 0 where ignored)
Reduction "mean" divides by the number of non-ignored rows, as PyTorch does.

Forward returns (per_row_losses, probs); the caller reduces. Labels are validated by the caller.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from gpunn.backend import get_array_module as array_module


def softmax_cross_entropy_forward_ref(logits, labels, ignore_index: int = -100):
    """Reference: (losses (N,), probs (N, C))."""
    xp = array_module(logits)
    m = logits.max(axis=1, keepdims=True) if logits.shape[1] else xp.zeros((logits.shape[0], 1), logits.dtype)
    shifted = logits - m
    lse = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    logp = shifted - lse
    valid = labels != ignore_index
    safe = xp.where(valid, labels, 0)
    picked = xp.take_along_axis(logp, safe[:, None].astype(xp.int64), axis=1)[:, 0] if logits.shape[0] else logp[:, 0]
    losses = xp.where(valid, -picked, logits.dtype.type(0))
    return losses.astype(logits.dtype, copy=False), xp.exp(logp)


def softmax_cross_entropy_backward_ref(row_grads, probs, labels, ignore_index: int = -100):
    """Reference: dlogits = row_grads[:, None] * (probs - onehot(labels)), 0 on ignored rows."""
    xp = array_module(probs)
    valid = labels != ignore_index
    onehot = xp.zeros_like(probs)
    rows = xp.arange(probs.shape[0])
    onehot[rows[valid], labels[valid]] = 1
    w = xp.where(valid, row_grads, probs.dtype.type(0)).astype(probs.dtype, copy=False)
    return (probs - onehot) * w[:, None]


@njit(cache=True)
def _softmax_ce_fwd(logits, labels, ignore_index, losses, probs):
    n, c = logits.shape
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
        else:
            losses[i] = m + math.log(s) - float(logits[i, lab])


@njit(cache=True)
def _softmax_ce_bwd(row_grads, probs, labels, ignore_index, dlogits):
    n, c = probs.shape
    for i in range(n):
        lab = labels[i]
        if lab == ignore_index:
            for j in range(c):
                dlogits[i, j] = 0.0
            continue
        w = row_grads[i]
        for j in range(c):
            dlogits[i, j] = w * probs[i, j]
        dlogits[i, lab] = w * (probs[i, lab] - 1.0)


def softmax_cross_entropy_forward_cpu(logits, labels, ignore_index: int = -100):
    """CPU fast path: one pass per row. Returns (losses (N,), probs (N, C))."""
    logits = np.ascontiguousarray(logits)
    losses = np.empty(logits.shape[0], dtype=logits.dtype)
    probs = np.empty_like(logits)
    _softmax_ce_fwd(logits, np.ascontiguousarray(labels), ignore_index, losses, probs)
    return losses, probs


def softmax_cross_entropy_backward_cpu(row_grads, probs, labels, ignore_index: int = -100):
    """CPU fast path: dlogits in one pass."""
    d = np.empty_like(probs)
    _softmax_ce_bwd(np.ascontiguousarray(row_grads, dtype=probs.dtype), probs,
                    np.ascontiguousarray(labels), ignore_index, d)
    return d


# ----------------------------------------------------------------------------- cost model
# (flops, bytes) of one call from the shapes alone, for the profiler (conventions: activations.py).
from gpunn.kernels.activations import operand_bytes  # noqa: E402


def softmax_cross_entropy_forward_cost(logits, labels, ignore_index: int = -100):
    """Per element max, subtract, exp, sum, normalise (5NC); per row log, add, subtract, reciprocal (4N).
    Read logits and labels; write losses and probs."""
    n, c = logits.shape
    s = logits.dtype.itemsize
    return 5 * n * c + 4 * n, 2 * n * c * s + n * s + operand_bytes(labels)


def softmax_cross_entropy_backward_cost(row_grads, probs, labels, ignore_index: int = -100):
    """dlogits = w (p - onehot): one multiply per element and one subtract per row (NC + N).
    Read the row gradients (a broadcast scalar counts once), probs and labels; write dlogits."""
    n, c = probs.shape
    return n * c + n, 2 * n * c * probs.dtype.itemsize + operand_bytes(row_grads) + operand_bytes(labels)


COSTS = {"softmax_cross_entropy_forward": softmax_cross_entropy_forward_cost,
         "softmax_cross_entropy_backward": softmax_cross_entropy_backward_cost}
