"""Elementwise losses and their gradients (unreduced; the autograd node reduces), made from the
registry's one definition of each (gpunn/kernels/registry.py: `LOSSES`, the formulas and FLOPs).

Contract (CPU and GPU alike), for x (prediction) and y (target) of one shape and float dtype:
  loss_forward(name, x, y, operand=None, scalar=None)            -> loss(x, y, w, a) per element
  loss_backward(name, g, x, y, operand=None, scalar=None, wrt="input")
      -> g * d loss / d x (wrt="input") or g * d loss / d y (wrt="target"; only for the losses
         with a `grad_target` formula), g broadcastable to x (a stride-0 scalar view is read once)
`operand` is the loss's per-element w (BCE-with-logits' pos_weight; None: w = 1), broadcastable to
x and laid out without a copy when it is one value or one value per class of the last axis;
`scalar` is the loss's option a (Huber's delta, smooth L1's beta; None: the registry's default).
Precision: the family's policy, elementwise in the array's own dtype on every backend.

This module holds what the CPU and the CUDA kernels share: the loop each kernel is (one statement
inside a CPU `for` or a CUDA grid-stride loop, `registry.loop_source`), the operand layout, the
argument checks and the one routine that runs a call (`run_loss`, given a backend's kernel
getter for a registry member). The CPU kernels: one Numba loop per (loss, direction, dtype, operand layout), the
formula inlined, cached on disk under a name carrying a hash of the definition.
"""
from __future__ import annotations

import numpy as np
import numba
from numba import njit

from gpunn.backend import FLOAT_DTYPES, get_array_module, on_host
from gpunn.kernels import registry
from gpunn.kernels.activations import operand_bytes
from gpunn.kernels.registry import ONE

# ----------------------------------------------------------------------------- operand layouts
# How a kernel reads element i of a broadcast operand (w, or the upstream gradient g).
NONE, SCALAR, LAST_AXIS, EACH = range(4)


def at_none(v, i, c):
    return ONE


def at_scalar(v, i, c):
    return v[0]


def at_last_axis(v, i, c):
    return v[i % c]


def at_each(v, i, c):
    return v[i]


ACCESSORS = (at_none, at_scalar, at_last_axis, at_each)
DIRECTIONS = {"forward": "loss", "input": "grad", "target": "grad_target"}  # -> the formula's field

# One statement per direction; `formula`, `w_at`, `g_at` and `T` are bound per kernel.
_PARAMS = {"forward": ("x", "y", "w", "c", "a", "out"), "backward": ("g", "x", "y", "w", "c", "a", "out")}
# The upstream gradient multiplies last: loaded after the formula, it is not live across its exps
# (sm_90 ptxas, BCE-with-logits input gradient: 46 -> 42 registers in float64 with a per-class weight).
_STATEMENTS = {"forward": "out[i] = formula(x[i], y[i], w_at(w, i, c), s)",
               "backward": "out[i] = formula(x[i], y[i], w_at(w, i, c), s) * g_at(g, i, c)"}


def loop(direction: str, target: str, env: dict):
    """The kernel loop of a direction ("forward" or a gradient) for target "cpu" or "cuda"."""
    kind = "forward" if direction == "forward" else "backward"
    return registry.compile_loop(f"loss_{kind}_{target}", _PARAMS[kind], _STATEMENTS[kind], target, env,
                                 prelude="s = T(a)")


def formula(name: str, direction: str):
    """The registry's scalar function of loss `name` for `direction`; ValueError when it has none."""
    m = registry.loss(name)
    if direction not in DIRECTIONS:
        raise ValueError(f"{name}: wrt must be 'input' or 'target', got {direction!r}")
    f = getattr(m, DIRECTIONS[direction])
    if f is None:
        raise ValueError(f"{name}: no gradient with respect to the target (the loss depends on x - y: "
                         "it is minus the input's gradient)")
    return f


