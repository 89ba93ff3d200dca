"""Forward and backward of every op, activation and loss against PyTorch (CPU) in float32.

Each case builds the same inputs for both libraries, runs forward, then backward with the same
random cotangent, and compares outputs and every input gradient to float32 tolerances, on every
gpunn backend."""
from __future__ import annotations

import functools
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as TF  # noqa: E402

import gpunn as gn  # noqa: E402
from gpunn import functional as F  # noqa: E402
from gpunn.kernels import ACTIVATIONS  # noqa: E402
from references import TORCH_ACTIVATIONS  # noqa: E402

RTOL, ATOL = 1.3e-6, 1e-5  # torch.testing.assert_close defaults for float32


def normal(*shape, scale=1.0):
    return lambda rng: (rng.standard_normal(shape) * scale).astype(np.float32)


def positive(*shape):
    return lambda rng: rng.uniform(0.2, 3.0, shape).astype(np.float32)


def uniform01(*shape):
    return lambda rng: rng.uniform(0, 1, shape).astype(np.float32)


def labels(n, c, ignore=()):
    def make(rng):
        y = rng.integers(0, c, n)
        y[list(ignore)] = -100
        return y
    return make


def distinct(*shape):
    return lambda rng: (rng.permutation(int(np.prod(shape))).reshape(shape) / 5.0).astype(np.float32)


