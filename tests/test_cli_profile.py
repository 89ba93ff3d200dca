"""`gpunn profile`: a small run prints the table, --trace and --roofline write their files,
--compare prints the kernel choices side by side with ratios, and bad flags give one line and
exit status 2."""
import json
import os
import re
import subprocess
import sys

import pytest

from gpunn.cli import COMMANDS, main
from gpunn.profiler import peaks as peaks_mod

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["profile", "--layers", "16,32,4", "--batch", "8", "--steps", "3", "--warmup", "1", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _peaks_cache(tmp_path, monkeypatch):
    """A cache holding this machine's peaks, so no test calibrates (or writes to $HOME)."""
    monkeypatch.setenv("GPUNN_CACHE_DIR", str(tmp_path))
    name = peaks_mod._device_name("cpu")
    entry = {"name": name, "gflops": {"float32": 50.0, "float64": 25.0}, "gbps": 10.0, "source": "test"}
    (tmp_path / "peaks.json").write_text(json.dumps({peaks_mod._key("cpu", name): entry}))


def test_profile_is_a_registered_command():
    assert "profile" in COMMANDS


def test_small_profile_prints_the_table(capsys):
    assert main(SMALL) == 0
    out = capsys.readouterr().out
    assert "device: cpu (chosen with --device cpu)" in out
    assert "model: 16-32-4 relu, Adam lr=0.001, cross-entropy; batch 8; 1 warm-up + 3 profiled steps" in out
    assert "gpunn profile: 3 steps," in out
    header = next(line for line in out.splitlines() if line.startswith("kernel "))
    assert header.split() == ["kernel", "backend", "calls", "total", "ms", "mean", "us", "%", "time", "GFLOP/s",
                              "GB/s", "%", "peak"]
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:1].isalpha()}
    assert rows["dense_forward"][1:3] == ["cpu", "6"]  # 2 layers x 3 steps
    assert rows["adam_update"][2] == "3"
    assert "kernel launches per step: 7 (forward 2, loss 1, backward 3, optimizer 1)" in out
    assert "peaks: " in out and "(test; cached in" in out
    unprofiled, profiled = map(float, re.search(
        r"without the profiler: ([\d.]+) ms/step over 3 more steps \(profiled: ([\d.]+) ms/step\)", out).groups())
    assert 0 < unprofiled and 0 < profiled


def test_profile_compile_profiles_the_replay(capsys):
    """--compile: the warm-up traces (at least 2 steps), the profiled steps are replays with the
    same kernels and launches as eager steps."""
    assert main(SMALL[:-4] + ["--warmup", "0", "--device", "cpu", "--compile"]) == 0
    out = capsys.readouterr().out
    assert "2 warm-up + 3 profiled steps (compiled: gn.compile replays)" in out
    assert re.search(r"without the profiler: [\d.]+ ms/step over 3 more steps", out)
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:1].isalpha()}
    assert rows["dense_forward"][1:3] == ["cpu", "6"] and rows["adam_update"][2] == "3"
    assert "kernel launches per step: 7 (forward 2, loss 1, backward 3, optimizer 1)" in out


def test_group_by_layer_and_sort(capsys):
    assert main(SMALL + ["--group-by", "layer", "--sort", "name"]) == 0
    out = capsys.readouterr().out
    keys = [line.split()[0] for line in out.splitlines()
            if re.match(r"^(\(optimizer\)|\d+|loss) ", line)]
    assert keys == sorted(keys) == ["(optimizer)", "0", "1", "loss"]


