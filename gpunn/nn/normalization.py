"""Normalisation and dropout layers with torch.nn's names, arguments, defaults and state_dict keys:
LayerNorm, BatchNorm1d, Dropout. Each forward is one graph node (gpunn.functional)."""
from __future__ import annotations

import numpy as np

from gpunn import functional
from gpunn.autograd.checks import check_number
from gpunn.autograd.tensor import Tensor, no_grad
from gpunn.backend import device as resolve_device
from gpunn.nn.linear import _check_features, _empty_parameter
from gpunn.nn.module import Module


def _fill(p, value) -> None:
    if p is not None:
        with no_grad():
            p.data[...] = value


class LayerNorm(Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last len(normalized_shape)
    dimensions (biased variance), as torch.nn.LayerNorm. weight (ones) and bias (zeros) have shape
    normalized_shape; elementwise_affine=False has neither, bias=False no bias."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.normalized_shape = functional.normalized_shape_of(normalized_shape, "LayerNorm")
        self.eps = check_number("LayerNorm", "eps", eps)
        self.elementwise_affine = bool(elementwise_affine)
        if self.elementwise_affine:
            self.weight = _empty_parameter(self.normalized_shape, dtype, device)
            if bias:
                self.bias = _empty_parameter(self.normalized_shape, dtype, device)
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _fill(self.weight, 1)
        _fill(self.bias, 0)

    def forward(self, x):
        return functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps,
                                     name=self._layer_name)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self.bias is not None}")


class BatchNorm1d(Module):
    """Per feature c of an (N, C) or (N, C, L) input: (x - mean_c) / sqrt(var_c + eps) * weight_c +
    bias_c, as torch.nn.BatchNorm1d. In training the batch's statistics (biased variance) normalise,
    and running_mean / running_var are updated with momentum (unbiased variance; momentum=None: a
    cumulative average over num_batches_tracked batches); in eval mode the running statistics
    normalise. state_dict keys: weight, bias, running_mean, running_var, num_batches_tracked (int64),
    as PyTorch's (absent when affine / track_running_stats are False)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, bias: bool = True):
        super().__init__()
        name = type(self).__name__
        _check_features(name, num_features=num_features)
        self.num_features = int(num_features)
        self.eps = check_number(name, "eps", eps)
        self.momentum = None if momentum is None else check_number(name, "momentum", momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        if self.affine:
            self.weight = _empty_parameter((self.num_features,), dtype, device)
            if bias:
                self.bias = _empty_parameter((self.num_features,), dtype, device)
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            xp = np if device is None else resolve_device(device).xp
            dt = np.dtype(np.float32 if dtype is None else dtype)
            self.register_buffer("running_mean", Tensor(xp.zeros(self.num_features, dtype=dt)))
            self.register_buffer("running_var", Tensor(xp.ones(self.num_features, dtype=dt)))
            self.register_buffer("num_batches_tracked", Tensor(xp.zeros((), dtype=np.int64)))
        else:
            for b in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(b, None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            _fill(self.running_mean, 0)
            _fill(self.running_var, 1)
            _fill(self.num_batches_tracked, 0)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        _fill(self.weight, 1)
        _fill(self.bias, 0)

    def forward(self, x):
        where = functional.layer_label("batch_norm", self._layer_name)  # as functional.dense names its layer
        ndim = getattr(x, "ndim", None)
        if ndim not in (2, 3):
            raise ValueError(f"{where}: expected 2D or 3D input (got {ndim}D input of shape "
                             f"{tuple(getattr(x, 'shape', ()))}); {type(self).__name__} takes (N, C) or (N, C, L)")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{where}: expected {self.num_features} features (input dimension 1), "
                             f"got input of shape {tuple(x.shape)}")
        training = self._mode()
        # batch statistics in training, and always without running statistics (as PyTorch)
        batch_stats = training or self.running_mean is None
        track = self.track_running_stats and training
        use_running = not training or self.track_running_stats
        # momentum=None matters only while running statistics are updated (PyTorch uses 0.0 otherwise)
        momentum = 0.0 if self.momentum is None and not track else self.momentum
        return functional.batch_norm_checked(
            x, self.running_mean if use_running else None, self.running_var if use_running else None,
            self.weight, self.bias, batch_stats, momentum, self.eps,
            self.num_batches_tracked if track else None, self._layer_name)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class Dropout(Module):
    """In training, zeroes each element with probability p and scales the rest by 1/(1-p) (a fresh
    mask from gpunn's seeded generator each call); in eval mode the identity. As torch.nn.Dropout."""

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        self.p = functional.check_dropout_p(p, type(self).__name__)
        self.inplace = bool(inplace)

    def forward(self, x):
        return functional.dropout(x, self.p, self._mode(), self.inplace, name=self._layer_name)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"
