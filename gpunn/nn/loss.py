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


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy from logits (N, C) and integer labels (N,); "mean" averages over the
    targets that are not ignore_index."""

    def __init__(self, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__(reduction)
        self.ignore_index = int(ignore_index)

    def forward(self, input, target):
        return functional.cross_entropy(input, target, reduction=self.reduction, ignore_index=self.ignore_index)


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
