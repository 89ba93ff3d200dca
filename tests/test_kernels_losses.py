"""Elementwise loss kernels (BCE-with-logits, MSE, L1) on every backend: BCE equals ATen's formula
(also at logits +-100 and beyond), its gradient is sigmoid(x) - y, L1's gradient is 0 at x == y,
no floating-point warnings, inputs never modified."""
from __future__ import annotations

import numpy as np
import pytest

from harness import strict_numerics

TOL = {np.float32: dict(rtol=2e-6, atol=2e-6), np.float64: dict(rtol=1e-14, atol=1e-15)}
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])


def softplus64(t):
    """log(1 + exp(t)) in float64, exact for any t (max(t, 0) + log1p(exp(-|t|)))."""
    return np.maximum(t, 0) + np.log1p(np.exp(-np.abs(t)))


def bce64(x, y, pw=None):
    """-(w y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))), written from the definition with
    -log sigmoid(x) = softplus(-x) and -log(1 - sigmoid(x)) = softplus(x); float64. (Not ATen's
    max_val form that the kernels use: a different derivation of the same function.)"""
    x, y = x.astype(np.float64), y.astype(np.float64)
    w = 1.0 if pw is None else pw.astype(np.float64)
    return w * y * softplus64(-x) + (1 - y) * softplus64(x)


def sigmoid64(x):
    x = x.astype(np.float64)
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def run(backend, name, *arrays, pw=None, g=None):
    ops = backend.ops()
    A = [backend.asarray(a) for a in arrays]
    kw = {} if name != "bce_with_logits" else {"pos_weight": None if pw is None else backend.asarray(pw)}
    with strict_numerics():
        fwd = getattr(ops, f"{name}_forward")(*A, **kw)
        G = backend.asarray(np.ones_like(arrays[0]) if g is None else g)
        bwd = getattr(ops, f"{name}_backward")(G, *A, **kw)
    return backend.to_numpy(fwd), backend.to_numpy(bwd)


@DTYPES
@pytest.mark.parametrize("pos_weight", [None, "vector", "scalar"])
@pytest.mark.parametrize("shape", [(0, 3), (1, 3), (6, 3)], ids=str)
def test_bce_with_logits_matches_aten(backend, shape, pos_weight, dtype):
    rng = np.random.default_rng(shape[0])
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    y = rng.uniform(0, 1, shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    pw = {None: None, "vector": np.array([0.5, 1.0, 3.0], dtype), "scalar": np.array(2.5, dtype)}[pos_weight]
    loss, dx = run(backend, "bce_with_logits", x, y, pw=pw, g=g)
    assert loss.shape == dx.shape == shape and loss.dtype == dx.dtype == dtype
    np.testing.assert_allclose(loss, bce64(x, y, pw), **TOL[dtype])
    s = sigmoid64(x)
    w = 1.0 if pw is None else 1 + (pw.astype(np.float64) - 1) * y
    pwv = 1.0 if pw is None else pw.astype(np.float64)
    np.testing.assert_allclose(dx, g * (w * s - pwv * y), **TOL[dtype])


@DTYPES
def test_bce_at_plus_minus_100_and_beyond(backend, dtype):
    """Large logits: equal to the float64 definition (no log(0), no overflow), gradient sigmoid(x) - y."""
    x = np.array([-1e4, -1000.0, -100.0, -100.0, 100.0, 100.0, 1000.0, 1e4], dtype)
    y = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.3, 1.0], dtype)
    loss, dx = run(backend, "bce_with_logits", x, y)
    want = bce64(x, y)
    assert np.isfinite(loss).all() and np.isfinite(dx).all()
    # atol: the exact loss there is exp(-100) = 3.7e-44, below 1's rounding in log(1 + exp(-100))
    np.testing.assert_allclose(loss, want, rtol=1e-7 if dtype == np.float32 else 1e-15, atol=1e-40)
    # the values themselves: 0 where the target agrees (exp(-100) is below 1's rounding), |x| where not
    np.testing.assert_allclose(loss, [0, 1000, 0, 100, 100, 0, 700, 0], rtol=1e-6, atol=0)
    np.testing.assert_allclose(dx, sigmoid64(x) - y, rtol=1e-7, atol=np.finfo(dtype).tiny)  # subnormals are coarse


