"""A training loop for in-memory data: `fit`, `evaluate`, `predict`, callbacks.

    history = gn.train.fit(model, nn.CrossEntropyLoss(), opt, X, y, epochs=30, batch_size=32,
                           validation=(X_val, y_val), seed=0)
    history.history["val_accuracy"][-1]

Conventions (Keras's, where PyTorch has none):
- `epochs` is the index the run ends at, not a count: `fit(..., epochs=30, start_epoch=20)` runs
  epochs 20..29, so a resumed run passes the same `epochs` and the checkpoint's epoch count as
  `start_epoch`. Epoch indices in `History.epochs` and callbacks are 0-based; messages and
  progress bars count from 1 ("epoch 21/30").
- The sample order of epoch e comes from `numpy.random.default_rng([seed, e])`: it depends on the
  seed and the epoch index only, so a run resumed at `start_epoch` sees the same batches as one
  that never stopped. `seed=None` draws a seed from gpunn's generator (`gn.manual_seed`); the seed
  used is `History.seed`.
- Per-epoch logs: `loss` (the epoch's mean loss per sample), `accuracy` for classification
  (integer labels with a (batch, classes) output, or BCEWithLogitsLoss with 0/1 targets),
  `val_loss`/`val_accuracy` with `validation=(X_val, y_val)`, and `lr` (group 0's learning rate
  during the epoch).

Divergence: a non-finite loss or a non-finite value in an input batch stops training with
`TrainingDiverged`, naming the epoch, the step, the learning rate and what went non-finite. The
data are scanned once before training (one pass, then the step whose batch holds a bad row is known
in advance). On the CPU the loss is checked every step before `backward()` (`float(loss.data)`
costs nothing there), so the weights keep their last finite values. On a GPU the step losses stay
on the device and are read back only when the progress bar refreshes and at the end of each
epoch, so a normal step never waits for the GPU; the first non-finite step is still named exactly.

Under an initialized process group of several ranks (gpunn.distributed) the model must be a
DistributedDataParallel; `batch_size` is then the global batch, split over the ranks, and the
metrics, divergence and early stopping are the whole job's (gpunn/train_parallel.py).
"""
from __future__ import annotations

import math
import numbers
import time

import numpy as np

from gpunn.autograd.checks import flush_checks
from gpunn.autograd.tensor import Tensor, no_grad
from gpunn.backend import device as resolve_device
from gpunn.backend import device_of, get_array_module, is_cupy_array
from gpunn.backend import random as _random
from gpunn.data import _check_batch_size, as_array, batches, num_batches, permutation
from gpunn.train_parallel import ranks_for
from gpunn.utils.data import DataLoader, loader_arrays

__all__ = ["fit", "evaluate", "predict", "History", "Callback", "EarlyStopping", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """The loss or an input batch became NaN/Inf. Attributes: epoch and step (0-based indices),
    lr, what ("loss", "input" or "target"), and history (the epochs completed before it)."""

    def __init__(self, message: str, *, epoch: int, step: int, lr, what: str, history=None):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.lr = lr
        self.what = what
        self.history = history


class History:
    """What `fit` returns: `history` maps each metric to its per-epoch list; `epochs` lists the
    0-based epoch indices those entries belong to; `seed` is the shuffling seed that was used."""

    def __init__(self, seed=None):
        self.history: dict[str, list] = {}
        self.epochs: list[int] = []
        self.seed = seed

    def append(self, epoch: int, logs: dict) -> None:
        self.epochs.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __getitem__(self, key: str) -> list:
        return self.history[key]

    def __len__(self) -> int:
        return len(self.epochs)

    def __repr__(self) -> str:
        last = {k: v[-1] for k, v in self.history.items() if v}
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items())
        return f"History(epochs={len(self.epochs)}{', ' if shown else ''}{shown})"


