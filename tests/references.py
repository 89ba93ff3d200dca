"""Float64 references for every registered activation (and array-expression references for the
optimizer updates: SGD, Adam, RMSprop in the array's dtype, Adagrad in float64), written here from
the mathematics and independent of gpunn's definitions (gpunn/kernels/registry.py), plus PyTorch's
equivalent of each activation for the parity tests. Adding an activation or an optimizer update to
the registry means adding its entry here: tests/test_kernels_activations.py and
tests/test_kernels_optimizers.py fail for any registered member that has none."""
from __future__ import annotations

import math

import numpy as np

_erf = np.vectorize(math.erf, otypes=[np.float64])
SQ2PI = math.sqrt(2 / math.pi)


def _gelu(z, slope):
    cdf = 0.5 * (1 + _erf(z / math.sqrt(2)))
    return z * cdf, cdf + z * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _gelu_tanh(z, slope):
    t = np.tanh(SQ2PI * (z + 0.044715 * z**3))
    return 0.5 * z * (1 + t), 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * SQ2PI * (1 + 3 * 0.044715 * z * z)


def _sigmoid(z, slope):
    s = 0.5 * (1 + np.tanh(0.5 * z))  # tanh form: no overflow for any z
    return s, s * (1 - s)


def _tanh(z, slope):
    t = np.tanh(z)
    return t, 1 - t * t


# name -> f(z, slope) = (act(z), act'(z)), float64
ACTIVATION_REFS = {
    "identity": lambda z, slope: (z, np.ones_like(z)),
    "relu": lambda z, slope: (np.maximum(z, 0), (z > 0).astype(float)),
    "leaky_relu": lambda z, slope: (np.where(z > 0, z, slope * z), np.where(z > 0, 1.0, slope)),
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
    "sigmoid": _sigmoid,
    "tanh": _tanh,
}

# name -> f(torch, z, slope): PyTorch's version, for the parity tests
TORCH_ACTIVATIONS = {
    "identity": lambda torch, z, slope: z,
    "relu": lambda torch, z, slope: torch.nn.functional.relu(z),
    "leaky_relu": lambda torch, z, slope: torch.nn.functional.leaky_relu(z, slope),
    "gelu": lambda torch, z, slope: torch.nn.functional.gelu(z),
    "gelu_tanh": lambda torch, z, slope: torch.nn.functional.gelu(z, approximate="tanh"),
    "sigmoid": lambda torch, z, slope: torch.sigmoid(z),
    "tanh": lambda torch, z, slope: torch.tanh(z),
}


def act_and_grad(name, z, slope=0.01):
    """(act(z), act'(z)) in float64."""
    return ACTIVATION_REFS[name](np.asarray(z, np.float64), slope)


def np_activation(name, z, slope=0.01):
    return act_and_grad("identity" if name is None else name, z, slope)[0]


# ---------------------------------------------------------------------------------- optimizer updates
# The updates of numerics.md as NumPy array expressions (in place, in the arrays' dtype): a second,
# independent formulation of gpunn/kernels/registry.py's per-element updates (kept from the
# library's former array reference when the kernels came to be made from one definition).

def sgd_ref(p, grad, buf, lr, momentum=0.0, dampening=0.0, nesterov=False,
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


def adam_ref(p, grad, m, v, vmax, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                    decoupled=False, amsgrad=False, maximize=False, step=1):
    xp = np
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


def rmsprop_ref(p, grad, sq, buf, gavg, lr, alpha=0.99, eps=1e-8, weight_decay=0.0,
                       momentum=0.0, centered=False, maximize=False):
    xp = np
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


def adagrad_ref(p, grad, state_sum, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10, maximize=False, step=1):
    """torch.optim.Adagrad's step t (from 1) in float64, each stored array rounded once."""
    g = np.asarray(grad, np.float64) * (-1.0 if maximize else 1.0)
    p64 = np.asarray(p, np.float64)
    if weight_decay != 0:
        g = g + weight_decay * p64
    state_sum[...] = np.asarray(state_sum, np.float64) + g * g
    clr = lr / (1 + (step - 1) * lr_decay)
    p[...] = p64 - clr * g / (np.sqrt(np.asarray(state_sum, np.float64)) + eps)
