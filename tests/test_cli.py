"""The `gpunn` command: info, train, one-line errors with exit status 2, python -m gpunn."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import gpunn as gn
from gpunn.cli import COMMANDS, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "gpunn", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    usable, why = gn.gpu_status()
    assert f"gpunn {gn.__version__}" in out
    assert f"numpy {np.__version__}" in out
    assert "numba " in out and "python " in out
    assert why in out  # says why the GPU is or is not used
    assert ("device('auto'): gpu:0" if usable else "device('auto'): cpu") in out
    assert "devices: cpu" in out


def test_python_dash_m_gpunn_info():
    r = run_module("info")
    assert r.returncode == 0, r.stderr
    assert "gpunn " in r.stdout and "gpu:" in r.stdout
    assert "Traceback" not in r.stderr


def test_train_xor_reaches_full_accuracy(capsys):
    rc = main(["train", "--data", "xor", "--epochs", "300", "--lr", "0.05", "--batch-size", "4",
               "--activation", "tanh", "--seed", "0", "--no-progress", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "device: cpu (chosen with --device cpu)" in out
    assert "model: 2-8-2 tanh" in out and "seed: 0" in out
    assert "train: loss" in out and "test:  loss" in out
    assert out.strip().endswith("accuracy 1.0000")


def test_train_digits_saves_a_loadable_checkpoint(tmp_path, capsys):
    ck = tmp_path / "digits.safetensors"
    rc = main(["train", "--data", "digits", "--layers", "64,32,10", "--optimizer", "adamw", "--lr", "0.003",
               "--epochs", "5", "--seed", "1", "--no-progress", "--save", str(ck)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "device: " in out and ("using the CPU" in out or "CUDA device" in out)  # auto says why
    acc = float(re.search(r"test:  loss [0-9.]+, accuracy ([0-9.]+)", out).group(1))
    assert acc > 0.9
    meta = gn.load(ck)
    assert meta["epoch"] == 5 and meta["layers"] == [64, 32, 10] and meta["seed"] == 1
    assert meta["test_accuracy"] == pytest.approx(acc, abs=1e-4)
    assert meta["state_dict"]["0.weight"].shape == (32, 64)
    assert set(meta["optimizer_state_dict"]) == {"state", "param_groups"}
    assert f"saved checkpoint: {ck}" in out


def test_train_is_reproducible_with_a_seed(capsys):
    args = ["train", "--data", "moons", "--epochs", "2", "--seed", "4", "--no-progress", "--optimizer", "sgd"]
    assert main(args) == 0
    first = capsys.readouterr().out.split("trained")[1].split("\n", 1)[1]
    assert main(args) == 0
    second = capsys.readouterr().out.split("trained")[1].split("\n", 1)[1]
    assert first == second


BAD = [
    (["train"], "--data"),
    (["train", "--data", "mnist"], "expected one of digits"),
    (["train", "--data", "xor", "--epochs", "0"], "--epochs"),
    (["train", "--data", "xor", "--lr", "abc"], "--lr"),
    (["train", "--data", "xor", "--batch-size", "-4"], "--batch-size"),
    (["train", "--data", "xor", "--layers", "2,x,2"], "--layers"),
    (["train", "--data", "xor", "--layers", "3,8,2"], "first width must be 2"),
    (["train", "--data", "digits", "--layers", "64,128,7"], "last 10"),
    (["train", "--data", "xor", "--device", "tpu"], "Unknown device"),
    (["train", "--data", "xor", "--optimizer", "lbfgs"], "invalid choice"),
    (["--bogus"], "unrecognized"),
    ([], "choose a command"),
]


@pytest.mark.parametrize("argv, words", BAD, ids=[" ".join(a) or "<none>" for a, _ in BAD])
def test_bad_flags_give_one_line_and_status_2(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gpunn: error: ") and words in lines[0]
    assert "Traceback" not in err


def test_gpu_request_without_a_gpu_is_a_usage_error(capsys):
    usable, why = gn.gpu_status()
    if usable:
        pytest.skip("a GPU is usable here")
    assert main(["train", "--data", "xor", "--device", "gpu", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("gpunn: error: device 'gpu'") and "pip install" in err


def test_divergence_is_one_line_with_status_1(capsys):
    rc = main(["train", "--data", "xor", "--optimizer", "sgd", "--lr", "1e30", "--epochs", "5",
               "--no-progress", "--seed", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err.count("\n") == 0 and err.startswith("gpunn: error: training diverged at epoch")


def test_subprocess_bad_flag_has_no_traceback():
    r = run_module("train", "--data", "xor", "--epochs", "zero")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("gpunn: error: argument --epochs")
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_help_and_version_exit_0(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert main(["train", "--help"]) == 0
    assert "--layers" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert gn.__version__ in capsys.readouterr().out


def test_console_script_points_at_main():
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    assert 'gpunn = "gpunn.cli:main"' in text


def test_a_closed_pipe_ends_quietly(tmp_path, monkeypatch, capsys):
    """`gpunn info | head -1`: when the reader goes away the command stops with status 141 (as
    Unix tools do), without an error message or a traceback."""
    sink = open(tmp_path / "sink", "w")

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

        def fileno(self):  # where main() points the dead stdout (a scratch file here)
            return sink.fileno()

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["info"]) == 141
    sink.close()
    assert capsys.readouterr().err == ""
