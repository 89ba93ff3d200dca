"""The GPU scripts in kernels/ (a folder of scripts, not a package): they import without CuPy, their
pure helpers compute what they claim, they refuse to run without a GPU with a clear message, and
gpu_check.sh is valid bash."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

from gpunn.backend import numba_cuda as nc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "kernels", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def dense_bench():
    return load("bench_dense_gpu")


@pytest.fixture(scope="module")
def train_bench():
    return load("bench_train_gpu")


def test_dense_bench_helpers(dense_bench):
    b = dense_bench
    assert b.peak_tflops("NVIDIA H100 80GB HBM3") == 67.0
    assert b.peak_tflops("NVIDIA H100 PCIe") == 51.0
    assert b.peak_tflops("NVIDIA H200") == 67.0
    assert b.peak_tflops("Mystery Card") is None and b.peak_tflops("Mystery", 12.5) == 12.5
    assert b.flops(2, 3, 4, "forward") == 48 and b.flops(2, 3, 4, "backward") == 96
    assert b.tflops(1000, 1000, 1000, "forward", 1e6) == pytest.approx(2e-3)
    grid = b.shape_grid((64, 65536), (32, 4096), 1 << 30)
    assert (64, 32) in grid and (65536, 4096) not in grid and all(n * w * w <= 1 << 30 for n, w in grid)
    orders = b.round_orders(["a", "b", "c"], 4)
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    ratios = b.median_ratios({"fused": [1.0, 2.0, 4.0], "torch": [2.0, 2.0, 2.0], "short": [1.0]})
    assert ratios == {"torch": 1.0}
    assert b.card_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert b.results_stem("NVIDIA H200", "2026-11-26") == "kernels/results/nvidia-h200-2026-11-26"


def test_train_bench_helpers(train_bench):
    b = train_bench
    assert b.samples_per_second(256, 10, 0.5) == 5120
    row = b.summarize("x", 64, 10, [100.0, 300.0, 200.0], [100.0, 100.0, 100.0])
    assert row["gpunn_samples_per_s"] == 200.0 and row["ratio_median"] == 2.0 and row["ratio_max"] == 3.0
    assert "ratio_median" not in b.summarize("x", 64, 10, [1.0], [])
    assert [s[0] for s in b.parse_shapes("mnist,wide")] == ["mnist-mlp 784-512-512-10", "wide 4096-4096-4096-10"]
    assert len(b.parse_shapes(None)) == 4
    with pytest.raises(ValueError, match="matches none"):
        b.parse_shapes("resnet")
    names = [s[0] for s in b.SHAPES]
    assert any("784-512-512-10" in n for n in names) and any("4096-4096-4096-10" in n for n in names)


@pytest.mark.skipif(nc.kernel_status()[0], reason="a GPU is present: the scripts would run")
@pytest.mark.parametrize("script", ["bench_dense_gpu", "bench_train_gpu"])
def test_scripts_refuse_clearly_without_a_gpu(script):
    r = subprocess.run([sys.executable, os.path.join("kernels", f"{script}.py"), "--quick"], cwd=ROOT,
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert r.returncode != 0
    assert f"{script}: " in r.stderr and ("CuPy" in r.stderr or "cannot run" in r.stderr)
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_gpu_check_script_is_valid_bash():
    path = os.path.join(ROOT, "kernels", "gpu_check.sh")
    assert subprocess.run(["bash", "-n", path]).returncode == 0
    text = open(path).read()
    for needle in ("NUMBA_ENABLE_CUDASIM=0", "gpu_check.py probe", "gpu_check.py bench", "gpu_check.py autotune",
                   "gpu_check_pytest", "--junitxml", "kernels/results", "$OUT", "trap", "${PYTHON:-python3}"):
        assert needle in text, needle


def test_kernels_folder_is_not_a_package():
    assert not os.path.exists(os.path.join(ROOT, "kernels", "__init__.py"))
