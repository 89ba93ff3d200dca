"""RMSprop (torch.optim.RMSprop's formulas; see gpunn/kernels/optimizers.py)."""
from __future__ import annotations

from gpunn.optim.optimizer import Optimizer

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
    """RMSprop (Hinton), one fused kernel call per param group and step.

        g = grad (negated if maximize) + weight_decay * p;   s = alpha s + (1 - alpha) g^2
        centered: a = alpha a + (1 - alpha) g, d = sqrt(s - a^2) + eps;  else d = sqrt(s) + eps
        momentum > 0: buf = momentum buf + g / d, p -= lr buf;  else p -= lr g / d

    `state[p]`: "step", "square_avg", and "momentum_buffer" (momentum > 0), "grad_avg" (centered).
    """

    _state_buffers = {"square_avg": None, "momentum_buffer": "momentum", "grad_avg": "centered"}

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0, momentum: float = 0, centered: bool = False, *,
                 maximize: bool = False):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, maximize=maximize)
        super().__init__(params, defaults)

    _ranges = (("lr", "learning rate"), ("eps", "epsilon value"), ("momentum", "momentum value"),
               ("weight_decay", "weight_decay value"), ("alpha", "alpha value", 0.0, 1.0))

    def _update(self, group, ops, p, g, state, step) -> None:
        momentum = group["momentum"]
        centered = group["centered"]
        ops.rmsprop_update(p, g, state["square_avg"], state["momentum_buffer"] if momentum > 0 else None,
                           state["grad_avg"] if centered else None, group["lr"], group["alpha"], group["eps"],
                           group["weight_decay"], momentum, centered, group["maximize"])
