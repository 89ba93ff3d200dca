"""The GPU backend's plumbing that runs anywhere: lazy imports, Numba settings, NVVM discovery, the
probe-kernel decision and its fallback, launch-argument checks, the launch stream CuPy's arrays are
exported on (stand-ins), `gpunn info --gpu`."""
from __future__ import annotations

import importlib
import io
import os
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest

from cuda_util import requires_simulator, target  # noqa: F401  (fixture)
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


def test_numba_cuda_settings_are_set_unless_the_user_chose():
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


# ------------------------------------------------------------------------------ NVVM discovery

def _toolkit(root, nvvm=True, libdevice=True):
    """A fake CUDA toolkit layout under `root` (empty files where the real ones would be)."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "nvcc").write_text("")
    if nvvm:
        (root / "nvvm" / "lib64").mkdir(parents=True)
        (root / "nvvm" / "lib64" / "libnvvm.so.4").write_text("")
    if libdevice:
        (root / "nvvm" / "libdevice").mkdir(parents=True)
        (root / "nvvm" / "libdevice" / "libdevice.10.bc").write_text("")
    return root


def _not_found():
    raise OSError("libnvvm.so: cannot open shared object file")


def test_find_nvvm_leaves_alone_what_cuda_pathfinder_finds(tmp_path):
    root, said = nc.find_nvvm(environ={}, which=lambda _: None, default_root=str(tmp_path),
                              load=lambda: "/site/nvidia/cu13/lib/libnvvm.so.4 (found via site-packages)")
    assert root is None and "site-packages" in said


def test_find_nvvm_takes_the_toolkit_of_the_nvcc_on_path(tmp_path):
    tk = _toolkit(tmp_path / "cuda-13.0")
    root, said = nc.find_nvvm(environ={}, which=lambda _: str(tk / "bin" / "nvcc"),
                              default_root=str(tmp_path / "none"), load=_not_found)
    assert root == str(tk) and "set by gpunn" in said and "nvcc at" in said


def test_find_nvvm_falls_back_to_usr_local_cuda(tmp_path):
    tk = _toolkit(tmp_path / "cuda")
    root, said = nc.find_nvvm(environ={}, which=lambda _: None, default_root=str(tk), load=_not_found)
    assert root == str(tk) and "no nvcc on PATH" not in said


def test_find_nvvm_says_exactly_what_is_missing(tmp_path):
    tk = _toolkit(tmp_path / "cuda", nvvm=False)  # nvcc and libdevice, but no libnvvm (only some wheels)
    root, said = nc.find_nvvm(environ={}, which=lambda _: str(tk / "bin" / "nvcc"), default_root=str(tk),
                              load=_not_found)
    assert root is None
    assert said.startswith("NVVM not found") and str(tk / "nvvm" / "lib64" / "libnvvm.so*") in said
    assert "libdevice" not in said.split("--")[0] and "cannot open shared object" in said
    home = _toolkit(tmp_path / "home", libdevice=False)
    root, said = nc.find_nvvm(environ={"CUDA_HOME": str(home)}, which=lambda _: None, default_root=str(tk),
                              load=_not_found)
    assert root is None and f"CUDA_HOME={home} lacks" in said and "libdevice.10.bc" in said


# ------------------------------------------------------------------------------ probe and fallback

@pytest.fixture
def injected_gpu(monkeypatch):
    """kernel_status on a pretend GPU whose probe kernel fails (the failure injected), fresh caches."""
    device_mod = importlib.import_module("gpunn.backend.device")

    monkeypatch.setattr(device_mod, "gpu_status", lambda: (True, "pretend CUDA device 0"))
    monkeypatch.setattr(nc, "is_simulator", lambda: False)
    monkeypatch.setattr(nc, "numba_cuda", lambda: None)
    monkeypatch.setattr(nc, "probe", lambda streams=("current",): {"compile_s": 0.1,
                                                                    "current": "launch: CudaAPIError: injected"})
    monkeypatch.setattr(nc, "NVVM_STATUS", "NVVM /x/libnvvm.so (found via test)")
    monkeypatch.setattr(nc, "_fallback_said", False)
    monkeypatch.setattr(ops_mod, "_gpu_ops", None)
    nc.kernel_status.cache_clear()
    yield
    nc.kernel_status.cache_clear()


def test_a_failing_probe_kernel_means_the_reference_ops_said_once(injected_gpu):
    from gpunn.kernels import cuda_ops

    usable, why = nc.kernel_status()
    assert not usable and "probe kernel failed: launch: CudaAPIError: injected" in why and "found via test" in why
    with pytest.warns(RuntimeWarning, match="reference kernels .still on the GPU.: the probe kernel failed"):
        assert type(cuda_ops.gpu_ops()) is Ops
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: not again
        assert type(cuda_ops.gpu_ops()) is Ops
        assert nc.fallback_warning() is False


def test_device_gpu_says_why_the_kernels_fall_back(injected_gpu, monkeypatch):
    device_mod = importlib.import_module("gpunn.backend.device")

    monkeypatch.setitem(sys.modules, "cupy", type(sys)("cupy"))
    sys.modules["cupy"].cuda = type("cuda", (), {"runtime": type("rt", (), {"getDeviceCount": staticmethod(lambda: 1)})})
    with pytest.warns(RuntimeWarning, match="probe kernel failed"):
        assert device_mod.device("gpu") == device_mod.Device("gpu", 0)


def test_info_gpu_never_ends_in_a_traceback(monkeypatch):
    from gpunn import cli
    from gpunn.kernels import cuda_ops

    def broken_warmup(*a, **k):
        raise RuntimeError("injected: NVVM crashed while compiling")

    monkeypatch.setattr(nc, "kernel_status", lambda: (True, "pretend"))
    monkeypatch.setattr(cuda_ops, "warmup", broken_warmup)
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["info", "--gpu"]) == 0
    assert "gpu report stopped: RuntimeError: injected: NVVM crashed" in buf.getvalue()


# ------------------------------------------------------------------------------ launch checks

def _copy_kernel(x, out):
    i = cuda.grid(1)  # noqa: F821  (bound by nc.bind_numba_cuda(globals()) in the test)
    if i < x.shape[0]:
        out[i, 0] = x[i]


def test_launch_refuses_arrays_that_do_not_match_the_signature(target):
    """On the simulator (NumPy arrays) and on a GPU (CuPy arrays): a float64 array for a float32
    argument, a transposed view for a C-contiguous one, a scalar for an array, a missing argument."""
    nc.bind_numba_cuda(globals())
    xp = target.xp
    k = nc.kernel(("test_copy_kernel",), lambda: nc.jit(nc.void(nc.arr(np.float32, 1), nc.arr(np.float32, 2)),
                                                       _copy_kernel))
    x, out = xp.arange(4, dtype=np.float32), xp.zeros((4, 2), np.float32)
    nc.launch(k, 1, 4, x, x, out)
    np.testing.assert_array_equal(target.get(out)[:, 0], np.arange(4))
    kind = "cupy" if target.is_gpu else "numpy"
    with pytest.raises(nc.LaunchArgumentError, match=r"kernel _copy_kernel: argument 0 must be a 1-d float32 "
                                                     rf"C-contiguous array .*got a 1-d float64 {kind} array"):
        nc.launch(k, 1, 4, x, x.astype(np.float64), out)
    with pytest.raises(nc.LaunchArgumentError, match=r"argument 1 .* 2-d float32 .*not C-contiguous"):
        nc.launch(k, 1, 4, x, x, xp.zeros((2, 4), np.float32).T)
    with pytest.raises(nc.LaunchArgumentError, match=r"argument 1 .*got a float 1.0"):
        nc.launch(k, 1, 4, x, x, 1.0)
    with pytest.raises(nc.LaunchArgumentError, match="1 arguments given, its signature takes 2"):
        nc.launch(k, 1, 4, x, x)


# ------------------------------------------------------------------------------ streams

class _FakeStream:
    def __init__(self, ptr):
        self.ptr = ptr


def _fake_cupy(monkeypatch, current_ptr, default_ptr):
    """Stand-ins for CuPy's current stream and its default-stream rule, and for Numba's
    external_stream (recording the handles it is given)."""
    cupy = type(sys)("cupy")
    cupy.cuda = type("cuda", (), {"get_current_stream": staticmethod(lambda: _FakeStream(current_ptr))})
    backends = type(sys)("cupy_backends.cuda.stream")
    backends.get_default_stream_ptr = lambda: default_ptr
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy_backends", type(sys)("cupy_backends"))
    monkeypatch.setitem(sys.modules, "cupy_backends.cuda", type(sys)("cupy_backends.cuda"))
    monkeypatch.setitem(sys.modules, "cupy_backends.cuda.stream", backends)
    sys.modules["cupy_backends.cuda"].stream = backends
    handles = []
    monkeypatch.setattr(nc, "numba_cuda", lambda: type("cuda", (), {
        "external_stream": staticmethod(lambda ptr: handles.append(ptr) or ("stream", ptr))}))
    monkeypatch.setattr(nc, "_streams", {})
    like = type("ndarray", (), {"__module__": "cupy._core.core", "device": None})()
    return like, handles


@pytest.mark.parametrize("current, default, want", [(0, 1, 1), (0, 2, 2), (0, 0, 1), (0x7f00beef, 1, 0x7f00beef)],
                         ids=["null->legacy", "null->per-thread", "no-rule->legacy", "own-stream"])
def test_launch_stream_names_cupys_null_stream_explicitly(monkeypatch, current, default, want):
    like, handles = _fake_cupy(monkeypatch, current, default)
    assert nc.stream_for(like) == ("stream", want)
    assert nc.stream_for(like) == ("stream", want) and handles == [want]  # one Numba stream per (device, handle)


def test_the_launch_stream_reaches_cupys_dlpack_export_unchanged():
    """Through the installed numba-cuda and cuda-core (no GPU): the consumer stream a kernel
    argument's __dlpack__ receives is the handle gpunn launches on -- never 0, never None -- so a
    CuPy array exported on its current stream needs no event and raises no warning."""
    out = _python("""
        import numpy as np
        from cuda.bindings import driver as binding
        from numba.cuda.cudadrv import driver
        from numba.cuda.cudadrv.devicearray import _to_strided_memory_view
        received = []

        class CupyStandIn:
            dtype = np.dtype("float32")
            def __dlpack_device__(self):
                return (2, 0)  # kDLCUDA, device 0
            def __dlpack__(self, stream=None, max_version=None, **kw):
                received.append(stream)
                raise BufferError("stand-in: nothing to export")

        for handle in (1, 2, 0x7f00beef):  # legacy, per-thread, a stream of CuPy's own
            stream = driver._to_core_stream(driver.Stream(binding.CUstream(handle), external=True))
            try:
                _to_strided_memory_view(CupyStandIn(), stream=stream)
            except BufferError:
                pass
        print(received)
    """, NUMBA_ENABLE_CUDASIM="0")
    assert out.strip() == str([1, 2, 0x7f00beef])
