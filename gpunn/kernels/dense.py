"""The fused dense layer: y = act(x @ W.T + b) and its gradients.

Shapes: x (N, K), W (M, K) (PyTorch's Linear layout), b (M,) or None, y (N, M); one float dtype.

Forward returns (y, saved) where `saved` is what backward needs besides x and W: the
output y for activations whose derivative needs only y (relu, leaky_relu, sigmoid, tanh,
identity), else the pre-activation z (gelu, gelu_tanh).

Backward, with dz = dy * act'(z):
  dx = dz @ W          (N, K)
  dW = dz.T @ x        (M, K)
  db = sum_rows(dz)    (M,)

Two implementations share this contract:
- `dense_forward_ref` / `dense_backward_ref`: plain array expressions (NumPy or CuPy), the reference.
- `dense_forward_cpu` / `dense_backward_cpu`: NumPy's GEMM, then ONE Numba pass that adds the
  bias and applies the activation in place (forward), or ONE pass that forms dz and the bias
  gradient together (backward). Column sums accumulate in float64, in row order: deterministic.
  A product whose inner dimension is 1 (dx of a layer with one output, x @ W.T with one input
  feature, dW at batch 1) is an outer product, computed as one (`_gemm`).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from gpunn.backend import get_array_module as array_module
from gpunn.kernels import registry
from gpunn.kernels.activations import (
    IDENTITY,
    activation_backward_loop,
    activation_backward_ref,
    activation_forward_loop,
    activation_forward_ref,
    check_code,
    cpu_kernel,
    needs_preactivation,
)


def dense_forward_ref(x, W, b, code: int, negative_slope: float = 0.01):
    """Reference: z = x @ W.T + b; y = act(z). Returns (y, saved)."""
    z = x @ W.T
    if b is not None:
        z = z + b
    y = activation_forward_ref(z, code, negative_slope)
    return y, (z if needs_preactivation(code, negative_slope) else y)


def check_grad_out(op, out, shape, like):
    """An output array a caller gave for dW or db: C-contiguous, of `like`'s array type and dtype,
    of the gradient's shape (ValueError otherwise). None passes through."""
    if out is None:
        return None
    if type(out) is not type(like) or out.dtype != like.dtype or tuple(out.shape) != tuple(shape) \
            or not out.flags.c_contiguous:
        raise ValueError(f"{op}: an output for a gradient of shape {tuple(shape)} must be a C-contiguous "
                         f"{type(like).__name__} of dtype {like.dtype} and that shape, got {type(out).__name__} "
                         f"{tuple(getattr(out, 'shape', ()))} {getattr(out, 'dtype', '?')}")
    return out


def dense_backward_ref(dy, x, W, saved, code: int, negative_slope: float = 0.01,
                       need_dx: bool = True, need_dw: bool = True, need_db: bool = True,
                       dW_out=None, db_out=None):
    """Reference: (dx, dW, db), each None where not needed. dW_out / db_out: arrays to write dW /
    db into (returned as dW / db), e.g. an optimizer's flat gradient buffer."""
    xp = array_module(dy)
    pre = needs_preactivation(code, negative_slope)
    dz = activation_backward_ref(dy, saved if pre else None, None if pre else saved, code, negative_slope)
    dx = dz @ W if need_dx else None
    dW = xp.matmul(dz.T, x, out=check_grad_out("dense_backward", dW_out, W.shape, dy)) if need_dw else None
    db = dz.sum(axis=0, out=check_grad_out("dense_backward", db_out, W.shape[:1], dy)) if need_db else None
    return dx, dW, db


# Epilogue templates: `act_loop` / `dact_loop` are bound per activation and dtype (activations.cpu_kernel).

