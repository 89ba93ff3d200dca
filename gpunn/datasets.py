"""Small data sets for examples, tests and the CLI. Nothing is downloaded.

Return forms (every function):
- classification sets return `(X, y)`: X float32 of shape (n, features), y int64 class labels of
  shape (n,), ready for `nn.CrossEntropyLoss`;
- `sine` (regression) returns `(X, y)` with X and y float32 of shape (n, 1), ready for `nn.MSELoss`
  (gpunn's losses do not broadcast, so the target is already a column);
- `digits` returns a `Split(X_train, y_train, X_test, y_test)` named tuple (unpacks as a 4-tuple).

Seeding: `seed` is an int (or anything `numpy.random.default_rng` takes); `None` draws from
gpunn's generator, so `gn.manual_seed(n)` makes every call reproducible. The same seed always
gives the same arrays.
"""
from __future__ import annotations

import os
from collections import namedtuple

import numpy as np

from gpunn.data import rng_from

__all__ = ["xor", "and_gate", "or_gate", "spirals", "moons", "circles", "sine", "digits", "Split",
           "CLASSIFICATION", "load", "read_csv", "read_npz", "from_file", "DataFileError"]

Split = namedtuple("Split", ["X_train", "y_train", "X_test", "y_test"])

_GATE_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)


def _gate(labels):
    return _GATE_X.copy(), np.array(labels, dtype=np.int64)


def xor():
    """The four points of XOR: X (4, 2) float32 in {0, 1}, y (4,) int64 = x0 xor x1."""
    return _gate([0, 1, 1, 0])


def and_gate():
    """The four points of AND: X (4, 2) float32, y (4,) int64 = x0 and x1."""
    return _gate([0, 0, 0, 1])


def or_gate():
    """The four points of OR: X (4, 2) float32, y (4,) int64 = x0 or x1."""
    return _gate([0, 1, 1, 1])


def _check_n(n, minimum=1, name="n"):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {n!r}")
    return int(n)


def _check_noise(noise):
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    return float(noise)


