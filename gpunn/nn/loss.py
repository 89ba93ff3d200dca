"""Loss modules with torch.nn's names, each a thin wrapper over one fused functional loss.

reduction: "mean" (default), "sum" or "none"; anything else raises ValueError at construction.
Prediction and target must have the same shape (gpunn does not broadcast losses).
"""
from __future__ import annotations

import numpy as np

from gpunn import functional
from gpunn.kernels import registry
from gpunn.autograd.tensor import Tensor
from gpunn.nn.module import Module

REDUCTIONS = functional.REDUCTIONS


class _Loss(Module):
    def __init__(self, size_average=None, reduce=None, reduction: str = "mean"):
        super().__init__()
        reduction = functional._legacy_reduction(type(self).__name__, size_average, reduce, reduction)
        if reduction not in REDUCTIONS:
            raise ValueError(f"{type(self).__name__}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction


class _WeightedLoss(_Loss):
    """A loss with torch's optional `weight` buffer (in the state_dict when given)."""

    def __init__(self, weight=None, size_average=None, reduce=None, reduction: str = "mean"):
        super().__init__(size_average, reduce, reduction)
        self.register_buffer("weight", _as_tensor(weight))


def _as_tensor(v):
    if v is None or isinstance(v, Tensor):
        return v
    if hasattr(v, "detach") and hasattr(v, "numpy"):  # a torch tensor
        v = v.detach().cpu().numpy()
    # a copy, as torch.tensor(v) makes: loading a state_dict must not write into the caller's array
    return Tensor(np.array(v, dtype=np.float32) if not hasattr(v, "dtype") else v.copy())


class MSELoss(_Loss):
    """(input - target)^2, reduced."""

    def forward(self, input, target):
        return functional.mse_loss(input, target, reduction=self.reduction)


class L1Loss(_Loss):
    """|input - target|, reduced (gradient 0 where input == target)."""

    def forward(self, input, target):
        return functional.l1_loss(input, target, reduction=self.reduction)


class HuberLoss(_Loss):
    """0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta), d = input - target."""

    def __init__(self, reduction: str = "mean", delta: float = 1.0):
        super().__init__(reduction=reduction)
        self.delta = functional._positive(type(self).__name__, "delta", delta, strict=True)

    def forward(self, input, target):
        return functional.huber_loss(input, target, reduction=self.reduction, delta=self.delta)


class SmoothL1Loss(_Loss):
    """0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta, d = input - target (beta=0: L1)."""

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean", beta: float = 1.0):
        super().__init__(size_average, reduce, reduction)
        self.beta = functional._positive(type(self).__name__, "beta", beta, strict=False)

    def forward(self, input, target):
        return functional.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class BCELoss(_WeightedLoss):
    """Binary cross-entropy on probabilities in [0, 1] (logarithms clamped at -100, as PyTorch);
    weight, broadcastable to the input, rescales each element."""

    def forward(self, input, target):
        return functional.binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


def _class_weights(op, weight):
    """A 1-D float class-weight buffer (or None): checked when the module is built."""
    if weight is not None and (weight.ndim != 1 or weight.dtype.kind != "f"):
        raise ValueError(f"{op}: weight must be a 1-D float tensor of class weights, got shape {weight.shape} "
                         f"dtype {weight.dtype}")
    return weight


class CrossEntropyLoss(_WeightedLoss):
    """Softmax cross-entropy from logits (N, C) and integer labels (N,) with optional class weights
    (the `weight` buffer) and label smoothing (functional.cross_entropy); "mean" divides by the sum
    of the weights of the targets that are not ignore_index (their count without weights)."""

    def __init__(self, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__(weight, size_average, reduce, reduction)
        _class_weights(type(self).__name__, self.weight)
        self.ignore_index = int(ignore_index)
        if isinstance(label_smoothing, bool) or not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, input, target):
        return functional.cross_entropy(input, target, self.weight, ignore_index=self.ignore_index,
                                        reduction=self.reduction, label_smoothing=self.label_smoothing)


class NLLLoss(_WeightedLoss):
    """Negative log-likelihood from log-probabilities (N, C) and integer labels (N,) with optional
    class weights (functional.nll_loss); LogSoftmax then NLLLoss is CrossEntropyLoss."""

    def __init__(self, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean"):
        super().__init__(weight, size_average, reduce, reduction)
        _class_weights(type(self).__name__, self.weight)
        self.ignore_index = int(ignore_index)

    def forward(self, input, target):
        return functional.nll_loss(input, target, self.weight, ignore_index=self.ignore_index,
                                   reduction=self.reduction)


class BCEWithLogitsLoss(_WeightedLoss):
    """Binary cross-entropy on logits (ATen's stable formula); pos_weight (e.g. one per class)
    multiplies the positive term, weight rescales each element; both are buffers, as in torch."""

    def __init__(self, weight=None, size_average=None, reduce=None, reduction: str = "mean", pos_weight=None):
        if isinstance(weight, str):
            raise TypeError("BCEWithLogitsLoss: the first argument is weight (as in PyTorch); pass "
                            f"reduction={weight!r} by name")
        super().__init__(weight, size_average, reduce, reduction)
        self.register_buffer("pos_weight", _as_tensor(pos_weight))

    def forward(self, input, target):
        return functional.binary_cross_entropy_with_logits(input, target, weight=self.weight,
                                                           reduction=self.reduction, pos_weight=self.pos_weight)


class ElementwiseLossModule(_Loss):
    """The base of the loss modules made from registry entries (`loss_module`): reduction, an
    optional per-element `weight` buffer, and the entry's own options as attributes."""

    _loss = ""

    def __init__(self, reduction: str = "mean", weight=None, **options):
        super().__init__(reduction=reduction)
        self.register_buffer("weight", _as_tensor(weight))
        member = registry.loss(self._loss)
        functional.loss_options(type(self).__name__, member, options)  # refuse bad options here, not at the first call
        self._fn = functional.loss_function(member)
        self._options = dict(options)

    def forward(self, input, target):
        return self._fn(input, target, reduction=self.reduction, weight=self.weight, **self._options)


_MADE: dict = {}


def loss_module(member):
    """The nn class of a registry loss that names a module (made once per member)."""
    cls = _MADE.get(member.name)
    if cls is None or cls._loss != member.name or registry.LOSSES.get(member.name) is not member:
        cls = _MADE[member.name] = type(member.module, (ElementwiseLossModule,), {
            "__doc__": member.doc, "_loss": member.name, "__module__": __name__})
    return cls


def __getattr__(name):
    """Classes of losses registered after import (gpunn.kernels.registry.register_loss with a module)."""
    for m in registry.LOSSES.values():
        if m.module == name:
            return loss_module(m)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
