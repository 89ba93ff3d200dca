"""Device choice and seeding: gn.device() names, the two reasons a GPU is unusable (CuPy missing,
or CuPy present without a usable device), "auto" falling back with its reason, lazy imports."""
from __future__ import annotations

import os
import subprocess
import sys
import types

import numpy as np
import pytest

import gpunn as gn
from gpunn.backend import Device, DeviceError, device_of, get_array_module, gpu_status, is_array, is_cupy_array
from gpunn.backend.device import VALID_DEVICE_NAMES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def fresh_gpu_status():
    gpu_status.cache_clear()
    yield
    gpu_status.cache_clear()


@pytest.fixture
def no_cupy(monkeypatch, fresh_gpu_status):
    """CuPy is not installed (None in sys.modules makes `import cupy` raise ImportError)."""
    monkeypatch.setitem(sys.modules, "cupy", None)


@pytest.fixture
def cupy_without_device(monkeypatch, fresh_gpu_status):
    """CuPy imports, but the CUDA driver does not answer."""
    fake = types.ModuleType("cupy")
    fake.__version__ = "13.0.0-fake"

    def no_driver():
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_driver))
    monkeypatch.setitem(sys.modules, "cupy", fake)


@pytest.fixture
def cupy_with_zero_devices(monkeypatch, fresh_gpu_status):
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 0))
    monkeypatch.setitem(sys.modules, "cupy", fake)


def test_cpu_device():
    d = gn.device("cpu")
    assert d == Device("cpu") and d.type == "cpu" and not d.is_gpu and d.xp is np
    assert str(d) == "cpu" and repr(d) == "device('cpu')"
    assert gn.device(" CPU ") == d and gn.device(d) is d
    assert hash(d) == hash(Device("cpu"))
    assert d == "cpu" and d != "gpu:banana" and d != 3


def test_gpu_without_cupy_names_the_extra(no_cupy):
    usable, why = gpu_status()
    assert not usable and "CuPy is not installed" in why and "gpunn[gpu]" in why
    for name in ("gpu", "cuda", "gpu:0", "cuda:1"):
        with pytest.raises(DeviceError) as info:
            gn.device(name)
        msg = str(info.value)
        assert repr(name) in msg and "CuPy is not installed" in msg and "pip install 'gpunn[gpu]'" in msg
    assert issubclass(DeviceError, RuntimeError)


def test_gpu_with_cupy_but_no_driver_quotes_cupys_error(cupy_without_device):
    usable, why = gpu_status()
    assert not usable
    assert "CuPy is installed" in why and "cudaErrorInsufficientDriver" in why and "RuntimeError" in why
    with pytest.raises(DeviceError, match="driver did not answer.*insufficient"):
        gn.device("gpu")


def test_gpu_with_zero_devices(cupy_with_zero_devices):
    usable, why = gpu_status()
    assert not usable and "no CUDA device is visible" in why
    with pytest.raises(DeviceError, match="no CUDA device"):
        gn.device("cuda")


@pytest.mark.parametrize("fixture", ["no_cupy", "cupy_without_device"])
def test_auto_falls_back_to_cpu_and_says_why(fixture, request):
    request.getfixturevalue(fixture)
    d = gn.device("auto")
    assert d == gn.device("cpu")
    assert d.reason.startswith("using the CPU: ") and ("CuPy is not installed" in d.reason or "driver" in d.reason)
    assert gn.device() == d  # "auto" is the default


def test_real_environment_is_consistent(fresh_gpu_status):
    usable, why = gpu_status()
    assert isinstance(why, str) and why
    if usable:
        assert gn.device("gpu").is_gpu and gn.device("auto").is_gpu and gn.device("auto").reason
    else:
        with pytest.raises(DeviceError):
            gn.device("gpu")
        assert gn.device("auto") == "cpu" and why in gn.device("auto").reason


@pytest.mark.parametrize("name", ["tpu", "gpu0", "cuda:x", "gpu:-1", "cpu:0", "", "metal"])
def test_unknown_device_names_list_the_valid_ones(name):
    with pytest.raises(ValueError) as info:
        gn.device(name)
    msg = str(info.value)
    assert repr(name) in msg
    for valid in VALID_DEVICE_NAMES:
        assert valid in msg


def test_device_argument_types():
    with pytest.raises(TypeError, match="device must be a string .* got int"):
        gn.device(0)
    with pytest.raises(ValueError, match="'cpu' or 'gpu', got 'tpu'"):
        Device("tpu")


