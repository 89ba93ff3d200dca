"""Elementwise loss kernels (every loss in the registry's LOSSES) on every backend, against the
float64 references written in tests/references.py and against PyTorch: forward, the input's and
the target's gradient, each operand layout (pos_weight: one value, one per class, one per element)
and upstream layout (a broadcast scalar or one per element); BCE-with-logits at logits +-100 and
beyond; L1's gradient 0 at x == y; NaN propagates; no floating-point warnings; inputs never modified."""
from __future__ import annotations

import numpy as np
import pytest

from gpunn.kernels import losses, registry
from harness import strict_numerics
from references import LOSS_REFS, TORCH_LOSSES, loss_inputs
from torch_util import requires_torch

TOL = {np.float32: dict(rtol=2e-6, atol=2e-6), np.float64: dict(rtol=1e-13, atol=1e-14)}
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
NAMES = pytest.mark.parametrize("name", list(registry.LOSSES))
SCALAR = {"huber": 0.7, "smooth_l1": 0.7}  # a non-default option, so a kernel ignoring it fails


def operand(name, kind, shape, dtype, rng):
    """The loss's operand w for a layout kind, or None (and w = 1 for the reference)."""
    if registry.LOSSES[name].operand is None or kind == "none":
        return None
    return {"scalar": np.array([1.7]), "per_class": rng.uniform(0.5, 2, shape[-1]),
            "full": rng.uniform(0.5, 2, shape)}[kind].astype(dtype)


def run(backend, name, x, y, w=None, g=None, a=None, wrt="input"):
    ops = backend.ops()
    X, Y = backend.asarray(x), backend.asarray(y)
    W = None if w is None else backend.asarray(w)
    with strict_numerics():
        fwd = ops.loss_forward(name, X, Y, W, a)
        G = backend.asarray(np.ones_like(x) if g is None else g)
        bwd = ops.loss_backward(name, G, X, Y, W, a, wrt=wrt)
    return backend.to_numpy(fwd), backend.to_numpy(bwd)


def reference(name, x, y, w, a):
    a = registry.LOSSES[name].scalar_default if a is None else a
    w64 = 1.0 if w is None else w.astype(np.float64)
    return LOSS_REFS[name](x.astype(np.float64), y.astype(np.float64), w64, a)


def test_every_registered_loss_has_a_test_reference():
    assert set(LOSS_REFS) == set(registry.LOSSES), "add the loss's float64 reference to tests/references.py"
    assert set(TORCH_LOSSES) == set(registry.LOSSES)


LAYOUTS = [(name, kind) for name, m in registry.LOSSES.items()
           for kind in (("none", "scalar", "per_class", "full") if m.operand else ("none",))]


@DTYPES
@pytest.mark.parametrize("name, w_kind", LAYOUTS)
@pytest.mark.parametrize("shape", [(0, 3), (1, 3), (6, 3)], ids=str)
def test_loss_kernels_match_float64_reference(backend, name, w_kind, shape, dtype):
    m = registry.LOSSES[name]
    rng = np.random.default_rng(shape[0])
    x, y = loss_inputs(name, shape, dtype, seed=shape[0])
    w = operand(name, w_kind, shape, dtype, rng)
    g = rng.standard_normal(shape).astype(dtype)
    a = SCALAR.get(name)
    want_loss, want_dx, want_dy = reference(name, x, y, w, a)
    loss, dx = run(backend, name, x, y, w, g, a)
    assert loss.shape == dx.shape == shape and loss.dtype == dx.dtype == dtype
    np.testing.assert_allclose(loss, want_loss, **TOL[dtype])
    np.testing.assert_allclose(dx, g * want_dx, **TOL[dtype])
    if m.grad_target is not None:
        _, dy = run(backend, name, x, y, w, g, a, wrt="target")
        np.testing.assert_allclose(dy, g * want_dy, **TOL[dtype])


@NAMES
@DTYPES
@requires_torch
def test_loss_kernels_match_torch(backend, name, dtype):
    import torch

    x, y = loss_inputs(name, (7, 5), dtype, seed=3)
    w = operand(name, "per_class", x.shape, dtype, np.random.default_rng(1))
    a = SCALAR.get(name)
    X, Y = torch.tensor(x, requires_grad=True), torch.tensor(y, requires_grad=True)
    want = TORCH_LOSSES[name](torch, X, Y, None if w is None else torch.tensor(w), a)
    want.sum().backward()
    loss, dx = run(backend, name, x, y, w, a=a)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(loss, want.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, X.grad.numpy(), **tol)
    if registry.LOSSES[name].grad_target is not None:
        _, dy = run(backend, name, x, y, w, a=a, wrt="target")
        np.testing.assert_allclose(dy, Y.grad.numpy(), **tol)


@DTYPES
def test_bce_with_logits_at_plus_minus_100_and_beyond(backend, dtype):
    """Large logits: equal to the float64 definition (no log(0), no overflow), gradient sigmoid(x) - y."""
    x = np.array([-1e4, -1000.0, -100.0, -100.0, 100.0, 100.0, 1000.0, 1e4], dtype)
    y = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.3, 1.0], dtype)
    loss, dx = run(backend, "bce_with_logits", x, y)
    want, want_dx, _ = reference("bce_with_logits", x, y, None, None)
    assert np.isfinite(loss).all() and np.isfinite(dx).all()
    # atol: the exact loss there is exp(-100) = 3.7e-44, below 1's rounding in log(1 + exp(-100))
    np.testing.assert_allclose(loss, want, rtol=1e-7 if dtype == np.float32 else 1e-15, atol=1e-40)
    np.testing.assert_allclose(loss, [0, 1000, 0, 100, 100, 0, 700, 0], rtol=1e-6, atol=0)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-7, atol=np.finfo(dtype).tiny)  # subnormals are coarse


