"""Activation functions and their derivatives: the reference (any xp) and Numba CPU scalar cores.

Names (and the code each compiles to):
  identity (0)   y = z
  relu (1)       y = max(z, 0);                  y' = 1 if z > 0 else 0 (0 at z == 0, as PyTorch)
  leaky_relu (2) y = z if z > 0 else s*z;        y' = 1 if z > 0 else s  (s = negative_slope)
  gelu (3)       y = z * Phi(z) = 0.5 z (1 + erf(z / sqrt 2)); y' = Phi(z) + z phi(z)
  gelu_tanh (4)  y = 0.5 z (1 + tanh(k (z + 0.044715 z^3))), k = sqrt(2/pi)
  sigmoid (5)    y = 1 / (1 + exp(-z)), evaluated on the stable branch for each sign; y' = y (1 - y)
  tanh (6)       y = tanh(z);                    y' = 1 - y^2

Derivatives of relu, leaky_relu (slope >= 0), sigmoid and tanh need only the output y,
so a fused dense layer keeps y alone; gelu and gelu_tanh (and leaky_relu with a negative
slope) need the pre-activation z.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from gpunn.backend import get_array_module as array_module
from gpunn.kernels.fastmath import erf, exp, like, sigmoid, tanh

IDENTITY, RELU, LEAKY_RELU, GELU, GELU_TANH, SIGMOID, TANH = range(7)
ACTIVATIONS = {
    "identity": IDENTITY,
    "relu": RELU,
    "leaky_relu": LEAKY_RELU,
    "gelu": GELU,
    "gelu_tanh": GELU_TANH,
    "sigmoid": SIGMOID,
    "tanh": TANH,
}
CODES = frozenset(ACTIVATIONS.values())
_ALIASES = {None: "identity", "linear": "identity", "none": "identity"}
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_C = 0.044715


def activation_code(name) -> int:
    """The integer code of an activation name; ValueError listing the valid names otherwise."""
    key = _ALIASES.get(name, name)
    if isinstance(key, str):
        key = key.lower()
    try:
        return ACTIVATIONS[key]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)} (or None for identity)"
        ) from None


def check_code(code) -> None:
    """The fused kernels treat an unknown code as identity: refuse it before they run."""
    if code not in CODES:
        raise ValueError(f"unknown activation code {code!r}; valid codes: {sorted(CODES)} "
                         f"({', '.join(ACTIVATIONS)})")


def needs_preactivation(code: int, negative_slope: float = 0.01) -> bool:
    """True when the derivative must be computed from z rather than from y = act(z)."""
    return code in (GELU, GELU_TANH) or (code == LEAKY_RELU and negative_slope < 0)


# ---------------------------------------------------------------------------------------------
# Reference implementation: plain array expressions, valid for NumPy and CuPy alike.
# ---------------------------------------------------------------------------------------------

def _erf(xp, x):
    if xp is np:
        # NumPy has no erf ufunc; math.erf per element is slow but exact: this is the reference.
        return np.vectorize(math.erf, otypes=[x.dtype])(x) if x.size else x.copy()
    from cupyx.scipy.special import erf  # only reached on the GPU backend

    return erf(x)


def _sigmoid_ref(xp, z):
    # exp(-|z|) never overflows; pick 1/(1+e) for z >= 0 and e/(1+e) for z < 0.
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)


def activation_forward_ref(z, code: int, negative_slope: float = 0.01):
    """y = act(z) elementwise; returns a new array of z's dtype."""
    xp = array_module(z)
    dt = z.dtype
    if code == IDENTITY:
        return z.copy()
    if code == RELU:
        return xp.maximum(z, dt.type(0))
    if code == LEAKY_RELU:
        return xp.where(z > 0, z, z * dt.type(negative_slope))
    if code == GELU:
        return (0.5 * z * (1.0 + _erf(xp, z * _INV_SQRT_2))).astype(dt, copy=False)
    if code == GELU_TANH:
        return (0.5 * z * (1.0 + xp.tanh(_SQRT_2_OVER_PI * (z + _GELU_C * z**3)))).astype(dt, copy=False)
    if code == SIGMOID:
        return _sigmoid_ref(xp, z)
    if code == TANH:
        return xp.tanh(z)
    raise ValueError(f"unknown activation code {code}")