@DTYPES
def test_bce_with_logits_matches_torch(backend, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(40) * 6, [-100.0, 100.0, 0.0]]).astype(dtype).reshape(-1, 1)
    y = rng.uniform(0, 1, x.shape).astype(dtype)
    pw = np.array([2.5], dtype)
    X = torch.tensor(x, requires_grad=True)
    want = torch.nn.functional.binary_cross_entropy_with_logits(X, torch.tensor(y), pos_weight=torch.tensor(pw),
                                                                reduction="none")
    want.sum().backward()
    loss, dx = run(backend, "bce_with_logits", x, y, pw=pw)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(loss, want.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, X.grad.numpy(), **tol)


@DTYPES
def test_mse_and_l1(backend, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3)).astype(dtype)
    y = rng.standard_normal((4, 3)).astype(dtype)
    g = rng.standard_normal((4, 3)).astype(dtype)
    d = x.astype(np.float64) - y
    loss, dx = run(backend, "mse", x, y, g=g)
    assert loss.dtype == dx.dtype == dtype
    np.testing.assert_allclose(loss, d * d, **TOL[dtype])
    np.testing.assert_allclose(dx, 2 * d * g, **TOL[dtype])
    loss, dx = run(backend, "l1", x, y, g=g)
    assert loss.dtype == dx.dtype == dtype
    np.testing.assert_allclose(loss, np.abs(d), **TOL[dtype])
    np.testing.assert_allclose(dx, np.sign(d) * g, **TOL[dtype])


def test_l1_gradient_is_zero_where_equal(backend):
    x = np.array([1.0, 2.0, -3.0, 0.0])
    y = np.array([1.0, 1.0, -3.0, 0.0])
    _, dx = run(backend, "l1", x, y)
    np.testing.assert_array_equal(dx, [0.0, 1.0, 0.0, 0.0])


@pytest.mark.parametrize("name", ["bce_with_logits", "mse", "l1"])
def test_loss_kernels_do_not_modify_inputs(backend, name):
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal((3, 4)).astype(np.float32), rng.uniform(0, 1, (3, 4)).astype(np.float32)]
    g = rng.standard_normal((3, 4)).astype(np.float32)
    copies = [a.copy() for a in arrays + [g]]
    ops = backend.ops()
    A = [backend.asarray(a) for a in arrays]
    G = backend.asarray(g)
    getattr(ops, f"{name}_forward")(*A)
    getattr(ops, f"{name}_backward")(G, *A)
    for a, c in zip(A + [G], copies):
        np.testing.assert_array_equal(backend.to_numpy(a), c)


@pytest.mark.parametrize("name", ["bce_with_logits", "mse", "l1"])
def test_loss_kernels_accept_noncontiguous_and_broadcast_upstream(backend, name):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 5))
    y = rng.uniform(0, 1, (4, 5))
    base = run(backend, name, x, y)
    moved = run(backend, name, np.asfortranarray(x), np.repeat(y, 2, axis=1)[:, ::2])
    for a, b in zip(moved, base):
        np.testing.assert_allclose(a, b, rtol=1e-15)
    # a reduced loss sends one upstream value broadcast over the elements
    ops = backend.ops()
    g = backend.xp.broadcast_to(backend.xp.asarray(0.5), x.shape)
    got = backend.to_numpy(getattr(ops, f"{name}_backward")(g, backend.asarray(x), backend.asarray(y)))
    np.testing.assert_allclose(got, 0.5 * base[1], rtol=1e-15)
