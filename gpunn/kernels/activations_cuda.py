"""Activations on the GPU: Numba CUDA device functions (inlined into the dense and loss kernels)
and the element-wise activation kernels behind `CudaOps.activation_forward/backward`.

What it computes: the registry's definitions (gpunn/kernels/registry.py), the same bytecode the
CPU kernels are made from, with `cuda_math` (libdevice, plus a sigmoid) for the transcendental
functions:
  y = act(z);  dz = dy * act'(.) from s, where s is z or y as the activation needs (`needs_preactivation`).
Precision: the activation family's policy, arithmetic in the array's own dtype (float32 math for
float32: CUDA's erff/tanhf/expf are within 2 ulp; float64 for float64).

Kernels: one per (activation code, dtype), specialised on the code (no branch on it at run time),
compiled once with an explicit signature. Launch: a 1-D grid-stride loop over the flattened
C-contiguous array (gpunn/kernels/cuda_elementwise.py). Limits: float32 and float64 only (other
dtypes fall back to the reference in CudaOps); inputs are copied to C-contiguous first when they
are not; empty arrays are handled without a launch.
"""
from __future__ import annotations


import numpy as np

from gpunn.backend import numba_cuda as nc
from gpunn.kernels import registry
from gpunn.kernels.activations import IDENTITY, saved_operand
from gpunn.kernels.cuda_elementwise import SUPPORTED_DTYPES, check_dtype, cuda_math, flat, launch
from gpunn.kernels.registry import check_code

cuda = None  # numba.cuda once a kernel is built: kernels reach it as this global (nc.bind_numba_cuda)


def _cuda():
    return nc.bind_numba_cuda(globals())


def _device(code: int, dtype, which: str):
    check_code(code)
    dt = np.dtype(dtype)
    f = getattr(registry.activation(code), which)
    return nc.kernel((f"{which}_device", code, dt.name), lambda: nc.device_jit(registry.retarget(f, cuda_math(dt), dt)))


def act_device(code: int, dtype):
    """The device function act(z, slope) for one code and dtype (compiled into its callers)."""
    return _device(code, dtype, "forward")


def dz_device(code: int, dtype):
    """The device function dz(dy, s, slope) = dy * act'(.) for one code and dtype."""
    return _device(code, dtype, "backward")


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
        for m in registry.ACTIVATIONS.values():
            if m.code != IDENTITY:  # identity never launches a kernel
                yield forward_kernel, (m.code, dt), nc.ELEMENTWISE_THREADS
                yield backward_kernel, (m.code, dt), nc.ELEMENTWISE_THREADS


def activation_forward(z, code: int, negative_slope: float = 0.01):
    """y = act(z), a new array of z's shape and dtype (float32/float64; C-contiguous copy if needed)."""
    check_code(code)
    xp = nc.xp_of(z)
    check_dtype("activation_forward", z.dtype)
    if code == IDENTITY:
        return z.copy()
    zf = flat(z, xp)
    y = xp.empty_like(zf)
    launch(forward_kernel(code, z.dtype), zf.size, zf, zf, z.dtype.type(negative_slope), y)
    return y.reshape(z.shape)


def activation_backward(dy, z, y, code: int, negative_slope: float = 0.01):
    """dz = dy * act'(z), from y where the derivative needs only the output (z may be None then)."""
    check_code(code)
    xp = nc.xp_of(dy)
    check_dtype("activation_backward", dy.dtype)
    if code == IDENTITY:
        return dy.copy()
    s = saved_operand(z, y, code, negative_slope)
    if s.shape != dy.shape or s.dtype != dy.dtype or type(s) is not type(dy):
        raise ValueError(f"activation_backward: the saved array ({type(s).__name__} {s.shape} {s.dtype}) must "
                         f"match dy ({type(dy).__name__} {dy.shape} {dy.dtype})")
    dyf, sf = flat(dy, xp), flat(s, xp)
    out = xp.empty_like(dyf)
    launch(backward_kernel(code, dy.dtype), dyf.size, dyf, dyf, sf, dy.dtype.type(negative_slope), out)
    return out.reshape(dy.shape)
