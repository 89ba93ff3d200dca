"""The GPU backend's plumbing that runs anywhere: lazy imports, Numba's CUDA Array Interface
setting, streams, the CudaOps choice and its fallbacks, `gpunn info --gpu`."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest

from cuda_util import requires_simulator
from gpunn.backend import numba_cuda as nc
from gpunn.kernels import Ops, ops as ops_mod
from gpunn.kernels.cuda_ops import CudaOps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code, **env):
    full = dict(os.environ, PYTHONPATH=ROOT, **env)
    for k, v in env.items():
        if v is None:
            full.pop(k)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_importing_gpunn_and_training_on_the_cpu_touch_no_gpu_module():
    out = _python("""
        import sys, importlib, pkgutil
        import numpy as np
        import gpunn as gn
        import gpunn.kernels, gpunn.nn, gpunn.optim, gpunn.train, gpunn.cli
        for m in pkgutil.iter_modules(gpunn.kernels.__path__):   # every kernel module, the CUDA ones too
            importlib.import_module("gpunn.kernels." + m.name)
        import gpunn.backend.numba_cuda
        model = gn.nn.Sequential(gn.nn.Dense(3, 4), gn.nn.Linear(4, 2))
        opt = gn.optim.Adam(model.parameters())
        loss = gn.nn.CrossEntropyLoss()(model(gn.tensor(np.ones((5, 3), np.float32))), gn.tensor(np.zeros(5, int)))
        loss.backward(); opt.step()
        print(sorted(m for m in sys.modules if m == "cupy" or m.startswith("cupy.") or m.startswith("numba.cuda")))
    """)
    assert out.strip() == "[]"


def test_numba_cuda_is_configured_not_to_synchronise_per_cupy_array():
    code = """
        import os
        from gpunn.backend import numba_cuda as nc
        nc.numba_cuda()
        from numba.core import config
        print(os.environ["NUMBA_CUDA_ARRAY_INTERFACE_SYNC"], int(config.CUDA_ARRAY_INTERFACE_SYNC),
              int(config.CUDA_LOW_OCCUPANCY_WARNINGS))
    """
    assert _python(code, NUMBA_CUDA_ARRAY_INTERFACE_SYNC=None,
                   NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=None).split() == ["0", "0", "0"]
    out = _python(code, NUMBA_CUDA_ARRAY_INTERFACE_SYNC="1", NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS="1")
    assert out.split() == ["1", "1", "1"]  # the user's choice stands


def test_streams_and_status_without_cupy_arrays():
    assert nc.stream_for(np.zeros(2)) == 0
    assert isinstance(nc.kernel_status(), tuple) and isinstance(nc.kernel_status()[1], str)
    if nc.is_simulator():
        assert not nc.kernel_status()[0]
        assert nc.device_name() == "simulator" and nc.sm_count() == 1
    grid, block = nc.elementwise_geometry(1000, np.zeros(1))
    assert grid >= 1 and block >= 1


def test_tf32_is_reported_and_never_enabled(monkeypatch):
    monkeypatch.delenv("CUPY_TF32", raising=False)
    assert "off" in nc.tf32_status()
    monkeypatch.setenv("CUPY_TF32", "1")
    assert "ENABLED" in nc.tf32_status()
    import gpunn.kernels.dense_dispatch  # noqa: F401

    assert os.environ.get("CUPY_TF32") == "1"  # gpunn changes nothing; it only reports


def test_gpu_ops_falls_back_to_the_reference_with_a_reason(monkeypatch):
    from gpunn.kernels import cuda_ops

    monkeypatch.setattr(nc, "kernel_status", lambda: (False, "no device for this test"))
    with pytest.warns(RuntimeWarning, match="no device for this test"):
        ops = cuda_ops.gpu_ops()
    assert type(ops) is Ops
    monkeypatch.setattr(nc, "kernel_status", lambda: (True, "pretend"))
    assert type(cuda_ops.gpu_ops()) is CudaOps
    monkeypatch.setattr(ops_mod, "_gpu_ops", None)
    assert type(ops_mod._gpu()) is CudaOps  # what ops_for() returns for CuPy arrays


def test_cuda_ops_is_a_backend_with_the_base_interface():
    assert CudaOps.name == "cuda" and issubclass(CudaOps, Ops)
    names = sorted(n for n in dir(Ops) if not n.startswith("_"))
    assert sorted(n for n in dir(CudaOps) if not n.startswith("_")) == names


@requires_simulator
def test_cuda_ops_falls_back_to_the_reference_for_other_dtypes():
    ops = CudaOps()
    z = np.linspace(-1, 1, 5).astype(np.float16)
    np.testing.assert_array_equal(ops.activation_forward(z, 1), np.maximum(z, 0))
    x, W = np.ones((2, 3), np.float16), np.ones((4, 3), np.float16)
    y, _ = ops.dense_forward(x, W, None, 0)
    assert y.dtype == np.float16 and (y == 3).all()


@requires_simulator
def test_warmup_compiles_a_training_steps_kernels():
    from gpunn.kernels.cuda_ops import warmup

    log, wall = warmup(xp=np, dtypes=("float64",))
    keys = {k[0] for k, _ in nc.compile_log()}
    assert {"dense_forward", "dense_dx", "dense_dw", "bias_act", "softmax_ce_forward", "adam", "sgd"} <= keys
    assert wall > 0 and all(s >= 0 for _, s in log)


def test_info_gpu_says_why(monkeypatch):
    from gpunn import cli

    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["info", "--gpu"]) == 0
    text = buf.getvalue()
    assert "gpu kernels:" in text and "TF32" in text and "GPUNN_DENSE_IMPL" in text
    if not nc.kernel_status()[0]:
        assert "not usable" in text and "not measured" in text
    else:
        assert "compiled" in text and " ms " in text


@requires_simulator
def test_simulator_shared_arrays_are_allocated_once_per_block_even_when_threads_race():
    """Numba's simulator creates a block's shared array on first use without a lock; gpunn's launches
    make it thread-safe (a race there made a block now and then compute with two different arrays)."""
    nc._lock_simulator_shared_arrays()
    from numba.cuda.simulator.kernelapi import FakeCUDAShared

    for _ in range(20):
        shared = FakeCUDAShared(0)
        got = []
        start = threading.Barrier(16)

        def thread():
            start.wait()
            got.append(shared.array((4, 4), np.float32))  # every thread: the same source line

        threads = [threading.Thread(target=thread) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == 16 and all(a is got[0] for a in got)
    a = shared.array((2,), np.float64)
    b = shared.array((2,), np.float64)  # another line: another array
    assert a is not b and a.dtype == np.float64


def test_compiler_warnings_are_recorded_not_raised():
    reg = nc.KernelRegistry()

    def build():
        warnings.warn("NVVM had something to say", UserWarning)
        return "kernel"

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as the tests' strict_numerics does around first calls
        assert reg.get("k", build) == "kernel"
    assert reg.warnings == [("k", "UserWarning: NVVM had something to say")]