def test_device_of_and_array_module():
    assert device_of(np.zeros(2)) == "cpu" and device_of(np.float32(1)) == "cpu"
    assert get_array_module(np.zeros(2)) is np
    with pytest.raises(TypeError, match="NumPy or CuPy array, got list"):
        device_of([1, 2])
    assert gn.tensor([1.0]).device == "cpu"


def test_array_kinds_are_told_by_type_without_importing_cupy(monkeypatch):
    fake = types.ModuleType("cupy")
    monkeypatch.setitem(sys.modules, "cupy", fake)
    ndarray = type("ndarray", (), {"__module__": "cupy._core.core", "device": types.SimpleNamespace(id=1)})
    gpu = ndarray()
    assert is_cupy_array(gpu) and is_array(gpu)
    assert get_array_module(gpu) is fake and device_of(gpu) == Device("gpu", 1)
    for host in (np.zeros(2), np.zeros(2)[::2], np.float32(1)):
        assert not is_cupy_array(host) and get_array_module(host) is np
    assert is_array(np.zeros(2)) and not is_array(np.float32(1))
    for other in ([1.0], 1.0, gn.tensor([1.0])):
        assert not is_array(other) and not is_cupy_array(other)
        with pytest.raises(TypeError, match="expected a NumPy or CuPy array, got "):
            get_array_module(other)


def test_on_host_runs_a_numpy_function_on_device_arrays_and_copies_back(monkeypatch):
    """The reference path for CuPy arrays when the GPU kernels cannot run: device arrays (positional
    or keyword) go to the host, the function runs there, its array comes back; NumPy calls pass through."""
    from gpunn.backend import on_host

    class DeviceArray:  # a stand-in for cupy.ndarray, holding a host array
        __module__ = "cupy._core.core"

        def __init__(self, a):
            self.a = np.asarray(a)

    moves = []
    fake = types.SimpleNamespace(asnumpy=lambda d: moves.append("to host") or d.a,
                                 asarray=lambda a: moves.append("to device") or DeviceArray(a))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    f = on_host(lambda x, y, scale=1.0, w=None: (x + y) * scale + (0 if w is None else w))
    out = f(DeviceArray([1.0, 2.0]), np.array([10.0, 20.0]), 2.0, w=DeviceArray([0.5, 0.5]))
    assert isinstance(out, DeviceArray) and out.a.tolist() == [22.5, 44.5]
    assert moves == ["to host", "to host", "to device"]
    moves.clear()
    assert f(np.ones(2), np.ones(2)).tolist() == [2.0, 2.0] and moves == []


def test_tensor_on_an_unusable_gpu_is_refused(no_cupy):
    with pytest.raises(DeviceError, match="CuPy is not installed"):
        gn.tensor([1.0], device="gpu")
    with pytest.raises(DeviceError):
        gn.tensor([1.0]).to("cuda")


def test_manual_seed_makes_generators_repeat():
    from gpunn.backend import generator

    gn.manual_seed(123)
    a = generator().standard_normal(5)
    b = np.random.rand(3)
    gn.manual_seed(123)
    np.testing.assert_array_equal(generator().standard_normal(5), a)
    np.testing.assert_array_equal(np.random.rand(3), b)
    gn.manual_seed(124)
    assert not np.array_equal(generator().standard_normal(5), a)
    for bad in (-1, 1.5, "7", True, None):
        with pytest.raises(ValueError, match="non-negative integer"):
            gn.manual_seed(bad)
    gn.manual_seed(2**40)  # large seeds are fine
    gn.manual_seed(np.int64(5))


def _python(code: str, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT, **env}, timeout=120)


def test_import_loads_no_cupy_and_compiles_no_kernel():
    code = (
        "import sys, gpunn, gpunn.kernels.dense as d, gpunn.kernels.activations as a, gpunn.kernels.softmax_ce as s\n"
        "assert 'cupy' not in sys.modules, 'cupy imported'\n"
        "assert not a._CPU_KERNELS, 'activation kernels built at import'\n"
        "for f in (d._colsum, s._softmax_ce_fwd):\n"
        "    assert not f.signatures, f'{f} compiled at import'\n"
        "gpunn.tensor([1.0])\n"
        "assert 'cupy' not in sys.modules\n"
        "print('ok')\n"
    )
    r = _python(code)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_bad_kernel_choice_in_the_environment_is_refused():
    r = _python("import gpunn.kernels", GPUNN_KERNELS="fast")
    assert r.returncode != 0 and "GPUNN_KERNELS='fast' is not valid" in r.stderr and "reference" in r.stderr
    r = _python("from gpunn.kernels import ops_for, Ops; import numpy as np; "
                "assert type(ops_for(np.zeros(1))) is Ops; print('ok')", GPUNN_KERNELS="reference")
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