class Callback:
    """Base class for callbacks. Before training, `model`, `optimizer` and `history` are set on the
    callback. Set `self.stop_training = True` in a hook to end training after the current epoch.

    `on_batch_end(step, logs)` receives {"loss": the step's loss Tensor, "lr": the learning rate that
    step used (a float; a per-batch scheduler has already stepped to the next one)}; reading the
    loss's value there makes a GPU wait every step, and fit only calls this hook on callbacks that
    override it.
    """

    model = None
    optimizer = None
    history = None
    stop_training = False

    def set_context(self, model, optimizer, history) -> None:
        self.model = model
        self.optimizer = optimizer
        self.history = history
        self.stop_training = False

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch: int, logs=None):
        pass

    def on_epoch_end(self, epoch: int, logs=None):
        pass

    def on_batch_end(self, step: int, logs=None):
        pass


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs.

    mode: "min", "max" or "auto" (max for names containing "acc", min otherwise). With
    `restore_best_weights` the model ends training with the weights of its best epoch. After
    training: `best`, `best_epoch`, `stopped_epoch` (None if it did not stop training).
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False):
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an int >= 0, got {patience!r}")
        if not isinstance(min_delta, numbers.Real) or not min_delta >= 0:
            raise ValueError(f"EarlyStopping: min_delta must be a number >= 0, got {min_delta!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.mode = ("max" if "acc" in monitor else "min") if mode == "auto" else mode
        self.restore_best_weights = restore_best_weights
        self._reset()

    def _reset(self):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = None
        self.stopped_epoch = None
        self.wait = 0
        self.best_weights = None
        self._last_epoch = None

    def on_train_begin(self, logs=None):
        self._reset()

    def _improved(self, value) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            hint = ""
            if self.monitor.startswith("val_"):
                hint = " (pass validation=(X_val, y_val) to fit for val_* metrics)"
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which is not among this epoch's "
                             f"metrics {sorted(logs)}{hint}")
        value = logs[self.monitor]
        self._last_epoch = epoch
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = {k: v.data.copy() for k, v in self.model.state_dict().items()}
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.stop_training = True

    def on_train_end(self, logs=None):
        if (self.restore_best_weights and self.best_weights is not None
                and self.best_epoch != self._last_epoch):
            self.model.load_state_dict(self.best_weights)


# ----------------------------------------------------------------------------- helpers

def _model_device_dtype(model):
    params = list(model.parameters())
    if not params:
        raise ValueError(f"{type(model).__name__} has no parameters to train")
    dev, dtype = params[0].device, params[0].dtype
    for p in params[1:]:
        if p.device != dev:
            raise ValueError(f"the model's parameters are on several devices ({dev} and {p.device}); "
                             "move the whole model with model.to(device)")
    return dev, dtype


def _to_device(a, dev):
    if a is None:
        return None
    if dev.is_gpu:
        import cupy

        if is_cupy_array(a) and a.device.id == dev.index:
            return a
        with cupy.cuda.Device(dev.index):
            return cupy.array(a)  # copies onto this device (asarray would keep another GPU's array)
    return a.get() if is_cupy_array(a) else a


def _is_bce(loss_fn) -> bool:
    from gpunn.nn import BCEWithLogitsLoss

    return isinstance(loss_fn, BCEWithLogitsLoss) or getattr(loss_fn, "__name__", "") in (
        "binary_cross_entropy_with_logits", "bce_with_logits")


def _is_cross_entropy(loss_fn) -> bool:
    from gpunn.nn import CrossEntropyLoss

    return isinstance(loss_fn, CrossEntropyLoss) or getattr(loss_fn, "__name__", "") == "cross_entropy"