# name: (gpunn fn, torch fn, input makers); integer inputs get no gradient
CASES = {
    "add_broadcast": (lambda a, b: a + b, lambda a, b: a + b, [normal(4, 3), normal(3)]),
    "sub_broadcast": (lambda a, b: a - b, lambda a, b: a - b, [normal(4, 1), normal(1, 3)]),
    "mul_broadcast": (lambda a, b: a * b, lambda a, b: a * b, [normal(2, 4, 3), normal(4, 1)]),
    "div_broadcast": (lambda a, b: a / b, lambda a, b: a / b, [normal(4, 3), positive(3)]),
    "rsub_scalar": (lambda a: 2.0 - a, lambda a: 2.0 - a, [normal(5)]),
    "rdiv_scalar": (lambda a: 3.0 / a, lambda a: 3.0 / a, [positive(5)]),
    "neg": (lambda a: -a, lambda a: -a, [normal(3, 2)]),
    "pow2": (lambda a: a ** 2, lambda a: a ** 2, [normal(6)]),
    "pow_half": (lambda a: a ** 0.5, lambda a: a ** 0.5, [positive(6)]),
    "pow_neg": (lambda a: a ** -1.5, lambda a: a ** -1.5, [positive(6)]),
    "exp": (lambda a: a.exp(), torch.exp, [normal(3, 4)]),
    "log": (lambda a: a.log(), torch.log, [positive(3, 4)]),
    "sqrt": (lambda a: a.sqrt(), torch.sqrt, [positive(3, 4)]),
    "abs": (lambda a: a.abs(), torch.abs, [normal(3, 4)]),
    "matmul_1d_1d": (lambda a, b: a @ b, lambda a, b: a @ b, [normal(5), normal(5)]),
    "matmul_2d_1d": (lambda a, b: a @ b, lambda a, b: a @ b, [normal(3, 5), normal(5)]),
    "matmul_1d_2d": (lambda a, b: a @ b, lambda a, b: a @ b, [normal(5), normal(5, 2)]),
    "matmul_2d": (lambda a, b: a @ b, lambda a, b: a @ b, [normal(3, 5), normal(5, 2)]),
    "matmul_batched": (lambda a, b: a @ b, lambda a, b: a @ b, [normal(4, 3, 5), normal(4, 5, 2)]),
    "matmul_broadcast": (lambda a, b: a @ b, lambda a, b: a @ b, [normal(2, 1, 3, 5), normal(3, 5, 2)]),
    "sum_all": (lambda a: a.sum(), lambda a: a.sum(), [normal(3, 4)]),
    "sum_dim": (lambda a: a.sum(dim=1, keepdim=True), lambda a: a.sum(dim=1, keepdim=True), [normal(3, 4, 2)]),
    "sum_dims": (lambda a: a.sum(dim=(0, 2)), lambda a: a.sum(dim=(0, 2)), [normal(3, 4, 2)]),
    "mean_dim": (lambda a: a.mean(dim=-1), lambda a: a.mean(dim=-1), [normal(3, 4)]),
    "mean_all": (lambda a: a.mean(), lambda a: a.mean(), [normal(3, 4)]),
    "amax_dim": (lambda a: a.amax(dim=1), lambda a: a.amax(dim=1), [distinct(3, 4)]),
    "max_all": (lambda a: a.max(), lambda a: a.max(), [distinct(3, 4)]),
    "amax_ties": (lambda a: a.amax(dim=1), lambda a: a.amax(dim=1),
                  [lambda rng: np.array([[1, 3, 3, 0], [2, 2, 2, 2]], np.float32)]),
    "reshape": (lambda a: a.reshape(4, 3) * 2.0, lambda a: a.reshape(4, 3) * 2.0, [normal(2, 6)]),
    "permute": (lambda a: a.permute(2, 0, 1), lambda a: a.permute(2, 0, 1), [normal(2, 3, 4)]),
    "transpose_T": (lambda a: a.T, lambda a: a.T, [normal(2, 3)]),
    "flatten": (lambda a: a.flatten(1), lambda a: a.flatten(1), [normal(2, 3, 4)]),
    "getitem_basic": (lambda a: a[1:, ::2], lambda a: a[1:, ::2], [normal(4, 5)]),
    "getitem_repeated": (lambda a: a[[0, 2, 0, 0]], lambda a: a[[0, 2, 0, 0]], [normal(3, 2)]),
    "getitem_mask": (lambda a: a[np.array([True, False, True])],
                     lambda a: a[torch.tensor([True, False, True])], [normal(3, 2)]),
    "gather": (lambda a, i: F.gather(a, 1, i), lambda a, i: torch.gather(a, 1, i),
               [normal(3, 4), lambda rng: rng.integers(0, 4, (3, 6))]),
    "relu": (F.relu, TF.relu, [normal(4, 5)]),
    "leaky_relu": (F.leaky_relu, TF.leaky_relu, [normal(4, 5)]),
    "leaky_relu_0.2": (lambda a: F.leaky_relu(a, 0.2), lambda a: TF.leaky_relu(a, 0.2), [normal(4, 5)]),
    "gelu": (F.gelu, TF.gelu, [normal(4, 5, scale=2)]),
    "gelu_tanh": (lambda a: F.gelu(a, approximate="tanh"), lambda a: TF.gelu(a, approximate="tanh"),
                  [normal(4, 5, scale=2)]),
    "sigmoid": (F.sigmoid, torch.sigmoid, [normal(4, 5, scale=3)]),
    "sigmoid_extreme": (F.sigmoid, torch.sigmoid,
                        [lambda rng: np.array([-1000, -100, -20, 0, 20, 100, 1000], np.float32)]),
    "tanh": (F.tanh, torch.tanh, [normal(4, 5, scale=2)]),
    "softmax": (lambda a: F.softmax(a, dim=1), lambda a: TF.softmax(a, dim=1), [normal(4, 5, scale=3)]),
    "softmax_dim0": (lambda a: F.softmax(a, dim=0), lambda a: TF.softmax(a, dim=0), [normal(4, 5)]),
    "log_softmax": (lambda a: F.log_softmax(a, dim=-1), lambda a: TF.log_softmax(a, dim=-1),
                    [normal(4, 5, scale=3)]),
    "log_softmax_extreme": (lambda a: F.log_softmax(a, dim=1), lambda a: TF.log_softmax(a, dim=1),
                            [lambda rng: np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], np.float32)]),
    "linear": (F.linear, TF.linear, [normal(4, 3), normal(5, 3), normal(5)]),
    "cross_entropy": (F.cross_entropy, TF.cross_entropy, [normal(6, 5, scale=2), labels(6, 5)]),
    "cross_entropy_ignore": (F.cross_entropy, TF.cross_entropy, [normal(6, 5, scale=2), labels(6, 5, (1, 4))]),
    "cross_entropy_sum": (lambda x, y: F.cross_entropy(x, y, reduction="sum"),
                          lambda x, y: TF.cross_entropy(x, y, reduction="sum"), [normal(6, 5), labels(6, 5, (2,))]),
    "cross_entropy_none": (lambda x, y: F.cross_entropy(x, y, reduction="none"),
                           lambda x, y: TF.cross_entropy(x, y, reduction="none"), [normal(6, 5), labels(6, 5, (2,))]),
    "cross_entropy_ignore_3": (lambda x, y: F.cross_entropy(x, y, ignore_index=3),
                               lambda x, y: TF.cross_entropy(x, y, ignore_index=3), [normal(8, 5), labels(8, 5)]),
    "cross_entropy_extreme": (F.cross_entropy, TF.cross_entropy,
                              [lambda rng: np.array([[1e4, -1e4, 0], [-1e4, 1e4, 5]], np.float32),
                               lambda rng: np.array([1, 1])]),
}
for _red in ("mean", "sum", "none"):
    CASES[f"mse_{_red}"] = (lambda x, y, r=_red: F.mse_loss(x, y, reduction=r),
                            lambda x, y, r=_red: TF.mse_loss(x, y, reduction=r), [normal(4, 3), normal(4, 3)])
    CASES[f"l1_{_red}"] = (lambda x, y, r=_red: F.l1_loss(x, y, reduction=r),
                           lambda x, y, r=_red: TF.l1_loss(x, y, reduction=r), [normal(4, 3), normal(4, 3)])
    CASES[f"bce_{_red}"] = (lambda x, y, r=_red: F.binary_cross_entropy_with_logits(x, y, reduction=r),
                            lambda x, y, r=_red: TF.binary_cross_entropy_with_logits(x, y, reduction=r),
                            [normal(4, 3, scale=3), uniform01(4, 3)])
    CASES[f"bce_pos_weight_{_red}"] = (
        lambda x, y, r=_red: F.binary_cross_entropy_with_logits(
            x, y, reduction=r, pos_weight=gn.tensor(np.array([0.5, 2.0, 3.0], np.float32))),
        lambda x, y, r=_red: TF.binary_cross_entropy_with_logits(
            x, y, reduction=r, pos_weight=torch.tensor([0.5, 2.0, 3.0])),
        [normal(4, 3, scale=3), uniform01(4, 3)])
