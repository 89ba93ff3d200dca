"""Element-wise losses and their gradients on the GPU (Numba CUDA). Contract: gpunn/kernels/losses.py.

Each function is ONE launch of a grid-stride kernel over the flattened arrays (256 threads per
block, at most 32 blocks per SM), where the reference issues one CuPy kernel per array operation
(BCE forward 8, backward 6; MSE 2-3; L1 2-3). Memory-bound, so the win is launches, not FLOPs.

  bce_forward_kernel   l = (1 - y) x + (1 + (w - 1) y) (log(exp(-mv) + exp(-x - mv)) + mv), mv = max(-x, 0)
  bce_backward_kernel  g (sigmoid(x) - y), or g ((1 + (w - 1) y) sigmoid(x) - w y) with pos_weight w
  mse_*_kernel         (x - y)^2 and g * 2 (x - y)
  l1_*_kernel          |x - y| and g * sign(x - y) (0 at x == y, NaN for NaN)

Arithmetic in the data's dtype (float32 math for float32). pos_weight w: absent, one value, one
value per class along the last axis (read as w[i % C], no copy), or anything else broadcastable to
x (materialised once). The upstream gradient g: a broadcast scalar (the "mean"/"sum" upstream, a
stride-0 view: only one element is read, no copy) or an array of x's shape.
Limits: x and y of one shape, one dtype (float32/float64) and one array type; non-contiguous
operands are copied to C order first. Compiled once per (family, dtype, mode) with an explicit
signature.
"""
from __future__ import annotations

import math

import numpy as np

from gpunn.backend import numba_cuda as nc
from gpunn.kernels.cuda_elementwise import SUPPORTED_DTYPES, check_dtype, launch

cuda = None  # numba.cuda once a kernel is built: kernels reach it as this global (nc.bind_numba_cuda)


def _cuda():
    return nc.bind_numba_cuda(globals())


PW_NONE, PW_SCALAR, PW_LAST_AXIS, PW_FULL = range(4)


def _pos_weight_at(pw_mode):
    """The device function weight_at(pw, i, c): element i's pos_weight for a PW_* mode other than
    PW_NONE (one value, one per class of the last axis, or one per element)."""
    PW = pw_mode

    def weight_at(pw, i, c):
        if PW == PW_SCALAR:
            return pw[0]
        if PW == PW_LAST_AXIS:
            return pw[i % c]
        return pw[i]

    return nc.kernel(("bce_pos_weight_at", pw_mode), lambda: nc.device_jit(weight_at))


def _build_bce_forward(dt, pw_mode):
    _cuda()
    from numba.core import types

    cast = nc.nbtype(dt)
    zero, one = dt.type(0), dt.type(1)
    PW = pw_mode
    weight_at = _pos_weight_at(pw_mode)

    def bce_forward_kernel(x, y, pw, c, out):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        n = x.shape[0]
        while i < n:
            xi = x[i]
            yi = y[i]
            mv = -xi if -xi > zero else zero
            lt = cast(math.log(cast(math.exp(-mv)) + cast(math.exp(-xi - mv)))) + mv
            if PW == 0:
                out[i] = (one - yi) * xi + lt
            else:
                w = weight_at(pw, i, c)
                out[i] = (one - yi) * xi + (one + (w - one) * yi) * lt
            i += stride

    a1 = nc.arr(dt, 1)
    return nc.jit(nc.void(a1, a1, a1, types.int64, a1), bce_forward_kernel)


