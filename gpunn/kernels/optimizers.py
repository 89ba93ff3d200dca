"""Fused optimizer updates over flat parameter buffers (PyTorch's formulas, t counts from 1).

Every function updates its arrays IN PLACE and returns None. Arrays are 1-D, C-contiguous, one
float dtype; the optimizer passes ALL parameters of a group at once (one flat buffer), so a step
is one kernel call however many tensors the model has.

SGD:      g = (maximize ? -grad : grad) + wd p
          buf = g on the first step, else mu buf + (1 - dampening) g      (when mu != 0)
          g = g + mu buf (nesterov) or buf;  p -= lr g
Adam:     g = +-grad (+ wd p unless decoupled);  AdamW (decoupled): p *= 1 - lr wd first
          m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  vmax = max(vmax, v) (amsgrad)
          p -= lr / (1 - b1^t) * m / (sqrt(v or vmax) / sqrt(1 - b2^t) + eps)
RMSprop:  g = +-grad + wd p;  s = alpha s + (1 - alpha) g^2
          centered: a = alpha a + (1 - alpha) g;  d = sqrt(s - a^2) + eps;  else d = sqrt(s) + eps
          momentum: buf = mu buf + g / d; p -= lr buf;  else p -= lr g / d

The per-element updates are written once, in gpunn/kernels/registry.py (the family's precision
policy: float64 arithmetic, rounded once per stored value). `*_cpu` are single-pass Numba loops
made from them, one per option combination; `*_ref` (the `Ops` reference) runs the same loops (the
independent check is the tests' float64 reference and PyTorch). Both check their arguments first (`_check`):
a Numba loop given arrays of different sizes would read and write out of bounds. The grad is
never written; a state buffer the options do not use (momentum buffer without momentum,
max_exp_avg_sq without amsgrad, grad_avg without centered) is neither needed nor touched.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit

from gpunn.backend import get_array_module as _xp
from gpunn.kernels import registry


def _check(op, p, grad, *state, names=()):
    """Refuse a bad call before any kernel runs: 1-D C-contiguous float arrays of one size,
    dtype and array type (state entries that are None are not used by the options given)."""
    n = p.shape
    t = type(p)
    dt = p.dtype
    if p.ndim != 1 or dt.kind != "f":
        raise ValueError(f"{op}: params must be a 1-D float array, got shape {p.shape} dtype {dt}")
    if not p.flags.c_contiguous:
        raise ValueError(f"{op}: params must be C-contiguous")
    for name, a in zip(("grad",) + names, (grad,) + state):
        if a is None:
            if name == "grad":
                raise ValueError(f"{op}: grad is None")
            continue
        if type(a) is not t or a.shape != n or a.dtype != dt:
            raise ValueError(f"{op}: {name} must match params (1-D {t.__name__} of shape {n}, {dt}), "
                             f"got {type(a).__name__} of shape {getattr(a, 'shape', '?')}, "
                             f"{getattr(a, 'dtype', '?')}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{op}: {name} must be C-contiguous")


def _need(op, what, a, why):
    if a is None:
        raise ValueError(f"{op}: {why} needs a {what} buffer, got None")


def _check_sgd(op, p, grad, buf, momentum):
    _check(op, p, grad, buf, names=("momentum_buffer",))
    if momentum != 0:
        _need(op, "momentum_buffer", buf, f"momentum={momentum}")


def _check_adam(op, p, grad, m, v, vmax, amsgrad):
    _check(op, p, grad, m, v, vmax, names=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))
    _need(op, "exp_avg", m, "Adam")
    _need(op, "exp_avg_sq", v, "Adam")
    if amsgrad:
        _need(op, "max_exp_avg_sq", vmax, "amsgrad=True")


def _check_rmsprop(op, p, grad, sq, buf, gavg, momentum, centered):
    _check(op, p, grad, sq, buf, gavg, names=("square_avg", "momentum_buffer", "grad_avg"))
    _need(op, "square_avg", sq, "RMSprop")
    if momentum > 0:
        _need(op, "momentum_buffer", buf, f"momentum={momentum}")
    if centered:
        _need(op, "grad_avg", gavg, "centered=True")




# ----------------------------------------------------------------------------- calls
# Each `_*_call` checks a call and says which kernel variant and arguments it needs: (registry
# name, option flags, arrays with None for an unused buffer, float64 scalars). The CPU and the
# CUDA kernels (optimizers_cuda.py) are both made from the registry's one update per optimizer.

def _sgd_call(p, grad, buf, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False,
              first_step=True):
    _check_sgd("sgd_update", p, grad, buf, momentum)
    has_m = momentum != 0
    flags = dict(MAXIMIZE=bool(maximize), WEIGHT_DECAY=weight_decay != 0, MOMENTUM=has_m,
                 NESTEROV=bool(nesterov) and has_m, FIRST_STEP=bool(first_step) and has_m)
    return "sgd", flags, (p, grad, buf if has_m else None), (lr, momentum, dampening, weight_decay)


def _adam_call(p, grad, m, v, vmax, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False,
               amsgrad=False, maximize=False, step=1):
    _check_adam("adam_update", p, grad, m, v, vmax, amsgrad)
    flags = dict(MAXIMIZE=bool(maximize), WD_MODE=0 if weight_decay == 0 else (2 if decoupled else 1),
                 AMSGRAD=bool(amsgrad))
    # step-dependent bias corrections from the host-side step count: no device synchronisation
    scalars = (beta1, beta2, eps, weight_decay, 1.0 - lr * weight_decay, float(lr) / (1.0 - beta1**step),
               math.sqrt(1.0 - beta2**step))
    return "adam", flags, (p, grad, m, v, vmax if amsgrad else None), scalars


def _rmsprop_call(p, grad, sq, buf, gavg, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                  centered=False, maximize=False):
    _check_rmsprop("rmsprop_update", p, grad, sq, buf, gavg, momentum, centered)
    flags = dict(MAXIMIZE=bool(maximize), WEIGHT_DECAY=weight_decay != 0, CENTERED=bool(centered),
                 MOMENTUM=momentum > 0)
    return ("rmsprop", flags, (p, grad, sq, buf if momentum > 0 else None, gavg if centered else None),
            (lr, alpha, eps, weight_decay, momentum))


# ----------------------------------------------------------------------------- CPU (Numba)

_CPU_KERNELS: dict = {}


def cpu_kernel(name: str, **flags):
    """The CPU loop of registry optimizer `name` for one combination of its option flags (compiled
    on first use per dtype, cached on disk)."""
    key = (name, tuple(sorted(flags.items())))
    k = _CPU_KERNELS.get(key)
    if k is None:
        member = registry.OPTIMIZERS[name]
        bound = {**flags, "sqrt": math.sqrt, "f64": float}
        update = njit(inline="always", error_model="numpy")(registry.rebind(member.update, bound))
        loop = registry.update_loop(member, "cpu", update, {})
        # error_model numpy: IEEE inf/nan on x/0 (as NumPy, torch), and the loop vectorises
        k = _CPU_KERNELS[key] = njit(cache=True, error_model="numpy")(
            registry.specialise(loop, {"update": update}, name))
    return k


def _cpu(prepare):
    """A CPU update function (the signature of `prepare`) made from a `_*_call`."""

    @functools.wraps(prepare)
    def run(*args, **kwargs):
        name, flags, arrays, scalars = prepare(*args, **kwargs)
        p = arrays[0]
        # an unused buffer is never indexed (its flag is off); p stands in so the types agree
        cpu_kernel(name, **flags)(*(p if a is None else a for a in arrays), *(float(x) for x in scalars))

    run.__name__ = run.__qualname__ = f"{prepare.__name__[1:-5]}_update"
    return run


sgd_update_cpu = _cpu(_sgd_call)
adam_update_cpu = _cpu(_adam_call)
rmsprop_update_cpu = _cpu(_rmsprop_call)


def _reference(cpu_update):
    """The `Ops` reference: NumPy arrays run the CPU kernel; other arrays (CuPy, reached only when
    the GPU kernels cannot run) are updated on the host and copied back."""

    @functools.wraps(cpu_update)
    def run(p, grad, *rest, **kwargs):
        if isinstance(p, np.ndarray):
            return cpu_update(p, grad, *rest, **kwargs)
        xp = _xp(p)
        dev = [a for a in (p, grad, *rest) if hasattr(a, "shape")]
        host = {id(a): xp.asnumpy(a) for a in dev}
        cpu_update(*(host.get(id(a), a) for a in (p, grad, *rest)), **kwargs)
        for a in dev:
            a[...] = xp.asarray(host[id(a)])

    return run


sgd_update_ref = _reference(sgd_update_cpu)
adam_update_ref = _reference(adam_update_cpu)
rmsprop_update_ref = _reference(rmsprop_update_cpu)


# ----------------------------------------------------------------------------- cost model
# (flops, bytes) of one call from the sizes alone, for the profiler (conventions: activations.py).
# FLOPs per element are counted from the kernels above; bytes: every buffer the options use is
# read once and every buffer the update changes is written once (grad is only read).

def sgd_update_cost(p, grad, buf, lr, momentum=0.0, dampening=0.0, nesterov=False,
                    weight_decay=0.0, maximize=False, first_step=True):
    """p -= lr g: 2; maximize 1, weight decay 2, momentum 3 (0 on the first step: buf = g),
    nesterov 2 FLOPs per element. Read p, grad (and buf after the first step); write p (and buf)."""
    per = 2 + (1 if maximize else 0) + (2 if weight_decay != 0 else 0)
    arrays = 3
    if momentum != 0:
        per += (0 if first_step else 3) + (2 if nesterov else 0)
        arrays += 1 if first_step else 2
    return per * p.size, arrays * p.size * p.dtype.itemsize


def adam_update_cost(p, grad, m, v, vmax, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                     decoupled=False, amsgrad=False, maximize=False, step=1):
    """m 3, v 4, denominator 3, p 3: 13 FLOPs per element; maximize 1, weight decay 2 (decoupled 1),
    amsgrad 1. Read p, grad, m, v (vmax); write p, m, v (vmax)."""
    per = 13 + (1 if maximize else 0) + (1 if amsgrad else 0)
    if weight_decay != 0:
        per += 1 if decoupled else 2
    return per * p.size, (9 if amsgrad else 7) * p.size * p.dtype.itemsize


def rmsprop_update_cost(p, grad, sq, buf, gavg, lr, alpha=0.99, eps=1e-8, weight_decay=0.0,
                        momentum=0.0, centered=False, maximize=False):
    """square_avg 4, denominator 2, p 3: 9 FLOPs per element (momentum: 11); maximize 1, weight
    decay 2, centered 5. Read p, grad, square_avg (buf, grad_avg); write p, square_avg (buf, grad_avg)."""
    per = 9 + (2 if momentum > 0 else 0) + (1 if maximize else 0) + (2 if weight_decay != 0 else 0) \
        + (5 if centered else 0)
    arrays = 5 + (2 if momentum > 0 else 0) + (2 if centered else 0)
    return per * p.size, arrays * p.size * p.dtype.itemsize


COSTS = {"sgd_update": sgd_update_cost, "adam_update": adam_update_cost, "rmsprop_update": rmsprop_update_cost}
