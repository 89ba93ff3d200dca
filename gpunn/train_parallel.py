"""`fit` under an initialized process group: what each rank does differently (used by gpunn.train).

- Every rank holds the whole data and draws the same epoch order from (seed, epoch), with rank 0's
  seed broadcast; each global batch of `batch_size` rows is split evenly across ranks (a short last
  batch too): rank r takes rows [r*B//W, (r+1)*B//W).
- A rank's loss is scaled so that the gradient average over ranks equals the gradient of the loss
  over the whole global batch: by W*b_r/B for reduction="mean" (b_r rows of B), by W for "sum". A
  rank whose share is empty contributes zero gradients (DistributedDataParallel.sync_gradients).
- Metrics are sums over ranks (so they equal one process's on the whole data); divergence is
  decided on those sums, and early stopping by rank 0's decision, so all ranks stop together.
"""
from __future__ import annotations

import numpy as np

from gpunn import distributed as dist
from gpunn.autograd.tensor import Tensor
from gpunn.backend import get_array_module

__all__ = ["ranks_for"]


def ranks_for(model):
    """The `_Ranks` of the current process group, or None without one (or with one rank)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    from gpunn.nn.parallel import DistributedDataParallel

    if not isinstance(model, DistributedDataParallel):
        raise ValueError(f"fit() runs on {dist.get_world_size()} ranks (an initialized process group), but the "
                         f"model is a {type(model).__name__}: wrap it first, model = "
                         "gpunn.nn.parallel.DistributedDataParallel(model), then build the optimizer from "
                         "model.parameters()")
    return _Ranks(model)


class _Ranks:
    def __init__(self, model):
        self.model = model
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()

    def shared_seed(self, seed: int) -> int:
        return int(dist.host_broadcast([seed], "fit: broadcast of the shuffling seed")[0])

    def share(self, a):
        """This rank's rows of a global batch."""
        n = len(a)
        return a[self.rank * n // self.size:(self.rank + 1) * n // self.size]

    def train_step(self, loss_fn, xb, yb, weight, sync_loss):
        """Forward and backward of this rank's share of the global batch (xb, yb). weight(rows) is
        a batch's weight in the epoch's loss sum. Returns (out, yb share, loss, pending): loss is
        this rank's loss Tensor; pending, with sync_loss, holds the step's weighted loss summed
        over ranks (started before backward so that it overlaps it; `step_loss` waits for it)."""
        B = len(xb)
        xb, yb = self.share(xb), self.share(yb)
        b = len(xb)
        if b == 0:  # the collectives in the order the other ranks issue them: loss, then gradients
            pending = self._start_loss(0.0) if sync_loss else None
            self.model.sync_gradients()
            return None, yb, Tensor(get_array_module(xb).zeros((), dtype=xb.dtype)), pending
        out = self.model(Tensor(xb))
        loss = loss_fn(out, Tensor(yb))
        pending = self._start_loss(float(loss.data) * weight(b)) if sync_loss else None
        factor = self.size * weight(b) / weight(B)  # W*b/B for a mean over rows, W for a sum
        (loss if factor == 1.0 else loss * factor).backward()
        return out, yb, loss, pending

    def _start_loss(self, value):
        arr = np.array([value], dtype=np.float64)
        return arr, dist._need("fit").start_all_reduce(arr, "fit: sum of the step's loss")

    def step_loss(self, pending) -> float:
        arr, p = pending
        dist._need("fit").wait(p, "fit: sum of the step's loss")
        return float(arr[0])

    def sum(self, values, what: str):
        return dist.host_all_reduce(values, f"fit: sum of {what}")

    def evaluate(self, evaluate, model, loss_fn, X, y, batch_size, correct_fn):
        """`evaluate` on this rank's shard of (X, y), its sums added over ranks."""
        Xs, ys = self.share(X), self.share(y)
        n = len(Xs)
        part = evaluate(model, loss_fn, Xs, ys, batch_size, correct_fn) if n else {}
        counted = ys.size if n else 0
        acc = part.get("accuracy")
        total, correct, counted = self.sum([part.get("loss", 0.0) * n, 0.0 if acc is None else round(acc * counted),
                                            counted if acc is not None else 0], "the validation metrics")
        out = {"loss": float(total) / len(X) if len(X) else float("nan")}
        if correct_fn is not None and counted:
            out["accuracy"] = int(correct) / int(counted)
        return out

    def agree(self, stop: bool) -> bool:
        """Rank 0's decision, on every rank."""
        return bool(dist.host_broadcast([int(bool(stop))], "fit: the early-stopping decision")[0])