def test_bce_clamps_its_logarithms_at_minus_100(backend):
    """Probabilities 0 and 1: loss 100 where the target disagrees (PyTorch's clamp), 0 where it agrees."""
    x = np.array([0.0, 0.0, 1.0, 1.0], np.float32)
    y = np.array([0.0, 1.0, 0.0, 1.0], np.float32)
    loss, dx = run(backend, "bce", x, y)
    np.testing.assert_array_equal(loss, [0, 100, 100, 0])
    np.testing.assert_allclose(dx, [0, -1e12, 1e12, 0], rtol=1e-6)


def test_l1_type_gradients_are_zero_where_equal_and_nan_propagates(backend):
    x = np.array([1.0, 2.0, -3.0, 0.0, np.nan])
    y = np.array([1.0, 1.0, -3.0, 0.0, 0.0])
    for name in ("l1", "smooth_l1"):
        _, dx = run(backend, name, x, y, a=0.0)  # smooth L1 with beta=0 is L1
        np.testing.assert_array_equal(dx, [0.0, 1.0, 0.0, 0.0, np.nan])
    loss, dx = run(backend, "huber", x, y)
    assert np.isnan(loss[4]) and np.isnan(dx[4])


@NAMES
def test_loss_kernels_do_not_modify_inputs(backend, name):
    x, y = loss_inputs(name, (3, 4), np.float32, seed=1)
    g = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    ops = backend.ops()
    arrays = [backend.asarray(a) for a in (x, y, g)]
    copies = [a.copy() for a in (x, y, g)]
    ops.loss_forward(name, *arrays[:2])
    ops.loss_backward(name, arrays[2], *arrays[:2])
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(backend.to_numpy(a), c)


@NAMES
def test_loss_kernels_accept_noncontiguous_and_broadcast_upstream(backend, name):
    x, y = loss_inputs(name, (4, 5), np.float64, seed=2)
    base = run(backend, name, x, y)
    moved = run(backend, name, np.asfortranarray(x), np.repeat(y, 2, axis=1)[:, ::2])
    for a, b in zip(moved, base):
        np.testing.assert_allclose(a, b, rtol=1e-15)
    # a reduced loss sends one upstream value broadcast over the elements
    ops = backend.ops()
    g = backend.xp.broadcast_to(backend.xp.asarray(0.5), x.shape)
    got = backend.to_numpy(ops.loss_backward(name, g, backend.asarray(x), backend.asarray(y)))
    np.testing.assert_allclose(got, 0.5 * base[1], rtol=1e-15)


def test_loss_kernels_refuse_bad_calls(backend):
    ops = backend.ops()
    z3, z4 = backend.asarray(np.zeros(3)), backend.asarray(np.zeros(4))
    with pytest.raises(ValueError, match="unknown loss 'hinge'; valid: mse, l1"):
        ops.loss_forward("hinge", z3, z3)
    with pytest.raises(ValueError, match="target must be"):
        ops.loss_forward("mse", z3, z4)
    with pytest.raises(ValueError, match="no gradient with respect to the target"):
        ops.loss_backward("mse", z3, z3, z3, wrt="target")
    with pytest.raises(ValueError, match="wrt must be 'input' or 'target'"):
        ops.loss_backward("bce", z3, z3, z3, wrt="weight")
    z23 = backend.asarray(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"operand of shape \(2,\) must broadcast to \(2, 3\)"):
        ops.loss_forward("bce_with_logits", z23, z23, backend.asarray(np.ones(2)))
    with pytest.raises(ValueError, match="does not broadcast"):
        ops.loss_backward("mse", z4, z3, z3)
    assert ops.loss_forward("mse", backend.asarray(np.zeros((0, 2))), backend.asarray(np.zeros((0, 2)))).shape == (0, 2)


def test_float16_is_computed_in_float32():
    x = np.array([0.5, -1.25, 3.0], np.float16)
    y = np.array([0.0, 1.0, 2.0], np.float16)
    got = losses.loss_forward_cpu("huber", x, y)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got, reference("huber", x, y, None, None)[0], rtol=1e-3)


def test_cost_model_follows_the_registry():
    x = np.zeros((4, 5), np.float32)
    for name, m in registry.LOSSES.items():
        assert losses.loss_forward_cost(name, x, x) == (m.flops[0] * 20, 3 * 80)
        g = np.broadcast_to(np.float32(1), x.shape)  # one distinct upstream element: 4 bytes
        assert losses.loss_backward_cost(name, g, x, x) == (m.flops[1] * 20, 3 * 80 + 4)
    pw = np.ones(5, np.float32)
    assert losses.loss_forward_cost("bce_with_logits", x, x, pw) == (registry.LOSSES["bce_with_logits"].flops[0] * 20,
                                                                       3 * 80 + 20)
