"""Fused softmax cross-entropy on the GPU (Numba CUDA). Contract: gpunn/kernels/softmax_ce.py.

forward  `softmax_ce_forward_kernel`: one row per group of TX threads, TY rows per block (block
         (TX, TY) = (32, 8) for C <= 64, (128, 2) for C <= 1024, (256, 1) above). Each row: max
         (strided loads + shared-memory tree reduction, in a fixed order), then e = exp(x - max)
         in the data's dtype, stored into probs and summed in float64, then probs *= 1/sum and
         loss = max + log(sum) - x[label] (float64, rounded once); 0 for ignore_index. Grid:
         ceil(N / TY) blocks. One launch; logits are read twice, probs written twice.
backward `softmax_ce_backward_kernel`: dlogits = w_i * (p_ij - [j == y_i]), 0 on ignored rows; a
         grid-stride loop over N*C. The row weights may be a broadcast scalar (the usual "mean"/"sum"
         upstream, a stride-0 view): then only its first element is read and no copy is made.
Limits: logits 2-D float32/float64 (copied to C order if needed), labels 1-D int32/int64 of
length N (other integer types are converted). A label outside [0, C) that is not ignore_index
gives a NaN loss (the kernel never reads out of bounds; checking label values on the host would
need a device synchronisation, which the caller's validation does before this is reached).
Compiled once per (dtype, label dtype, block shape) with an explicit signature.
"""
from __future__ import annotations

import math

import numpy as np

from gpunn.backend import numba_cuda as nc
from gpunn.kernels.cuda_elementwise import SUPPORTED_DTYPES, supported

cuda = None  # numba.cuda once a kernel is built: kernels reach it as this global (nc.bind_numba_cuda)


def _cuda():
    return nc.bind_numba_cuda(globals())


_LABEL_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


def block_shape(c: int, simulator: bool = False) -> tuple[int, int]:
    """(TX threads per row, TY rows per block) for C classes."""
    if simulator:
        return (4, 2) if c <= 8 else (8, 1)
    if c <= 64:
        return 32, 8
    if c <= 1024:
        return 128, 2
    return 256, 1


def _build_forward(dt, lt, tx_, ty_):
    _cuda()
    import numba
    from numba.core import types

    f64 = numba.float64
    cast = nc.nbtype(dt)
    TX, TY = tx_, ty_
    NEG_INF = -math.inf
    NAN = math.nan

    def softmax_ce_forward_kernel(logits, labels, ignore_index, losses, probs):
        sm = cuda.shared.array((TY, TX), f64)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        row = cuda.blockIdx.x * TY + ty
        N = logits.shape[0]
        C = logits.shape[1]
        valid = row < N
        m = f64(NEG_INF)
        if valid:
            j = tx
            while j < C:
                v = f64(logits[row, j])
                if v > m:
                    m = v
                j += TX
        sm[ty, tx] = m
        cuda.syncthreads()
        h = TX // 2
        while h > 0:
            if tx < h:
                o = sm[ty, tx + h]
                if o > sm[ty, tx]:
                    sm[ty, tx] = o
            cuda.syncthreads()
            h //= 2
        m = sm[ty, 0]
        mt = cast(m)
        cuda.syncthreads()
        acc = f64(0.0)
        if valid:
            j = tx
            while j < C:
                e = cast(math.exp(logits[row, j] - mt))
                probs[row, j] = e
                acc += f64(e)
                j += TX
        sm[ty, tx] = acc
        cuda.syncthreads()
        h = TX // 2
        while h > 0:
            if tx < h:
                sm[ty, tx] += sm[ty, tx + h]
            cuda.syncthreads()
            h //= 2
        total = sm[ty, 0]
        if valid:
            inv = cast(1.0 / total)
            j = tx
            while j < C:
                probs[row, j] = probs[row, j] * inv
                j += TX
            if tx == 0:
                lab = labels[row]
                if lab == ignore_index:
                    losses[row] = 0
                elif lab >= 0 and lab < C:
                    losses[row] = m + math.log(total) - f64(logits[row, lab])
                else:
                    losses[row] = NAN

    a2, a1 = nc.arr(dt, 2), nc.arr(dt, 1)
    return nc.jit(nc.void(a2, nc.arr(lt, 1), types.int64, a1, a2), softmax_ce_forward_kernel)


def _build_backward(dt, lt, scalar_weight):
    _cuda()
    from numba.core import types

    zero, one = dt.type(0), dt.type(1)
    SCALAR = scalar_weight

    def softmax_ce_backward_kernel(row_grads, probs, labels, ignore_index, d):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        C = probs.shape[1]
        n = probs.shape[0] * C
        while i < n:
            r = i // C
            j = i - r * C
            lab = labels[r]
            if lab == ignore_index:
                d[r, j] = zero
            else:
                w = row_grads[0] if SCALAR else row_grads[r]
                p = probs[r, j]
                d[r, j] = w * (p - one) if j == lab else w * p
            i += stride

    a2, a1 = nc.arr(dt, 2), nc.arr(dt, 1)
    return nc.jit(nc.void(a1, a2, nc.arr(lt, 1), types.int64, a2), softmax_ce_backward_kernel)


