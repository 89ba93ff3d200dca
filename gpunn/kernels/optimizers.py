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

`*_ref` are array expressions (NumPy or CuPy); `*_cpu` are single-pass Numba loops computing
in float64 and rounding once per stored value. Both check their arguments first (`_check`):
a Numba loop given arrays of different sizes would read and write out of bounds. The grad is
never written; a state buffer the options do not use (momentum buffer without momentum,
max_exp_avg_sq without amsgrad, grad_avg without centered) is neither needed nor touched.
"""
from __future__ import annotations

import math

from numba import njit

from gpunn.backend import get_array_module as _xp


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




# ----------------------------------------------------------------------------- reference

def sgd_update_ref(p, grad, buf, lr, momentum=0.0, dampening=0.0, nesterov=False,
                   weight_decay=0.0, maximize=False, first_step=True):
    _check_sgd("sgd_update", p, grad, buf, momentum)
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * p
    if momentum != 0:
        if first_step:
            buf[...] = g
        else:
            buf *= momentum
            buf += (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    p -= lr * g


def adam_update_ref(p, grad, m, v, vmax, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                    decoupled=False, amsgrad=False, maximize=False, step=1):
    _check_adam("adam_update", p, grad, m, v, vmax, amsgrad)
    xp = _xp(p)
    g = -grad if maximize else grad
    if weight_decay != 0:
        if decoupled:
            p *= 1 - lr * weight_decay
        else:
            g = g + weight_decay * p
    m += (1 - beta1) * (g - m)
    v *= beta2
    v += (1 - beta2) * g * g
    bc1 = 1 - beta1**step
    bc2_sqrt = math.sqrt(1 - beta2**step)
    if amsgrad:
        xp.maximum(vmax, v, out=vmax)
        denom = xp.sqrt(vmax) / bc2_sqrt + eps
    else:
        denom = xp.sqrt(v) / bc2_sqrt + eps
    p -= (lr / bc1) * m / denom


def rmsprop_update_ref(p, grad, sq, buf, gavg, lr, alpha=0.99, eps=1e-8, weight_decay=0.0,
                       momentum=0.0, centered=False, maximize=False):
    _check_rmsprop("rmsprop_update", p, grad, sq, buf, gavg, momentum, centered)
    xp = _xp(p)
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * p
    sq *= alpha
    sq += (1 - alpha) * g * g
    if centered:
        gavg += (1 - alpha) * (g - gavg)
        avg = xp.sqrt(sq - gavg * gavg) + eps
    else:
        avg = xp.sqrt(sq) + eps
    if momentum > 0:
        buf *= momentum
        buf += g / avg
        p -= lr * buf
    else:
        p -= lr * g / avg


# ----------------------------------------------------------------------------- CPU (Numba)

@njit(cache=True, error_model="numpy")  # IEEE inf/nan on x/0 (as NumPy, torch), and it vectorizes
def _sgd_kernel(p, grad, buf, lr, momentum, dampening, nesterov, weight_decay, maximize, first_step):
    for i in range(p.size):
        g = float(grad[i])
        if maximize:
            g = -g
        if weight_decay != 0.0:
            g += weight_decay * float(p[i])
        if momentum != 0.0:
            if first_step:
                b = g
            else:
                b = momentum * float(buf[i]) + (1.0 - dampening) * g
            buf[i] = b
            b = float(buf[i])  # use the stored (rounded) buffer, as an array implementation does
            g = g + momentum * b if nesterov else b
        p[i] = float(p[i]) - lr * g


@njit(cache=True, error_model="numpy")  # IEEE inf/nan on x/0 (as NumPy, torch), and it vectorizes
def _adam_kernel(p, grad, m, v, vmax, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad,
                 maximize, bc1, bc2_sqrt):
    step_size = lr / bc1
    for i in range(p.size):
        g = float(grad[i])
        if maximize:
            g = -g
        pi = float(p[i])
        if weight_decay != 0.0:
            if decoupled:
                pi = pi * (1.0 - lr * weight_decay)
            else:
                g += weight_decay * pi
        mi = float(m[i])
        mi = mi + (1.0 - beta1) * (g - mi)
        m[i] = mi
        vi = beta2 * float(v[i]) + (1.0 - beta2) * g * g
        v[i] = vi
        if amsgrad:
            vs = float(v[i])
            # max(vmax, v) propagating NaN from either side, as torch.maximum does
            if vs > float(vmax[i]) or vs != vs:
                vmax[i] = v[i]
            vi = float(vmax[i])
        else:
            vi = float(v[i])
        denom = math.sqrt(vi) / bc2_sqrt + eps
        p[i] = pi - step_size * float(m[i]) / denom


@njit(cache=True, error_model="numpy")  # IEEE inf/nan on x/0 (as NumPy, torch), and it vectorizes
def _rmsprop_kernel(p, grad, sq, buf, gavg, lr, alpha, eps, weight_decay, momentum, centered, maximize):
    for i in range(p.size):
        g = float(grad[i])
        if maximize:
            g = -g
        if weight_decay != 0.0:
            g += weight_decay * float(p[i])
        sq[i] = alpha * float(sq[i]) + (1.0 - alpha) * g * g
        s = float(sq[i])
        if centered:
            a = float(gavg[i])
            gavg[i] = a + (1.0 - alpha) * (g - a)
            a = float(gavg[i])
            avg = math.sqrt(s - a * a) + eps
        else:
            avg = math.sqrt(s) + eps
        if momentum > 0.0:
            buf[i] = momentum * float(buf[i]) + g / avg
            p[i] = float(p[i]) - lr * float(buf[i])
        else:
            p[i] = float(p[i]) - lr * g / avg


def sgd_update_cpu(p, grad, buf, lr, momentum=0.0, dampening=0.0, nesterov=False,
                   weight_decay=0.0, maximize=False, first_step=True):
    _check_sgd("sgd_update", p, grad, buf, momentum)
    # an unused buffer is never indexed (momentum == 0); p stands in so the kernel's types agree
    _sgd_kernel(p, grad, p if buf is None else buf, float(lr), float(momentum), float(dampening),
                bool(nesterov), float(weight_decay), bool(maximize), bool(first_step))


def adam_update_cpu(p, grad, m, v, vmax, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                    decoupled=False, amsgrad=False, maximize=False, step=1):
    _check_adam("adam_update", p, grad, m, v, vmax, amsgrad)
    _adam_kernel(p, grad, m, v, v if vmax is None else vmax, float(lr), float(beta1), float(beta2),
                 float(eps), float(weight_decay), bool(decoupled), bool(amsgrad), bool(maximize),
                 1.0 - beta1**step, math.sqrt(1.0 - beta2**step))


def rmsprop_update_cpu(p, grad, sq, buf, gavg, lr, alpha=0.99, eps=1e-8, weight_decay=0.0,
                       momentum=0.0, centered=False, maximize=False):
    _check_rmsprop("rmsprop_update", p, grad, sq, buf, gavg, momentum, centered)
    _rmsprop_kernel(p, grad, sq, sq if buf is None else buf, sq if gavg is None else gavg,
                    float(lr), float(alpha), float(eps), float(weight_decay), float(momentum),
                    bool(centered), bool(maximize))


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