def _build_bce_backward(dt, pw_mode, g_scalar):
    _cuda()
    from numba.core import types

    cast = nc.nbtype(dt)
    zero, one = dt.type(0), dt.type(1)
    PW, GS = pw_mode, g_scalar
    weight_at = _pos_weight_at(pw_mode)

    def bce_backward_kernel(g, x, y, pw, c, out):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        n = x.shape[0]
        while i < n:
            xi = x[i]
            yi = y[i]
            gi = g[0] if GS else g[i]
            e = cast(math.exp(-abs(xi)))
            s = one / (one + e) if xi >= zero else e / (one + e)
            if PW == 0:
                out[i] = gi * (s - yi)
            else:
                w = weight_at(pw, i, c)
                out[i] = gi * ((one + (w - one) * yi) * s - w * yi)
            i += stride

    a1 = nc.arr(dt, 1)
    return nc.jit(nc.void(a1, a1, a1, a1, types.int64, a1), bce_backward_kernel)


def _build_pointwise_forward(dt, kind):
    _cuda()
    L1 = kind == "l1"

    def pointwise_forward_kernel(x, y, out):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        n = x.shape[0]
        while i < n:
            d = x[i] - y[i]
            out[i] = abs(d) if L1 else d * d
            i += stride

    a1 = nc.arr(dt, 1)
    return nc.jit(nc.void(a1, a1, a1), pointwise_forward_kernel)


def _build_pointwise_backward(dt, kind, g_scalar):
    _cuda()
    zero, one, two = dt.type(0), dt.type(1), dt.type(2)
    L1, GS = kind == "l1", g_scalar

    def pointwise_backward_kernel(g, x, y, out):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        n = x.shape[0]
        while i < n:
            gi = g[0] if GS else g[i]
            d = x[i] - y[i]
            if L1:
                if d > zero:
                    sg = one
                elif d < zero:
                    sg = -one
                elif d == zero:
                    sg = zero
                else:
                    sg = d  # NaN
                out[i] = gi * sg
            else:
                out[i] = gi * (two * d)
            i += stride

    a1 = nc.arr(dt, 1)
    return nc.jit(nc.void(a1, a1, a1, a1), pointwise_backward_kernel)


def _kernel(name, build, dt, *key):
    dt = np.dtype(dt)
    return nc.kernel((name, dt.name) + key, lambda: build(dt, *key))


def variants(dtypes=SUPPORTED_DTYPES):
    """Every kernel of this family, as (getter, arguments, threads per block): for offline
    compilation (kernels/ptxas_report.py) and warm-up."""
    t = nc.ELEMENTWISE_THREADS
    for dt in dtypes:
        for pw in (PW_NONE, PW_SCALAR, PW_LAST_AXIS, PW_FULL):
            yield _kernel, ("bce_forward", _build_bce_forward, dt, pw), t
            for gs in (True, False):
                yield _kernel, ("bce_backward", _build_bce_backward, dt, pw, gs), t
        for kind in ("mse", "l1"):
            yield _kernel, ("pointwise_forward", _build_pointwise_forward, dt, kind), t
            for gs in (True, False):
                yield _kernel, ("pointwise_backward", _build_pointwise_backward, dt, kind, gs), t


# ------------------------------------------------------------------------------------------ wrappers

def _pair(op, x, y):
    check_dtype(op, x.dtype)
    if type(y) is not type(x) or y.dtype != x.dtype or tuple(y.shape) != tuple(x.shape):
        raise ValueError(f"{op}: target must be a {type(x).__name__} of shape {tuple(x.shape)} and dtype "
                         f"{x.dtype}, got {type(y).__name__} {tuple(getattr(y, 'shape', ()))} "
                         f"{getattr(y, 'dtype', '?')}")
    xp = nc.xp_of(x)
    return xp, xp.ascontiguousarray(x).reshape(-1), xp.ascontiguousarray(y).reshape(-1)