def activation_backward_ref(dy, z, y, code: int, negative_slope: float = 0.01):
    """dz = dy * act'(z), using y where the derivative needs only the output (z may be None then)."""
    xp = array_module(dy)
    dt = dy.dtype
    if code == IDENTITY:
        return dy.copy()
    if code == RELU:
        return xp.where(y > 0, dy, dt.type(0))
    if code == LEAKY_RELU:
        s = z if needs_preactivation(code, negative_slope) else y
        return xp.where(s > 0, dy, dy * dt.type(negative_slope))
    if code == GELU:
        cdf = 0.5 * (1.0 + _erf(xp, z * _INV_SQRT_2))
        pdf = xp.exp(-0.5 * z * z) * _INV_SQRT_2PI
        return (dy * (cdf + z * pdf)).astype(dt, copy=False)
    if code == GELU_TANH:
        t = xp.tanh(_SQRT_2_OVER_PI * (z + _GELU_C * z**3))
        d = 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_C * z * z)
        return (dy * d).astype(dt, copy=False)
    if code == SIGMOID:
        return dy * y * (1 - y)
    if code == TANH:
        return dy * (1 - y * y)
    raise ValueError(f"unknown activation code {code}")


# ---------------------------------------------------------------------------------------------
# Numba scalar cores, inlined into the CPU kernels (dense epilogue, elementwise activation).
# Computed in the array's dtype with gpunn.kernels.fastmath (float32: <= 1.6 ulp per function,
# vectorisable; float64: <= 1.5 ulp, erf from libm): `like(c, z)` is the constant c in z's type.
# ---------------------------------------------------------------------------------------------

@njit(inline="always", cache=True)
def act_scalar(z, code, slope):
    if code == RELU:
        return z if z > 0 else like(0.0, z)
    if code == LEAKY_RELU:
        return z if z > 0 else like(slope, z) * z
    if code == GELU:
        return like(0.5, z) * z * (like(1.0, z) + erf(z * like(_INV_SQRT_2, z)))
    if code == GELU_TANH:
        return like(0.5, z) * z * (like(1.0, z) + tanh(like(_SQRT_2_OVER_PI, z) * (z + like(_GELU_C, z) * z * z * z)))
    if code == SIGMOID:
        return sigmoid(z)
    if code == TANH:
        return tanh(z)
    return z


@njit(inline="always", cache=True)
def dact_scalar(s, code, slope):
    """act'(z) from s, where s is z for gelu/gelu_tanh/negative-slope leaky_relu and y otherwise."""
    one, half = like(1.0, s), like(0.5, s)
    if code == RELU:
        return one if s > 0 else like(0.0, s)
    if code == LEAKY_RELU:
        return one if s > 0 else like(slope, s)
    if code == GELU:
        return half * (one + erf(s * like(_INV_SQRT_2, s))) + s * exp(-half * s * s) * like(_INV_SQRT_2PI, s)
    if code == GELU_TANH:
        k, c = like(_SQRT_2_OVER_PI, s), like(_GELU_C, s)
        t = tanh(k * (s + c * s * s * s))
        return half * (one + t) + half * s * (one - t * t) * k * (one + like(3.0, s) * c * s * s)
    if code == SIGMOID:
        return s * (one - s)
    if code == TANH:
        return one - s * s
    return one


# The kernels branch on the activation OUTSIDE their loops, each loop calling the scalar core with a
# constant code that inlining folds away: a branch inside the loop keeps LLVM from vectorising (7x
# slower for relu on a 256x512 epilogue; the transcendental ones vectorise only through fastmath).

@njit(cache=True)
def activation_forward_cpu_kernel(z, code, slope, y):
    """y = act(z) over flat C-contiguous arrays (y may be z: in place)."""
    if y.size and y.ctypes.data == z.ctypes.data:
        # In place, pass one array: given two, LLVM checks at run time whether they overlap, finds
        # that they do, and runs its scalar loop (measured 10-20x slower for tanh over 256x512).
        _forward_loops(z, code, slope, z)
    else:
        _forward_loops(z, code, slope, y)


@njit(inline="always", cache=True)
def _forward_loops(z, code, slope, y):
    n = z.size
    if code == RELU:
        for i in range(n):
            v = z[i]
            y[i] = v if v > 0 else 0
    elif code == LEAKY_RELU:
        for i in range(n):
            v = z[i]
            y[i] = v if v > 0 else v * slope
    elif code == GELU:
        for i in range(n):
            y[i] = act_scalar(z[i], GELU, slope)
    elif code == GELU_TANH:
        for i in range(n):
            y[i] = act_scalar(z[i], GELU_TANH, slope)
    elif code == SIGMOID:
        for i in range(n):
            y[i] = act_scalar(z[i], SIGMOID, slope)
    elif code == TANH:
        for i in range(n):
            y[i] = act_scalar(z[i], TANH, slope)
    else:
        for i in range(n):
            y[i] = z[i]


