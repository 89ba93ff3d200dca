"""docs/extending.md's worked example for a loss, run: log-cosh, log(cosh(x - y)), added in ONE
place (a `register_loss` call with its scalar formulas) flows to the CPU kernels, the CUDA kernels
in Numba's simulator, `ops_for(x).loss_forward/backward`, autograd (`functional.log_cosh_loss`,
weights and reductions), `nn.LogCoshLoss` and the cost model; checked against a float64 reference
and PyTorch (as an expression of torch ops) written in this file."""
from __future__ import annotations

import math

import numpy as np
import pytest

import gpunn as gn
from cuda_util import target  # noqa: F401  (a fixture)
from gpunn import nn
from gpunn.kernels import losses, losses_cuda, ops_for, registry
from gpunn.kernels.registry import ONE, TWO  # noqa: F401  (the formulas' constants, typed per dtype)
from torch_util import requires_torch

# --- the whole addition (what docs/extending.md shows going into gpunn/kernels/registry.py) -------
LOG_2 = math.log(2.0)


def log_cosh_loss(x, y, w, a):
    d = abs(x - y)
    return d + log1p(exp(-TWO * d)) - LOG_2  # noqa: F821  (log1p, exp: bound per backend) no overflow


def log_cosh_grad(x, y, w, a):
    return tanh(x - y)  # noqa: F821


@pytest.fixture
def log_cosh():
    m = registry.register_loss("log_cosh", log_cosh_loss, log_cosh_grad, None, (6, 3, 0), module="LogCoshLoss",
                               doc="log(cosh(x - y))")
    try:
        yield m
    finally:
        registry.unregister_loss("log_cosh")


# --- its test case: a float64 reference written from the definition ----------------------------

def log_cosh64(x, y):
    d = np.asarray(x, np.float64) - y
    return np.log(np.cosh(d)), np.tanh(d)


X = np.concatenate([np.linspace(-20, 20, 41), [0.0, 300.0]])
Y = np.concatenate([np.linspace(3, -3, 41), [0.0, -300.0]])  # |x - y| = 600: cosh overflows, the loss does not
TOL = {np.float32: dict(rtol=3e-6, atol=3e-6), np.float64: dict(rtol=1e-13, atol=1e-14)}
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])


@DTYPES
def test_a_new_loss_runs_on_the_cpu_kernels(log_cosh, dtype):
    x, y = X.astype(dtype), Y.astype(dtype)
    g = np.random.default_rng(0).standard_normal(x.shape).astype(dtype)
    want, dwant = log_cosh64(x[:-1], y[:-1])
    loss = ops_for(x).loss_forward("log_cosh", x, y)
    assert loss.dtype == dtype
    np.testing.assert_allclose(loss[:-1], want, **TOL[dtype])
    np.testing.assert_allclose(loss[-1], 600 - math.log(2), rtol=1e-7)
    np.testing.assert_allclose(ops_for(x).loss_backward("log_cosh", g, x, y)[:-1], g[:-1] * dwant, **TOL[dtype])
    assert losses.loss_forward_cost("log_cosh", x, y) == (6 * x.size, 3 * x.nbytes)


@DTYPES
def test_a_new_loss_runs_on_the_cuda_kernels(log_cosh, target, dtype):  # noqa: F811
    x, y = X[:8].astype(dtype), Y[:8].astype(dtype)
    g = np.linspace(-1, 1, 8).astype(dtype)
    got = target.get(losses_cuda.loss_forward("log_cosh", target.asarray(x), target.asarray(y)))
    np.testing.assert_allclose(got, log_cosh64(x, y)[0], **TOL[dtype])
    got = target.get(losses_cuda.loss_backward("log_cosh", target.asarray(g), target.asarray(x), target.asarray(y)))
    np.testing.assert_allclose(got, g * log_cosh64(x, y)[1], **TOL[dtype])


def test_a_new_loss_in_functional_autograd_and_nn(log_cosh):
    rng = np.random.default_rng(1)
    x = gn.tensor(rng.standard_normal((4, 3)), requires_grad=True)
    y = gn.tensor(rng.standard_normal((4, 3)), requires_grad=True)
    w = rng.uniform(0.5, 2, (4, 3))
    f = gn.nn.functional.log_cosh_loss
    assert gn.gradcheck(lambda a, b: f(a, b, weight=w), [x, y])
    assert gn.gradcheck(lambda a, b: f(a, b, reduction="sum"), [x, y])
    module = nn.LogCoshLoss(reduction="sum")
    assert repr(module) == "LogCoshLoss()" and isinstance(module, nn.loss.ElementwiseLossModule)
    np.testing.assert_allclose(module(x, y).item(), log_cosh64(x.numpy(), y.numpy())[0].sum(), rtol=1e-13)
    with pytest.raises(TypeError, match=r"unexpected option\(s\) \['delta'\]; valid: none"):
        nn.LogCoshLoss(delta=1.0)


@requires_torch
def test_a_new_loss_matches_torch(log_cosh):
    import torch

    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((5, 4)).astype(np.float32) * 3, rng.standard_normal((5, 4)).astype(np.float32)
    X = torch.tensor(x, requires_grad=True)
    want = torch.log(torch.cosh(X - torch.tensor(y))).mean()
    want.backward()
    a = gn.tensor(x, requires_grad=True)
    got = gn.nn.functional.log_cosh_loss(a, gn.tensor(y))
    got.backward()
    np.testing.assert_allclose(got.item(), want.item(), rtol=1e-5)
    np.testing.assert_allclose(a.grad.numpy(), X.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_after_unregister_the_loss_is_gone():
    assert "log_cosh" not in registry.LOSSES
    with pytest.raises(AttributeError):
        gn.nn.functional.log_cosh_loss  # noqa: B018
    with pytest.raises(AttributeError):
        nn.LogCoshLoss  # noqa: B018
    with pytest.raises(ValueError, match="unknown loss 'log_cosh'"):
        ops_for(np.zeros(2)).loss_forward("log_cosh", np.zeros(2), np.zeros(2))
