"""Activation and shape modules with torch.nn's names: ReLU, LeakyReLU, GELU, Sigmoid, Tanh,
Softmax, LogSoftmax, Identity, Flatten.

The elementwise ones (ElementwiseActivation) expose `_fused` = (activation name, negative_slope):
the name that `functional.dense` understands, so a Sequential can fold them into the preceding
Linear. The parameterless ones (ReLU, Sigmoid, Tanh, ...) are made from the activation registry
(gpunn/kernels/registry.py: each member that names a `module`).
"""
from __future__ import annotations

from gpunn import functional
from gpunn.kernels import registry
from gpunn.nn.module import Module


class ElementwiseActivation(Module):
    """Base of the activation modules that a Sequential folds into the preceding Linear: `_fused`
    is (registry activation name, negative_slope), or None to leave the module unfused."""

    _activation = "identity"

    @property
    def _fused(self):
        return (self._activation, 0.01)

    def forward(self, x):
        return functional.activation(x, self._activation)


class LeakyReLU(ElementwiseActivation):
    """x if x > 0 else negative_slope * x."""

    _fusion_attrs = ("negative_slope",)

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    @property
    def _fused(self):
        return ("leaky_relu", self.negative_slope)

    def forward(self, x):
        return functional.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class GELU(ElementwiseActivation):
    """x * Phi(x) (approximate="none", exact) or its tanh approximation (approximate="tanh")."""

    _fusion_attrs = ("approximate",)

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    @property
    def _fused(self):
        name = {"none": "gelu", "tanh": "gelu_tanh"}.get(self.approximate)
        return None if name is None else (name, 0.01)  # an invalid value is left to forward to report

    def forward(self, x):
        return functional.gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


_MADE: dict = {}


def activation_module(member):
    """The parameterless module class (torch.nn's name: member.module) of a registry activation."""
    cls = _MADE.get(member.name)
    if cls is None:
        cls = _MADE[member.name] = type(member.module, (ElementwiseActivation,), {
            "__doc__": member.doc, "_activation": member.name, "__module__": __name__})
    return cls


# ReLU, Sigmoid, Tanh, ...: one class per built-in registry activation that names a module (those
# registered elsewhere, later, are reached through __getattr__ and vanish when unregistered)
for _m in registry.ACTIVATIONS.values():
    if _m.module and registry.is_builtin(_m):
        globals()[_m.module] = activation_module(_m)


def fusable_types() -> tuple:
    """The module types a Sequential folds into the preceding Linear (exact types: a subclass may
    change forward)."""
    return (LeakyReLU, GELU, *(activation_module(m) for m in registry.ACTIVATIONS.values() if m.module))


def __getattr__(name):
    """Classes of activations registered after import (gpunn.kernels.registry.register_activation)."""
    for m in registry.ACTIVATIONS.values():
        if m.module == name:
            return activation_module(m)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _AlongDim(Module):
    """A module applying `functional.<_fn>(x, dim)`."""

    _fn = ""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return getattr(functional, self._fn)(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Softmax(_AlongDim):
    """exp(x - logsumexp(x)) along dim."""

    _fn = "softmax"


class LogSoftmax(_AlongDim):
    """x - logsumexp(x) along dim."""

    _fn = "log_softmax"


class Identity(Module):
    """Returns its input unchanged (extra constructor arguments are ignored, as in PyTorch)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


class Flatten(Module):
    """Flattens dims start_dim..end_dim into one: (N, C, H, W) -> (N, C*H*W) by default."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim = start_dim
        self.end_dim = end_dim

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
