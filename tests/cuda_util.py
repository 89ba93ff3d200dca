"""Shared helpers for the tests of gpunn's Numba CUDA kernels (tests/test_cuda_*.py).

The kernel tests run on a `Target`:
  "gpu"        CuPy arrays on a real device, when gpunn's GPU kernels can run here;
  "simulator"  NumPy arrays through Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, which
               tests/conftest.py sets when no GPU is present) -- tiny shapes only: one Python
               thread per CUDA thread.
Tests that need CuPy itself (cuBLAS, streams, end-to-end training) use `requires_gpu` instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from gpunn.backend import numba_cuda as nc


@dataclass(frozen=True)
class Target:
    name: str
    xp: object

    @property
    def is_gpu(self) -> bool:
        return self.name == "gpu"

    def asarray(self, a):
        if self.xp is np or a is None or not isinstance(a, (np.ndarray, np.generic)):
            return a
        return self.xp.asarray(a)

    def get(self, a):
        if a is None:
            return None
        if isinstance(a, (np.ndarray, np.generic)):
            return np.asarray(a)
        if hasattr(a, "data") and not hasattr(a, "get"):  # a Tensor
            a = a.data
        return a.get() if hasattr(a, "get") else np.asarray(a)

    def __str__(self) -> str:
        return self.name


def current_target() -> Target | None:
    usable, _ = nc.kernel_status()
    if usable:
        import cupy

        return Target("gpu", cupy)
    if nc.is_simulator():
        return Target("simulator", np)
    return None


def skip_reason() -> str:
    usable, why = nc.kernel_status()
    return (f"no GPU kernels here ({why}) and the CUDA simulator is off "
            "(tests/conftest.py turns it on when no GPU is present)")


@pytest.fixture
def target():
    t = current_target()
    if t is None:
        pytest.skip(skip_reason())
    return t


def gpu_usable() -> tuple[bool, str]:
    return nc.kernel_status()


requires_gpu = pytest.mark.skipif(not nc.kernel_status()[0],
                                  reason=f"needs CuPy and a CUDA GPU: {nc.kernel_status()[1]}")
requires_simulator = pytest.mark.skipif(not nc.is_simulator(),
                                        reason="needs Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1)")


def route_numpy_to_cuda_ops(monkeypatch):
    """Make ops_for(NumPy array) return CudaOps for this test (simulator), so Tensor code, gradcheck
    and the optimizers run through the CUDA kernels; monkeypatch undoes it."""
    from gpunn.kernels import ops as ops_mod
    from gpunn.kernels.cuda_ops import CudaOps

    monkeypatch.setattr(ops_mod, "_cpu_ops", CudaOps())
    monkeypatch.setattr(ops_mod, "_choice", "fused")


def tol(dtype, length: int = 1):
    """Tolerances against a float64 reference: float32 ones grow with sqrt(reduction length)."""
    if np.dtype(dtype) == np.float32:
        return dict(rtol=2e-5, atol=2e-5 * max(1.0, math.sqrt(length / 4)))
    return dict(rtol=1e-11, atol=1e-12 * max(1.0, math.sqrt(length / 4)))