def _split_counts(n, k):
    """n samples over k classes as evenly as possible (the first n % k classes get one more)."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def spirals(n: int = 300, classes: int = 2, noise: float = 0.2, seed=None):
    """`classes` interleaved spiral arms in the plane (CS231n's toy set), n points in total.

    Arm k has radius r in [0, 1] and angle 2*pi*k/classes + 4*r (radians) plus Gaussian angle noise
    of standard deviation `noise`. Returns X (n, 2) float32, y (n,) int64 in 0..classes-1.
    """
    n = _check_n(n)
    classes = _check_n(classes, 2, "classes")
    noise = _check_noise(noise)
    rng = rng_from(seed)
    xs, ys = [], []
    for k, m in enumerate(_split_counts(n, classes)):
        r = np.linspace(0.0, 1.0, m)
        t = 2 * np.pi * k / classes + 4.0 * r + rng.normal(0.0, noise, m)
        xs.append(np.stack([r * np.sin(t), r * np.cos(t)], axis=1))
        ys.append(np.full(m, k, dtype=np.int64))
    X, y = np.concatenate(xs), np.concatenate(ys)
    order = rng.permutation(n)
    return np.ascontiguousarray(X[order], dtype=np.float32), y[order]


def moons(n: int = 200, noise: float = 0.1, seed=None):
    """Two interleaving half circles (scikit-learn's make_moons), n points in total.

    Returns X (n, 2) float32 with Gaussian noise of standard deviation `noise`, y (n,) int64 in {0, 1}.
    """
    n = _check_n(n)
    noise = _check_noise(noise)
    rng = rng_from(seed)
    n0, n1 = _split_counts(n, 2)
    t0 = np.linspace(0, np.pi, n0)
    t1 = np.linspace(0, np.pi, n1)
    X = np.concatenate([np.stack([np.cos(t0), np.sin(t0)], 1),
                        np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], 1)])
    y = np.concatenate([np.zeros(n0, np.int64), np.ones(n1, np.int64)])
    X = X + rng.normal(0.0, noise, X.shape)
    order = rng.permutation(n)
    return np.ascontiguousarray(X[order], dtype=np.float32), y[order]


def circles(n: int = 200, noise: float = 0.05, factor: float = 0.5, seed=None):
    """A small circle (label 1, radius `factor`) inside a large one (label 0, radius 1).

    Returns X (n, 2) float32 with Gaussian noise of standard deviation `noise`, y (n,) int64.
    """
    n = _check_n(n)
    noise = _check_noise(noise)
    if not 0 < factor < 1:
        raise ValueError(f"factor must be in (0, 1), got {factor!r}")
    rng = rng_from(seed)
    n0, n1 = _split_counts(n, 2)
    t0 = np.linspace(0, 2 * np.pi, n0, endpoint=False)
    t1 = np.linspace(0, 2 * np.pi, n1, endpoint=False)
    X = np.concatenate([np.stack([np.cos(t0), np.sin(t0)], 1),
                        factor * np.stack([np.cos(t1), np.sin(t1)], 1)])
    y = np.concatenate([np.zeros(n0, np.int64), np.ones(n1, np.int64)])
    X = X + rng.normal(0.0, noise, X.shape)
    order = rng.permutation(n)
    return np.ascontiguousarray(X[order], dtype=np.float32), y[order]


def sine(n: int = 200, noise: float = 0.0, seed=None):
    """Regression: x uniform in [-pi, pi], y = sin(x) + Gaussian noise (std `noise`).

    Returns X (n, 1) float32 and y (n, 1) float32.
    """
    n = _check_n(n)
    noise = _check_noise(noise)
    rng = rng_from(seed)
    x = rng.uniform(-np.pi, np.pi, (n, 1))
    y = np.sin(x)
    if noise:
        y = y + rng.normal(0.0, noise, y.shape)
    return x.astype(np.float32), y.astype(np.float32)


def digits(test_size: float = 0.2, seed=0) -> Split:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes; read from disk, no download).

    Split stratified by class into train and test with scikit-learn's
    `train_test_split(test_size=test_size, random_state=seed, stratify=y)` (an int seed; None
    draws one from gpunn's generator; the default 0 gives the same fixed split as scikit-learn
    examples that use random_state=0, so test accuracies are comparable between runs), then
    standardised per feature with the mean and standard deviation of the TRAIN split only
    (constant pixels keep scale 1). Returns `Split(X_train, y_train, X_test, y_test)`: X float32
    (n, 64), y int64 (n,) in 0..9.
    """
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size!r}")
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise ImportError("gn.datasets.digits needs scikit-learn, which is not installed "
                          f"({err}); install it with: pip install \"gpunn[test]\" "
                          "(or pip install scikit-learn)") from err
    bunch = load_digits()
    X = bunch.data.astype(np.float64)
    y = bunch.target.astype(np.int64)
    if seed is None or isinstance(seed, np.random.Generator):
        seed = int(rng_from(seed).integers(2**31 - 1))
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)
    mean = X_train.mean(axis=0)
    std = X_train.std(axis=0)
    std[std == 0] = 1.0
    f32 = lambda a: np.ascontiguousarray((a - mean) / std, dtype=np.float32)  # noqa: E731
    return Split(f32(X_train), y_train, f32(X_test), y_test)


# Classification sets by name (what `gpunn train --data` offers).
CLASSIFICATION = ("digits", "xor", "and", "or", "spirals", "moons", "circles")


def load(name: str, seed=None, test_size: float = 0.2, n: int | None = None) -> Split:
    """Any classification set by name as a train/test `Split`.

    digits uses its own stratified split; the synthetic sets draw `n` points (default 1000) and hold
    out `test_size` of them; the 4-point gates have no held-out data, so their test set IS the
    training set.
    """
    if name == "digits":
        return digits(test_size=test_size, seed=0 if seed is None else seed)
    gates = {"xor": xor, "and": and_gate, "or": or_gate}
    if name in gates:
        X, y = gates[name]()
        return Split(X, y, X.copy(), y.copy())
    makers = {"spirals": spirals, "moons": moons, "circles": circles}
    if name not in makers:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(CLASSIFICATION)}")
    rng = rng_from(seed)
    X, y = makers[name](n=1000 if n is None else n, seed=rng)
    n_test = int(round(test_size * len(X)))
    return Split(X[n_test:], y[n_test:], X[:n_test], y[:n_test])


# ----------------------------------------------------------------------------- the user's own files

class DataFileError(ValueError):
    """A data file that cannot be read as (features, labels); the message names the file, the line
    (or array) and what was wrong. Nothing is returned from a file that fails."""


def _label(text_or_value, where):
    try:
        v = float(text_or_value)
    except ValueError:
        raise DataFileError(f"{where}: label {text_or_value!r} is not a number") from None
    if not np.isfinite(v) or v != int(v) or v < 0:
        raise DataFileError(f"{where}: label {text_or_value!r} is not a class index (an integer >= 0)")
    return int(v)


