"""Adam and AdamW (torch.optim.Adam / AdamW's formulas; see gpunn/kernels/optimizers.py)."""
from __future__ import annotations

from gpunn.optim.optimizer import Optimizer, check_range

__all__ = ["Adam", "AdamW"]


def _betas(betas):
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
    check_range("betas[0]", "beta parameter at index 0", b1, 0.0, 1.0, high_open=True)
    check_range("betas[1]", "beta parameter at index 1", b2, 0.0, 1.0, high_open=True)
    return float(b1), float(b2)


class Adam(Optimizer):
    """Adam (Kingma & Ba), one fused kernel call per param group and step.

        g = grad (negated if maximize) + weight_decay * p  (L2; AdamW decays p instead)
        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2;   vmax = max(vmax, v) if amsgrad
        p -= lr / (1 - b1^t) * m / (sqrt(v or vmax) / sqrt(1 - b2^t) + eps)

    `state[p]`: "step" (0-d array), "exp_avg", "exp_avg_sq" and, with amsgrad, "max_exp_avg_sq".
    `decoupled_weight_decay=True` makes it AdamW (as in PyTorch 2.x).
    """

    _state_buffers = {"exp_avg": None, "exp_avg_sq": None, "max_exp_avg_sq": "amsgrad"}

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False, *, maximize: bool = False,
                 decoupled_weight_decay: bool = False):
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps,
                        weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    _ranges = (("lr", "learning rate"), ("eps", "epsilon value"))

    def _validate(self, o) -> None:
        super()._validate(o)
        _betas(o["betas"])
        check_range("weight_decay", "weight_decay value", o["weight_decay"])

    def _update(self, group, ops, p, g, state, step) -> None:
        b1, b2 = group["betas"]
        amsgrad = group["amsgrad"]
        ops.adam_update(p, g, state["exp_avg"], state["exp_avg_sq"], state["max_exp_avg_sq"] if amsgrad else None,
                        group["lr"], b1, b2, group["eps"], group["weight_decay"], group["decoupled_weight_decay"],
                        amsgrad, group["maximize"], step)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr * weight_decay, then
    the Adam step without the decay term in the gradient. Default weight_decay 1e-2."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, decoupled_weight_decay=True)