def _prepare(X, y, dev, dtype, loss_fn, where: str, need_y: bool = True):
    """Check X/y against the model and move them to its device (once, before the loop)."""
    xname, yname = ("X", "y") if where == "fit" else ("X_val", "y_val") if where == "validation" else ("X", "y")
    X = as_array(X, xname)
    y = as_array(y, yname)
    if need_y and y is None:
        raise ValueError(f"{where}: targets {yname} are required")
    if X.dtype.kind != "f":
        raise TypeError(f"{where}: {xname} must be a float array with the model's dtype {dtype}, got dtype "
                        f"{X.dtype}; convert it with {xname}.astype(np.{dtype})")
    if X.dtype != dtype:
        raise TypeError(f"{where}: {xname} has dtype {X.dtype} but the model's parameters are {dtype}; "
                        f"gpunn does not cast silently: use {xname}.astype(np.{dtype}) "
                        f"(or model.to(np.{X.dtype}) before creating the optimizer)")
    if X.ndim < 1 or (y is not None and y.ndim < 1):
        raise ValueError(f"{where}: {xname} and {yname} need a first (sample) dimension")
    if y is not None:
        if len(X) != len(y):
            raise ValueError(f"{where}: {xname} and {yname} must have the same number of samples: "
                             f"len({xname}) = {len(X)}, len({yname}) = {len(y)}")
        if y.dtype.kind == "f":
            if _is_cross_entropy(loss_fn):
                raise TypeError(f"{where}: {type(loss_fn).__name__} needs integer class labels, but {yname} "
                                f"has dtype {y.dtype}; use {yname}.astype(np.int64)")
            if y.dtype != dtype:
                raise TypeError(f"{where}: {yname} has dtype {y.dtype} but the model's parameters are {dtype}; "
                                f"use {yname}.astype(np.{dtype})")
        elif y.dtype.kind not in "iub":
            raise TypeError(f"{where}: {yname} must be integer class labels or float targets, got dtype {y.dtype}")
    return _to_device(X, dev), _to_device(y, dev)


def _bad_rows(A):
    """Host indices of the rows of a float array holding NaN or Inf (None when all are finite)."""
    if A is None or A.dtype.kind != "f" or A.size == 0:
        return None
    xp = get_array_module(A)
    finite = xp.isfinite(A.reshape(len(A), -1)).all(axis=1)
    if bool(finite.all()):
        return None
    rows = xp.flatnonzero(~finite)
    return rows.get() if xp is not np else rows


def _accuracy_counter(loss_fn, y):
    """A function (out, yb) -> number of correct predictions, or None for regression."""
    if y.dtype.kind in "iu":
        def correct(out, yb):
            if out.ndim != 2 or out.shape[1] < 2:
                return None
            return (out.argmax(axis=1) == yb).sum()
        return correct
    if _is_bce(loss_fn):
        return lambda out, yb: ((out > 0) == (yb > 0.5)).sum()
    return None


def _lr(optimizer):
    groups = getattr(optimizer, "param_groups", None)
    if groups:
        lr = groups[0].get("lr")
        return float(lr) if isinstance(lr, numbers.Real) else lr
    return None


def _is_plateau(scheduler) -> bool:
    from gpunn.optim.lr_scheduler import ReduceLROnPlateau

    return isinstance(scheduler, ReduceLROnPlateau) or type(scheduler).__name__ == "ReduceLROnPlateau"


def _weight(loss_fn, nb):
    return 1 if getattr(loss_fn, "reduction", "mean") == "sum" else nb


def _check_int(name, value, minimum=0):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _progress_bar(total, desc, progress):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=True, dynamic_ncols=True,
                disable=None if progress else True)


def _fmt_lr(lr, spec="g"):
    return format(lr, spec) if isinstance(lr, numbers.Real) else str(lr)


def _fmt_logs(logs):
    return {k: (f"{v:.3g}" if k == "lr" else f"{v:.4f}") for k, v in logs.items() if isinstance(v, float)}


# ----------------------------------------------------------------------------- fit

def _loader_pair(loader):
    arrays, batch_size, shuffle, drop_last, gen = loader_arrays(loader)
    if len(arrays) != 2:
        raise TypeError(f"fit: the DataLoader's TensorDataset holds {len(arrays)} tensors; fit needs two (inputs, targets)")
    return tuple(arrays), batch_size, shuffle, drop_last, gen