_W43 = np.random.default_rng(43).uniform(0.5, 2.0, (4, 3)).astype(np.float32)  # a per-element weight
for _red in ("mean", "sum", "none"):
    CASES[f"huber_{_red}"] = (lambda x, y, r=_red: F.huber_loss(x, y, reduction=r, delta=0.5),
                              lambda x, y, r=_red: TF.huber_loss(x, y, reduction=r, delta=0.5),
                              [normal(4, 3), normal(4, 3)])
    CASES[f"smooth_l1_{_red}"] = (lambda x, y, r=_red: F.smooth_l1_loss(x, y, reduction=r, beta=0.5),
                                  lambda x, y, r=_red: TF.smooth_l1_loss(x, y, reduction=r, beta=0.5),
                                  [normal(4, 3), normal(4, 3)])
    CASES[f"binary_cross_entropy_{_red}"] = (lambda x, y, r=_red: F.binary_cross_entropy(x, y, reduction=r),
                                             lambda x, y, r=_red: TF.binary_cross_entropy(x, y, reduction=r),
                                             [lambda rng: rng.uniform(0.05, 0.95, (4, 3)).astype(np.float32),
                                              uniform01(4, 3)])
    for _name, _g, _t in (("mse", F.mse_loss, TF.mse_loss), ("l1", F.l1_loss, TF.l1_loss),
                          ("huber", F.huber_loss, TF.huber_loss)):
        CASES[f"{_name}_weight_{_red}"] = (lambda x, y, r=_red, f=_g: f(x, y, reduction=r, weight=_W43),
                                           lambda x, y, r=_red, f=_t: f(x, y, reduction=r, weight=torch.tensor(_W43)),
                                           [normal(4, 3), normal(4, 3)])
    CASES[f"binary_cross_entropy_weight_{_red}"] = (
        lambda x, y, r=_red: F.binary_cross_entropy(x, y, weight=_W43[0], reduction=r),
        lambda x, y, r=_red: TF.binary_cross_entropy(x, y, weight=torch.tensor(_W43[0]), reduction=r),
        [lambda rng: rng.uniform(0.05, 0.95, (4, 3)).astype(np.float32), uniform01(4, 3)])
    CASES[f"bce_weight_pos_weight_{_red}"] = (
        lambda x, y, r=_red: F.binary_cross_entropy_with_logits(x, y, weight=_W43, reduction=r,
                                                                pos_weight=np.array([0.5, 2.0, 3.0], np.float32)),
        lambda x, y, r=_red: TF.binary_cross_entropy_with_logits(x, y, weight=torch.tensor(_W43), reduction=r,
                                                                 pos_weight=torch.tensor([0.5, 2.0, 3.0])),
        [normal(4, 3, scale=3), uniform01(4, 3)])