def _upstream(op, g, x, xp):
    """(flat g, scalar?) for an upstream gradient broadcastable to x."""
    if not hasattr(g, "shape"):
        g = xp.asarray(g, dtype=x.dtype)
    if type(g) is not type(x):
        raise ValueError(f"{op}: the upstream gradient must be a {type(x).__name__}, got {type(g).__name__}")
    try:
        gb = xp.broadcast_to(g, x.shape)
    except ValueError:
        raise ValueError(f"{op}: upstream gradient of shape {tuple(g.shape)} does not broadcast to "
                         f"{tuple(x.shape)}") from None
    if gb.size and all(s == 0 for s in gb.strides):
        one = gb[(0,) * gb.ndim] if gb.ndim else gb
        return xp.ascontiguousarray(one.reshape(1), dtype=x.dtype), True
    return xp.ascontiguousarray(gb, dtype=x.dtype).reshape(-1), False


def _pos_weight(op, pw, x, xp):
    """(mode, flat array, classes) for pos_weight (see the module docstring)."""
    if pw is None:
        return PW_NONE, nc.dummy(x), 1
    if not hasattr(pw, "shape"):
        pw = xp.asarray(pw, dtype=x.dtype)
    if type(pw) is not type(x) or pw.dtype != x.dtype:
        raise ValueError(f"{op}: pos_weight must be a {type(x).__name__} of dtype {x.dtype}, got "
                         f"{type(pw).__name__} of dtype {getattr(pw, 'dtype', '?')}")
    try:
        ok = np.broadcast_shapes(tuple(pw.shape), tuple(x.shape)) == tuple(x.shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{op}: pos_weight of shape {tuple(pw.shape)} must broadcast to {tuple(x.shape)}")
    if pw.size == 1:
        return PW_SCALAR, xp.ascontiguousarray(pw.reshape(1)), 1
    if pw.ndim == 1 and x.ndim >= 1 and pw.shape[0] == x.shape[-1]:
        return PW_LAST_AXIS, xp.ascontiguousarray(pw), int(pw.shape[0])
    return PW_FULL, xp.ascontiguousarray(xp.broadcast_to(pw, x.shape)).reshape(-1), 1


def bce_with_logits_forward(x, y, pos_weight=None):
    """Per-element BCE-with-logits losses (x's shape and dtype); one launch."""
    op = "bce_with_logits_forward"
    xp, xf, yf = _pair(op, x, y)
    mode, pw, c = _pos_weight(op, pos_weight, x, xp)
    out = xp.empty_like(xf)
    launch(_kernel("bce_forward", _build_bce_forward, x.dtype, mode), out.size, xf, xf, yf, pw, c, out)
    return out.reshape(x.shape)


def bce_with_logits_backward(g, x, y, pos_weight=None):
    """d loss / d x times the upstream gradient g; one launch."""
    op = "bce_with_logits_backward"
    xp, xf, yf = _pair(op, x, y)
    mode, pw, c = _pos_weight(op, pos_weight, x, xp)
    gf, gs = _upstream(op, g, x, xp)
    out = xp.empty_like(xf)
    launch(_kernel("bce_backward", _build_bce_backward, x.dtype, mode, gs), out.size, xf, gf, xf, yf, pw, c, out)
    return out.reshape(x.shape)


def _pointwise_forward(kind, x, y):
    xp, xf, yf = _pair(f"{kind}_forward", x, y)
    out = xp.empty_like(xf)
    launch(_kernel("pointwise_forward", _build_pointwise_forward, x.dtype, kind), out.size, xf, xf, yf, out)
    return out.reshape(x.shape)


def _pointwise_backward(kind, g, x, y):
    op = f"{kind}_backward"
    xp, xf, yf = _pair(op, x, y)
    gf, gs = _upstream(op, g, x, xp)
    out = xp.empty_like(xf)
    launch(_kernel("pointwise_backward", _build_pointwise_backward, x.dtype, kind, gs), out.size, xf, gf, xf, yf, out)
    return out.reshape(x.shape)


def mse_forward(x, y):
    return _pointwise_forward("mse", x, y)


def mse_backward(g, x, y):
    return _pointwise_backward("mse", g, x, y)


def l1_forward(x, y):
    return _pointwise_forward("l1", x, y)


def l1_backward(g, x, y):
    return _pointwise_backward("l1", g, x, y)
