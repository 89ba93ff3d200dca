"""Activations on the GPU: Numba CUDA device functions (inlined into the dense and loss kernels)
and the element-wise activation kernels behind `CudaOps.activation_forward/backward`.

What it computes: the contract of gpunn/kernels/activations.py (same codes 0-6):
  y = act(z);  dz = dy * act'(.) from s, where s is z for gelu, gelu_tanh and leaky_relu with a
  negative slope, and y otherwise (`needs_preactivation`).
Precision: arithmetic in the array's own dtype (float32 math for float32, as PyTorch's CUDA kernels
do; CUDA's erff/tanhf/expf are within 2 ulp), float64 math for float64. relu/leaky_relu derivatives
select dy (never multiply by 0), so an infinite dy stays finite where the reference gives 0.
Sigmoid is evaluated on the stable branch for each sign (sigmoid(+-1000) is exactly 1/0).

Kernels: one per (activation code, dtype), specialised on the code (no branch on it at run time),
compiled once with an explicit signature. Launch: a 1-D grid-stride loop over the flattened
C-contiguous array, 256 threads per block, at most 32 blocks per SM (`elementwise_geometry`).
Limits: float32 and float64 only (other dtypes fall back to the reference in CudaOps); inputs are
copied to C-contiguous first when they are not; 0-d and empty arrays are handled without a launch
where nothing is to be computed.
"""
from __future__ import annotations

import math

import numpy as np

from gpunn.backend import numba_cuda as nc
from gpunn.kernels.activations import (
    CODES,
    GELU,
    GELU_TANH,
    IDENTITY,
    LEAKY_RELU,
    RELU,
    SIGMOID,
    TANH,
    check_code,
    needs_preactivation,
)

cuda = None  # numba.cuda once a kernel is built: kernels reach it as this global (nc.bind_numba_cuda)


def _cuda():
    return nc.bind_numba_cuda(globals())


SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_C = 0.044715


def supported(dtype) -> bool:
    return np.dtype(dtype) in SUPPORTED_DTYPES


def _python_act(code: int, dtype):
    """act(z, slope) as a plain Python function over `dtype` scalars (constants typed `dtype`,
    so Numba keeps float32 arithmetic in float32). The caller makes it a device function."""
    T = np.dtype(dtype).type
    cast = nc.nbtype(dtype)
    zero, one, half = T(0), T(1), T(0.5)
    inv_sqrt2, k, c = T(_INV_SQRT_2), T(_SQRT_2_OVER_PI), T(_GELU_C)
    if code == RELU:
        def act(z, slope):
            return z if z > zero else zero
    elif code == LEAKY_RELU:
        def act(z, slope):
            return z if z > zero else z * slope
    elif code == GELU:
        def act(z, slope):
            return cast(half * z * (one + math.erf(z * inv_sqrt2)))
    elif code == GELU_TANH:
        def act(z, slope):
            return cast(half * z * (one + math.tanh(k * (z + c * z * z * z))))
    elif code == SIGMOID:
        def act(z, slope):
            if z >= zero:
                return cast(one / (one + math.exp(-z)))
            e = cast(math.exp(z))
            return cast(e / (one + e))
    elif code == TANH:
        def act(z, slope):
            return cast(math.tanh(z))
    else:
        def act(z, slope):
            return z
    return act


def _python_dz(code: int, dtype):
    """dz(dy, s, slope) = dy * act'(.) from s (z or y, see the module docstring)."""
    T = np.dtype(dtype).type
    cast = nc.nbtype(dtype)
    zero, one, half = T(0), T(1), T(0.5)
    inv_sqrt2, inv_sqrt2pi = T(_INV_SQRT_2), T(_INV_SQRT_2PI)
    k, c, c3 = T(_SQRT_2_OVER_PI), T(_GELU_C), T(3 * _GELU_C)
    if code == RELU:
        def dz(dy, s, slope):
            return dy if s > zero else zero
    elif code == LEAKY_RELU:
        def dz(dy, s, slope):
            return dy if s > zero else dy * slope
    elif code == GELU:
        def dz(dy, s, slope):
            cdf = half * (one + math.erf(s * inv_sqrt2))
            pdf = math.exp(-half * s * s) * inv_sqrt2pi
            return cast(dy * cast(cdf + s * pdf))
    elif code == GELU_TANH:
        def dz(dy, s, slope):
            t = math.tanh(k * (s + c * s * s * s))
            d = half * (one + t) + half * s * (one - t * t) * k * (one + c3 * s * s)
            return cast(dy * cast(d))
    elif code == SIGMOID:
        def dz(dy, s, slope):
            return dy * (s * (one - s))
    elif code == TANH:
        def dz(dy, s, slope):
            return dy * (one - s * s)
    else:
        def dz(dy, s, slope):
            return dy
    return dz


