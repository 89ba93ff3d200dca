"""Activation and shape modules with torch.nn's names: ReLU, LeakyReLU, GELU, Sigmoid, Tanh,
Softmax, LogSoftmax, Identity, Flatten.

The elementwise ones expose `_fused` = (activation name, negative_slope): the name that
`functional.dense` understands, so a Sequential can fold them into the preceding Linear.
"""
from __future__ import annotations

from gpunn import functional
from gpunn.nn.module import Module


class ReLU(Module):
    """max(x, 0); gradient 0 at x == 0."""

    _fused = ("relu", 0.01)

    def forward(self, x):
        return functional.relu(x)


class LeakyReLU(Module):
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


class GELU(Module):
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


class Sigmoid(Module):
    """1 / (1 + exp(-x)), stable for any x."""

    _fused = ("sigmoid", 0.01)

    def forward(self, x):
        return functional.sigmoid(x)


class Tanh(Module):
    _fused = ("tanh", 0.01)

    def forward(self, x):
        return functional.tanh(x)


class Softmax(Module):
    """exp(x - logsumexp(x)) along dim."""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return functional.softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Module):
    """x - logsumexp(x) along dim."""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return functional.log_softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


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


_FUSABLE = (ReLU, LeakyReLU, GELU, Sigmoid, Tanh)