# ----------------------------------------------------------------------------- arguments

def check_pair(op, x, y):
    """x and y as flat C-contiguous arrays; ValueError unless they share type, shape and dtype."""
    if type(y) is not type(x) or y.dtype != x.dtype or tuple(y.shape) != tuple(x.shape):
        raise ValueError(f"{op}: target must be a {type(x).__name__} of shape {tuple(x.shape)} and dtype "
                         f"{x.dtype}, got {type(y).__name__} {tuple(getattr(y, 'shape', ()))} "
                         f"{getattr(y, 'dtype', '?')}")
    return x.reshape(-1), y.reshape(-1)  # a view when C-contiguous, else a C-ordered copy


def operand_layout(op, v, x):
    """(layout, flat array or None, classes) of the operand w (see the module docstring)."""
    if v is None:
        return NONE, None, 1
    xp = get_array_module(x)
    if not hasattr(v, "shape"):
        v = xp.asarray(v, dtype=x.dtype)
    if type(v) is not type(x) or v.dtype != x.dtype:
        raise ValueError(f"{op}: the operand must be a {type(x).__name__} of dtype {x.dtype}, got "
                         f"{type(v).__name__} of dtype {getattr(v, 'dtype', '?')}")
    try:
        ok = np.broadcast_shapes(tuple(v.shape), tuple(x.shape)) == tuple(x.shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{op}: the operand of shape {tuple(v.shape)} must broadcast to {tuple(x.shape)}")
    if v.size == 1:
        return SCALAR, xp.ascontiguousarray(v.reshape(1)), 1
    if v.ndim == 1 and x.ndim >= 1 and v.shape[0] == x.shape[-1]:
        return LAST_AXIS, xp.ascontiguousarray(v), int(v.shape[0])
    return EACH, xp.ascontiguousarray(xp.broadcast_to(v, x.shape)).reshape(-1), 1


def upstream_layout(op, g, x):
    """(layout, flat g) for an upstream gradient broadcastable to x: SCALAR when every element is
    the same one (a stride-0 view, e.g. the gradient of a "mean": read once, no copy), else EACH."""
    xp = get_array_module(x)
    if not hasattr(g, "shape") or isinstance(g, np.generic):  # a number, or NumPy's scalar of a reduction
        g = xp.asarray(g, dtype=x.dtype)
    if type(g) is not type(x):
        raise ValueError(f"{op}: the upstream gradient must be a {type(x).__name__}, got {type(g).__name__}")
    if g.size == 1 and g.ndim <= x.ndim and x.size:  # one value (a reduced loss's gradient): no broadcast view
        return SCALAR, g.reshape(1) if g.dtype == x.dtype else g.reshape(1).astype(x.dtype)
    try:
        gb = xp.broadcast_to(g, x.shape)
    except ValueError:
        raise ValueError(f"{op}: upstream gradient of shape {tuple(g.shape)} does not broadcast to "
                         f"{tuple(x.shape)}") from None
    if gb.size and all(s == 0 for s in gb.strides):
        one = gb[(0,) * gb.ndim] if gb.ndim else gb
        return SCALAR, xp.ascontiguousarray(one.reshape(1), dtype=x.dtype)
    return EACH, xp.ascontiguousarray(gb, dtype=x.dtype).reshape(-1)


def run_loss(kernel_for, placeholder, launch, name, direction, g, x, y, operand, scalar):
    """One call on one backend: check, lay out the operands, launch `kernel_for(member, direction,
    dtype, w_layout, g_layout)` (member: the registry entry) through `launch(kernel, n, *args)`;
    `placeholder(x)` stands in for an operand the kernel never reads. Returns the per-element
    result, x's shape."""
    m = registry.loss(name)
    op = f"{name}_{'forward' if direction == 'forward' else 'backward'}"
    if direction not in ("forward", "input"):
        formula(name, direction)  # refuse an unknown direction or a missing target gradient first
    xf, yf = check_pair(op, x, y)
    w_layout, w, c = operand_layout(op, operand, x)
    a = float(m.scalar_default if scalar is None else scalar)
    args = (xf, yf, placeholder(x) if w is None else w, c, a)
    g_layout = EACH
    if direction != "forward":
        g_layout, gf = upstream_layout(op, g, x)
        args = (gf,) + args
    out = get_array_module(x).empty_like(xf)
    launch(kernel_for(m, direction, x.dtype, w_layout, g_layout), out.size, *args, out)
    return out.reshape(x.shape)


# ----------------------------------------------------------------------------- CPU kernels

_CPU_KERNELS: dict = {}


def _inline(f, dt):
    return njit(inline="always", error_model="numpy")(registry.retarget(f, registry.CPU_MATH, dt))


def cpu_kernel(member, direction, dtype, w_layout, g_layout):
    """The CPU loop of registry loss `member` for one direction, dtype and operand layouts."""
    key = (member.serial, direction, dtype, w_layout, g_layout)
    k = _CPU_KERNELS.get(key)
    if k is None:
        name, dt = member.name, np.dtype(dtype)
        template = loop(direction, "cpu", {})
        bound = {"T": numba.from_dtype(dt), "formula": _inline(formula(name, direction), dt),
                 "w_at": _inline(ACCESSORS[w_layout], dt), "g_at": _inline(ACCESSORS[g_layout], dt)}
        tag = f"{name}_{direction}_{dt.name}_{w_layout}{g_layout}"
        k = _CPU_KERNELS[key] = njit(cache=True, error_model="numpy")(registry.specialise(template, bound, tag))
    return k


def _cpu_launch(kernel, n, *args):
    kernel(*args)


def _cpu(name, direction, g, x, y, operand, scalar):
    if x.dtype not in FLOAT_DTYPES:  # float16 and friends: in float32, rounded once (torch's opmath)
        up = [None if v is None or not hasattr(v, "astype") else v.astype(np.float32) for v in (g, x, y, operand)]
        return _cpu(name, direction, *up, scalar).astype(x.dtype)
    return run_loss(cpu_kernel, lambda x: x, _cpu_launch, name, direction, g, x, y, operand, scalar)


def loss_forward_cpu(name, x, y, operand=None, scalar=None):
    """Per-element losses of registry loss `name` (x's shape and dtype); one Numba pass."""
    return _cpu(name, "forward", None, x, y, operand, scalar)


def loss_backward_cpu(name, g, x, y, operand=None, scalar=None, wrt="input"):
    """g * d loss / d x (or d y with wrt="target"), x's shape and dtype; one Numba pass."""
    return _cpu(name, wrt, g, x, y, operand, scalar)


# The `Ops` reference: the same kernels, through the host for CuPy arrays (a path taken only when
# the GPU kernels cannot run); the independent check of a definition is the tests' float64 reference.
loss_forward_ref = on_host(loss_forward_cpu)
loss_backward_ref = on_host(loss_backward_cpu)


# ----------------------------------------------------------------------------- cost model
# (flops, bytes) of one call from the shapes alone, for the profiler (conventions: activations.py):
# the registry's FLOPs per element; x, y and the operands read once (a broadcast operand counts
# its distinct elements), the result written once.

def _cost(flops, x, *operands):
    return flops * x.size, x.size * x.dtype.itemsize + sum(operand_bytes(a) for a in operands)


def loss_forward_cost(name, x, y, operand=None, scalar=None):
    return _cost(registry.loss(name).flops[0], x, x, y, operand)


def loss_backward_cost(name, g, x, y, operand=None, scalar=None, wrt="input"):
    return _cost(registry.loss(name).flops[1 if wrt == "input" else 2], x, g, x, y, operand)


COSTS = {"loss_forward": loss_forward_cost, "loss_backward": loss_backward_cost}