def read_csv(path: str):
    """(X float32 (n, features), y int64 (n,)) from a CSV file: one sample per line, the last column
    the class label (an integer >= 0), the others finite numbers; an optional header line first."""
    import csv

    rows, labels = [], []
    width = None
    with open(path, newline="") as f:
        for lineno, fields in enumerate(csv.reader(f), 1):
            if not fields or all(not x.strip() for x in fields):
                continue  # blank lines
            where = f"{path}, line {lineno}"
            if width is None and lineno == 1 and not _all_numbers(fields):
                continue  # a header
            if width is None:
                width = len(fields)
                if width < 2:
                    raise DataFileError(f"{where}: {width} column; need at least one feature and the label (last column)")
            elif len(fields) != width:
                raise DataFileError(f"{where}: {len(fields)} columns, but the first data line has {width}")
            row = []
            for col, text in enumerate(fields[:-1], 1):
                try:
                    v = float(text)
                except ValueError:
                    raise DataFileError(f"{where}, column {col}: {text.strip()!r} is not a number") from None
                if not np.isfinite(v):
                    raise DataFileError(f"{where}, column {col}: {text.strip()!r} is not a finite number")
                row.append(v)
            rows.append(row)
            labels.append(_label(fields[-1].strip(), f"{where}, column {width}"))
    if not rows:
        raise DataFileError(f"{path}: no data lines (expected lines of numbers, the last column the class label)")
    return np.asarray(rows, dtype=np.float32), np.asarray(labels, dtype=np.int64)


def _all_numbers(fields) -> bool:
    try:
        for x in fields:
            float(x)
    except ValueError:
        return False
    return True


def read_npz(path: str):
    """(X float32 (n, features), y int64 (n,)) from a .npz holding arrays `X` (2-D, finite numbers)
    and `y` (1-D class indices, integers >= 0) of the same length. Pickled objects are refused."""
    try:
        z = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise DataFileError(f"{path}: not a readable .npz of numeric arrays ({err})") from None
    except Exception as err:  # a truncated or foreign file: zipfile/pickle errors
        raise DataFileError(f"{path}: not a readable .npz file ({type(err).__name__}: {err})") from None
    with z:
        missing = [k for k in ("X", "y") if k not in z.files]
        if missing:
            raise DataFileError(f"{path}: missing array(s) {missing}; it holds {sorted(z.files)} "
                                "(save with np.savez(path, X=features, y=labels))")
        try:
            X, y = z["X"], z["y"]
        except ValueError as err:
            raise DataFileError(f"{path}: {err} (pickled objects are refused)") from None
    if X.dtype.kind not in "biuf" or X.ndim != 2:
        raise DataFileError(f"{path}: X must be a 2-D numeric array (samples, features), got {X.dtype} of shape {X.shape}")
    if y.dtype.kind not in "biuf" or y.ndim != 1:
        raise DataFileError(f"{path}: y must be a 1-D array of class indices, got {y.dtype} of shape {y.shape}")
    if len(X) != len(y):
        raise DataFileError(f"{path}: X has {len(X)} rows but y has {len(y)} labels")
    if len(X) == 0:
        raise DataFileError(f"{path}: X and y hold no samples")
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if bad.size:
        raise DataFileError(f"{path}: X row {bad[0]} holds a non-finite value")
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)) | (y < 0)) if y.dtype.kind != "b" else []
    if len(bad):
        raise DataFileError(f"{path}: y[{bad[0]}] = {y[bad[0]]} is not a class index (an integer >= 0)")
    return X.astype(np.float32), y.astype(np.int64)


def from_file(path: str, test_size: float = 0.2, seed=0) -> Split:
    """A `.csv` or `.npz` file (see read_csv, read_npz) as a train/test `Split`: `test_size` of the
    samples, drawn with `seed`, are held out; with fewer than 5 samples the test set is the
    training set. Raises DataFileError (a ValueError) for a malformed file, FileNotFoundError if absent."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".csv", ".npz"):
        raise DataFileError(f"{path}: unknown file type {ext or '(none)'!r}; expected .csv or .npz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    X, y = read_csv(path) if ext == ".csv" else read_npz(path)
    if len(X) < 5:
        return Split(X, y, X.copy(), y.copy())
    perm = rng_from(seed).permutation(len(X))
    n_test = max(1, int(round(test_size * len(X))))
    test, train = perm[:n_test], perm[n_test:]
    return Split(X[train], y[train], X[test], y[test])
