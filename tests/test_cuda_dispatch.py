"""The dense dispatcher: fused GEMM vs cuBLAS + epilogue, per shape, from an argument, the
GPUNN_DENSE_IMPL variable, the committed table of measurements or the default rule (in that order);
the table's format, lookup and writing; autotune's refusal without a GPU."""
from __future__ import annotations

import numpy as np
import pytest

from cuda_util import target  # noqa: F401  (a fixture)
from gpunn.backend import numba_cuda as nc
from gpunn.kernels import ACTIVATIONS, dense_cuda, dense_dispatch as dd, dense_table


@pytest.fixture
def fake_table(monkeypatch):
    entries = [
        {"device": "devX", "dtype": "float32", "pass": "forward", "n": 256, "k": 512, "m": 512, "act": "relu",
         "us": {"cublas": 30.0, "fused:64x64x16/4x4": 20.0}, "best": "fused:64x64x16/4x4"},
        {"device": "devX", "dtype": "float32", "pass": "forward", "n": 4096, "k": 512, "m": 512, "act": "relu",
         "us": {"cublas": 90.0, "fused:64x64x16/4x4": 120.0}, "best": "cublas"},
    ]
    monkeypatch.setattr(dd, "_index", {("devX", "float32", "forward"): entries})
    monkeypatch.delenv(dd.ENV, raising=False)
    return entries


def test_default_rule_prefers_fused_for_small_gemms_only():
    assert dd.default_choice(64, 64, 128, np.float32, "forward") == ("fused", None)
    assert dd.default_choice(256, 784, 512, np.float32, "forward") == ("cublas", None)
    assert dd.default_choice(64, 64, 128, np.float32, "backward") == ("fused", None)
    assert dd.default_choice(1024, 64, 64, np.float32, "backward") == ("cublas", None)


def test_precedence_argument_env_table_default(fake_table, monkeypatch):
    assert dd.choose(256, 512, 512, np.float32, device="devX") == ("fused", "64x64x16/4x4")  # table
    assert dd.choose(300, 600, 400, np.float32, device="devX") == ("fused", "64x64x16/4x4")  # nearest
    assert dd.choose(4096, 512, 512, np.float32, device="devX") == ("cublas", None)
    assert dd.choose(64, 64, 64, np.float32, device="devX") == ("fused", None)  # too far: default rule
    assert dd.choose(256, 512, 512, np.float64, device="devX") == ("cublas", None)  # other dtype: default
    assert dd.choose(256, 512, 512, np.float32, "backward", device="devX") == ("cublas", None)
    monkeypatch.setenv(dd.ENV, "cublas")
    assert dd.choose(256, 512, 512, np.float32, device="devX") == ("cublas", None)
    assert dd.choose(256, 512, 512, np.float32, impl="fused:32x32x8/2x2", device="devX") == ("fused", "32x32x8/2x2")
    monkeypatch.setenv(dd.ENV, "auto")
    assert dd.choose(256, 512, 512, np.float32, impl="auto", device="devX") == ("fused", "64x64x16/4x4")


def test_too_many_rows_for_the_fused_grid_use_cublas(monkeypatch):
    monkeypatch.delenv(dd.ENV, raising=False)
    n = 65535 * 64 + 1
    assert dd.choose(n, 4, 4, np.float32, impl="fused:64x64x16/4x4") == ("cublas", None)
    assert dd.choose(8, 4, n, np.float32, "backward", impl="fused:64x64x16/4x4") == ("cublas", None)


def test_bad_choices_name_the_valid_ones(monkeypatch):
    with pytest.raises(ValueError, match="auto, fused, cublas"):
        dd.choose(4, 4, 4, np.float32, impl="magic")
    with pytest.raises(ValueError, match="unknown tile"):
        dd.choose(4, 4, 4, np.float32, impl="fused:1x1")
    with pytest.raises(ValueError, match="pass must be"):
        dd.choose(4, 4, 4, np.float32, "sideways")
    monkeypatch.setenv(dd.ENV, "fastest")
    with pytest.raises(ValueError, match="GPUNN_DENSE_IMPL"):
        dd.choose(4, 4, 4, np.float32)


def test_the_committed_table_is_well_formed():
    assert dense_table.FORMAT == 1
    for e in dense_table.ENTRIES:
        assert {"device", "dtype", "pass", "n", "k", "m", "act", "us", "best"} <= set(e)
        assert e["pass"] in dd.PASSES and e["best"] in e["us"]
        for impl in e["us"]:
            dd._parse(impl, "table")


def test_table_source_round_trip_merge_and_write(tmp_path):
    new = [{"device": "devY", "dtype": "float32", "pass": "backward", "n": 64, "k": 32, "m": 32, "act": "relu",
            "us": {"cublas": 9.5, "fused:64x64x16/4x4": 7.25}, "best": "fused:64x64x16/4x4"}]
    ns = {}
    exec(dd.table_source(new), ns)
    assert ns["FORMAT"] == 1 and ns["ENTRIES"] == new
    newer = [dict(new[0], us={"cublas": 5.0}, best="cublas")]
    merged = dd.merge_entries(new, newer)
    assert len(merged) == 1 and merged[0]["best"] == "cublas"
    path = tmp_path / "table.py"
    assert dd.write_table(new, str(path)) == str(path)
    ns = {}
    exec(path.read_text(), ns)
    assert new[0] in ns["ENTRIES"]
    assert "FORMAT 1" in path.read_text()  # the format description travels with the data


def test_autotune_shapes_and_refusal_without_a_gpu():
    quick = dd.autotune_shapes(quick=True)
    full = dd.autotune_shapes()
    assert set(quick) <= set(full) or len(quick) < len(full)
    assert all(n * k * m <= dd.MAX_AUTOTUNE_MACS for n, k, m in full)
    assert (4096, 4096, 4096) in full and (65536, 4096, 4096) not in full
    if not nc.kernel_status()[0]:
        with pytest.raises(RuntimeError, match="needs the GPU kernels"):
            dd.autotune(shapes=[(4, 4, 4)], write=False)


@pytest.mark.parametrize("impl", ["fused", "cublas"])
def test_dispatch_routes_to_the_chosen_implementation(target, monkeypatch, impl):
    calls = []
    for name in ("forward_fused", "forward_cublas", "backward_fused", "backward_cublas"):
        real = getattr(dense_cuda, name)
        monkeypatch.setattr(dense_cuda, name,
                            lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    monkeypatch.setenv(dd.ENV, impl)
    rng = np.random.default_rng(0)
    x = np.asfortranarray(rng.standard_normal((5, 3)))  # non-contiguous: the dispatcher copies it
    W, b, dy = rng.standard_normal((4, 3)), rng.standard_normal(4), rng.standard_normal((5, 4))
    y, saved = dd.dense_forward(target.asarray(x), target.asarray(W), target.asarray(b), ACTIVATIONS["relu"])
    dd.dense_backward(target.asarray(dy), target.asarray(x), target.asarray(W), saved, ACTIVATIONS["relu"])
    assert calls == [f"forward_{impl}", f"backward_{impl}"]
    np.testing.assert_allclose(target.get(y), np.maximum(x @ W.T + b, 0), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="dtype"):
        dd.dense_forward(target.asarray(x), target.asarray(W.astype(np.float32)), None, 0)
    with pytest.raises(ValueError, match="saved"):
        dd.dense_backward(target.asarray(dy), target.asarray(x), target.asarray(W), None, 0)