def fit(model, loss_fn, optimizer, X, y=None, epochs: int = 1, batch_size: int = 32, scheduler=None,
        validation=None, callbacks=(), progress: bool = True, device=None, seed=None,
        shuffle: bool = True, start_epoch: int = 0, scheduler_step: str = "epoch", compile: bool = False) -> History:
    """Train `model` on (X, y) with mini-batches; return a `History` (see the module docstring).

    X may instead be a `gn.utils.data.DataLoader` over a TensorDataset (X, y) (y then omitted): its
    batch_size, shuffle and drop_last are used, and its generator (if any) draws the seed.

    model: a gpunn Module; loss_fn(output, target) -> scalar Tensor; optimizer: a gpunn optimizer
    over the model's parameters. X: float array whose dtype equals the parameters' dtype (never cast
    silently); y: integer labels (classification) or float targets shaped like the output.
    NumPy or CuPy; both are moved once to the model's device. `device`: None (the model's device)
    or a device the model must already be on (move it with model.to(...) before creating the
    optimizer). `scheduler` steps once per epoch (`scheduler_step="epoch"`; ReduceLROnPlateau gets
    val_loss, else loss) or after every optimizer step ("batch"). `validation=(X_val, y_val)` is
    evaluated after every epoch. `callbacks`: `Callback` instances. `progress`: a tqdm bar per epoch
    (shown only on a terminal). Raises TrainingDiverged on a non-finite loss or input.
    `compile=True` runs each step through `gn.compile` (traced per batch shape, then replayed with no
    autograd graph; bit-identical to eager). The loss is then checked after its step's update, not
    before it, so on a TrainingDiverged the parameters already hold the diverged step.

    The phases, in order: `_data_source` (arrays or a DataLoader), `_check_fit_options` (arguments); `_FitRun(...)` (data checked and moved
    to the model's device, per-run constants); per epoch `_FitRun.train_epoch` (its batches from
    `epoch_batches`, one `train_step` each, then `epoch_logs` and `validate`), `step_scheduler`
    and the epoch-end callbacks.
    """
    X, y, batch_size, shuffle, drop_last, seed = _data_source(X, y, batch_size, shuffle, seed)
    epochs, start_epoch, batch_size, callbacks = _check_fit_options(epochs, start_epoch, batch_size,
                                                                     callbacks, scheduler_step)
    run = _FitRun(model, loss_fn, optimizer, X, y, validation, device, batch_size, shuffle, drop_last, seed,
                  scheduler, scheduler_step, epochs, progress)
    if compile:
        if run.ranks is not None:
            raise ValueError("fit(compile=True) is not supported on several ranks yet (DistributedDataParallel "
                             "averages gradients outside the step gn.compile would replay); pass compile=False")
        run.step_fn = _compiled_step(model, loss_fn, optimizer)
    history = History(seed=run.seed)
    for cb in callbacks:
        cb.set_context(model, optimizer, history)
        cb.on_train_begin()
    batch_cbs = [cb for cb in callbacks if type(cb).on_batch_end is not Callback.on_batch_end]
    for epoch in range(start_epoch, epochs):
        model.train()
        for cb in callbacks:
            cb.on_epoch_begin(epoch)
        logs = run.train_epoch(epoch, history, batch_cbs)
        history.append(epoch, logs)
        run.step_scheduler(logs)
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        stop = any(cb.stop_training for cb in callbacks)
        if run.ranks is not None:
            stop = run.ranks.agree(stop)  # rank 0 decides for all, so no rank is left in a collective
        if stop:
            break
    for cb in callbacks:
        cb.on_train_end()
    return history


def _data_source(X, y, batch_size, shuffle, seed):
    """(X, y, batch_size, shuffle, drop_last, seed): fit's own arguments, or a DataLoader's."""
    if not isinstance(X, DataLoader):
        return X, y, batch_size, shuffle, False, seed
    if y is not None:
        raise TypeError("fit: pass a DataLoader alone (its dataset holds the targets), not a DataLoader and y")
    (X, y), batch_size, shuffle, drop_last, gen = _loader_pair(X)
    if seed is None and gen is not None:
        seed = int(gen.integers(2**63 - 1))
    return X, y, batch_size, shuffle, drop_last, seed


