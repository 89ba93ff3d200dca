"""Fused softmax cross-entropy on the GPU (Numba CUDA). Contract: gpunn/kernels/softmax_ce.py.

forward  `softmax_ce_forward_kernel`: one row per group of TX threads, TY rows per block (block
         (TX, TY) = (32, 8) for C <= 64, (128, 2) for C <= 1024, (256, 1) above). Each row: max
         (strided loads + shared-memory tree reduction, in a fixed order), then e = exp(x - max)
         in the data's dtype, stored into probs and summed in float64, then probs *= 1/sum and
         loss = max + log(sum) - x[label] (float64, rounded once); 0 for ignore_index, NaN for a
         label outside [0, C). Grid: ceil(N / TY) blocks. Then the LAST block to finish (a
         ticket taken with atomic.inc after a threadfence; the ticket wraps back to 0 by itself,
         so it is never reset) reads every row's label and loss and reduces them in a fixed order:
         the float64 sum of the row losses -> out[0] (divided by the divisor for "mean", NaN when
         it is 0), and stats = [divisor (the count of non-ignored rows, or the sum of their class
         weights), 1 + first bad row, 1 + first ignored row, W (sum of the class weights, or C)].
         Deterministic whichever block is last. So the loss, its reduction, the divisor the
         "mean" backward needs and the label check cost ONE launch and no host synchronisation;
         the caller raises on stats[1] when the host next reads a value (deferred check).
backward `softmax_ce_backward_kernel`: dlogits = w_i * (p_ij - [j == y_i]), 0 on ignored rows, NaN
         on rows with a bad label; a grid-stride loop over N*C. w_i is grad[i] ("rows"), or one
         value grad[0] ("scalar": a "sum", or a stride-0 view) or grad[0] / stats[0] ("mean",
         read from the forward's stats on the device), so no CuPy launch forms the row weights.
general  Class weights and label smoothing: separate "general" kernels (three more arguments:
         weight, weighted, smoothing) made from the same code, so the plain ones keep their
         arguments and loops. Forward: the loss is (1 - eps) w_y (lse - x_y) + eps/C sum_j w_j
         (lse - x_j), the sum reduced across the row's threads like the exp sum; the last block
         also sums w_y into the divisor and the weights into W. Backward: w_i (S_i p_ij - q_ij)
         with S_i read from W = stats[3] (softmax_ce.py's formulas).
Limits: logits 2-D float32/float64 (copied to C order if needed), labels 1-D int32/int64 of
length N (other integer types are converted), weight (C,) of the logits' dtype and array type.
The ticket is one uint32 per (device, stream): kernels on one stream run in order, so two
forwards never hold it at once. Compiled once per (dtype, label dtype, block shape, general) /
(dtype, label dtype, mode, general), explicit signature.
"""
from __future__ import annotations

import math

import numpy as np

from gpunn.backend import numba_cuda as nc
from gpunn.kernels.cuda_elementwise import SUPPORTED_DTYPES, launch, supported
from gpunn.kernels.softmax_ce import check_options, check_reduction

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


