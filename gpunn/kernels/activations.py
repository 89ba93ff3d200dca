"""Activation functions and their derivatives on the CPU, made from the registry's one definition
of each (gpunn/kernels/registry.py: the formulas, which of z or y the derivative needs, FLOPs).

Contract (CPU and GPU alike): y = act(z); dz = dy * act'(.) from s, where s is z for the
activations whose derivative needs the input (gelu, gelu_tanh, leaky_relu with a negative slope)
and y otherwise (`needs_preactivation`). Precision: elementwise in the array's own dtype (float32
math for float32, float64 for float64), the policy of the whole activation family on every backend.

Kernels: one Numba loop per (activation, dtype) and direction, the activation's scalar function
inlined into it (no branch on the activation at run time, so relu and leaky_relu vectorise), built
on first use and cached on disk under a name that carries a hash of the definition.
`activation_forward_ref` / `activation_backward_ref` (the `Ops` reference) run the same kernels:
the independent check of a definition is the float64 reference in the tests, not a second copy here.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numba
from numba import njit

from gpunn.backend import FLOAT_DTYPES, on_host
from gpunn.kernels import registry
from gpunn.kernels.registry import activation_code, check_code, needs_preactivation  # noqa: F401 (re-exported)


class _Codes(Mapping):
    """name -> integer code of every registered activation (a live view of the registry)."""

    def __getitem__(self, name):
        return registry.ACTIVATIONS[name].code

    def __iter__(self):
        return iter(registry.ACTIVATIONS)

    def __len__(self):
        return len(registry.ACTIVATIONS)

    def __repr__(self):
        return repr(dict(self))


ACTIVATIONS = _Codes()
IDENTITY, RELU, LEAKY_RELU, GELU, GELU_TANH, SIGMOID, TANH = (
    ACTIVATIONS[n] for n in ("identity", "relu", "leaky_relu", "gelu", "gelu_tanh", "sigmoid", "tanh"))


# ---------------------------------------------------------------------------------------------
# CPU kernels: templates whose free names (act, dact) are bound per activation and dtype.
# ---------------------------------------------------------------------------------------------

# `slope` arrives as a Python float (Numba dispatches a float faster than a NumPy scalar) and is
# made a scalar of the arrays' dtype (T) once per call.

def activation_forward_loop(z, slope, y):
    """y = act(z) over flat C-contiguous arrays (y may be z: in place)."""
    a = T(slope)  # noqa: F821 (bound per dtype)
    if y.size and y.ctypes.data == z.ctypes.data:
        # In place, index one array: given two, LLVM checks at run time whether they overlap, finds
        # that they do, and runs its scalar loop (measured 10-20x slower for tanh over 256x512).
        for i in range(z.size):
            z[i] = act(z[i], a)  # noqa: F821 (bound per activation)
    else:
        for i in range(z.size):
            y[i] = act(z[i], a)  # noqa: F821 (bound per activation)


def activation_backward_loop(dy, s, slope, dz):
    """dz = dy * act'(.) from s (z or y, see the module docstring) over flat C-contiguous arrays."""
    a = T(slope)  # noqa: F821 (bound per dtype)
    for i in range(dy.size):
        dz[i] = dact(dy[i], s[i], a)  # noqa: F821 (bound per activation)


_CPU_KERNELS: dict = {}


def cpu_scalar(code: int, dtype, which: str):
    """The registry's forward or backward formula of activation `code` as a Numba function over
    `dtype` scalars (inlined into its callers)."""
    key = ("scalar", code, np.dtype(dtype).name, which)
    f = _CPU_KERNELS.get(key)
    if f is None:
        m = registry.activation(code)
        f = _CPU_KERNELS[key] = njit(inline="always", error_model="numpy")(
            registry.retarget(getattr(m, which), registry.CPU_MATH, dtype))
    return f


def cpu_kernel(template, code: int, dtype, **bound):
    """`template` compiled with act/dact bound to activation `code`'s formulas in `dtype` (and any
    other free names given in `bound`); one per (template, code, dtype), cached on disk."""
    key = (template.__name__, code, dtype)  # a dtype object: hashing it is cheaper than its name
    k = _CPU_KERNELS.get(key)
    if k is None:
        dt = np.dtype(dtype)
        names = template.__code__.co_names
        if "T" in names:
            bound["T"] = numba.from_dtype(dt)
        if "act" in names:
            bound["act"] = cpu_scalar(code, dt, "forward")
        if "dact" in names:
            bound["dact"] = cpu_scalar(code, dt, "backward")
        tag = f"{registry.activation(code).name}_{dt.name}"
        k = _CPU_KERNELS[key] = njit(cache=True, error_model="numpy")(registry.specialise(template, bound, tag))
    return k


