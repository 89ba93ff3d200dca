"""Normalisation over some axes (LayerNorm, BatchNorm) and its gradient, as array expressions that
run on NumPy and CuPy alike (memory-bound and cheap next to the dense layers).

Forward, over the statistics axes S (n = the number of elements they span):
  mean = sum_S(x) / n;  var = sum_S((x - mean)^2) / n  (biased; two passes, no cancellation, and
  the centred values corrected by their own mean, which takes out the rounding of mean)
  rstd = 1 / sqrt(var + eps);  xhat = (x - mean) * rstd;  y = xhat * w + b
  (mean and var given: the running statistics of BatchNorm in eval mode)
Backward, with gw = g * w (g without a weight):
  batch statistics:  dx = rstd * (gw - mean_S(gw) - xhat * mean_S(gw * xhat))
  given statistics:  dx = rstd * gw
  dw = sum_P(g * xhat);  db = sum_P(g)   over the axes P that the parameters are broadcast along.
w and b arrive shaped to broadcast against x (or None); dw and db leave with keepdims over P.
"""
from __future__ import annotations

import numpy as np

from gpunn.backend import get_array_module as _xp
from gpunn.kernels.activations import operand_bytes


def normalization_forward(x, weight, bias, stat_axes: tuple, eps: float, mean=None, var=None):
    """(y, xhat, rstd, mean, var): mean and var (keepdims over stat_axes) are computed from x when
    not given."""
    xp = _xp(x)
    if mean is None:
        mean = x.mean(axis=stat_axes, keepdims=True)
        centred = x - mean
        # the mean's own rounding (an ulp of |mean|, large next to the spread when x sits far from 0)
        # is measured on the centred values, which are exact there, and taken out
        shift = centred.mean(axis=stat_axes, keepdims=True)
        centred -= shift
        mean = mean + shift
        var = (centred * centred).mean(axis=stat_axes, keepdims=True)
    else:
        centred = x - mean
    rstd = x.dtype.type(1) / xp.sqrt(var + x.dtype.type(eps))
    xhat = centred * rstd
    y = xhat
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    elif weight is None:
        y = y.copy()  # y is returned to the caller, xhat kept for backward: never the same array
    return y, xhat, rstd, mean, var


def normalization_backward(g, xhat, rstd, weight, stat_axes: tuple, param_axes: tuple, batch_stats: bool,
                           need_dx: bool = True, need_dw: bool = True, need_db: bool = True):
    """(dx, dw, db), None where not needed; dw and db keep the reduced axes (size 1)."""
    dx = dw = db = None
    if need_dx:
        gw = g if weight is None else g * weight
        if batch_stats and g.size:  # (an empty batch has no statistics to differentiate)
            dx = rstd * (gw - gw.mean(axis=stat_axes, keepdims=True)
                         - xhat * (gw * xhat).mean(axis=stat_axes, keepdims=True))
        else:
            dx = gw * rstd
    if need_dw:
        dw = (g * xhat).sum(axis=param_axes, keepdims=True)
    if need_db:
        db = g.sum(axis=param_axes, keepdims=True)
    return dx, dw, db


def update_running_stats(running_mean, running_var, mean, var, n: int, factor) -> None:
    """running = (1 - factor) * running + factor * batch, in place; the variance enters unbiased
    (var * n / (n - 1)), as PyTorch's BatchNorm. factor: a number or a 0-d array on the device."""
    dt = running_mean.dtype
    f = factor if hasattr(factor, "dtype") else dt.type(factor)
    running_mean *= 1 - f
    running_mean += f * mean.reshape(running_mean.shape).astype(dt, copy=False)
    unbiased = var.reshape(running_var.shape).astype(dt, copy=False) * dt.type(n / (n - 1))
    running_var *= 1 - f
    running_var += f * unbiased


# ----------------------------------------------------------------------------- cost models (the profiler's)


def normalization_forward_cost(x, weight, bias, stat_axes: tuple, eps: float, mean=None, var=None):
    """Per element: mean, centre, square and sum (batch statistics only), scale by rstd, then
    weight and bias; read x, the parameters and given statistics; write y and xhat."""
    per = (1 if mean is None else 0) * 3 + 2 + (weight is not None) + (bias is not None)
    reads = sum(operand_bytes(a) for a in (x, weight, bias, mean, var))
    return per * x.size, reads + 2 * x.size * x.dtype.itemsize


def normalization_backward_cost(g, xhat, rstd, weight, stat_axes: tuple, param_axes: tuple, batch_stats: bool,
                                need_dx: bool = True, need_dw: bool = True, need_db: bool = True):
    """Per element: dx 7 FLOPs with batch statistics (gw, two means, products, differences), else 1
    (+1 for the weight); dw 2; db 1. Read g, xhat, rstd, weight; write dx, dw, db."""
    per = (((7 if batch_stats else 1) + (weight is not None)) if need_dx else 0) + 2 * need_dw + need_db
    n_param = g.size // max(1, int(np.prod([g.shape[a] for a in param_axes])))
    writes = (g.size * need_dx + n_param * (need_dw + need_db)) * g.dtype.itemsize
    reads = sum(operand_bytes(a) for a in (g, xhat if (need_dx and batch_stats) or need_dw else None, rstd, weight))
    return per * g.size, reads + writes


COSTS = {"normalization_forward": normalization_forward_cost, "normalization_backward": normalization_backward_cost}