def bias_act_epilogue(z, b, has_bias, slope, y):
    """z += b (in place); y = act(z) in one pass. y may be z itself. z, y: C-contiguous (n, m)."""
    if not has_bias:
        act_loop(z.reshape(-1), slope, y.reshape(-1))  # noqa: F821 (bound per activation)
        return
    n, m = z.shape
    a = T(slope)  # noqa: F821 (bound per dtype)
    if y.ctypes.data == z.ctypes.data:  # one array indexed, as in activation_forward_loop
        for i in range(n):
            for j in range(m):
                z[i, j] = act(z[i, j] + b[j], a)  # noqa: F821 (bound per activation)
    else:
        for i in range(n):
            for j in range(m):
                v = z[i, j] + b[j]
                z[i, j] = v
                y[i, j] = act(v, a)  # noqa: F821 (bound per activation)


def act_grad_colsum(dy, s, slope, dz, db, want_db):
    """dz = dy * act'(s); db = column sums of dz (float64 accumulation, row order).

    Two passes. One pass that also accumulates db was faster alone for tanh'/sigmoid'/relu' over
    256x512 float32 (27 -> 19 us) but made the 32-64-64-64-1 MLP's training step slower end to end
    with OpenBLAS on 2 threads (785 -> 880 us per step, 2026-11-29), so it is not used."""
    dact_loop(dy.reshape(-1), s.reshape(-1), slope, dz.reshape(-1))  # noqa: F821 (bound per activation)
    if want_db:
        _colsum(dz, db)


_EPILOGUES: dict = {}


def _epilogue(template, code, dtype):
    """The compiled epilogue `template` for one activation and dtype (looked up once per call site
    key: the inner activation loop is only compiled on a miss)."""
    key = (template, code, dtype)
    k = _EPILOGUES.get(key)
    if k is None:
        if template is bias_act_epilogue:
            k = cpu_kernel(template, code, dtype, act_loop=cpu_kernel(activation_forward_loop, code, dtype))
        else:
            k = cpu_kernel(template, code, dtype, dact_loop=cpu_kernel(activation_backward_loop, code, dtype))
        _EPILOGUES[key] = k
    return k


@njit(cache=True)
def _colsum(a, out):
    n, m = a.shape
    acc = np.zeros(m, dtype=np.float64)
    for i in range(n):
        for j in range(m):
            acc[j] += a[i, j]
    for j in range(m):
        out[j] = acc[j]


# The profiler's hook for the parts of a fused CPU kernel (None unless a gpunn.profiler profile is
# active, which sets it): part_hook(kernel, part, fn, args, (flops, bytes)) runs fn(*args) and
# records it as a part of `kernel`, so that the epilogue after the GEMM shows as its own row.
part_hook = None


def _part(kernel, fn, args, describe):
    """fn(*args), through the profiler's part_hook when one is set; describe() -> (part name, flops,
    bytes) is only called then, so an unprofiled call builds no labels or costs."""
    if part_hook is None:
        return fn(*args)
    part, flops, nbytes = describe()
    return part_hook(kernel, part, fn, args, (flops, nbytes))


@njit(cache=True)
def _outer(a, b, out):
    for i in range(a.shape[0]):
        ai = a[i, 0]
        for j in range(b.shape[1]):
            out[i, j] = ai * b[0, j] + 0.0  # + 0: a zero product is +0, as a GEMM's sum from 0 gives


def _gemm(a, b, out=None):
    """a @ b with NumPy's BLAS; an outer product (inner dimension 1) as one Numba loop: the same
    bits as the GEMM (each product rounded once, a zero as +0), where OpenBLAS's GEMM is 4.7-25x slower
    (float32 1024x1 @ 1x64: 74 vs 3.0 us, kernels/results/cpu-outer-product-2026-11-29.txt)."""
    if a.shape[1] != 1:
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), a.dtype)
    _outer(a, b, out)
    return out


def _add_bias(z, b):
    z += b


