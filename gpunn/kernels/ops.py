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

from gpunn.kernels import dense, dropout, losses, normalization, optimizers, softmax_ce
from gpunn.kernels.activations import (activation_backward_cpu, activation_backward_ref, activation_forward_cpu,
                                       activation_forward_ref)


class Ops:
    """Reference kernels (NumPy or CuPy arrays). Every backend has exactly these methods."""

    name = "reference"

    dense_forward = staticmethod(dense.dense_forward_ref)
    dense_backward = staticmethod(dense.dense_backward_ref)
    activation_forward = staticmethod(activation_forward_ref)
    activation_backward = staticmethod(activation_backward_ref)
    softmax_cross_entropy_forward = staticmethod(softmax_ce.softmax_cross_entropy_forward_ref)
    softmax_cross_entropy_backward = staticmethod(softmax_ce.softmax_cross_entropy_backward_ref)
    loss_forward = staticmethod(losses.loss_forward_ref)
    loss_backward = staticmethod(losses.loss_backward_ref)
    normalization_forward = staticmethod(normalization.normalization_forward)
    normalization_backward = staticmethod(normalization.normalization_backward)
    dropout_forward = staticmethod(dropout.dropout_forward)
    dropout_backward = staticmethod(dropout.dropout_backward)
    sgd_update = staticmethod(optimizers.sgd_update_ref)
    adam_update = staticmethod(optimizers.adam_update_ref)
    rmsprop_update = staticmethod(optimizers.rmsprop_update_ref)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class CpuOps(Ops):
    """CPU fast path: NumPy GEMM + Numba-jitted fused epilogues and optimizer updates."""

    name = "cpu"

    dense_forward = staticmethod(dense.dense_forward_cpu)
    dense_backward = staticmethod(dense.dense_backward_cpu)
    activation_forward = staticmethod(activation_forward_cpu)
    activation_backward = staticmethod(activation_backward_cpu)
    softmax_cross_entropy_forward = staticmethod(softmax_ce.softmax_cross_entropy_forward_cpu)
    softmax_cross_entropy_backward = staticmethod(softmax_ce.softmax_cross_entropy_backward_cpu)
    loss_forward = staticmethod(losses.loss_forward_cpu)
    loss_backward = staticmethod(losses.loss_backward_cpu)
    sgd_update = staticmethod(optimizers.sgd_update_cpu)
    adam_update = staticmethod(optimizers.adam_update_cpu)
    rmsprop_update = staticmethod(optimizers.rmsprop_update_cpu)


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
