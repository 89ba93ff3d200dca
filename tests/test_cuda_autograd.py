"""The CUDA kernels behind Tensor code: every backward against float64 finite differences
(gn.gradcheck through the autograd ops), and a few training steps equal to the CPU's.

On a GPU the tensors are CuPy arrays and ops_for() returns CudaOps by itself. Without one, the
tests route NumPy arrays to CudaOps (Numba's simulator runs the kernels), so exactly the same
layer, loss and optimizer code is exercised.
"""
from __future__ import annotations

import numpy as np
import pytest

import gpunn as gn
from cuda_util import route_numpy_to_cuda_ops, target  # noqa: F401  (target is a fixture)
from gpunn import functional as Fn
from gpunn.kernels import ACTIVATIONS, ops_for
from gpunn.kernels.cuda_ops import CudaOps

GRAD = dict(eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.fixture
def cuda(target, monkeypatch):
    """The target, with ops_for() answering CudaOps for its arrays."""
    if not target.is_gpu:
        route_numpy_to_cuda_ops(monkeypatch)
    return target


def T(cuda, a, grad=True):
    return gn.Tensor(cuda.asarray(np.asarray(a)), requires_grad=grad)


def test_tensors_dispatch_to_cuda_ops(cuda):
    x = T(cuda, np.ones((2, 3)))
    assert isinstance(ops_for(x.data), CudaOps)


@pytest.mark.parametrize("impl", ["fused", "cublas"])
@pytest.mark.parametrize("act", list(ACTIVATIONS) + ["leaky_relu-0.5"])
def test_dense_gradcheck(cuda, monkeypatch, act, impl):
    monkeypatch.setenv("GPUNN_DENSE_IMPL", impl)
    name, slope = (act.split("-")[0], -float(act.split("-")[1])) if "-" in act else (act, 0.01)
    rng = np.random.default_rng(0)
    x = T(cuda, rng.standard_normal((3, 4)))
    W = T(cuda, rng.standard_normal((2, 4)) * 0.5)
    b = T(cuda, rng.standard_normal(2) * 0.1)
    assert gn.gradcheck(lambda x, W, b: Fn.dense(x, W, b, activation=name, negative_slope=slope), [x, W, b], **GRAD)


def test_dense_gradcheck_without_bias_and_frozen_input(cuda):
    rng = np.random.default_rng(1)
    x = T(cuda, rng.standard_normal((5, 3)), grad=False)  # first layer: no dx asked for
    W = T(cuda, rng.standard_normal((4, 3)))
    assert gn.gradcheck(lambda x, W: Fn.dense(x, W, None, activation="gelu"), [x, W], **GRAD)


@pytest.mark.parametrize("act", [n for n in ACTIVATIONS if n != "identity"])
def test_activation_gradcheck(cuda, act):
    from gpunn.autograd.functions import activation

    x = T(cuda, np.random.default_rng(2).standard_normal((3, 4)) + 0.05)
    assert gn.gradcheck(lambda x: activation(x, act, 0.1), [x], **GRAD)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_gradcheck(cuda, reduction):
    rng = np.random.default_rng(3)
    x = T(cuda, rng.standard_normal((4, 5)) * 2)
    labels = gn.Tensor(cuda.asarray(np.array([1, -100, 4, 0])))
    assert gn.gradcheck(lambda x: Fn.cross_entropy(x, labels, reduction=reduction), [x], **GRAD)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_weight_and_smoothing_gradcheck(cuda, reduction):
    rng = np.random.default_rng(5)
    x = T(cuda, rng.standard_normal((4, 5)) * 2)
    labels = gn.Tensor(cuda.asarray(np.array([1, -100, 4, 0])))
    w = gn.Tensor(cuda.asarray(rng.uniform(0.2, 3.0, 5)))
    assert gn.gradcheck(lambda x: Fn.cross_entropy(x, labels, w, reduction=reduction, label_smoothing=0.3), [x],
                        **GRAD)


@pytest.mark.parametrize("pos_weight", [None, "per_class"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_bce_with_logits_gradcheck(cuda, reduction, pos_weight):
    rng = np.random.default_rng(4)
    x = T(cuda, rng.standard_normal((3, 4)) * 3)
    y = T(cuda, rng.uniform(0, 1, (3, 4)))
    pw = None if pos_weight is None else gn.Tensor(cuda.asarray(rng.uniform(0.5, 2.0, 4)))
    assert gn.gradcheck(lambda x, y: Fn.binary_cross_entropy_with_logits(x, y, reduction=reduction, pos_weight=pw),
                        [x, y], **GRAD)


@pytest.mark.parametrize("loss", ["mse_loss", "l1_loss"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_pointwise_loss_gradcheck(cuda, loss, reduction):
    rng = np.random.default_rng(5)
    x = T(cuda, rng.standard_normal((3, 4)))
    y = T(cuda, rng.standard_normal((3, 4)))
    assert gn.gradcheck(lambda x, y: getattr(Fn, loss)(x, y, reduction=reduction), [x, y], **GRAD)


def _mlp(seed, dtype):
    gn.manual_seed(seed)
    model = gn.nn.Sequential(gn.nn.Dense(4, 6, activation="gelu"), gn.nn.Dense(6, 5, activation="tanh"),
                             gn.nn.Linear(5, 3))
    return model.to(dtype) if dtype != np.float32 else model


@pytest.mark.parametrize("opt", ["adam", "adamw", "sgd", "rmsprop", "adagrad"])
def test_training_steps_equal_the_cpu(target, monkeypatch, opt):
    """Three steps of an MLP through the CUDA kernels equal the same steps through CpuOps (float64)."""
    from gpunn.cli import make_optimizer

    rng = np.random.default_rng(6)
    X = rng.standard_normal((7, 4))
    y = rng.integers(0, 3, 7)
    loss_fn = gn.nn.CrossEntropyLoss()

    def train(model, to_device):
        o = make_optimizer(opt, model.parameters(), lr=0.05, weight_decay=0.01)
        for _ in range(3):
            o.zero_grad()
            loss = loss_fn(model(gn.Tensor(to_device(X))), gn.Tensor(to_device(y)))
            loss.backward()
            o.step()
        return [target.get(p.data) for p in model.parameters()], float(loss.data)

    cpu_params, cpu_loss = train(_mlp(0, np.float64), lambda a: a)
    model = _mlp(0, np.float64)
    if target.is_gpu:
        model = model.to("gpu")
    else:
        route_numpy_to_cuda_ops(monkeypatch)
    gpu_params, gpu_loss = train(model, target.asarray)
    assert abs(gpu_loss - cpu_loss) <= 1e-12 * max(1.0, abs(cpu_loss))
    for a, c in zip(gpu_params, cpu_params):
        np.testing.assert_allclose(a, c, rtol=1e-10, atol=1e-12)