def _check_fit_options(epochs, start_epoch, batch_size, callbacks, scheduler_step):
    """fit's first phase: the options that need no data. Returns (epochs, start_epoch, batch_size, callbacks)."""
    epochs = _check_int("epochs", epochs)
    start_epoch = _check_int("start_epoch", start_epoch)
    if start_epoch > epochs:
        raise ValueError(f"start_epoch ({start_epoch}) is past epochs ({epochs}); epochs is the index "
                         f"training ends at, so resuming after {start_epoch} epochs for 5 more needs "
                         f"epochs={start_epoch + 5}")
    if scheduler_step not in ("epoch", "batch"):
        raise ValueError(f"scheduler_step must be 'epoch' or 'batch', got {scheduler_step!r}")
    batch_size = _check_batch_size(batch_size)
    if isinstance(callbacks, Callback):
        callbacks = (callbacks,)
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be gpunn.train.Callback instances, got {type(cb).__name__}")
    return epochs, start_epoch, batch_size, callbacks


def _check_seed(seed) -> int:
    """The run's shuffling seed: `seed`, or one drawn from gpunn's generator when it is None."""
    if seed is None:
        return int(_random.generator().integers(2**63 - 1))
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    return int(seed)


class _Epoch:
    """One epoch's place (index, "epoch e/E" for messages, the History so far) and running sums:
    the loss (on a GPU, one device slot per step, read back rarely), correct predictions, and the
    learning rate of each step (scheduler_step="batch" only)."""

    def __init__(self, run, index, history):
        self.index, self.history = index, history
        self.where = f"epoch {index + 1}/{run.epochs}"
        self.loss_sum = 0.0
        self.correct = 0
        self.counted = 0
        self.lrs = [] if run.scheduler_step == "batch" else None
        self.step_losses = run.xp.empty(run.n_steps, dtype=run.dtype) if run.on_gpu else None


