"""Adagrad (torch.optim.Adagrad's formulas; the update is gpunn/kernels/registry.py's adagrad_update)."""
from __future__ import annotations

from gpunn.optim.optimizer import Optimizer

__all__ = ["Adagrad"]


class Adagrad(Optimizer):
    """Adagrad (Duchi, Hazan & Singer), one fused kernel call per param group and step.

        g = grad (negated if maximize) + weight_decay * p;   sum += g^2
        p -= lr / (1 + (t - 1) * lr_decay) * g / (sqrt(sum) + eps)

    `state[p]` holds "step" (0-d array) and "sum" from construction on (step 0, sum =
    initial_accumulator_value), as in PyTorch.
    """

    _state_buffers = {"sum": None}
    _initial_state = {"sum": "initial_accumulator_value"}

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0, weight_decay: float = 0,
                 initial_accumulator_value: float = 0, eps: float = 1e-10, *, maximize: bool = False):
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, maximize=maximize)
        super().__init__(params, defaults)

    _ranges = (("lr", "learning rate"), ("lr_decay", "lr_decay value"), ("weight_decay", "weight_decay value"),
               ("initial_accumulator_value", "initial_accumulator_value value"), ("eps", "epsilon value"))

    def _update(self, group, ops, p, g, state, step) -> None:
        ops.adagrad_update(p, g, state["sum"], group["lr"], group["lr_decay"], group["weight_decay"], group["eps"],
                           group["maximize"], step)
