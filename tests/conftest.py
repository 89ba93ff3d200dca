"""Shared test setup: gpunn importable from the checkout, the harness on sys.path, and the
`backend` fixture that runs a test once per backend present here (see harness.BACKENDS).

First of all (before anything imports numba, which reads the variable once): without a usable
GPU, NUMBA_ENABLE_CUDASIM=1, so the CUDA kernel tests (tests/test_cuda_*.py) run under Numba's
CPU simulator. A value already in the environment is left alone. The check is cheap: CuPy's
import and device count, nothing from numba. Only numba.cuda changes; the CPU kernels do not."""
from __future__ import annotations

import os
import sys


def _cuda_device_present() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device
        return False


if "NUMBA_ENABLE_CUDASIM" not in os.environ and "numba" not in sys.modules and not _cuda_device_present():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

_TESTS = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_TESTS)
for _p in (_ROOT, _TESTS):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import harness  # noqa: E402

_BACKENDS = harness.present_backends()


@pytest.fixture(params=_BACKENDS, ids=[b.name for b in _BACKENDS])
def backend(request):
    """A harness.Backend: the reference Ops and CpuOps on NumPy, and the GPU ones where CuPy runs."""
    return request.param


def pytest_generate_tests(metafunc):
    harness.generate_tests(metafunc)


def pytest_report_header(config):
    usable, why = harness.gn.gpu_status()
    return [f"gpunn backends under test: {', '.join(b.name for b in _BACKENDS)}",
            f"GPU: {'yes' if usable else 'no'} ({why})"]


@pytest.fixture
def rng():
    return np.random.default_rng(0)
