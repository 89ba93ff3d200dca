"""Normalisation over some axes (LayerNorm, BatchNorm) and its gradient, as array expressions that
run on NumPy and CuPy alike (memory-bound and cheap next to the dense layers).

Forward, over the statistics axes S (n = the number of elements they span):
  mean = sum_S(x) / n;  var = sum_S((x - mean)^2) / n  (biased, two passes: no cancellation)
  rstd = 1 / sqrt(var + eps);  xhat = (x - mean) * rstd;  y = xhat * w + b
  (mean and var given: the running statistics of BatchNorm in eval mode)
Backward, with gw = g * w (g without a weight):
  batch statistics:  dx = rstd * (gw - mean_S(gw) - xhat * mean_S(gw * xhat))
  given statistics:  dx = rstd * gw
  dw = sum_P(g * xhat);  db = sum_P(g)   over the axes P that the parameters are broadcast along.
w and b arrive shaped to broadcast against x (or None); dw and db leave with keepdims over P.
"""
from __future__ import annotations

from gpunn.backend import get_array_module as _xp


def normalization_forward(x, weight, bias, stat_axes: tuple, eps: float, mean=None, var=None):
    """(y, xhat, rstd, mean, var): mean and var (keepdims over stat_axes) are computed from x when
    not given."""
    xp = _xp(x)
    if mean is None:
        mean = x.mean(axis=stat_axes, keepdims=True)
        centred = x - mean
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