def _flat_c(a):
    return np.ascontiguousarray(a).reshape(-1)


def activation_forward_cpu(z, code, negative_slope=0.01):
    """CPU fast path: y = act(z) in one Numba pass (any shape; a new array)."""
    check_code(code)
    if code == IDENTITY:
        return z.copy()
    if z.dtype not in FLOAT_DTYPES:  # float16 and friends: in float32, rounded once (torch's opmath)
        return activation_forward_cpu(z.astype(np.float32), code, negative_slope).astype(z.dtype)
    zf = _flat_c(z)
    y = np.empty_like(zf)
    cpu_kernel(activation_forward_loop, code, z.dtype)(zf, float(negative_slope), y)
    return y.reshape(z.shape)


def saved_operand(z, y, code, negative_slope):
    """The array the derivative is computed from (z or y, see the module docstring); ValueError
    when the caller passed None for it."""
    pre = needs_preactivation(code, negative_slope)
    s = z if pre else y
    if s is None:
        which = "z (the pre-activation)" if pre else "y (the output)"
        raise ValueError(f"activation_backward: {registry.activation(code).name} needs {which}, got None")
    return s


def activation_backward_cpu(dy, z, y, code, negative_slope=0.01):
    """CPU fast path: dz = dy * act'(.) in one Numba pass, from z or y as the activation needs."""
    check_code(code)
    if code == IDENTITY:
        return dy.copy()
    s = saved_operand(z, y, code, negative_slope)
    if dy.dtype not in FLOAT_DTYPES:
        return activation_backward_cpu(dy.astype(np.float32), s.astype(np.float32), s.astype(np.float32), code,
                                       negative_slope).astype(dy.dtype)
    dyf = _flat_c(dy)
    dz = np.empty_like(dyf)
    cpu_kernel(activation_backward_loop, code, dy.dtype)(dyf, _flat_c(s).astype(dy.dtype, copy=False),
                                                         float(negative_slope), dz)
    return dz.reshape(dy.shape)


# The `Ops` reference: the same kernels, through the host for CuPy arrays (reached only when the
# GPU kernels cannot run).
_forward_any = on_host(activation_forward_cpu)
_backward_any = on_host(activation_backward_cpu)


def activation_forward_ref(z, code: int, negative_slope: float = 0.01):
    """y = act(z) elementwise; a new array of z's shape and dtype (NumPy or CuPy)."""
    return _forward_any(z, code, negative_slope)


def activation_backward_ref(dy, z, y, code: int, negative_slope: float = 0.01):
    """dz = dy * act'(z), using y where the derivative needs only the output (z may be None then)."""
    return _backward_any(dy, z, y, code, negative_slope)


# ---------------------------------------------------------------------------------------------
# Cost model (the profiler's FLOP and byte counts; every family has one beside its kernels).
# Conventions shared by all families: an add, multiply, divide, compare, max or select is one
# FLOP, and so is a transcendental (exp, log, erf, tanh, sqrt); bytes are compulsory traffic:
# every operand read once and every result written once (what an ideal fused kernel moves; an
# implementation that makes more passes shows up as a lower achieved GB/s, not as more bytes).
# FLOPs per element of each activation: the registry's `flops` and `backward_flops`.
# ---------------------------------------------------------------------------------------------


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
    return registry.activation(code).flops * z.size, 2 * z.size * z.dtype.itemsize


def activation_backward_cost(dy, z, y, code: int, negative_slope: float = 0.01):
    """(flops, bytes) of dz = dy * act'(.): read dy and the saved z or y (neither for identity), write dz."""
    saved = 0 if code == IDENTITY else 1
    return registry.activation(code).backward_flops * dy.size, (2 + saved) * dy.size * dy.dtype.itemsize


COSTS = {"activation_forward": activation_forward_cost, "activation_backward": activation_backward_cost}
