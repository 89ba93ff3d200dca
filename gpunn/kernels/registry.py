"""The registry of elementwise formulas: every activation written once, from which gpunn makes its
CPU kernels, its CUDA device functions and kernels, its cost model and its tests' parametrisation.

A formula is a scalar Python function that Numba compiles. It is written against FREE names:
  - the transcendental functions `exp`, `log`, `log1p`, `tanh`, `erf`, `sqrt`, `sigmoid`, and
  - named constants (module-level floats such as `HALF`, `GELU_C`), never float literals.
`retarget(f, math_module, dtype)` rebuilds the function (`types.FunctionType(f.__code__, globals)`)
with those names bound for one backend and one dtype: the math functions from `math_module`
(CUDA: `cuda_elementwise.cuda_math`, libdevice's functions plus the `COMPOSITES` it lacks; CPU:
`CPU_MATH`) and every float constant as a
scalar of `dtype`, so Numba keeps float32 arithmetic in float32. The same bytecode thus becomes
the CPU loop body and the CUDA device function, and a definition cannot drift between backends.
(Generating source per target would do the same at the cost of a code generator; rebinding the
globals keeps each definition an ordinary, readable, debuggable Python function.)

Activations (family precision policy: elementwise in the array's own dtype, float32 math for
float32 and float64 math for float64, on the CPU and the GPU alike, as PyTorch does):
  forward(z, slope) -> y = act(z)
  backward(dy, s, slope) -> dz = dy * act'(.), where s is z or y as `derivative_from` says
  derivative_from: "output" (s = y), "input" (s = z) or "output_if_slope_nonneg" (leaky_relu:
  y carries the sign of z only when the slope is >= 0)
  flops / backward_flops: per element, counted with the conventions in gpunn/kernels/activations.py
  module: the torch.nn class name made for it (None: a hand-written class exists, or none wanted)

Optimizer updates (family precision policy: float64 per element, rounded once per stored value):
  update(i, p, grad, *state, *scalars) per element, with its options as UPPERCASE free names,
  and beside it in `register_optimizer(...)` the option mapping (`prepare`), the buffers' use
  (`state`), the cost (`cost`) and the valid flag combinations (`valid`); see that section.

The families: activations (below), elementwise losses (`register_loss`: loss, input and target
gradients of (x, y, w, a)) and optimizer updates (`register_optimizer`). To add a member: write
its functions here and one `register_*` call, then its float64 reference in tests/references.py.
docs/extending.md walks through each.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import math
import types
from dataclasses import dataclass, field

import numpy as np

TRANSCENDENTALS = ("exp", "log", "log1p", "tanh", "erf", "sqrt", "sigmoid")


class _CpuMath:
    """The CPU kernels' transcendental functions: gpunn.kernels.fastmath's vectorisable exp, tanh,
    erf and sigmoid (computed in the argument's dtype), math's for the rest (log, log1p, sqrt: LLVM
    vectorises sqrt itself)."""

    def __getattr__(self, name):
        from gpunn.kernels import fastmath

        return getattr(fastmath, name) if name in ("exp", "tanh", "erf", "sigmoid") else getattr(math, name)


CPU_MATH = _CpuMath()

# ------------------------------------------------------------------------------------ constants
ZERO = 0.0
ONE = 1.0
HALF = 0.5
TWO = 2.0
THREE = 3.0
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_C = 0.044715  # the tanh approximation's cubic coefficient (Hendrycks & Gimpel)

# The math functions under the free names, for running a formula as plain Python (float64).
exp, log, log1p, tanh, erf, sqrt = (getattr(math, n) for n in TRANSCENDENTALS if n != "sigmoid")


def sigmoid(z):
    """1 / (1 + exp(-z)) for a math library that has no sigmoid (Python's math; CUDA's libdevice,
    where `composites` compiles it per dtype). A branch per sign, so exp never overflows and
    sigmoid(+-1000) is exactly 1 / 0. The CPU kernels use fastmath.sigmoid instead (one exp for
    both signs, which a vectorised loop needs; 1.46 ulp in float32). On the GPU this branch form
    needs fewer registers than the one-exp select (sm_90 ptxas: bias+sigmoid 36 -> 30 in float64)."""
    if z >= ZERO:
        return ONE / (ONE + exp(-z))
    e = exp(z)
    return e / (ONE + e)


# Primitives that are formulas themselves where a math library lacks them (see `retarget`).
COMPOSITES = {"sigmoid": sigmoid}


# ------------------------------------------------------------------------------------ activations

def identity_forward(z, slope):
    return z


def identity_backward(dy, s, slope):
    return dy


def relu_forward(z, slope):
    return z if z > ZERO else ZERO


def relu_backward(dy, s, slope):
    return dy if s > ZERO else ZERO  # select, never dy * 0: an infinite dy gives 0, not NaN (as torch)


def leaky_relu_forward(z, slope):
    return z if z > ZERO else z * slope


def leaky_relu_backward(dy, s, slope):
    return dy if s > ZERO else dy * slope


def gelu_forward(z, slope):
    return HALF * z * (ONE + erf(z * INV_SQRT_2))


def gelu_backward(dy, s, slope):
    cdf = HALF * (ONE + erf(s * INV_SQRT_2))
    # abs() changes no value (s*s >= 0) but tells LLVM that exp's argument is <= 0, so the CPU exp
    # drops the overflow half of its scaling (fastmath._exp32): 126 -> 114 us over 256x512 float32
    pdf = exp(-abs(HALF * s * s)) * INV_SQRT_2PI
    return dy * (cdf + s * pdf)


# GELU (tanh) keeps the tanh form: z / (1 + exp(-2u)) (one exp, 83 -> 62 us forward over 256x512
# float32 on the CPU) raised the CUDA kernels' registers (the fused dx GEMM 79 -> 103, 3 -> 2
# blocks per SM, and a spill in another tile; sm_90 ptxas, 2026-11-29): one definition serves both.

def gelu_tanh_forward(z, slope):
    return HALF * z * (ONE + tanh(SQRT_2_OVER_PI * (z + GELU_C * z * z * z)))


def gelu_tanh_backward(dy, s, slope):
    t = tanh(SQRT_2_OVER_PI * (s + GELU_C * s * s * s))
    d = HALF * (ONE + t) + HALF * s * (ONE - t * t) * SQRT_2_OVER_PI * (ONE + THREE * GELU_C * s * s)
    return dy * d


def sigmoid_forward(z, slope):
    return sigmoid(z)  # a primitive: each backend's best form (see `sigmoid` above)


def sigmoid_backward(dy, s, slope):
    return dy * (s * (ONE - s))


def tanh_forward(z, slope):
    return tanh(z)


def tanh_backward(dy, s, slope):
    return dy * (ONE - s * s)


# ------------------------------------------------------------------------------------ the registry

@dataclass(frozen=True)
class Activation:
    name: str
    forward: object
    backward: object
    derivative_from: str  # "output", "input" or "output_if_slope_nonneg"
    flops: int
    backward_flops: int
    module: str | None = None
    doc: str = ""
    code: int = field(default=-1, compare=False)

    def needs_input(self, slope: float = 0.01) -> bool:
        """True when the derivative must be computed from z rather than from y = act(z)."""
        return self.derivative_from == "input" or (self.derivative_from == "output_if_slope_nonneg" and slope < 0)

    @property
    def may_need_input(self) -> bool:
        """True when some slope makes the derivative need z (`needs_input`): kernels for z are built."""
        return self.derivative_from != "output"


_DERIVATIVE_FROM = ("output", "input", "output_if_slope_nonneg")
ACTIVATIONS: dict[str, Activation] = {}  # name -> member, in code order
BY_CODE: dict[int, Activation] = {}
_next_code = 0  # codes are never reused: kernels cached by code stay valid after an unregister
ALIASES = {None: "identity", "linear": "identity", "none": "identity"}


def _check_formula(f):
    floats = [c for c in f.__code__.co_consts if isinstance(c, float)]
    if floats:
        raise ValueError(f"{f.__name__}: write constants as named module globals (typed per dtype when "
                         f"retargeted), not float literals {floats}")


def register_activation(name, forward, backward, derivative_from, flops, backward_flops, module=None, doc=""):
    """Add an activation; its code is the next integer. Returns the member."""
    if name in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is already registered")
    if derivative_from not in _DERIVATIVE_FROM:
        raise ValueError(f"derivative_from must be one of {_DERIVATIVE_FROM}, got {derivative_from!r}")
    for f in (forward, backward):
        _check_formula(f)
    global _next_code
    m = Activation(name, forward, backward, derivative_from, int(flops), int(backward_flops), module,
                   doc or (forward.__doc__ or ""), code=_next_code)
    _next_code += 1
    ACTIVATIONS[name] = m
    BY_CODE[m.code] = m
    return m


def is_builtin(member) -> bool:
    """True for the members (activations, optimizer updates) defined in this module: those
    registered when gpunn is imported."""
    return (member.forward if isinstance(member, Activation) else member.update).__module__ == __name__


def unregister_activation(name):
    """Remove an activation (for tests that add a toy member); its code is not given out again."""
    m = ACTIVATIONS.pop(name)
    del BY_CODE[m.code]


register_activation("identity", identity_forward, identity_backward, "output", 0, 0,
                    doc="y = z")
register_activation("relu", relu_forward, relu_backward, "output", 1, 1, module="ReLU",
                    doc="max(z, 0); gradient 0 at z == 0 (as PyTorch).")
register_activation("leaky_relu", leaky_relu_forward, leaky_relu_backward, "output_if_slope_nonneg", 2, 2,
                    doc="z if z > 0 else negative_slope * z.")
register_activation("gelu", gelu_forward, gelu_backward, "input", 5, 11,
                    doc="z * Phi(z) = 0.5 z (1 + erf(z / sqrt 2)).")
register_activation("gelu_tanh", gelu_tanh_forward, gelu_tanh_backward, "input", 9, 19,
                    doc="0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))).")
register_activation("sigmoid", sigmoid_forward, sigmoid_backward, "output", 5, 3, module="Sigmoid",
                    doc="1 / (1 + exp(-z)), stable for any z.")
register_activation("tanh", tanh_forward, tanh_backward, "output", 1, 3, module="Tanh",
                    doc="tanh(z).")



# ------------------------------------------------------------------------------------ elementwise losses
# Family precision policy (CPU and GPU alike): per element in the array's own dtype (float32 math
# for float32), as PyTorch computes them; the reductions ("sum", "mean") add the per-element losses
# in the array's dtype with the array library's pairwise (NumPy) or tree (CuPy) summation.
# Each loss is written as
#   loss(x, y, w, a) -> the per-element loss of prediction x against target y
#   grad(x, y, w, a) -> d loss / d x (the kernel multiplies by the upstream gradient)
#   grad_target(x, y, w, a) -> d loss / d y, or None when the loss depends on x - y only (then
#   d loss / d y = -d loss / d x and no kernel is needed)
# w is the loss's per-element operand (BCE-with-logits' pos_weight; ONE for the others) and a its
# scalar option (Huber's delta, smooth L1's beta; unused otherwise). A user's `weight` (a
# per-element rescaling) is applied by the autograd node, outside the formula.
LOG_CLAMP = -100.0  # PyTorch clamps BCE's logarithms at -100 so that a 0 or 1 probability gives a finite loss
BCE_EPS = 1e-12     # ... and its gradient's denominator x (1 - x) at 1e-12


def mse_loss(x, y, w, a):
    d = x - y
    return d * d


def mse_grad(x, y, w, a):
    return TWO * (x - y)


def l1_loss(x, y, w, a):
    return abs(x - y)


def l1_grad(x, y, w, a):
    d = x - y
    if d > ZERO:
        return ONE
    if d < ZERO:
        return -ONE
    return d * ZERO  # 0 at x == y (as PyTorch), NaN for NaN


def huber_loss(x, y, w, a):
    d = x - y
    ad = abs(d)
    if ad < a:
        return HALF * d * d
    return a * (ad - HALF * a)


def huber_grad(x, y, w, a):
    d = x - y
    if d < -a:
        return -a
    if d > a:
        return a
    return d


def smooth_l1_loss(x, y, w, a):
    d = x - y
    ad = abs(d)
    if ad < a:
        return HALF * d * d / a
    return ad - HALF * a


def smooth_l1_grad(x, y, w, a):
    d = x - y
    if abs(d) < a:
        return d / a
    if d > ZERO:  # beta == 0 lands here: L1's gradient, 0 at x == y (PyTorch's l1_loss path)
        return ONE
    if d < ZERO:
        return -ONE
    return d * ZERO


def bce_loss(x, y, w, a):
    lx = log(x)
    if lx < LOG_CLAMP:
        lx = LOG_CLAMP
    l1x = log1p(-x)
    if l1x < LOG_CLAMP:
        l1x = LOG_CLAMP
    return (y - ONE) * l1x - y * lx


def bce_grad(x, y, w, a):
    den = (ONE - x) * x
    if den < BCE_EPS:
        den = BCE_EPS
    return (x - y) / den


def bce_grad_target(x, y, w, a):
    return log((ONE - x) / x)  # -logit(x), unclamped (PyTorch's binary_cross_entropy_target_backward)


# `if w == ONE`: the same value as the general form for finite y, which the compiler folds away in
# the kernels without a pos_weight (w is the constant ONE there; 0 * y is not foldable otherwise).

def bce_with_logits_loss(x, y, w, a):
    mv = -x if -x > ZERO else ZERO
    sp = log(exp(-mv) + exp(-x - mv)) + mv  # log(1 + exp(-x)), ATen's stable form
    if w == ONE:
        return (ONE - y) * x + sp
    return (ONE - y) * x + (ONE + (w - ONE) * y) * sp


def bce_with_logits_grad(x, y, w, a):
    s = sigmoid(x)
    if w == ONE:
        return s - y
    return (ONE + (w - ONE) * y) * s - w * y


def bce_with_logits_grad_target(x, y, w, a):
    if w == ONE:
        return -x
    mv = -x if -x > ZERO else ZERO
    sp = log(exp(-mv) + exp(-x - mv)) + mv
    return (w - ONE) * sp - x


@dataclass(frozen=True)
class Loss:
    """An elementwise loss: its formulas (see above), FLOPs per element of the forward, the input
    gradient and the target gradient (the upstream multiply included), and what PyTorch's API
    around it looks like: the name of its per-element operand `w` (None: w = ONE), of its scalar
    option `a` with its default, how a weighted "mean" divides ("count": by the number of
    elements; "weights": by the sum of the weights, as torch's mse_loss and l1_loss do), whether a
    weight may broadcast, and `module`: the nn class name made for it with
    `functional.<name>_loss` (None: hand-written ones with torch's exact signatures exist)."""
    name: str
    loss: object
    grad: object
    grad_target: object
    flops: tuple
    operand: str | None = None
    scalar: str | None = None
    scalar_default: float = 0.0
    weighted_mean: str = "count"
    weight_broadcasts: bool = False
    module: str | None = None
    doc: str = ""
    serial: int = field(default=-1, compare=False)  # never reused: kernels are cached by (name, serial)


LOSSES: dict[str, Loss] = {}
_next_loss_serial = 0


def register_loss(name, loss, grad, grad_target, flops, operand=None, scalar=None, scalar_default=0.0,
                  weighted_mean="count", weight_broadcasts=False, module=None, doc=""):
    """Add an elementwise loss (see the section's comment). Returns the member."""
    if name in LOSSES:
        raise ValueError(f"loss {name!r} is already registered")
    for f in (loss, grad, grad_target):
        if f is not None:
            _check_formula(f)
            if f.__code__.co_varnames[:f.__code__.co_argcount] != ("x", "y", "w", "a"):
                raise ValueError(f"{f.__name__} must take (x, y, w, a)")
    global _next_loss_serial
    if weighted_mean not in ("count", "weights"):
        raise ValueError(f"weighted_mean must be 'count' or 'weights', got {weighted_mean!r}")
    m = Loss(name, loss, grad, grad_target, tuple(int(v) for v in flops), operand, scalar, float(scalar_default),
             weighted_mean, bool(weight_broadcasts), module, doc or (loss.__doc__ or ""), serial=_next_loss_serial)
    _next_loss_serial += 1
    LOSSES[name] = m
    return m


def unregister_loss(name):
    """Remove a loss (for tests that add a toy member)."""
    del LOSSES[name]


def loss(name) -> Loss:
    """The registered loss `name`; ValueError listing the valid names otherwise."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}") from None


register_loss("mse", mse_loss, mse_grad, None, (2, 3, 0), weighted_mean="weights",
              doc="(x - y)^2")
register_loss("l1", l1_loss, l1_grad, None, (2, 3, 0), weighted_mean="weights",
              doc="|x - y|; gradient sign(x - y), 0 at x == y")
register_loss("huber", huber_loss, huber_grad, None, (6, 4, 0), scalar="delta", scalar_default=1.0,
              doc="0.5 d^2 if |d| < delta else delta (|d| - 0.5 delta), d = x - y")
register_loss("smooth_l1", smooth_l1_loss, smooth_l1_grad, None, (6, 5, 0), scalar="beta", scalar_default=1.0,
              doc="0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta, d = x - y")
register_loss("bce", bce_loss, bce_grad, bce_grad_target, (9, 6, 4), weight_broadcasts=True,
              doc="-(y max(log x, -100) + (1 - y) max(log(1 - x), -100)), x a probability")
register_loss("bce_with_logits", bce_with_logits_loss, bce_with_logits_grad, bce_with_logits_grad_target,
              (16, 13, 13), operand="pos_weight", weight_broadcasts=True,
              doc="(1 - y) x + (1 + (w - 1) y) log(1 + exp(-x)), w = pos_weight (ATen's stable form)")


# ------------------------------------------------------------------------------------ optimizer updates
# Family precision policy (CPU and GPU alike): per element in float64, rounded once to the array's
# dtype per stored value, and a stored state value is re-read (rounded) before it is used, as an
# array implementation in the array's dtype would. Each update reads and writes element i of its
# arrays, named as PyTorch names the state; the UPPERCASE names are the options that change the
# code path, bound as compile-time constants per kernel variant (`Optimizer.flags`); the other
# arguments are run-time scalars (float64), so a scheduler changes them without a recompile. `sqrt`
# and `f64` (the conversion to float64: `float` on the CPU, numba.float64 on the GPU) are bound per
# backend.
#
# Beside each update, in its `register_optimizer` call: `prepare(lr, ...options)` maps a call's
# options to (flags, scalars in the update's order), computing step-dependent values on the host;
# `state` says which flag makes the update use each buffer (None: always), so an unused buffer may
# be None and is never touched; `cost(flags)` gives the FLOPs per element and the arrays read or
# written per element (conventions: gpunn/kernels/activations.py) for the profiler; `valid(flags)`
# says which flag combinations prepare can produce (kernels/ptxas_report.py compiles those).
f64 = float


def sgd_update(i, p, grad, momentum_buffer, lr, momentum, dampening, weight_decay):
    g = f64(grad[i])
    if MAXIMIZE:  # noqa: F821 (the free UPPERCASE names are the variant's options)
        g = -g
    if WEIGHT_DECAY:  # noqa: F821
        g += weight_decay * f64(p[i])
    if MOMENTUM:  # noqa: F821
        if FIRST_STEP:  # noqa: F821
            b = g
        else:
            b = momentum * f64(momentum_buffer[i]) + (1.0 - dampening) * g
        momentum_buffer[i] = b
        b = f64(momentum_buffer[i])
        if NESTEROV:  # noqa: F821
            g = g + momentum * b
        else:
            g = b
    p[i] = f64(p[i]) - lr * g


def sgd_prepare(lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False,
                first_step=True):
    """first_step: the parameters' first step with momentum (the buffer becomes g, undamped)."""
    has_m = momentum != 0
    flags = dict(MAXIMIZE=bool(maximize), WEIGHT_DECAY=weight_decay != 0, MOMENTUM=has_m,
                 NESTEROV=bool(nesterov) and has_m, FIRST_STEP=bool(first_step) and has_m)
    return flags, (lr, momentum, dampening, weight_decay)


def sgd_cost(f):
    """p -= lr g: 2; maximize 1, weight decay 2, momentum 3 (0 on the first step: buf = g), nesterov
    2 FLOPs per element. Read p, grad (and the buffer after the first step); write p (and the buffer)."""
    flops = 2 + f["MAXIMIZE"] + 2 * f["WEIGHT_DECAY"] + 3 * (f["MOMENTUM"] and not f["FIRST_STEP"]) \
        + 2 * f["NESTEROV"]
    return flops, 3 + (0 if not f["MOMENTUM"] else 1 if f["FIRST_STEP"] else 2)


def adam_update(i, p, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, beta1, beta2, eps, weight_decay, decay,
                step_size, bc2_sqrt):
    """decay = 1 - lr wd (AdamW), step_size = lr / (1 - b1^t), bc2_sqrt = sqrt(1 - b2^t)."""
    g = f64(grad[i])
    if MAXIMIZE:  # noqa: F821
        g = -g
    pi = f64(p[i])
    if WD_MODE == 2:  # noqa: F821 (decoupled: AdamW)
        pi = pi * decay
    elif WD_MODE == 1:  # noqa: F821
        g += weight_decay * pi
    mi = f64(exp_avg[i])
    mi = mi + (1.0 - beta1) * (g - mi)
    exp_avg[i] = mi
    vi = beta2 * f64(exp_avg_sq[i]) + (1.0 - beta2) * g * g
    exp_avg_sq[i] = vi
    if AMSGRAD:  # noqa: F821
        vs = f64(exp_avg_sq[i])
        if vs > f64(max_exp_avg_sq[i]) or vs != vs:  # max(vmax, v) propagating NaN, as torch.maximum
            max_exp_avg_sq[i] = exp_avg_sq[i]
        vi = f64(max_exp_avg_sq[i])
    else:
        vi = f64(exp_avg_sq[i])
    denom = sqrt(vi) / bc2_sqrt + eps
    p[i] = pi - step_size * f64(exp_avg[i]) / denom


def adam_prepare(lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False, amsgrad=False,
                 maximize=False, step=1):
    """decoupled: AdamW's weight decay; step: the step count t (from 1), kept on the host so the
    bias corrections need no device synchronisation."""
    flags = dict(MAXIMIZE=bool(maximize), WD_MODE=0 if weight_decay == 0 else (2 if decoupled else 1),
                 AMSGRAD=bool(amsgrad))
    return flags, (beta1, beta2, eps, weight_decay, 1.0 - lr * weight_decay, float(lr) / (1.0 - beta1**step),
                   math.sqrt(1.0 - beta2**step))


def adam_cost(f):
    """m 3, v 4, denominator 3, p 3: 13 FLOPs per element; maximize 1, weight decay 2 (decoupled 1),
    amsgrad 1. Read p, grad, m, v (vmax); write p, m, v (vmax)."""
    return 13 + f["MAXIMIZE"] + f["AMSGRAD"] + (0, 2, 1)[f["WD_MODE"]], 9 if f["AMSGRAD"] else 7


def rmsprop_update(i, p, grad, square_avg, momentum_buffer, grad_avg, lr, alpha, eps, weight_decay, momentum):
    g = f64(grad[i])
    if MAXIMIZE:  # noqa: F821
        g = -g
    if WEIGHT_DECAY:  # noqa: F821
        g += weight_decay * f64(p[i])
    square_avg[i] = alpha * f64(square_avg[i]) + (1.0 - alpha) * g * g
    s = f64(square_avg[i])
    if CENTERED:  # noqa: F821
        a = f64(grad_avg[i])
        grad_avg[i] = a + (1.0 - alpha) * (g - a)
        a = f64(grad_avg[i])
        avg = sqrt(s - a * a) + eps
    else:
        avg = sqrt(s) + eps
    if MOMENTUM:  # noqa: F821
        momentum_buffer[i] = momentum * f64(momentum_buffer[i]) + g / avg
        p[i] = f64(p[i]) - lr * f64(momentum_buffer[i])
    else:
        p[i] = f64(p[i]) - lr * g / avg


def rmsprop_prepare(lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, maximize=False):
    flags = dict(MAXIMIZE=bool(maximize), WEIGHT_DECAY=weight_decay != 0, CENTERED=bool(centered),
                 MOMENTUM=momentum > 0)
    return flags, (lr, alpha, eps, weight_decay, momentum)


def rmsprop_cost(f):
    """square_avg 4, denominator 2, p 3: 9 FLOPs per element (momentum: 11); maximize 1, weight
    decay 2, centered 5. Read p, grad, square_avg (buf, grad_avg); write p, square_avg (buf, grad_avg)."""
    flops = 9 + 2 * f["MOMENTUM"] + f["MAXIMIZE"] + 2 * f["WEIGHT_DECAY"] + 5 * f["CENTERED"]
    return flops, 5 + 2 * f["MOMENTUM"] + 2 * f["CENTERED"]


def adagrad_update(i, p, grad, state_sum, clr, weight_decay, eps):
    """clr = lr / (1 + (t - 1) lr_decay)."""
    g = f64(grad[i])
    if MAXIMIZE:  # noqa: F821
        g = -g
    if WEIGHT_DECAY:  # noqa: F821
        g += weight_decay * f64(p[i])
    state_sum[i] = f64(state_sum[i]) + g * g
    std = sqrt(f64(state_sum[i])) + eps
    p[i] = f64(p[i]) - clr * g / std


def adagrad_prepare(lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10, maximize=False, step=1):
    """step: the step count t (from 1). The sum starts at initial_accumulator_value: the optimizer
    fills its buffer (torch's Adagrad creates its state when it is constructed)."""
    return (dict(MAXIMIZE=bool(maximize), WEIGHT_DECAY=weight_decay != 0),
            (float(lr) / (1.0 + (step - 1) * lr_decay), weight_decay, eps))


def adagrad_cost(f):
    """sum += g^2: 2, std = sqrt(sum) + eps: 2, p -= clr g / std: 3 FLOPs per element; maximize 1,
    weight decay 2. Read p, grad, sum; write p, sum."""
    return 7 + f["MAXIMIZE"] + 2 * f["WEIGHT_DECAY"], 5


def _all_valid(flags) -> bool:
    return True


@dataclass(frozen=True, eq=False)
class Optimizer:
    """An optimizer's per-element update `update(i, p, grad, *state, *scalars)` with what makes its
    kernels and calls: `state` (buffer -> the flag that makes the update use it, None: always),
    `flags` (option -> the values a variant can take), `prepare`, `cost` and `valid` (see above).
    Compared by identity: kernels are cached per member."""
    name: str
    update: object
    state: dict
    flags: dict
    prepare: object
    cost: object
    valid: object = _all_valid
    code: int = -1

    @functools.cached_property
    def params(self) -> tuple:
        c = self.update.__code__
        return c.co_varnames[1:c.co_argcount]

    @functools.cached_property  # read on every call of the update
    def arrays(self) -> tuple:
        """The array parameters: p, grad and the state buffers (the rest are float64 scalars)."""
        return ("p", "grad") + tuple(self.state)

    def variants(self):
        """Every valid flag combination, as dicts."""
        for values in itertools.product(*self.flags.values()):
            flags = dict(zip(self.flags, values))
            if self.valid(flags):
                yield flags


OPTIMIZERS: dict[str, Optimizer] = {}
_next_optimizer_code = 0  # never reused: kernels cached by code stay valid after an unregister
_TF = (False, True)


def register_optimizer(name, update, state, prepare, cost, valid=_all_valid, **flags):
    """Add an optimizer update; gpunn makes from this entry its CPU, reference and CUDA functions
    `<name>_update(p, grad, *state, *prepare's parameters)`, the `Ops` methods and the cost model.

    update: `update(i, p, grad, *state, *scalars)` (module comment above); state: {buffer: flag
    or None}, in the update's order; prepare(options) -> (flags, scalars); cost(flags) -> (FLOPs,
    arrays moved) per element; valid(flags) -> whether prepare can produce that combination;
    flags: each option and the values a kernel variant can take."""
    if name in OPTIMIZERS:
        raise ValueError(f"optimizer update {name!r} is already registered")
    global _next_optimizer_code
    m = Optimizer(name, update, dict(state), {k: tuple(v) for k, v in flags.items()}, prepare, cost, valid,
                  code=_next_optimizer_code)
    if m.params[:len(m.arrays)] != m.arrays:
        raise ValueError(f"{update.__name__} must take (i, {', '.join(m.arrays)}, scalars...), got {m.params}")
    for buf, flag in m.state.items():
        if flag is not None and flag not in m.flags:
            raise ValueError(f"{name}: state {buf!r} is used with flag {flag!r}, which is not one of its flags "
                             f"{list(m.flags)}")
    _next_optimizer_code += 1
    OPTIMIZERS[name] = m
    return m


def unregister_optimizer(name):
    """Remove an optimizer update (for tests that add a toy member); its code is not given out again."""
    del OPTIMIZERS[name]


register_optimizer("sgd", sgd_update, {"momentum_buffer": "MOMENTUM"}, sgd_prepare, sgd_cost,
                   # nesterov and the first step exist only with momentum (sgd_prepare)
                   valid=lambda f: f["MOMENTUM"] or not (f["NESTEROV"] or f["FIRST_STEP"]),
                   MAXIMIZE=_TF, WEIGHT_DECAY=_TF, MOMENTUM=_TF, NESTEROV=_TF, FIRST_STEP=_TF)
register_optimizer("adam", adam_update, {"exp_avg": None, "exp_avg_sq": None, "max_exp_avg_sq": "AMSGRAD"},
                   adam_prepare, adam_cost, MAXIMIZE=_TF, WD_MODE=(0, 1, 2), AMSGRAD=_TF)
register_optimizer("rmsprop", rmsprop_update, {"square_avg": None, "momentum_buffer": "MOMENTUM",
                                               "grad_avg": "CENTERED"},
                   rmsprop_prepare, rmsprop_cost, MAXIMIZE=_TF, WEIGHT_DECAY=_TF, CENTERED=_TF, MOMENTUM=_TF)
register_optimizer("adagrad", adagrad_update, {"state_sum": None}, adagrad_prepare, adagrad_cost,
                   MAXIMIZE=_TF, WEIGHT_DECAY=_TF)


_UPDATE_LOOPS = {"cpu": "{m}_cpu_loop", "cuda": "{m}_kernel", "cuda_staged": "{m}_staged_kernel"}


def update_loop_source(member, target: str) -> str:
    """The loop that applies member.update to every element: a CPU `for` loop ("cpu") or a CUDA
    grid-stride loop ("cuda"), with the update's own parameters (a kernel takes no *args); or
    ("cuda_staged") the CUDA loop taking the update's scalars as one float64 device array, in the
    update's order, so that a captured CUDA graph reads them afresh at every launch."""
    name = _UPDATE_LOOPS[target].format(m=member.name)
    statement = f"update(i, {', '.join(member.params)})"
    if target != "cuda_staged":
        return loop_source(name, member.params, statement, target, "p")
    scalars = member.params[len(member.arrays):]
    prelude = "\n    ".join(f"{s} = staged_scalars[{k}]" for k, s in enumerate(scalars))
    return loop_source(name, member.arrays + ("staged_scalars",), statement, "cuda", "p", prelude)


def update_loop(member, target: str, update, env: dict):
    """update_loop_source compiled (under this file's name, so Numba can cache it) with `update`
    and `env` (e.g. `cuda`) as its globals."""
    ns = {"__name__": __name__, "update": update, **env}
    exec(compile(update_loop_source(member, target), __file__, "exec"), ns)  # noqa: S102 (our own source)
    return ns[_UPDATE_LOOPS[target].format(m=member.name)]



def loop_source(name, params, statement, target: str, size: str, prelude: str = "") -> str:
    """A kernel that runs `statement` for every element index i < size.shape[0]: a CPU `for` loop
    (target "cpu") or a CUDA grid-stride loop (target "cuda"). A kernel takes no *args, so the
    parameters are spelled out."""
    head = f"def {name}({', '.join(params)}):\n" + (f"    {prelude}\n" if prelude else "")
    if target == "cpu":
        return head + f"    for i in range({size}.shape[0]):\n        {statement}\n"
    return head + ("    i = cuda.grid(1)\n    stride = cuda.gridsize(1)\n"
                   f"    n = {size}.shape[0]\n    while i < n:\n        {statement}\n        i += stride\n")


def compile_loop(name, params, statement, target: str, env: dict, size: str = "out", prelude: str = ""):
    """loop_source compiled under this file's name (so Numba can cache what is made from it), with
    `env` (e.g. `cuda`, or the names a later `specialise` binds) as its globals."""
    ns = {"__name__": __name__, **env}
    exec(compile(loop_source(name, params, statement, target, size, prelude), __file__, "exec"), ns)  # noqa: S102
    return ns[name]

# ------------------------------------------------------------------------------------ retargeting

def _fingerprint(f, bound) -> str:
    """A short hash of a kernel template, of what its free names are bound to and, recursively, of
    the functions and numbers those reach: part of the qualified name of the kernel made from it,
    so Numba's on-disk cache never serves a kernel compiled from an older definition or other math."""
    h = hashlib.sha1()
    seen = set()

    def visit(fn, env):
        fn = getattr(fn, "py_func", fn)  # a Numba dispatcher: its Python function
        # what a function's code does not show (fastmath's njit overloads): its own stamp
        h.update(repr(getattr(fn, "fingerprint", "")).encode())
        code = getattr(fn, "__code__", None)
        if code is None or id(fn) in seen:
            h.update(repr(getattr(fn, "__name__", fn)).encode())
            return
        seen.add(id(fn))
        h.update(code.co_code + repr((code.co_consts, code.co_names)).encode())
        g = {**fn.__globals__, **env}
        for n in code.co_names:
            v = g.get(n)
            if isinstance(v, (int, float, np.generic)):
                h.update(f"{n}={v!r}:{type(v).__name__}".encode())
            elif callable(v) and not isinstance(v, type):
                visit(v, {})

    visit(f, bound)
    return h.hexdigest()[:10]


def rebind(f, bound: dict, name: str | None = None):
    """f's code with its free names looked up in `bound` (then in f's own module), under a new
    name (which Numba's cache uses to tell specialisations apart)."""
    g = dict(f.__globals__)
    g.update(bound)
    new = types.FunctionType(f.__code__, g, name or f.__name__, f.__defaults__, f.__closure__)
    new.__qualname__ = new.__name__
    new.__module__ = f.__module__
    new.__doc__ = f.__doc__
    return new


def retarget(f, math_module, dtype):
    """The formula f with the transcendental functions taken from `math_module` and every float
    constant it names made a scalar of `dtype` (see the module docstring)."""
    T = np.dtype(dtype).type
    bound = {}
    for n in f.__code__.co_names:
        if n in TRANSCENDENTALS:
            bound[n] = getattr(math_module, n)
        else:
            v = f.__globals__.get(n)
            if isinstance(v, float):
                bound[n] = T(v)
    return rebind(f, bound, f"{f.__name__}_{np.dtype(dtype).name}")


def specialise(template, bound: dict, tag: str):
    """A kernel template (a loop calling free names such as `act`) with those names bound, named
    `<template>__<tag>_<fingerprint of what is bound>`."""
    return rebind(template, bound, f"{template.__name__}__{tag}_{_fingerprint(template, bound)}")


# ------------------------------------------------------------------------------------ lookups

def activation_code(name) -> int:
    """The integer code of an activation name; ValueError listing the valid names otherwise."""
    key = ALIASES.get(name, name)
    if isinstance(key, str):
        key = key.lower()
    try:
        return ACTIVATIONS[key].code
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)} (or None for identity)"
        ) from None


def check_code(code) -> None:
    """The fused kernels are made per code: refuse an unknown one before anything runs."""
    if isinstance(code, bool) or not isinstance(code, (int, np.integer)) or code not in BY_CODE:
        raise ValueError(f"unknown activation code {code!r}; valid codes: {list(BY_CODE)} "
                         f"({', '.join(ACTIVATIONS)})")


def activation(code) -> Activation:
    check_code(code)
    return BY_CODE[code]


def needs_preactivation(code: int, negative_slope: float = 0.01) -> bool:
    """True when the derivative must be computed from z rather than from y = act(z)."""
    return activation(code).needs_input(negative_slope)
