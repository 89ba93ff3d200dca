"""Parameter initialisers with torch.nn.init's names, formulas and in-place semantics.

Every function writes into `tensor.data` in place (under no_grad) and returns the tensor. Values
are drawn in float64 from `generator` (a `numpy.random.Generator`; default: gpunn's seeded
`gpunn.backend.generator()`) and rounded once to the tensor's dtype, so `gn.manual_seed(n)` fixes
them. A raw NumPy/CuPy array is accepted in place of a Tensor.

fan_in = size(1) * receptive field, fan_out = size(0) * receptive field, where the receptive
field is the product of the sizes after the first two (1 for a Linear weight (out, in)).

Gains (calculate_gain): linear/identity/conv/sigmoid 1, tanh 5/3, relu sqrt(2),
leaky_relu sqrt(2 / (1 + slope^2)) (slope default 0.01), selu 3/4.
"""
from __future__ import annotations

import math

import numpy as np

from gpunn.autograd.tensor import Tensor, no_grad
from gpunn.backend import generator as default_generator
from gpunn.backend import is_array

_LINEAR_FNS = ("linear", "identity", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
               "conv_transpose3d")
NONLINEARITIES = _LINEAR_FNS + ("sigmoid", "tanh", "relu", "leaky_relu", "selu")


def calculate_gain(nonlinearity: str, param=None) -> float:
    """The recommended gain for a nonlinearity.

    linear, identity, conv*, sigmoid: 1;  tanh: 5/3;  relu: sqrt(2);
    leaky_relu: sqrt(2 / (1 + negative_slope^2)) with negative_slope = param (default 0.01);  selu: 3/4.
    """
    if nonlinearity in _LINEAR_FNS or nonlinearity == "sigmoid":
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, bool) or not isinstance(param, (int, float)):
            raise ValueError(f"negative_slope {param!r} is not a valid number")
        else:
            slope = float(param)
        return math.sqrt(2.0 / (1.0 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4.0
    raise ValueError(f"Unsupported nonlinearity {nonlinearity!r}; valid: {', '.join(NONLINEARITIES)}")


def _data(tensor):
    if isinstance(tensor, Tensor):
        return tensor.data
    if is_array(tensor):
        return tensor
    raise TypeError(f"init expects a gpunn Tensor or an array, got {type(tensor).__name__}")


def _fill(tensor, values):
    """Write float64 NumPy `values` into the tensor's array in place (rounded once to its dtype)."""
    data = _data(tensor)
    if data.dtype.kind != "f":
        raise TypeError(f"init needs a float tensor, got dtype {data.dtype}")
    with no_grad():
        if isinstance(data, np.ndarray):
            data[...] = values
        else:
            data[...] = __import__("cupy").asarray(values, dtype=data.dtype)
    return tensor


def _gen(generator):
    return default_generator() if generator is None else generator


def _calculate_fan_in_and_fan_out(tensor):
    shape = _data(tensor).shape
    if len(shape) < 2:
        raise ValueError(f"Fan in and fan out can not be computed for a tensor with fewer than 2 dimensions "
                         f"(shape {tuple(shape)})")
    receptive = 1
    for s in shape[2:]:
        receptive *= s
    return shape[1] * receptive, shape[0] * receptive


def _calculate_correct_fan(tensor, mode: str) -> int:
    mode = mode.lower() if isinstance(mode, str) else mode
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode!r} not supported, please use one of 'fan_in', 'fan_out'")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(tensor, a: float = 0.0, b: float = 1.0, generator=None):
    """Fill with values drawn from U(a, b)."""
    if not a <= b:
        raise ValueError(f"uniform_: expected a <= b, got a={a}, b={b}")
    shape = _data(tensor).shape
    return _fill(tensor, _gen(generator).uniform(a, b, size=shape))


def normal_(tensor, mean: float = 0.0, std: float = 1.0, generator=None):
    """Fill with values drawn from N(mean, std^2)."""
    if std < 0:
        raise ValueError(f"normal_: std must be >= 0, got {std}")
    shape = _data(tensor).shape
    return _fill(tensor, _gen(generator).normal(mean, std, size=shape))


def constant_(tensor, val: float):
    """Fill with the value val."""
    return _fill(tensor, val)


def zeros_(tensor):
    """Fill with 0."""
    return _fill(tensor, 0.0)


def ones_(tensor):
    """Fill with 1."""
    return _fill(tensor, 1.0)


def xavier_uniform_(tensor, gain: float = 1.0, generator=None):
    """Glorot/Xavier uniform: U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    a = gain * math.sqrt(6.0 / float(fan_in + fan_out)) if fan_in + fan_out else 0.0
    return uniform_(tensor, -a, a, generator=generator)


def xavier_normal_(tensor, gain: float = 1.0, generator=None):
    """Glorot/Xavier normal: N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out)) if fan_in + fan_out else 0.0
    return normal_(tensor, 0.0, std, generator=generator)


def kaiming_uniform_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                     generator=None):
    """Kaiming/He uniform: U(-bound, bound), bound = gain * sqrt(3 / fan), gain = calculate_gain(nonlinearity, a).

    fan is fan_in (mode="fan_in", keeps the forward variance) or fan_out (keeps the backward one).
    nn.Linear's default is kaiming_uniform_(w, a=sqrt(5)), i.e. bound = 1 / sqrt(fan_in).
    """
    fan = _calculate_correct_fan(tensor, mode)
    gain = calculate_gain(nonlinearity, a)
    bound = gain * math.sqrt(3.0 / fan) if fan else 0.0
    return uniform_(tensor, -bound, bound, generator=generator)


def kaiming_normal_(tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                    generator=None):
    """Kaiming/He normal: N(0, std^2), std = gain / sqrt(fan), gain = calculate_gain(nonlinearity, a)."""
    fan = _calculate_correct_fan(tensor, mode)
    gain = calculate_gain(nonlinearity, a)
    std = gain / math.sqrt(fan) if fan else 0.0
    return normal_(tensor, 0.0, std, generator=generator)


he_uniform_ = kaiming_uniform_
he_normal_ = kaiming_normal_
glorot_uniform_ = xavier_uniform_
glorot_normal_ = xavier_normal_

__all__ = ["calculate_gain", "uniform_", "normal_", "constant_", "zeros_", "ones_", "xavier_uniform_",
           "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "he_uniform_", "he_normal_",
           "glorot_uniform_", "glorot_normal_"]