def _build_forward(dt, lt, tx_, ty_, general):
    _cuda()
    import numba
    from numba.core import types

    f64, i64, i32 = numba.float64, numba.int64, numba.int32
    cast = nc.nbtype(dt)
    TX, TY = tx_, ty_
    NT = TX * TY
    GENERAL = general
    NEG_INF = -math.inf
    NAN = math.nan
    device = nc.numba_cuda().jit(device=True, inline="always")

    @device
    def row_sum(sm, ty, tx):
        """sm[ty, 0] = the sum of sm[ty, :] (a tree, in a fixed order); every thread of the block calls it."""
        h = TX // 2
        while h > 0:
            if tx < h:
                sm[ty, tx] += sm[ty, tx + h]
            cuda.syncthreads()
            h //= 2

    @device
    def forward(logits, labels, ignore_index, mean, weight, weighted, smoothing, losses, probs, out, stats, ticket):
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
        row_sum(sm, ty, tx)
        total = sm[ty, 0]
        if valid:
            inv = cast(1.0 / total)
            j = tx
            while j < C:
                probs[row, j] = probs[row, j] * inv
                j += TX
        smooth = f64(0.0)  # sum_j w_j (lse - x_j), only with label smoothing
        if GENERAL:
            if smoothing != 0.0:  # a kernel argument: the same branch for the whole block
                acc = f64(0.0)
                if valid:
                    lse = m + math.log(total)
                    j = tx
                    while j < C:
                        acc += (f64(weight[j]) if weighted else f64(1.0)) * (lse - f64(logits[row, j]))
                        j += TX
                cuda.syncthreads()  # every thread has read total from sm
                sm[ty, tx] = acc
                cuda.syncthreads()
                row_sum(sm, ty, tx)
                smooth = sm[ty, 0]
        if valid and tx == 0:
            lab = labels[row]
            if lab == ignore_index:
                losses[row] = 0
            elif lab >= 0 and lab < C:
                if GENERAL:
                    wy = f64(weight[lab]) if weighted else f64(1.0)
                    losses[row] = ((1.0 - smoothing) * wy * (m + math.log(total) - f64(logits[row, lab]))
                                   + smoothing / C * smooth)
                else:
                    losses[row] = m + math.log(total) - f64(logits[row, lab])
            else:
                losses[row] = NAN

        # ---- the last block to finish reduces the whole batch (see the module docstring)
        last = cuda.shared.array(1, i32)
        cuda.threadfence()  # this block's losses are visible to every block before its ticket
        cuda.syncthreads()
        t = ty * TX + tx
        if t == 0:
            nb = cuda.gridDim.x
            last[0] = cuda.atomic.inc(ticket, 0, numba.uint32(nb - 1)) == nb - 1
        cuda.syncthreads()
        if last[0] == 0:
            return
        s_sum = cuda.shared.array(NT, f64)
        s_div = cuda.shared.array(NT, f64)
        s_bad = cuda.shared.array(NT, i64)
        s_ign = cuda.shared.array(NT, i64)
        s = f64(0.0)
        div = f64(0.0)
        bad = i64(N)
        ign = i64(N)
        i = t
        while i < N:  # rows in increasing order per thread: the first hit is the thread's first
            lab = labels[i]
            if lab == ignore_index:
                if ign == N:
                    ign = i
            else:
                s += f64(losses[i])
                if lab < 0 or lab >= C:
                    div += 1.0
                    if bad == N:
                        bad = i
                elif GENERAL and weighted:
                    div += f64(weight[lab])
                else:
                    div += 1.0
            i += NT
        s_sum[t] = s
        s_div[t] = div
        s_bad[t] = bad
        s_ign[t] = ign
        w_total = f64(C)
        if GENERAL:
            if weighted:  # W = sum_j w_j, reduced in sm (free now) alongside the rows
                acc = f64(0.0)
                j = t
                while j < C:
                    acc += f64(weight[j])
                    j += NT
                sm[ty, tx] = acc
        cuda.syncthreads()
        h = NT // 2
        while h > 0:
            if t < h:
                s_sum[t] += s_sum[t + h]
                s_div[t] += s_div[t + h]
                if s_bad[t + h] < s_bad[t]:
                    s_bad[t] = s_bad[t + h]
                if s_ign[t + h] < s_ign[t]:
                    s_ign[t] = s_ign[t + h]
                if GENERAL:
                    if weighted:
                        sm[ty, tx] += sm[(t + h) // TX, (t + h) % TX]
            cuda.syncthreads()
            h //= 2
        if t == 0:
            div = s_div[0]
            if GENERAL:
                if weighted:
                    w_total = sm[0, 0]
            stats[0] = div
            stats[1] = f64(s_bad[0] + 1) if s_bad[0] < N else f64(0.0)
            stats[2] = f64(s_ign[0] + 1) if s_ign[0] < N else f64(0.0)
            stats[3] = w_total
            s = s_sum[0]
            if mean:
                out[0] = s / div if div != 0.0 else NAN
            else:
                out[0] = s

    a2, a1 = nc.arr(dt, 2), nc.arr(dt, 1)
    st, tk, lab_t = nc.arr(np.float64, 1), nc.arr(np.uint32, 1), nc.arr(lt, 1)
    if GENERAL:
        def softmax_ce_forward_kernel(logits, labels, ignore_index, mean, weight, weighted, smoothing, losses, probs,
                                      out, stats, ticket):
            forward(logits, labels, ignore_index, mean, weight, weighted, smoothing, losses, probs, out, stats, ticket)

        return nc.jit(nc.void(a2, lab_t, types.int64, types.int32, a1, types.int32, types.float64, a1, a2, a1, st,
                              tk), softmax_ce_forward_kernel)

    def softmax_ce_forward_kernel(logits, labels, ignore_index, mean, losses, probs, out, stats, ticket):
        # no weights (losses stands in: never read) and no smoothing
        forward(logits, labels, ignore_index, mean, losses, 0, 0.0, losses, probs, out, stats, ticket)

    return nc.jit(nc.void(a2, lab_t, types.int64, types.int32, a1, a2, a1, st, tk), softmax_ce_forward_kernel)


BACKWARD_MODES = ("rows", "scalar", "mean")


def _build_backward(dt, lt, mode, general):
    _cuda()
    from numba.core import types

    zero, one = dt.type(0), dt.type(1)
    nan = dt.type(math.nan)
    cast = nc.nbtype(dt)
    ROWS, MEAN, GENERAL = mode == "rows", mode == "mean", general

    @nc.numba_cuda().jit(device=True, inline="always")
    def backward(grad, probs, labels, ignore_index, stats, weight, weighted, smoothing, d):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        C = probs.shape[1]
        n = probs.shape[0] * C
        w0 = zero
        if not ROWS:
            w0 = grad[0]
            if MEAN:
                div = stats[0]
                # divisor 0 (every row ignored, or the counted rows' weights sum to 0): NaN, as
                # PyTorch's, read by no ignored row (and no 0/0 in the simulator)
                w0 = w0 / cast(div) if div != 0.0 else nan
        keep = 1.0 - smoothing
        spread = smoothing / C
        while i < n:
            r = i // C
            j = i - r * C
            lab = labels[r]
            if lab == ignore_index:
                d[r, j] = zero
            elif lab < 0 or lab >= C:
                d[r, j] = nan
            else:
                w = grad[r] if ROWS else w0
                p = probs[r, j]
                if GENERAL:  # w (S p - q), S and q as in softmax_ce.py
                    wy = weight[lab] if weighted else one
                    v = (keep * wy + spread * stats[3]) * p - spread * (weight[j] if weighted else one)
                    if j == lab:
                        v -= keep * wy
                    d[r, j] = w * v
                else:
                    d[r, j] = w * (p - one) if j == lab else w * p
            i += stride

    a2, a1 = nc.arr(dt, 2), nc.arr(dt, 1)
    st, lab_t = nc.arr(np.float64, 1), nc.arr(lt, 1)
    if GENERAL:
        def softmax_ce_backward_kernel(grad, probs, labels, ignore_index, stats, weight, weighted, smoothing, d):
            backward(grad, probs, labels, ignore_index, stats, weight, weighted, smoothing, d)

        return nc.jit(nc.void(a1, a2, lab_t, types.int64, st, a1, types.int32, types.float64, a2),
                      softmax_ce_backward_kernel)

    def softmax_ce_backward_kernel(grad, probs, labels, ignore_index, stats, d):
        backward(grad, probs, labels, ignore_index, stats, grad, 0, 0.0, d)  # grad stands in for the weights

    return nc.jit(nc.void(a1, a2, lab_t, types.int64, st, a2), softmax_ce_backward_kernel)


def forward_kernel(dtype, label_dtype, tx, ty, general=False):
    """general: the kernel that takes class weights and label smoothing (three more arguments)."""
    dt, lt = np.dtype(dtype), np.dtype(label_dtype)
    return nc.kernel(("softmax_ce_forward", dt.name, lt.name, tx, ty) + (("general",) if general else ()),
                     lambda: _build_forward(dt, lt, tx, ty, general))


def backward_kernel(dtype, label_dtype, mode, general=False):
    """mode: "rows" (one upstream gradient per row), "scalar" (one for all), "mean" (one, divided
    by the forward's divisor); general: with class weights and label smoothing."""
    if mode not in BACKWARD_MODES:
        raise ValueError(f"softmax_ce backward mode must be one of {BACKWARD_MODES}, got {mode!r}")
    dt, lt = np.dtype(dtype), np.dtype(label_dtype)
    return nc.kernel(("softmax_ce_backward", dt.name, lt.name, mode) + (("general",) if general else ()),
                     lambda: _build_backward(dt, lt, mode, general))


# Class counts that select each of block_shape's GPU block shapes.
_BLOCK_SHAPE_CLASSES = (10, 1000, 5000)


def variants(dtypes=SUPPORTED_DTYPES):
    """Every kernel of this family, as (getter, arguments, threads per block): for offline
    compilation (kernels/ptxas_report.py) and warm-up."""
    for dt in dtypes:
        for lt in _LABEL_DTYPES:
            for general in (False, True):
                for c in _BLOCK_SHAPE_CLASSES:
                    tx, ty = block_shape(c)
                    yield forward_kernel, (dt, lt, tx, ty, general), tx * ty
                for mode in BACKWARD_MODES:
                    yield backward_kernel, (dt, lt, mode, general), nc.ELEMENTWISE_THREADS


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


_tickets: dict = {}


def _ticket(like):
    """The forward's last-block ticket for `like`'s device and CuPy's current stream: one uint32,
    zeroed once (the kernel leaves it at 0 after every launch)."""
    xp = nc.xp_of(like)
    if nc.is_cupy(like):
        dev = nc._device_id(like)
        key = (dev, xp.cuda.get_current_stream().ptr)
    else:
        dev, key = None, None
    t = _tickets.get(key)
    if t is None:
        if dev is None:
            t = np.zeros(1, dtype=np.uint32)
        else:
            with xp.cuda.Device(dev):
                t = xp.zeros(1, dtype=np.uint32)
        _tickets[key] = t
    return t


def _weight(op, weight, like):
    """(weight array, weighted) for a general kernel: the caller's (checked by check_options, and
    here for its array type) or a cached stand-in that is never read."""
    if weight is None:
        return nc.dummy(like), 0
    if type(weight) is not type(like):
        raise ValueError(f"{op}: weight must be a {type(like).__name__} like the logits, got {type(weight).__name__}")
    return nc.xp_of(like).ascontiguousarray(weight), 1


def softmax_cross_entropy_forward(logits, labels, ignore_index: int = -100, reduction: str = "none",
                                  weight=None, label_smoothing: float = 0.0):
    """(loss, probs, stats) in one launch (softmax_ce.py's contract)."""
    op = "softmax_cross_entropy_forward"
    check_reduction(op, reduction)
    _check_float(op, logits, "logits")
    xp = nc.xp_of(logits)
    n, c = logits.shape
    general = check_options(op, c, logits.dtype, weight, label_smoothing)
    lab = _labels(op, labels, n, xp, logits)
    x = xp.ascontiguousarray(logits)
    losses = xp.empty(n, dtype=x.dtype)
    probs = xp.empty((n, c), dtype=x.dtype)
    out = xp.empty(1, dtype=x.dtype)
    stats = xp.empty(4, dtype=np.float64)
    if n:
        if c == 0:
            raise ValueError(f"{op}: logits of shape {x.shape} have no classes")
        tx, ty = block_shape(c, simulator=not nc.is_cupy(x))
        options = (*_weight(op, weight, x), float(label_smoothing)) if general else ()
        nc.launch(forward_kernel(x.dtype, lab.dtype, tx, ty, general), math.ceil(n / ty), (tx, ty), x,
                  x, lab, int(ignore_index), int(reduction == "mean"), *options, losses, probs, out, stats, _ticket(x))
    else:  # no rows, no launch: host values (an empty batch is no training step)
        stats = xp.zeros(4, dtype=np.float64)
        stats[3] = float(c) if weight is None else weight.astype(np.float64).sum()
        out = xp.asarray(np.array([0.0 if reduction == "sum" else math.nan], dtype=x.dtype))
    if reduction == "none":
        return losses, probs, stats
    return out.reshape(()), probs, stats


def softmax_cross_entropy_backward(grad, probs, labels, ignore_index: int = -100, reduction: str = "none",
                                   stats=None, weight=None, label_smoothing: float = 0.0):
    """dlogits = g[:, None] * (S p - q), 0 on ignored rows (softmax_ce.py); one launch."""
    op = "softmax_cross_entropy_backward"
    _check_float(op, probs, "probs")
    n, c = probs.shape
    general = check_options(op, c, probs.dtype, weight, label_smoothing)
    check_reduction(op, reduction, stats, backward=True, general=general)
    xp = nc.xp_of(probs)
    lab = _labels(op, labels, n, xp, probs)
    p = xp.ascontiguousarray(probs)
    g = grad
    if type(g) is not type(p):
        raise ValueError(f"{op}: grad must be a {type(p).__name__}, got {type(g).__name__}")
    if g.dtype != p.dtype:
        raise ValueError(f"{op}: grad has dtype {g.dtype} but probs have {p.dtype}")
    if reduction == "none":
        if g.ndim != 1 or g.shape[0] != n:
            raise ValueError(f"{op}: grad must have shape ({n},) for reduction='none', got {tuple(g.shape)}")
        scalar = g.size >= 1 and g.strides[0] == 0  # a broadcast value: read once, not copied
        mode = "scalar" if scalar else "rows"
    else:
        if g.size != 1:
            raise ValueError(f"{op}: grad must hold one value for reduction={reduction!r}, got shape {tuple(g.shape)}")
        scalar, mode = True, reduction if reduction == "mean" else "scalar"
    g = g.reshape(-1)[:1] if scalar else xp.ascontiguousarray(g)
    if mode == "mean" or general:
        st = stats
        if type(st) is not type(p) or st.dtype != np.float64 or st.shape != (4,):
            raise ValueError(f"{op}: stats must be the forward's (4,) float64 array, got "
                             f"{type(st).__name__} {getattr(st, 'dtype', '')} {tuple(getattr(st, 'shape', ()))}")
    else:
        st = nc.dummy(p, np.float64)
    d = xp.empty_like(p)
    options = (*_weight(op, weight, p), float(label_smoothing)) if general else ()
    launch(backward_kernel(p.dtype, lab.dtype, mode, general), d.size, p, g, p, lab, int(ignore_index), st,
           *options, d)
    return d