def dense_forward_cpu(x, W, b, code: int, negative_slope: float = 0.01):
    """CPU fast path: one GEMM, then one fused bias+activation pass. Returns (y, saved)."""
    check_code(code)
    z = _gemm(x, W.T)
    has_bias = b is not None
    bias = b if has_bias else z[0] if z.shape[0] else np.zeros(z.shape[1], z.dtype)
    nm, size = z.size, z.dtype.itemsize
    if code == IDENTITY:
        if has_bias:
            _part("dense_forward", _add_bias, (z, b), lambda: ("bias", nm, (2 * nm + b.size) * size))
        return z, z
    epilogue = _epilogue(bias_act_epilogue, code, z.dtype)
    slope = float(negative_slope)
    y = np.empty_like(z) if needs_preactivation(code, negative_slope) else z

    def describe():
        act = registry.activation(code)
        passes = 3 if y is not z else 2
        return (("bias+" if has_bias else "") + act.name, (act.flops + has_bias) * nm,
                (passes * nm + z.shape[1]) * size)

    _part("dense_forward", epilogue, (z, bias, has_bias, slope, y), describe)
    return y, z


def dense_backward_cpu(dy, x, W, saved, code: int, negative_slope: float = 0.01,
                       need_dx: bool = True, need_dw: bool = True, need_db: bool = True,
                       dW_out=None, db_out=None):
    """CPU fast path: one fused pass forms dz (and db), then the GEMMs dx = dz @ W, dW = dz.T @ x
    (dW and db written into dW_out / db_out when given)."""
    check_code(code)
    dy = np.ascontiguousarray(dy)
    m = dy.shape[1]
    dW_out = check_grad_out("dense_backward", dW_out, W.shape, dy) if need_dw else None
    db_out = check_grad_out("dense_backward", db_out, (m,), dy) if need_db else None
    db = (db_out if db_out is not None else np.empty(m, dtype=dy.dtype)) if need_db else None
    nm, size = dy.size, dy.dtype.itemsize
    if code == IDENTITY:
        dz = dy
        if need_db:
            _part("dense_backward", _colsum, (dz, db), lambda: ("db", nm, (nm + m) * size))
    else:
        dz = np.empty_like(dy)
        def describe():
            act = registry.activation(code)
            return (act.name + "'" + ("+db" if need_db else ""), (act.backward_flops + need_db) * nm,
                    (3 * nm + (m if need_db else 0)) * size)

        _part("dense_backward", _epilogue(act_grad_colsum, code, dy.dtype),
              (dy, np.ascontiguousarray(saved), float(negative_slope), dz,
               db if need_db else dz[0] if dz.shape[0] else np.empty(m, dy.dtype), need_db), describe)
    dx = _gemm(dz, W) if need_dx else None
    dW = _gemm(dz.T, x, out=dW_out) if need_dw else None
    return dx, dW, db


# ----------------------------------------------------------------------------- cost model
# (flops, bytes) of one call from the shapes alone, for the profiler (conventions: activations.py).


def dense_forward_cost(x, W, b, code: int, negative_slope: float = 0.01):
    """GEMM 2NKM + bias NM + activation; read x, W, b, write y (and z when it is saved too)."""
    n, k = x.shape
    m = W.shape[0]
    flops = 2 * n * k * m + (n * m if b is not None else 0) + registry.activation(code).flops * n * m
    outputs = 2 if needs_preactivation(code, negative_slope) else 1
    return flops, (n * k + m * k + (m if b is not None else 0) + outputs * n * m) * x.dtype.itemsize


def dense_backward_cost(dy, x, W, saved, code: int, negative_slope: float = 0.01,
                        need_dx: bool = True, need_dw: bool = True, need_db: bool = True,
                        dW_out=None, db_out=None):
    """dz = dy * act' (NM), dx = dz @ W (2NMK), dW = dz.T @ x (2NMK), db (NM, one add per element);
    read dy, the saved z or y (not for identity), W (for dx), x (for dW); write dx, dW, db."""
    n, m = dy.shape
    k = x.shape[1]
    flops = registry.activation(code).backward_flops * n * m + (2 * n * m * k if need_dx else 0) \
        + (2 * n * m * k if need_dw else 0) + (n * m if need_db else 0)
    elems = n * m * (1 if code == IDENTITY else 2)
    if need_dx:
        elems += m * k + n * k
    if need_dw:
        elems += n * k + m * k
    if need_db:
        elems += m
    return flops, elems * dy.dtype.itemsize


COSTS = {"dense_forward": dense_forward_cost, "dense_backward": dense_backward_cost}
