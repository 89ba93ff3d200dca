"""Loss modules with torch.nn's names, each a thin wrapper over one fused functional loss.

reduction: "mean" (default), "sum" or "none"; anything else raises ValueError at construction.
Prediction and target must have the same shape (gpunn does not broadcast losses).
"""
from __future__ import annotations

from gpunn import functional
from gpunn.autograd.tensor import Tensor
from gpunn.nn.module import Module

REDUCTIONS = functional.REDUCTIONS


class _Loss(Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"{type(self).__name__}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction


class MSELoss(_Loss):
    """(input - target)^2, reduced."""

    def forward(self, input, target):
        return functional.mse_loss(input, target, reduction=self.reduction)


class L1Loss(_Loss):
    """|input - target|, reduced (gradient 0 where input == target)."""

    def forward(self, input, target):
        return functional.l1_loss(input, target, reduction=self.reduction)


class _WeightedLoss(_Loss):
    """A loss with optional class weights, registered as the buffer `weight` (PyTorch's
    _WeightedLoss: in state_dict when given, absent when None; moved and cast by .to())."""

    def __init__(self, weight=None, reduction: str = "mean"):
        super().__init__(reduction)
        if weight is not None:
            if not isinstance(weight, Tensor) and hasattr(weight, "detach"):
                weight = weight.detach().cpu().numpy()  # a torch tensor
            weight = weight.detach() if isinstance(weight, Tensor) else Tensor(weight)
            if weight.ndim != 1 or weight.dtype.kind != "f":
                raise ValueError(f"{type(self).__name__}: weight must be a 1-D float tensor of class weights, got "
                                 f"shape {weight.shape} dtype {weight.dtype}")
        self.register_buffer("weight", weight)


class CrossEntropyLoss(_WeightedLoss):
    """Softmax cross-entropy from logits (N, C) and integer labels (N,) with optional class weights
    and label smoothing (functional.cross_entropy); "mean" divides by the sum of the weights of the
    targets that are not ignore_index (their count without weights)."""

    def __init__(self, weight=None, *, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0):
        super().__init__(weight, reduction)
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

    def __init__(self, weight=None, *, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__(weight, reduction)
        self.ignore_index = int(ignore_index)

    def forward(self, input, target):
        return functional.nll_loss(input, target, self.weight, ignore_index=self.ignore_index,
                                   reduction=self.reduction)


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on logits (ATen's stable formula); pos_weight multiplies the positive term."""

    def __init__(self, pos_weight=None, reduction: str = "mean"):
        super().__init__(reduction)
        self.pos_weight = pos_weight

    def forward(self, input, target):
        pw = self.pos_weight
        if pw is not None and not isinstance(pw, Tensor) and hasattr(pw, "detach"):
            pw = pw.detach().cpu().numpy()  # a torch tensor
        return functional.binary_cross_entropy_with_logits(input, target, reduction=self.reduction, pos_weight=pw)