class _FitRun:
    """What stays fixed during one `fit` call (data on the model's device, the batch plan) and
    the phases of an epoch."""

    def __init__(self, model, loss_fn, optimizer, X, y, validation, device, batch_size, shuffle, drop_last, seed,
                 scheduler, scheduler_step, epochs, progress):
        dev, dtype = _model_device_dtype(model)
        if device is not None:
            want = resolve_device(device)
            if want != dev:
                raise ValueError(f"fit(device={str(want)!r}) but the model's parameters are on {dev}; move the "
                                 f"model with model.to({str(want)!r}) before creating its optimizer")
        self.X, self.y = _prepare(X, y, dev, dtype, loss_fn, "fit")
        self.validation = None
        if validation is not None:
            if not isinstance(validation, (tuple, list)) or len(validation) != 2:
                raise TypeError("validation must be a pair (X_val, y_val)")
            self.validation = _prepare(validation[0], validation[1], dev, dtype, loss_fn, "validation")
        n = self.n = len(self.X)
        if n == 0:
            raise ValueError("fit: X holds no samples")
        self.seed = _check_seed(seed)
        self.ranks = ranks_for(model)  # None unless an initialized process group has several ranks
        if self.ranks is not None:
            self.seed = self.ranks.shared_seed(self.seed)
            progress = progress and self.ranks.rank == 0
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.step_fn = None  # fit(compile=True): the whole step as one gn.compile'd call
        self.scheduler, self.scheduler_step = scheduler, scheduler_step
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.epochs, self.progress = epochs, progress
        self.dtype, self.on_gpu, self.xp = dtype, dev.is_gpu, dev.xp
        self.bad_x, self.bad_y = _bad_rows(self.X), _bad_rows(self.y)
        self.correct_fn = _accuracy_counter(loss_fn, self.y)
        self.n_steps = num_batches(n, batch_size, drop_last)
        if self.n_steps == 0:
            raise ValueError(f"fit: drop_last with batch_size {batch_size} leaves no batch of the {n} samples")
        self.n_used = self.n_steps * batch_size if drop_last else n  # the samples an epoch sees
        if self.on_gpu:  # each step's weight in the epoch mean (the batch size, or 1 for reduction="sum")
            self.step_weights = np.array([_weight(loss_fn, min(batch_size, n - i * batch_size))
                                          for i in range(self.n_steps)], dtype=np.float64)

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, epoch, history, batch_cbs) -> dict:
        """One pass over the batches, then the epoch's logs (with validation)."""
        ep = _Epoch(self, epoch, history)
        bad_step, bad_what, bad_rows = _first_bad_step(self.bad_x, self.bad_y, self.n, self.batch_size,
                                                       self.shuffle, self.seed, epoch)
        lr_epoch = _lr(self.optimizer)
        bar = _progress_bar(self.n_steps, ep.where, self.progress)
        next_show = 0.0
        try:
            for step, (xb, yb) in enumerate(self.epoch_batches(epoch)):
                if step == bad_step:
                    raise _diverged_input(ep.where, epoch, step, self.n_steps, _lr(self.optimizer), bad_what,
                                          bad_rows, history)
                if ep.lrs is not None:
                    ep.lrs.append(_lr(self.optimizer))
                loss = self.train_step(xb, yb, ep, step)
                if self.scheduler is not None and self.scheduler_step == "batch":
                    self.scheduler.step()
                for cb in batch_cbs:
                    cb.on_batch_end(step, {"loss": loss, "lr": _lr(self.optimizer) if ep.lrs is None
                                           else ep.lrs[-1]})
                bar.update(1)
                if not bar.disable and time.monotonic() >= next_show:
                    running = self.running_loss(ep, step)
                    bar.set_postfix(loss=f"{running:.4f}", lr=_fmt_lr(_lr(self.optimizer), ".3g"), refresh=False)
                    next_show = time.monotonic() + 0.5
            logs = self.epoch_logs(ep)
            if self.validation is not None:
                logs.update({"val_" + k: v for k, v in self.validate().items()})
            logs["lr"] = lr_epoch if ep.lrs is None else ep.lrs[-1]
            bar.set_postfix(_fmt_logs(logs), refresh=False)
        finally:
            bar.close()
        return logs

    def epoch_batches(self, epoch):
        """This epoch's (xb, yb) batches, in the order fixed by (seed, epoch)."""
        return batches(self.X, self.y, self.batch_size, shuffle=self.shuffle, seed=[self.seed, epoch],
                       drop_last=self.drop_last)

    def train_step(self, xb, yb, ep, step):
        """zero_grad, forward, loss (summed in `ep`; checked on the CPU), backward, optimizer step,
        correct predictions counted. Returns the loss Tensor."""
        optimizer, step_fn = self.optimizer, self.step_fn
        if step_fn is None:
            optimizer.zero_grad()
        if self.ranks is not None:
            out, yb, loss, lv = _rank_step(self.ranks, self.loss_fn, xb, yb, ep.step_losses, step)
            if not self.on_gpu:
                if not math.isfinite(lv):
                    raise _diverged_loss(ep.where, ep.index, step, self.n_steps, _lr(optimizer), lv, ep.history)
                ep.loss_sum += lv
        else:
            if step_fn is None:
                out = self.model(Tensor(xb))
                loss = self.loss_fn(out, Tensor(yb))
            else:  # zero_grad, forward, backward and step: one replay
                out, loss = step_fn(Tensor(xb), Tensor(yb))
            if self.on_gpu:
                ep.step_losses[step] = loss.data  # no sync: read back at refreshes and at the epoch end
            else:
                lv = float(loss.data)
                if not math.isfinite(lv):
                    raise _diverged_loss(ep.where, ep.index, step, self.n_steps, _lr(optimizer), lv, ep.history)
                ep.loss_sum += lv * _weight(self.loss_fn, len(xb))
            if step_fn is None:
                loss.backward()
        if step_fn is None:
            optimizer.step()
        if self.correct_fn is not None and out is not None:
            c = self.correct_fn(out.data, yb)
            if c is not None:
                ep.correct = ep.correct + (c if self.on_gpu else int(c))
                ep.counted += yb.size
        return loss

    def running_loss(self, ep, step) -> float:
        """The mean loss so far this epoch, for the progress bar (a GPU read-back, checked)."""
        if self.on_gpu and self.ranks is not None:  # rank 0 alone must not decide divergence
            # rank 0's weighted share, scaled to the job (display only)
            seen = float(ep.step_losses[: step + 1].get().sum()) * self.ranks.size
            return seen / min(self.n, (step + 1) * self.batch_size)
        if self.on_gpu:
            seen = ep.step_losses[: step + 1].get()
            _check_gpu_losses(seen, ep.where, ep.index, self.n_steps, self.optimizer, ep.lrs, ep.history)
            return float(seen.mean())
        return ep.loss_sum / max(1, min(self.n, (step + 1) * self.batch_size))

    def epoch_logs(self, ep) -> dict:
        """The epoch's mean loss per sample and accuracy (on a GPU, the one read-back of the epoch)."""
        loss_sum, correct = ep.loss_sum, ep.correct
        if self.on_gpu:
            host = ep.step_losses.get()
            if self.ranks is not None:  # already weighted: sum the ranks' shares of every step
                host = self.ranks.sum(host, "the step losses")
            _check_gpu_losses(host, ep.where, ep.index, self.n_steps, self.optimizer, ep.lrs, ep.history)
            weights = 1.0 if self.ranks is not None else self.step_weights
            loss_sum = float((host.astype(np.float64) * weights).sum())
            correct = int(correct)
        counted = ep.counted
        if self.ranks is not None and self.correct_fn is not None:
            correct, counted = (int(v) for v in self.ranks.sum([correct, counted], "the correct predictions"))
        logs = {"loss": loss_sum / self.n_used}
        if self.correct_fn is not None and counted:
            logs["accuracy"] = correct / counted
        return logs

    def validate(self) -> dict:
        """Loss (and accuracy) on the validation data, in eval mode under no_grad."""
        Xv, yv = self.validation
        if self.ranks is None:
            return _evaluate(self.model, self.loss_fn, Xv, yv, max(self.batch_size, 256), self.correct_fn)
        return self.ranks.evaluate(_evaluate, self.model, self.loss_fn, Xv, yv, max(self.batch_size, 256),
                                   self.correct_fn)

    def step_scheduler(self, logs) -> None:
        """The epoch-end scheduler step (ReduceLROnPlateau gets val_loss, else loss)."""
        if self.scheduler is None or self.scheduler_step != "epoch":
            return
        if _is_plateau(self.scheduler):
            self.scheduler.step(logs.get("val_loss", logs["loss"]))
        else:
            self.scheduler.step()


