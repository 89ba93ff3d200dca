"""Linear (PyTorch's layer) and Dense (Linear with a fused activation): one graph node each.

Both keep PyTorch's layout: weight (out_features, in_features), bias (out_features,), and its
default initialisation, weight and bias ~ U(-1/sqrt(in_features), 1/sqrt(in_features))
(kaiming_uniform_ with a = sqrt(5)), drawn from gpunn's seeded generator (weight first).
"""
from __future__ import annotations

import math

import numpy as np

from gpunn import functional
from gpunn.autograd.tensor import Parameter
from gpunn.backend import device as resolve_device
from gpunn.kernels import activation_code
from gpunn.nn import init
from gpunn.nn.module import Module


def _check_features(layer: str, **sizes) -> None:
    for name, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{layer}: {name} must be a non-negative integer, got {n!r}")


def _empty_parameter(shape, dtype, device) -> Parameter:
    dtype = np.dtype(np.float32 if dtype is None else dtype)
    if dtype.kind != "f":
        raise TypeError(f"parameters must have a float dtype, got {dtype}")
    xp = np if device is None else resolve_device(device).xp
    return Parameter(xp.zeros(shape, dtype=dtype))


class Linear(Module):
    """y = x @ weight.T + bias, as torch.nn.Linear.

    x (..., in_features) -> (..., out_features). An input of the wrong width raises ValueError naming
    this layer's path in the model and both shapes.
    """

    activation = None  # Dense overrides; Sequential fuses a following activation module only when None
    negative_slope = 0.01

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=np.float32, device=None):
        super().__init__()
        _check_features(type(self).__name__, in_features=in_features, out_features=out_features)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.weight = _empty_parameter((self.out_features, self.in_features), dtype, device)
        if bias:
            self.bias = _empty_parameter((self.out_features,), dtype, device)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self, generator=None) -> None:
        """PyTorch's default: weight ~ kaiming_uniform_(a=sqrt(5)); bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5), generator=generator)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            init.uniform_(self.bias, -bound, bound, generator=generator)

    def forward(self, x):
        return functional.dense(x, self.weight, self.bias, None, name=self._layer_name)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Dense(Linear):
    """y = activation(x @ weight.T + bias): a Linear with its activation fused into the same kernel.

    activation: one of identity (or None), relu, leaky_relu, gelu, gelu_tanh, sigmoid, tanh
    (unknown names raise ValueError listing these). state_dict keys: weight, bias.
    """

    _fusion_attrs = ("activation", "negative_slope")

    def __init__(self, in_features: int, out_features: int, activation="relu", bias: bool = True,
                 negative_slope: float = 0.01, dtype=np.float32, device=None):
        activation_code(activation)  # ValueError listing the valid names
        super().__init__(in_features, out_features, bias=bias, dtype=dtype, device=device)
        self.activation = activation
        self.negative_slope = float(negative_slope)

    def __setattr__(self, name, value):
        if name == "activation":
            activation_code(value)
        super().__setattr__(name, value)

    def forward(self, x):
        return functional.dense(x, self.weight, self.bias, self.activation, self.negative_slope,
                                name=self._layer_name)

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", activation={self.activation!r}"
        if self.activation == "leaky_relu":
            s += f", negative_slope={self.negative_slope}"
        return s
