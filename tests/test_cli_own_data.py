"""`gpunn train --data PATH` for the user's own .csv / .npz files (and their errors), --save checked
before training, and models too large for memory refused in one line."""
from __future__ import annotations

import numpy as np
import pytest

from gpunn import datasets
from gpunn.cli import main
from gpunn.datasets import DataFileError


def _blobs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.standard_normal((n, 2)) * 0.3 + np.array([[0, 0], [3, 0], [0, 3]])[y]
    return X.astype(np.float32), y


def _one_error(capsys, argv, status=2):
    assert main(argv) == status
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("gpunn: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("ext", ["csv", "npz"])
def test_train_on_own_file(tmp_path, capsys, ext):
    X, y = _blobs()
    path = tmp_path / f"blobs.{ext}"
    if ext == "csv":
        np.savetxt(path, np.c_[X, y], delimiter=",", header="x1,x2,label", comments="", fmt="%.6g")
    else:
        np.savez(path, X=X, y=y)
    assert main(["train", "--data", str(path), "--epochs", "30", "--no-progress", "--seed", "0", "--lr", "0.01"]) == 0
    out = capsys.readouterr().out
    assert f"data: {path} (96 train, 24 test samples); model: 2-64-3" in out
    acc = float(out.split("test:  loss")[1].split("accuracy")[1])
    assert acc >= 0.9  # three well-separated blobs


def test_read_csv_parses_header_blank_lines_and_exact_values(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a, b ,label\n1.5,2,0\n\n-3,4e-1, 2\n")
    X, y = datasets.read_csv(str(p))
    np.testing.assert_array_equal(X, np.array([[1.5, 2.0], [-3.0, 0.4]], np.float32))
    np.testing.assert_array_equal(y, [0, 2])
    assert X.dtype == np.float32 and y.dtype == np.int64
    p.write_text("1,2,1\n3,4,0\n")  # no header
    assert datasets.read_csv(str(p))[0].shape == (2, 2)


BAD_CSV = {
    "1,2,0\n3,x,1\n": "line 2, column 2: 'x' is not a number",
    "h1,h2,label\n1,2,0\n3,4\n": "line 3: 2 columns, but the first data line has 3",
    "1,2,0\n3,4,1.5\n": "line 2, column 3: label '1.5' is not a class index",
    "1,2,0\n3,4,-1\n": "line 2, column 3: label '-1' is not a class index",
    "1,2,0\n3,4,cat\n": "line 2, column 3: label 'cat' is not a number",
    "1,nan,0\n": "line 1, column 2: 'nan' is not a finite number",
    "a,b,label\n": "no data lines",
    "5\n6\n": "line 1: 1 column",
    "a,b,c\nd,e,f\n": "line 2, column 1: 'd' is not a number",
}


@pytest.mark.parametrize("text", list(BAD_CSV), ids=[f"csv{i}" for i in range(len(BAD_CSV))])
def test_malformed_csv_names_the_line_and_the_fault(tmp_path, capsys, text):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(DataFileError) as info:
        datasets.from_file(str(p))
    assert str(info.value).startswith(str(p)) and BAD_CSV[text] in str(info.value)
    err = _one_error(capsys, ["train", "--data", str(p), "--epochs", "1", "--no-progress"])
    assert BAD_CSV[text] in err


def test_malformed_npz_names_the_array_and_the_fault(tmp_path):
    X, y = _blobs(10)
    cases = {
        "missing": (dict(A=X), "missing array(s) ['X', 'y']; it holds ['A']"),
        "rank": (dict(X=X[:, 0], y=y), "X must be a 2-D numeric array"),
        "length": (dict(X=X, y=y[:9]), "X has 10 rows but y has 9 labels"),
        "label": (dict(X=X, y=np.where(np.arange(10) == 4, 0.5, y)), "y[4] = 0.5 is not a class index"),
        "nonfinite": (dict(X=np.where(np.arange(10)[:, None] == 7, np.inf, X), y=y), "X row 7 holds a non-finite"),
        "objects": (dict(X=np.array([None] * 10, dtype=object), y=y), "pickled objects are refused"),
    }
    for name, (arrays, words) in cases.items():
        p = tmp_path / f"{name}.npz"
        np.savez(p, **arrays)
        with pytest.raises(DataFileError) as info:
            datasets.from_file(str(p))
        assert words in str(info.value), (name, str(info.value))
    p = tmp_path / "junk.npz"
    p.write_bytes(b"not a zip file")
    with pytest.raises(DataFileError, match="not a readable .npz"):
        datasets.from_file(str(p))


def test_data_argument_errors(capsys, tmp_path):
    err = _one_error(capsys, ["train", "--data", str(tmp_path / "absent.csv")])
    assert f"data file {tmp_path / 'absent.csv'} does not exist" in err
    err = _one_error(capsys, ["train", "--data", "data.txt"])
    assert "expected one of digits" in err and ".csv/.npz" in err


def test_save_into_a_missing_folder_fails_before_training(capsys, tmp_path):
    target = str(tmp_path / "no" / "such" / "model.safetensors")
    err = _one_error(capsys, ["train", "--data", "xor", "--epochs", "1000", "--save", target, "--no-progress"])
    assert f"--save {target}: the folder {tmp_path / 'no' / 'such'} does not exist" in err
    assert capsys.readouterr().out == ""  # nothing ran: not even the device line


@pytest.mark.parametrize("argv", [["profile", "--layers", "100000,100000,10", "--steps", "1"],
                                  ["train", "--data", "xor", "--layers", "2,100000,100000,2"]])
def test_a_model_too_large_for_memory_is_one_line(capsys, argv):
    err = _one_error(capsys, argv)
    assert "needs at least" in err and "GiB" in err and "parameters" in err and "is available" in err