def _compiled_step(model, loss_fn, optimizer):
    """fit's training step as one gn.compile'd function returning (output, loss)."""
    from gpunn.compiler import compile as compile_step

    def train_step(x, y):
        optimizer.zero_grad()
        out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
        optimizer.step()
        return out, loss

    return compile_step(train_step)


def _rank_step(ranks, loss_fn, xb, yb, step_losses, step):
    """One step's forward and backward of this rank's share of the global batch (xb, yb) (see
    gpunn.train_parallel). Returns (output, target share, loss, lv): on the CPU lv is the step's
    loss summed over ranks (weighted as the epoch sum weighs it); on a GPU it is None and this
    rank's weighted loss goes into step_losses, summed over ranks at the epoch end."""
    on_gpu = step_losses is not None
    weight = lambda rows: _weight(loss_fn, rows)  # noqa: E731
    out, yb, loss, pending = ranks.train_step(loss_fn, xb, yb, weight, sync_loss=not on_gpu)
    if on_gpu:
        step_losses[step] = loss.data * weight(len(yb)) if len(yb) else 0
        return out, yb, loss, None
    return out, yb, loss, ranks.step_loss(pending)


def _first_bad_step(bad_x, bad_y, n, batch_size, shuffle, seed, epoch):
    """(step, what, rows) of the first batch of this epoch holding a non-finite input row."""
    if bad_x is None and bad_y is None:
        return -1, None, None
    perm = permutation(n, [seed, epoch]) if shuffle and n > 1 else np.arange(n)
    pos = np.empty(n, dtype=np.int64)
    pos[perm] = np.arange(n)  # pos[row] = where the row lands in this epoch's order
    best = None
    for what, rows in (("input", bad_x), ("target", bad_y)):
        if rows is None:
            continue
        step = int(pos[rows].min()) // batch_size
        if best is None or step < best[0]:
            best = (step, what, None)
    step, what, _ = best
    rows = bad_x if what == "input" else bad_y
    in_batch = np.sort(rows[pos[rows] // batch_size == step])
    return step, what, in_batch


def _diverged_input(where, epoch, step, n_steps, lr, what, rows, history):
    name = "X" if what == "input" else "y"
    shown = ", ".join(str(int(r)) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
    return TrainingDiverged(
        f"training stopped at {where}, step {step + 1}/{n_steps} (lr={_fmt_lr(lr)}): the {what} batch is not finite "
        f"(NaN or Inf in {name} rows {shown}); clean the data, e.g. keep np.isfinite({name}).all(axis=1) rows",
        epoch=epoch, step=step, lr=lr, what=what, history=history)


def _diverged_loss(where, epoch, step, n_steps, lr, value, history):
    return TrainingDiverged(
        f"training diverged at {where}, step {step + 1}/{n_steps} (lr={_fmt_lr(lr)}): the loss became {value} while "
        "the input batch is finite; lower the learning rate, or check the data scale and the model",
        epoch=epoch, step=step, lr=lr, what="loss", history=history)


def _check_gpu_losses(host_losses, where, epoch, n_steps, optimizer, lrs, history):
    flush_checks()  # a bad label explains a NaN loss better than "diverged" does
    finite = np.isfinite(host_losses)
    if finite.all():
        return
    step = int(np.argmin(finite))
    lr = lrs[step] if lrs else _lr(optimizer)
    raise _diverged_loss(where, epoch, step, n_steps, lr, float(host_losses[step]), history)


# ----------------------------------------------------------------------------- evaluate / predict

def _evaluate(model, loss_fn, X, y, batch_size, correct_fn):
    was_training = getattr(model, "training", True)
    model.eval()
    n = len(X)
    total = 0.0
    correct = 0
    counted = 0
    try:
        with no_grad():
            for xb, yb in batches(X, y, batch_size, shuffle=False):
                out = model(Tensor(xb))
                loss = loss_fn(out, Tensor(yb))
                w = _weight(loss_fn, len(xb))
                if isinstance(loss.data, np.ndarray):
                    total += float(loss.data) * w
                else:  # stays on the GPU: one read-back at the end
                    total = total + loss.data.astype("float64") * w
                if correct_fn is not None:
                    c = correct_fn(out.data, yb)
                    if c is not None:
                        correct = correct + c
                        counted += yb.size
    finally:
        model.train(was_training)
    flush_checks()
    out = {"loss": float(total) / n if n else float("nan")}
    if correct_fn is not None and counted:
        out["accuracy"] = int(correct) / counted
    return out


def evaluate(model, loss_fn, X, y, batch_size: int = 256) -> dict:
    """{"loss": mean loss per sample, "accuracy": ... (classification only)} over (X, y), in eval
    mode under no_grad (the model's train/eval mode is restored afterwards)."""
    dev, dtype = _model_device_dtype(model)
    X, y = _prepare(X, y, dev, dtype, loss_fn, "evaluate")
    return _evaluate(model, loss_fn, X, y, batch_size, _accuracy_counter(loss_fn, y))


def predict(model, X, batch_size: int = 256):
    """The model's outputs for X, batch by batch, in eval mode under no_grad. Returns a NumPy array
    when X is NumPy and a CuPy array when X is CuPy (wherever the model runs)."""
    dev, dtype = _model_device_dtype(model)
    X = as_array(X, "X")
    x_dev = device_of(X)
    X, _ = _prepare(X, None, dev, dtype, None, "predict", need_y=False)
    was_training = getattr(model, "training", True)
    model.eval()
    parts = []
    try:
        with no_grad():
            for xb, _ in batches(X, None, batch_size, shuffle=False):
                parts.append(model(Tensor(xb)).data)
    finally:
        model.train(was_training)
    xp = dev.xp
    if parts:
        result = xp.concatenate(parts)
    else:
        result = xp.empty((0,), dtype=dtype)
    return _to_device(result, x_dev)