@njit(cache=True)
def activation_backward_cpu_kernel(dy, s, code, slope, dz):
    """dz = dy * act'(.) from s (z or y, see dact_scalar) over flat C-contiguous arrays."""
    n = dy.size
    if code == RELU:
        for i in range(n):
            dz[i] = dy[i] if s[i] > 0 else 0
    elif code == LEAKY_RELU:
        for i in range(n):
            dz[i] = dy[i] if s[i] > 0 else dy[i] * slope
    elif code == SIGMOID:
        for i in range(n):
            dz[i] = dy[i] * dact_scalar(s[i], SIGMOID, slope)
    elif code == TANH:
        for i in range(n):
            dz[i] = dy[i] * dact_scalar(s[i], TANH, slope)
    elif code == GELU:
        for i in range(n):
            dz[i] = dy[i] * dact_scalar(s[i], GELU, slope)
    elif code == GELU_TANH:
        for i in range(n):
            dz[i] = dy[i] * dact_scalar(s[i], GELU_TANH, slope)
    else:
        for i in range(n):
            dz[i] = dy[i]


def activation_forward_cpu(z, code, negative_slope=0.01):
    """CPU fast path: y = act(z) in one Numba pass (any shape; a new array)."""
    check_code(code)
    zc = np.ascontiguousarray(z)
    y = np.empty_like(zc)
    activation_forward_cpu_kernel(zc.reshape(-1), code, float(negative_slope), y.reshape(-1))
    return y if y.ndim == z.ndim else y.reshape(z.shape)  # ascontiguousarray makes 0-d arrays 1-d


def activation_backward_cpu(dy, z, y, code, negative_slope=0.01):
    """CPU fast path: dz = dy * act'(.) in one Numba pass, from z or y as the activation needs."""
    check_code(code)
    s = np.ascontiguousarray(z if needs_preactivation(code, negative_slope) else y)
    dyc = np.ascontiguousarray(dy)
    dz = np.empty_like(dyc)
    activation_backward_cpu_kernel(dyc.reshape(-1), s.reshape(-1), code, float(negative_slope), dz.reshape(-1))
    return dz if dz.ndim == dy.ndim else dz.reshape(dy.shape)  # ascontiguousarray makes 0-d arrays 1-d


# ---------------------------------------------------------------------------------------------
# Cost model (the profiler's FLOP and byte counts; every family has one beside its kernels).
# Conventions shared by all families: an add, multiply, divide, compare, max or select is one
# FLOP, and so is a transcendental (exp, log, erf, tanh, sqrt); bytes are compulsory traffic:
# every operand read once and every result written once (what an ideal fused kernel moves; an
# implementation that makes more passes shows up as a lower achieved GB/s, not as more bytes).
# ---------------------------------------------------------------------------------------------

# FLOPs per element of y = act(z) and of dz = dy * act'(.) (counted from the formulas above).
ACT_FLOPS = {IDENTITY: 0, RELU: 1, LEAKY_RELU: 2, GELU: 5, GELU_TANH: 9, SIGMOID: 5, TANH: 1}
DACT_FLOPS = {IDENTITY: 0, RELU: 1, LEAKY_RELU: 2, GELU: 11, GELU_TANH: 19, SIGMOID: 3, TANH: 3}


def operand_bytes(a) -> int:
    """Bytes of the distinct elements of an array operand (a broadcast view, with stride 0 along
    an axis, counts each distinct element once); 0 for None or a Python number."""
    if a is None or not hasattr(a, "strides"):
        return 0
    n = 1
    for d, st in zip(a.shape, a.strides):
        if st != 0:
            n *= d
    return n * a.dtype.itemsize


def activation_forward_cost(z, code: int, negative_slope: float = 0.01):
    """(flops, bytes) of y = act(z): read z, write y."""
    return ACT_FLOPS[code] * z.size, 2 * z.size * z.dtype.itemsize


def activation_backward_cost(dy, z, y, code: int, negative_slope: float = 0.01):
    """(flops, bytes) of dz = dy * act'(.): read dy and the saved z or y (neither for identity), write dz."""
    saved = 0 if code == IDENTITY else 1
    return DACT_FLOPS[code] * dy.size, (2 + saved) * dy.size * dy.dtype.itemsize


COSTS = {"activation_forward": activation_forward_cost, "activation_backward": activation_backward_cost}
