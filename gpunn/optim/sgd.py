"""SGD with optional momentum, dampening, Nesterov momentum, weight decay and maximize
(torch.optim.SGD's formulas; see gpunn/kernels/optimizers.py)."""
from __future__ import annotations

from gpunn.optim.optimizer import Optimizer

__all__ = ["SGD"]


class SGD(Optimizer):
    """Stochastic gradient descent, one fused kernel call per param group and step.

        g = grad (negated if maximize) + weight_decay * p
        buf = g on a parameter's first momentum step, else momentum * buf + (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf;      p -= lr * g

    `state[p]` holds "momentum_buffer" (a view) once the parameter has taken a step with
    momentum != 0, as in PyTorch; there is no step count.
    """

    _state_buffers = {"momentum_buffer": "momentum"}  # a momentum != 0 turns it on
    _step_in_state = False

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults)

    _ranges = (("lr", "learning rate"), ("momentum", "momentum value"), ("dampening", "dampening value", 0.0, 1.0),
               ("weight_decay", "weight_decay value"))

    def _validate(self, o) -> None:
        super()._validate(o)
        if o["nesterov"] and (o["momentum"] <= 0 or o["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening "
                             f"(nesterov=True with momentum={o['momentum']}, dampening={o['dampening']})")

    def _counts_step(self, group) -> bool:
        # the count only tells a parameter's first momentum step (buffer = g) from later ones
        return group["momentum"] != 0

    def _update(self, group, ops, p, g, state, step) -> None:
        ops.sgd_update(p, g, state.get("momentum_buffer"), group["lr"], group["momentum"], group["dampening"],
                       group["nesterov"], group["weight_decay"], group["maximize"], step <= 1.0)
