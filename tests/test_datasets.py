"""gn.datasets: shapes, dtypes, labels, seeding, the digits split and scaling."""
import sys

import numpy as np
import pytest

import gpunn as gn
from gpunn import datasets


@pytest.mark.parametrize("make, labels", [(datasets.xor, [0, 1, 1, 0]), (datasets.and_gate, [0, 0, 0, 1]),
                                          (datasets.or_gate, [0, 1, 1, 1])])
def test_gates(make, labels):
    X, y = make()
    assert X.shape == (4, 2) and X.dtype == np.float32
    assert y.shape == (4,) and y.dtype == np.int64
    assert y.tolist() == labels
    assert set(X.ravel().tolist()) == {0.0, 1.0}
    X[0, 0] = 5  # each call returns fresh arrays
    assert make()[0][0, 0] == 0


SYNTHETIC = [datasets.spirals, datasets.moons, datasets.circles]


@pytest.mark.parametrize("make", SYNTHETIC)
def test_synthetic_shapes_dtypes_balance(make):
    X, y = make(n=101, seed=0)
    assert X.shape == (101, 2) and X.dtype == np.float32 and X.flags.c_contiguous
    assert y.shape == (101,) and y.dtype == np.int64
    counts = np.bincount(y)
    assert counts.tolist() == [51, 50]
    assert np.isfinite(X).all()
    assert not np.array_equal(y, np.sort(y))  # shuffled, not sorted by class


@pytest.mark.parametrize("make", SYNTHETIC + [datasets.sine])
def test_seeding(make):
    a = make(n=50, seed=3)
    b = make(n=50, seed=3)
    c = make(n=50, seed=4)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])
    gn.manual_seed(9)
    d = make(n=50)
    gn.manual_seed(9)
    e = make(n=50)
    np.testing.assert_array_equal(d[0], e[0])


def test_spirals_classes():
    X, y = datasets.spirals(n=90, classes=3, noise=0.0, seed=1)
    assert sorted(set(y.tolist())) == [0, 1, 2]
    assert np.abs(X).max() <= 1.0 + 1e-6  # radius in [0, 1] without noise


def test_circles_radii_without_noise():
    X, y = datasets.circles(n=40, noise=0.0, factor=0.3, seed=0)
    r = np.hypot(X[:, 0], X[:, 1])
    np.testing.assert_allclose(r[y == 0], 1.0, rtol=1e-6)
    np.testing.assert_allclose(r[y == 1], 0.3, rtol=1e-6)


def test_sine_is_a_regression_set():
    X, y = datasets.sine(n=64, seed=0)
    assert X.shape == (64, 1) and y.shape == (64, 1)
    assert X.dtype == np.float32 and y.dtype == np.float32
    assert X.min() >= -np.pi and X.max() <= np.pi
    np.testing.assert_allclose(y, np.sin(X), atol=1e-6)
    _, y_noisy = datasets.sine(n=64, noise=0.1, seed=0)
    assert 0.03 < np.std(y_noisy - np.sin(X)) < 0.3


@pytest.mark.parametrize("call", [lambda: datasets.spirals(n=0), lambda: datasets.moons(noise=-1),
                                  lambda: datasets.spirals(classes=1), lambda: datasets.circles(factor=1.5),
                                  lambda: datasets.sine(n=2.5), lambda: datasets.digits(test_size=1.5)])
def test_bad_arguments(call):
    with pytest.raises(ValueError):
        call()


def test_digits_split_and_scaling():
    Xtr, ytr, Xte, yte = split = datasets.digits()
    assert isinstance(split, datasets.Split) and split.X_train is Xtr
    assert Xtr.shape == (1437, 64) and Xte.shape == (360, 64)
    assert Xtr.dtype == Xte.dtype == np.float32
    assert ytr.dtype == yte.dtype == np.int64
    assert set(ytr.tolist()) == set(yte.tolist()) == set(range(10))
    # stratified: every class is ~20% test
    frac = np.bincount(yte, minlength=10) / (np.bincount(ytr, minlength=10) + np.bincount(yte, minlength=10))
    assert np.all(np.abs(frac - 0.2) < 0.02)
    # the scaling is fitted on the train split: train columns are standardised exactly, test ones not
    varying = Xtr.std(axis=0) > 0
    np.testing.assert_allclose(Xtr.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(Xtr.std(axis=0)[varying], 1, atol=1e-4)
    assert np.abs(Xte.mean(axis=0)).max() > 1e-3
    # reproducible, and another seed is another split
    np.testing.assert_array_equal(datasets.digits().X_test, Xte)
    assert not np.array_equal(datasets.digits(seed=1).y_test, yte)
    assert len(datasets.digits(test_size=0.5).y_test) in (898, 899)


def test_digits_without_scikit_learn_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes `import sklearn.datasets` fail
    with pytest.raises(ImportError, match=r'pip install "gpunn\[test\]"') as info:
        datasets.digits()
    assert "scikit-learn" in str(info.value)


def test_load_by_name():
    s = datasets.load("moons", seed=0, n=100)
    assert len(s.X_train) == 80 and len(s.X_test) == 20
    assert s.X_train.dtype == np.float32 and s.y_test.dtype == np.int64
    g = datasets.load("xor")
    np.testing.assert_array_equal(g.X_train, g.X_test)
    with pytest.raises(ValueError, match="unknown data set"):
        datasets.load("mnist")