def test_trace_and_roofline_files(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    trace, png = tmp_path / "t.json", tmp_path / "r.png"
    assert main(SMALL + ["--trace", str(trace), "--roofline", str(png)]) == 0
    out = capsys.readouterr().out
    assert f"wrote trace: {trace}" in out and f"wrote roofline: {png}" in out
    data = json.loads(trace.read_text())
    assert sum(1 for e in data["traceEvents"] if e.get("cat") == "step") == 3
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_compare_prints_choices_side_by_side_with_ratios(capsys):
    assert main(SMALL + ["--compare"]) == 0
    out = capsys.readouterr().out
    assert "kernel choices compared" in out
    head = next(line for line in out.splitlines() if line.startswith("ms per step"))
    assert head.split() == ["ms", "per", "step", "fused", "reference", "reference/fused"]
    dense_line = next(line for line in out.splitlines() if line.startswith("dense_forward") and "x" in line)
    fused, ref, ratio = (float(v.rstrip("x")) for v in dense_line.split()[1:])
    # the ratio of the unrounded times: within what the printed 3-decimal times allow, and 2-decimal rounding
    assert (ref - 5e-4) / (fused + 5e-4) - 5e-3 <= ratio <= (ref + 5e-4) / max(fused - 5e-4, 1e-9) + 5e-3
    assert re.search(r"^step \(wall\)\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+x$", out, re.M)
    assert re.search(r"^launches per step\s+7\s+7$", out, re.M)


BAD = [
    (["profile", "--steps", "0"], "--steps: expected a positive integer"),
    (["profile", "--batch", "x"], "--batch: expected a positive integer"),
    (["profile", "--warmup", "-1"], "--warmup: expected an integer >= 0"),
    (["profile", "--layers", "784"], "--layers: expected at least two positive widths"),
    (["profile", "--group-by", "module"], "invalid choice"),
    (["profile", "--sort", "fastest"], "invalid choice"),
    (["profile", "--device", "tpu"], "Unknown device 'tpu'"),
    (["profile", "--frobnicate"], "unrecognized arguments"),
    (["profile", "--roofline", "/nonexistent-dir/r.png", "--steps", "1"], "the folder /nonexistent-dir does not exist"),
    (["profile", "--trace", "/nonexistent-dir/t.json", "--steps", "1"], "the folder /nonexistent-dir does not exist"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a[1:]) for a, _ in BAD])
def test_bad_flags_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("gpunn: error: ") and "\n" not in err, err
    assert message in err
    assert "Traceback" not in captured.err + captured.out


def test_roofline_without_matplotlib_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(SMALL + ["--roofline", str(tmp_path / "r.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'gpunn: error: --roofline needs matplotlib: pip install "gpunn[plot]"'


def test_python_dash_m_gpunn_profile_bad_flag_has_no_traceback():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "gpunn", "profile", "--steps", "-3"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr


def test_kernel_choices_on_the_cpu_and_with_the_gpu_dense_dispatcher():
    """--compare's choices: fused and reference on the CPU; on a GPU each GPUNN_DENSE_IMPL of the
    dense dispatcher (fused, cublas) before the reference, each set only while its run lasts."""
    from gpunn.backend import Device
    from gpunn.cli import _kernel_choices
    from gpunn.kernels import dense_dispatch, ops

    assert [label for label, _ in _kernel_choices(Device("cpu"))] == ["fused", "reference"]
    choices = _kernel_choices(Device("gpu", 0))
    assert [label for label, _ in choices] == [i for i in dense_dispatch.IMPLS if i != "auto"] + ["reference"]
    before = os.environ.get("GPUNN_DENSE_IMPL")
    label, use = choices[0]
    with use():
        assert os.environ["GPUNN_DENSE_IMPL"] == label and ops._choice == "fused"
    assert os.environ.get("GPUNN_DENSE_IMPL") == before
    with choices[-1][1]():
        assert ops._choice == "reference"


def test_remeasure_peaks_flag_measures_before_profiling(capsys, monkeypatch):
    monkeypatch.setattr(peaks_mod, "_measure", lambda xp, sync, **s: ({"float32": 7e4, "float64": 3e4}, 5e3,
                                                                     "measured (test)"))
    assert main(SMALL + ["--remeasure-peaks"]) == 0
    out = capsys.readouterr().out
    assert "peaks re-measured: " in out and "70,000 GFLOP/s float32" in out
    assert "peaks: " in out and "measured (test); cached in" in out
