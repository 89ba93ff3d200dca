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
in float64 and rounding once per stored value.
"""
from __future__ import annotations

import math

from numba import njit


# ----------------------------------------------------------------------------- reference

def sgd_update_ref(p, grad, buf, lr, momentum=0.0, dampening=0.0, nesterov=False,
                   weight_decay=0.0, maximize=False, first_step=True):
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
    xp = __import__("numpy") if type(p).__module__.startswith("numpy") else __import__("cupy")
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
    xp = __import__("numpy") if type(p).__module__.startswith("numpy") else __import__("cupy")
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

@njit(cache=True)
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


@njit(cache=True)
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
            if float(v[i]) > float(vmax[i]):
                vmax[i] = v[i]
            vi = float(vmax[i])
        else:
            vi = float(v[i])
        denom = math.sqrt(vi) / bc2_sqrt + eps
        p[i] = pi - step_size * float(m[i]) / denom


@njit(cache=True)
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
    _sgd_kernel(p, grad, buf if buf is not None else p[:0], float(lr), float(momentum), float(dampening),
                bool(nesterov), float(weight_decay), bool(maximize), bool(first_step))


def adam_update_cpu(p, grad, m, v, vmax, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                    decoupled=False, amsgrad=False, maximize=False, step=1):
    _adam_kernel(p, grad, m, v, vmax if vmax is not None else v, float(lr), float(beta1), float(beta2),
                 float(eps), float(weight_decay), bool(decoupled), bool(amsgrad), bool(maximize),
                 1.0 - beta1**step, math.sqrt(1.0 - beta2**step))


def rmsprop_update_cpu(p, grad, sq, buf, gavg, lr, alpha=0.99, eps=1e-8, weight_decay=0.0,
                       momentum=0.0, centered=False, maximize=False):
    _rmsprop_kernel(p, grad, sq, buf if buf is not None else sq, gavg if gavg is not None else sq,
                    float(lr), float(alpha), float(eps), float(weight_decay), float(momentum),
                    bool(centered), bool(maximize))