def forward_kernel(dtype, label_dtype, tx, ty):
    dt, lt = np.dtype(dtype), np.dtype(label_dtype)
    return nc.kernel(("softmax_ce_forward", dt.name, lt.name, tx, ty), lambda: _build_forward(dt, lt, tx, ty))


def backward_kernel(dtype, label_dtype, scalar_weight):
    dt, lt = np.dtype(dtype), np.dtype(label_dtype)
    return nc.kernel(("softmax_ce_backward", dt.name, lt.name, scalar_weight),
                     lambda: _build_backward(dt, lt, scalar_weight))


# Class counts that select each of block_shape's GPU block shapes.
_BLOCK_SHAPE_CLASSES = (10, 1000, 5000)


def variants(dtypes=SUPPORTED_DTYPES):
    """Every kernel of this family, as (getter, arguments, threads per block): for offline
    compilation (kernels/ptxas_report.py) and warm-up."""
    for dt in dtypes:
        for lt in _LABEL_DTYPES:
            for c in _BLOCK_SHAPE_CLASSES:
                tx, ty = block_shape(c)
                yield forward_kernel, (dt, lt, tx, ty), tx * ty
            for scalar in (True, False):
                yield backward_kernel, (dt, lt, scalar), nc.ELEMENTWISE_THREADS


def _labels(op, labels, n, xp, like):
    if type(labels) is not type(like):
        raise ValueError(f"{op}: labels must be a {type(like).__name__} like the logits, got {type(labels).__name__}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{op}: labels must have shape ({n},), got {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{op}: labels must be integers, got {labels.dtype}")
    if labels.dtype not in _LABEL_DTYPES:
        labels = labels.astype(np.int64)
    return xp.ascontiguousarray(labels)


def _check_float(op, a, what):
    if not supported(a.dtype):
        raise TypeError(f"{op}: the CUDA kernels take float32 or float64 {what}, got {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{op}: {what} must be 2-D (N, C), got shape {tuple(a.shape)}")


def softmax_cross_entropy_forward(logits, labels, ignore_index: int = -100):
    """(losses (N,), probs (N, C)) in one launch."""
    op = "softmax_cross_entropy_forward"
    _check_float(op, logits, "logits")
    xp = nc.xp_of(logits)
    n, c = logits.shape
    lab = _labels(op, labels, n, xp, logits)
    x = xp.ascontiguousarray(logits)
    losses = xp.empty(n, dtype=x.dtype)
    probs = xp.empty((n, c), dtype=x.dtype)
    if n:
        if c == 0:
            raise ValueError(f"{op}: logits of shape {x.shape} have no classes")
        tx, ty = block_shape(c, simulator=not nc.is_cupy(x))
        nc.launch(forward_kernel(x.dtype, lab.dtype, tx, ty), math.ceil(n / ty), (tx, ty), x,
                  x, lab, int(ignore_index), losses, probs)
    return losses, probs


def softmax_cross_entropy_backward(row_grads, probs, labels, ignore_index: int = -100):
    """dlogits = row_grads[:, None] * (probs - onehot(labels)), 0 on ignored rows; one launch."""
    op = "softmax_cross_entropy_backward"
    _check_float(op, probs, "probs")
    xp = nc.xp_of(probs)
    n, c = probs.shape
    lab = _labels(op, labels, n, xp, probs)
    p = xp.ascontiguousarray(probs)
    rg = row_grads
    if type(rg) is not type(p):
        raise ValueError(f"{op}: row_grads must be a {type(p).__name__}, got {type(rg).__name__}")
    if rg.ndim > 1 or (rg.ndim == 1 and rg.shape[0] != n):
        raise ValueError(f"{op}: row_grads must have shape ({n},), got {tuple(rg.shape)}")
    scalar = rg.ndim == 0 or (rg.size >= 1 and rg.strides[0] == 0)
    if scalar:
        rg = xp.ascontiguousarray(rg.reshape(-1)[:1] if rg.ndim else rg.reshape(1), dtype=p.dtype)
    else:
        rg = xp.ascontiguousarray(rg, dtype=p.dtype)
    d = xp.empty_like(p)
    if d.size:
        grid, block = nc.elementwise_geometry(d.size, p)
        nc.launch(backward_kernel(p.dtype, lab.dtype, scalar), grid, block, p, rg, p, lab, int(ignore_index), d)
    return d