def act_device(code: int, dtype):
    """The device function act(z, slope) for one code and dtype (compiled into its callers)."""
    check_code(code)
    dt = np.dtype(dtype)
    return nc.kernel(("act_device", code, dt.name), lambda: nc.device_jit(_python_act(code, dt)))


def dz_device(code: int, dtype):
    """The device function dz(dy, s, slope) = dy * act'(.) for one code and dtype."""
    check_code(code)
    dt = np.dtype(dtype)
    return nc.kernel(("dz_device", code, dt.name), lambda: nc.device_jit(_python_dz(code, dt)))


# ------------------------------------------------------------------------------------------ kernels

def _build_forward(code: int, dt):
    _cuda()
    act = act_device(code, dt)

    def activation_forward_kernel(z, slope, y):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        n = z.shape[0]
        while i < n:
            y[i] = act(z[i], slope)
            i += stride

    sig = nc.void(nc.arr(dt), nc.nbtype(dt), nc.arr(dt))
    return nc.jit(sig, activation_forward_kernel)


def _build_backward(code: int, dt):
    _cuda()
    dzf = dz_device(code, dt)

    def activation_backward_kernel(dy, s, slope, dz):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        n = dy.shape[0]
        while i < n:
            dz[i] = dzf(dy[i], s[i], slope)
            i += stride

    sig = nc.void(nc.arr(dt), nc.arr(dt), nc.nbtype(dt), nc.arr(dt))
    return nc.jit(sig, activation_backward_kernel)


def forward_kernel(code: int, dtype):
    dt = np.dtype(dtype)
    return nc.kernel(("activation_forward", code, dt.name), lambda: _build_forward(code, dt))


def backward_kernel(code: int, dtype):
    dt = np.dtype(dtype)
    return nc.kernel(("activation_backward", code, dt.name), lambda: _build_backward(code, dt))


def variants(dtypes=SUPPORTED_DTYPES):
    """Every kernel of this family, as (getter, arguments, threads per block): for offline
    compilation (kernels/ptxas_report.py) and warm-up."""
    for dt in dtypes:
        for code in sorted(CODES - {IDENTITY}):  # identity never launches a kernel
            yield forward_kernel, (code, dt), nc.ELEMENTWISE_THREADS
            yield backward_kernel, (code, dt), nc.ELEMENTWISE_THREADS


def _flat(a, xp):
    a = xp.ascontiguousarray(a)
    return a.reshape(-1)


def activation_forward(z, code: int, negative_slope: float = 0.01):
    """y = act(z), a new array of z's shape and dtype (float32/float64; C-contiguous copy if needed)."""
    check_code(code)
    xp = nc.xp_of(z)
    if not supported(z.dtype):
        raise TypeError(f"activation_forward: the CUDA kernels take float32 or float64, got {z.dtype}")
    if code == IDENTITY:
        return z.copy()
    zf = _flat(z, xp)
    y = xp.empty_like(zf)
    n = zf.size
    if n:
        grid, block = nc.elementwise_geometry(n, zf)
        nc.launch(forward_kernel(code, z.dtype), grid, block, zf, zf, z.dtype.type(negative_slope), y)
    return y.reshape(z.shape)


def activation_backward(dy, z, y, code: int, negative_slope: float = 0.01):
    """dz = dy * act'(z), from y where the derivative needs only the output (z may be None then)."""
    check_code(code)
    xp = nc.xp_of(dy)
    if not supported(dy.dtype):
        raise TypeError(f"activation_backward: the CUDA kernels take float32 or float64, got {dy.dtype}")
    if code == IDENTITY:
        return dy.copy()
    s = z if needs_preactivation(code, negative_slope) else y
    if s is None:
        which = "z (the pre-activation)" if needs_preactivation(code, negative_slope) else "y (the output)"
        raise ValueError(f"activation_backward: code {code} needs {which}, got None")
    if s.shape != dy.shape or s.dtype != dy.dtype or type(s) is not type(dy):
        raise ValueError(f"activation_backward: the saved array ({type(s).__name__} {s.shape} {s.dtype}) must "
                         f"match dy ({type(dy).__name__} {dy.shape} {dy.dtype})")
    dyf, sf = _flat(dy, xp), _flat(s, xp)
    out = xp.empty_like(dyf)
    n = dyf.size
    if n:
        grid, block = nc.elementwise_geometry(n, dyf)
        nc.launch(backward_kernel(code, dy.dtype), grid, block, dyf, dyf, sf, dy.dtype.type(negative_slope), out)
    return out.reshape(dy.shape)
