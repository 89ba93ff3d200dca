"""The tensor ops added for PyTorch users against PyTorch (CPU): values and every input gradient, in
float32 (PyTorch's float32 tolerances) and float64, on every gpunn backend; max/min(dim), creation
dtypes and in-place results too. Each test skips on its own when torch is absent."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import gpunn as gn

TOL = {np.float32: dict(rtol=1.3e-6, atol=1e-5), np.float64: dict(rtol=1e-7, atol=1e-7)}


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def normal(*shape):
    return lambda rng: rng.standard_normal(shape)


def positive(*shape):
    return lambda rng: rng.uniform(0.2, 3.0, shape)


def mask(*shape):
    return lambda rng: rng.random(shape) > 0.5


def ties(rng):
    return np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]])


# name: (gpunn fn, torch fn (given the torch module), input makers); bool inputs get no gradient
CASES = {
    "sin": (lambda a: a.sin(), lambda T: T.sin, [normal(3, 4)]),
    "cos": (lambda a: gn.cos(a), lambda T: T.cos, [normal(3, 4)]),
    "sign": (lambda a: a.sign() * a, lambda T: lambda a: a.sign() * a, [normal(3, 4)]),
    "exp": (gn.exp, lambda T: T.exp, [normal(3, 4)]),
    "log": (gn.log, lambda T: T.log, [positive(3, 4)]),
    "sqrt": (gn.sqrt, lambda T: T.sqrt, [positive(3, 4)]),
    "abs": (gn.abs, lambda T: T.abs, [normal(3, 4)]),
    "clamp": (lambda a: a.clamp(-0.5, 0.5), lambda T: lambda a: a.clamp(-0.5, 0.5), [normal(4, 5)]),
    "clamp_min": (lambda a: gn.clamp(a, min=0.1), lambda T: lambda a: T.clamp(a, min=0.1), [normal(4, 5)]),
    "where": (lambda a, b, c: gn.where(c, a, b), lambda T: lambda a, b, c: T.where(c, a, b),
              [normal(3, 4), normal(4), mask(3, 1)]),
    "maximum": (gn.maximum, lambda T: T.maximum, [normal(3, 4), normal(4)]),
    "minimum": (gn.minimum, lambda T: T.minimum, [normal(3, 4), normal(3, 1)]),
    "maximum_ties": (gn.maximum, lambda T: T.maximum, [ties, lambda rng: np.full((2, 4), 2.0)]),
    "std": (lambda a: a.std(), lambda T: lambda a: a.std(), [normal(4, 5)]),
    "std_dim": (lambda a: a.std(1, keepdim=True), lambda T: lambda a: a.std(1, keepdim=True), [normal(4, 5)]),
    "var_dims": (lambda a: gn.var(a, (0, 2)), lambda T: lambda a: T.var(a, (0, 2)), [normal(3, 4, 2)]),
    "var_correction0": (lambda a: a.var(0, correction=0), lambda T: lambda a: a.var(0, correction=0),
                        [normal(4, 5)]),
    "cat": (lambda a, b: gn.cat([a, b], 1), lambda T: lambda a, b: T.cat([a, b], 1), [normal(2, 3), normal(2, 5)]),
    "cat_neg": (lambda a, b: gn.cat((a, b), -2), lambda T: lambda a, b: T.cat((a, b), -2),
                [normal(2, 3, 2), normal(2, 1, 2)]),
    "stack": (lambda a, b: gn.stack([a, b], 1), lambda T: lambda a, b: T.stack([a, b], 1), [normal(2, 3), normal(2, 3)]),
    "squeeze": (lambda a: a.squeeze(), lambda T: lambda a: a.squeeze(), [normal(1, 3, 1)]),
    "squeeze_dim": (lambda a: gn.squeeze(a, -1), lambda T: lambda a: T.squeeze(a, -1), [normal(2, 3, 1)]),
    "unsqueeze": (lambda a: a.unsqueeze(1), lambda T: lambda a: a.unsqueeze(1), [normal(2, 3)]),
    "flatten": (lambda a: gn.flatten(a, 1), lambda T: lambda a: T.flatten(a, 1), [normal(2, 3, 4)]),
    "view": (lambda a: a.view(3, 8), lambda T: lambda a: a.view(3, 8), [normal(2, 3, 4)]),
    "permute": (lambda a: gn.permute(a, (2, 0, 1)), lambda T: lambda a: T.permute(a, (2, 0, 1)), [normal(2, 3, 4)]),
    "transpose_2d": (lambda a: a.transpose(0, 1), lambda T: lambda a: a.transpose(0, 1), [normal(2, 3)]),
    "transpose_3d": (lambda a: a.transpose(1, 2), lambda T: lambda a: a.transpose(1, 2), [normal(2, 3, 4)]),
    "transpose_fn": (lambda a: gn.transpose(a, -1, 0), lambda T: lambda a: T.transpose(a, -1, 0), [normal(2, 3, 4)]),
    "max_dim": (lambda a: a.max(1).values, lambda T: lambda a: a.max(1).values, [normal(3, 4)]),
    "min_dim_keepdim": (lambda a: a.min(0, keepdim=True)[0], lambda T: lambda a: a.min(0, keepdim=True)[0],
                        [normal(3, 4)]),
    "max_all_ties": (lambda a: a.max(), lambda T: lambda a: a.max(), [ties]),
    "min_all": (gn.min, lambda T: T.min, [normal(3, 4)]),
    "clone": (lambda a: a.clone() * 2.0, lambda T: lambda a: a.clone() * 2.0, [normal(3)]),
}


def _gpunn(backend, fn, arrays, cot):
    ts = [gn.Tensor(backend.asarray(a), requires_grad=a.dtype.kind == "f") for a in arrays]
    with backend.activate():
        out = fn(*ts)
        out.backward(backend.asarray(cot))
    return backend.to_numpy(out.data), [backend.to_numpy(t.grad.data) if t.requires_grad else None for t in ts]


def _torch(T, fn, arrays, cot):
    ts = [T.tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays]
    out = fn(*ts)
    out.backward(T.tensor(cot))
    return out.detach().numpy(), [t.grad.numpy() if t.requires_grad else None for t in ts]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch(torch, backend, name, dtype):
    fn, tfn, makers = CASES[name]
    tfn = tfn(torch)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    arrays = [np.asarray(m(rng)) for m in makers]
    arrays = [a.astype(dtype) if a.dtype.kind == "f" else a for a in arrays]
    t_shape = tuple(tfn(*[torch.tensor(a) for a in arrays]).shape)
    cot = rng.standard_normal(t_shape).astype(dtype)
    expected, t_grads = _torch(torch, tfn, arrays, cot)
    got, g_grads = _gpunn(backend, fn, arrays, cot)
    assert got.shape == expected.shape and got.dtype == expected.dtype == dtype
    np.testing.assert_allclose(got, expected, err_msg="forward", **TOL[dtype])
    for i, (g, t) in enumerate(zip(g_grads, t_grads)):
        assert (g is None) == (t is None)
        if g is not None:
            assert g.dtype == dtype and g.shape == t.shape
            np.testing.assert_allclose(g, t, err_msg=f"gradient of input {i}", **TOL[dtype])


def test_max_min_dim_indices_match_torch(torch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    for op in ("max", "min"):
        for dim in (0, 1, -1):
            for keepdim in (False, True):
                g = getattr(gn.tensor(x), op)(dim, keepdim)
                t = getattr(torch.tensor(x), op)(dim, keepdim)
                np.testing.assert_array_equal(g.indices.numpy(), t.indices.numpy())
                np.testing.assert_array_equal(g.values.numpy(), t.values.numpy())
                assert g.indices.dtype == np.int64
        for keepdim in (False, True):
            arg = "arg" + op
            np.testing.assert_array_equal(getattr(gn.tensor(x), arg)(1, keepdim=keepdim).numpy(),
                                          getattr(torch.tensor(x), arg)(1, keepdim=keepdim).numpy())
        assert getattr(gn.tensor(x), "arg" + op)().item() == getattr(torch.tensor(x), "arg" + op)().item()


def test_creation_dtypes_match_torch(torch):
    pairs = [
        (gn.arange(1, 2, 0.25), torch.arange(1, 2, 0.25)),
        (gn.arange(5), torch.arange(5)),
        (gn.arange(2, 11, 3), torch.arange(2, 11, 3)),
        (gn.arange(0.0, 1.0, 0.1), torch.arange(0.0, 1.0, 0.1)),
        (gn.linspace(-1, 1, 7), torch.linspace(-1, 1, 7)),
        (gn.full((2, 2), 3), torch.full((2, 2), 3)),
        (gn.full((2,), 1.5), torch.full((2,), 1.5)),
        (gn.eye(3, 2), torch.eye(3, 2)),
        (gn.zeros(2, 3), torch.zeros(2, 3)),
        (gn.ones(2, dtype=gn.int64), torch.ones(2, dtype=torch.int64)),
        (gn.tensor([1, 2]), torch.tensor([1, 2])),
        (gn.tensor([1.0, 2]), torch.tensor([1.0, 2])),
        (gn.tensor([True]), torch.tensor([True])),
    ]
    for g, t in pairs:
        assert g.shape == tuple(t.shape)
        assert g.dtype == t.numpy().dtype, (g, t)
        np.testing.assert_allclose(g.numpy(), t.numpy(), rtol=1e-6, atol=1e-7)


def test_inplace_results_match_torch(torch):
    x = np.array([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]], np.float32)
    v = np.array([2.0, 0.5, -1.0], np.float32)
    g, t = gn.tensor(x), torch.tensor(x)
    for a in (g, t):
        a += 1.0
        a *= 2.0
        a -= (gn.tensor(v) if a is g else torch.tensor(v))
        a /= 4.0
    g.add_(gn.tensor(v), alpha=3.0).sub_(0.5)
    t.add_(torch.tensor(v), alpha=3.0).sub_(0.5)
    np.testing.assert_allclose(g.numpy(), t.numpy(), rtol=1.3e-6, atol=1e-5)
    w_g = gn.tensor(x, requires_grad=True)
    w_t = torch.tensor(x, requires_grad=True)
    (w_g * w_g).sum().backward()
    (w_t * w_t).sum().backward()
    with gn.no_grad():
        w_g -= 0.1 * w_g.grad
    with torch.no_grad():
        w_t -= 0.1 * w_t.grad
    np.testing.assert_allclose(w_g.numpy(), w_t.detach().numpy(), rtol=1.3e-6, atol=1e-5)
