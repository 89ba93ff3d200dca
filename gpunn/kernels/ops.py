"""Kernel dispatch: one `Ops` interface, one implementation per backend (after Thinc's Ops).

- `Ops` is the reference: plain array expressions that run on NumPy and on CuPy (the unfused
  path); activations, elementwise losses and optimizer updates run the kernels made from the
  registry's one definition (on the host for CuPy arrays, a path taken only when the GPU kernels cannot run).
- `CpuOps` overrides the hot paths with NumPy GEMMs + fused Numba epilogues.
- The GPU backend adds its own subclass; nothing above this module changes.

Autodiff functions call `ops_for(array)` and never test for a device themselves.
`GPUNN_KERNELS=reference` (or `use_kernels("reference")`) forces the reference on the CPU,
which is how the unfused path is profiled and compared.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np

from gpunn.kernels import dense, dropout, losses, normalization, optimizers, registry, softmax_ce
from gpunn.kernels.activations import (activation_backward_cpu, activation_backward_ref, activation_forward_cpu,
                                       activation_forward_ref)


def optimizer_updates(cls):
    """Class decorator: `cls.<name>_update` for every optimizer update registered with gpunn (the
    registry's built-in members), made by `cls._optimizer_update(name)`. Members registered later
    are reached through `Ops.__getattr__` and vanish when unregistered."""
    for m in registry.OPTIMIZERS.values():
        if registry.is_builtin(m):
            setattr(cls, f"{m.name}_update", staticmethod(cls._optimizer_update(m.name)))
    return cls


# Every kernel of the Ops interface: (the reference, the CPU fast path). Optimizer updates are
# added per registry member (optimizer_updates).
KERNELS = {
    "dense_forward": (dense.dense_forward_ref, dense.dense_forward_cpu),
    "dense_backward": (dense.dense_backward_ref, dense.dense_backward_cpu),
    "activation_forward": (activation_forward_ref, activation_forward_cpu),
    "activation_backward": (activation_backward_ref, activation_backward_cpu),
    "softmax_cross_entropy_forward": (softmax_ce.softmax_cross_entropy_forward_ref,
                                      softmax_ce.softmax_cross_entropy_forward_cpu),
    "softmax_cross_entropy_backward": (softmax_ce.softmax_cross_entropy_backward_ref,
                                       softmax_ce.softmax_cross_entropy_backward_cpu),
    # NLL is a gather and a sum: array expressions on every backend
    "nll_loss_forward": (softmax_ce.nll_loss_forward, softmax_ce.nll_loss_forward),
    "nll_loss_backward": (softmax_ce.nll_loss_backward, softmax_ce.nll_loss_backward),
    "loss_forward": (losses.loss_forward_ref, losses.loss_forward_cpu),
    "loss_backward": (losses.loss_backward_ref, losses.loss_backward_cpu),
    # array expressions that serve every backend (NumPy and CuPy alike)
    "normalization_forward": (normalization.normalization_forward,) * 2,
    "normalization_backward": (normalization.normalization_backward,) * 2,
    "dropout_forward": (dropout.dropout_forward,) * 2,
    "dropout_backward": (dropout.dropout_backward,) * 2,
}


def kernels(which: int):
    """Class decorator: the KERNELS column `which` (0 reference, 1 CPU) as static methods."""
    def decorate(cls):
        for name, pair in KERNELS.items():
            setattr(cls, name, staticmethod(pair[which]))
        return cls

    return decorate


@optimizer_updates
@kernels(0)
class Ops:
    """Reference kernels (NumPy or CuPy arrays). Every backend has exactly these methods: KERNELS'
    names and `<name>_update` per registered optimizer update."""

    name = "reference"
    # `<name>_update` for every registered optimizer update, made by this (see optimizer_updates)
    _optimizer_update = staticmethod(optimizers.update_reference)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def __getattr__(self, attr):
        """`<name>_update` of an optimizer update registered after gpunn was imported (those
        registered with gpunn are class attributes: `optimizer_updates`)."""
        if attr.endswith("_update") and attr[:-7] in registry.OPTIMIZERS:
            return type(self)._optimizer_update(attr[:-7])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")


@optimizer_updates
@kernels(1)
class CpuOps(Ops):
    """CPU fast path: NumPy GEMM + Numba-jitted fused epilogues and optimizer updates."""

    name = "cpu"
    _optimizer_update = staticmethod(optimizers.update_cpu)


KERNEL_CHOICES = ("fused", "reference")
_reference_ops = Ops()
_cpu_ops = CpuOps()
_gpu_ops = None
_choice = os.environ.get("GPUNN_KERNELS", "fused").strip().lower() or "fused"
if _choice not in KERNEL_CHOICES:
    raise ValueError(f"GPUNN_KERNELS={_choice!r} is not valid; choose one of {KERNEL_CHOICES}")


def _gpu():
    """CudaOps (Numba CUDA kernels on CuPy arrays) when they can run, else the reference on CuPy.
    Decided on the first GPU call (gpunn/kernels/cuda_ops.py); nothing GPU-related is imported before."""
    global _gpu_ops
    if _gpu_ops is None:
        from gpunn.kernels.cuda_ops import gpu_ops

        _gpu_ops = gpu_ops()
    return _gpu_ops


# The profiler's hook (set only by gpunn.profiler while a profile is active, None otherwise): a
# callable (ops, array) -> a recording proxy of `ops`. The same object receives the autodiff
# engine's and the optimizer's phase and layer marks (see gpunn/profiler/recorder.py). With no
# profiler active, the whole cost is the one `is None` test below (and one like it per graph node).
_recorder = None


def ops_for(array) -> Ops:
    """The kernel implementation for the device an array lives on."""
    if type(array) is np.ndarray or isinstance(array, (np.ndarray, np.generic)):
        ops = _cpu_ops if _choice == "fused" else _reference_ops
    else:
        ops = _gpu() if _choice == "fused" else _reference_ops
    if _recorder is None:
        return ops
    return _recorder(ops, array)


@contextlib.contextmanager
def use_kernels(choice: str):
    """Temporarily choose "fused" (the default) or "reference" kernels, e.g. to compare them."""
    global _choice
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {KERNEL_CHOICES}, got {choice!r}")
    old, _choice = _choice, choice
    try:
        yield
    finally:
        _choice = old