CASES["smooth_l1_beta_0"] = (lambda x, y: F.smooth_l1_loss(x, y, beta=0.0),
                             lambda x, y: TF.smooth_l1_loss(x, y, beta=0.0), [normal(4, 3), normal(4, 3)])
CASES["binary_cross_entropy_clamped"] = (F.binary_cross_entropy, TF.binary_cross_entropy,
                                         [lambda rng: np.array([0.0, 1.0, 1e-30, 0.5], np.float32),
                                          lambda rng: np.array([1.0, 0.0, 1.0, 0.5], np.float32)])
CASES["bce_extreme"] = (lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction="none"),
                        lambda x, y: TF.binary_cross_entropy_with_logits(x, y, reduction="none"),
                        [lambda rng: np.array([-1e4, -100, -100, 100, 100, 1e4], np.float32),
                         lambda rng: np.array([0, 0, 1, 0, 1, 1], np.float32)])
for _act in ACTIVATIONS:
    _t = functools.partial(TORCH_ACTIVATIONS[_act], torch, slope=0.01)
    CASES[f"dense_{_act}"] = (lambda x, W, b, a=_act: F.dense(x, W, b, activation=a),
                              lambda x, W, b, t=_t: t(TF.linear(x, W, b)), [normal(5, 4), normal(3, 4), normal(3)])
    CASES[f"dense_{_act}_nobias_3d"] = (lambda x, W, a=_act: F.dense(x, W, activation=a),
                                        lambda x, W, t=_t: t(TF.linear(x, W)), [normal(2, 5, 4), normal(3, 4)])


def _run_gpunn(backend, fn, arrays, cot):
    ts = [gn.Tensor(backend.asarray(a), requires_grad=a.dtype.kind == "f") for a in arrays]
    with backend.activate():
        out = fn(*ts)
        out.backward(backend.asarray(cot))
    return backend.to_numpy(out.data), [backend.to_numpy(t.grad.data) if t.requires_grad else None for t in ts]


def _run_torch(fn, arrays, cot):
    ts = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays]
    out = fn(*ts)
    out.backward(torch.tensor(cot))
    return out.detach().numpy(), [t.grad.numpy() if t.requires_grad else None for t in ts]


@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch(backend, name):
    fn, tfn, makers = CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))  # str hashes vary between runs
    arrays = [np.asarray(m(rng)) for m in makers]
    t_out = tfn(*[torch.tensor(a) for a in arrays])
    cot = rng.standard_normal(tuple(t_out.shape)).astype(np.float32)
    expected, t_grads = _run_torch(tfn, arrays, cot)
    got, g_grads = _run_gpunn(backend, fn, arrays, cot)
    assert got.shape == expected.shape and got.dtype == expected.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL, err_msg="forward")
    for i, (g, t) in enumerate(zip(g_grads, t_grads)):
        assert (g is None) == (t is None)
        if g is not None:
            assert g.dtype == np.float32 and g.shape == t.shape
            np.testing.assert_allclose(g, t, rtol=RTOL, atol=ATOL, err_msg=f"gradient of input {i}")


def test_bce_target_gradient_matches_torch(backend):
    """Gradient with respect to soft targets, with and without pos_weight."""
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((5, 3)) * 3).astype(np.float32)
    y = rng.uniform(0, 1, (5, 3)).astype(np.float32)
    for pw in (None, np.array([0.5, 2.0, 4.0], np.float32)):
        got = _run_gpunn(backend, lambda a, b: F.binary_cross_entropy_with_logits(
            a, b, pos_weight=None if pw is None else gn.tensor(pw)), [x, y], np.float32(1.0))
        want = _run_torch(lambda a, b: TF.binary_cross_entropy_with_logits(
            a, b, pos_weight=None if pw is None else torch.tensor(pw)), [x, y], np.float32(1.0))
        np.testing.assert_allclose(got[0], want[0], rtol=RTOL, atol=ATOL)
        for g, t in zip(got[1], want[1]):
            np.testing.assert_allclose(g, t, rtol=RTOL, atol=ATOL)


def test_cross_entropy_all_ignored_matches_torch():
    x = np.zeros((3, 4), np.float32)
    y = np.full(3, -100)
    want = TF.cross_entropy(torch.tensor(x), torch.tensor(y)).item()
    got = F.cross_entropy(gn.tensor(x), gn.tensor(y)).item()
    assert np.isnan(want) and np.isnan(got)
