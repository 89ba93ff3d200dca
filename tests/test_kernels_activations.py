"""Activation kernels (`activation_forward` / `activation_backward`) on every backend against a
float64 NumPy reference: every activation, float32 and float64, 0-d, empty and non-contiguous
arrays, the values PyTorch fixes (gradients at 0, sigmoid of +-1000), no floating-point warnings."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gpunn.kernels import ACTIVATIONS, CpuOps, Ops, activation_code, needs_preactivation
from harness import strict_numerics
from references import ACTIVATION_REFS, TORCH_ACTIVATIONS, act_and_grad
from test_kernels_dense import ACTS, ACT_IDS

SHAPES = [(), (0,), (7,), (3, 4), (2, 0, 3), (2, 3, 5)]
TOL = {np.float32: dict(rtol=2e-6, atol=1e-6), np.float64: dict(rtol=1e-13, atol=1e-14)}


def run(backend, z, dy, code, slope):
    ops = backend.ops()
    Z, DY = backend.asarray(z), backend.asarray(dy)
    with strict_numerics():
        y = ops.activation_forward(Z, code, slope)
        pre = needs_preactivation(code, slope)
        dz = ops.activation_backward(DY, Z if pre else None, y, code, slope)
    return backend.to_numpy(y), backend.to_numpy(dz)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_activation_matches_reference(backend, act, shape, dtype):
    name, slope = act
    rng = np.random.default_rng(0)
    z = np.asarray(rng.standard_normal(shape) * 3, dtype=dtype)
    dy = np.asarray(rng.standard_normal(shape), dtype=dtype)
    y, dz = run(backend, z, dy, ACTIVATIONS[name], slope)
    y_ref, d_ref = act_and_grad(name, z.astype(np.float64), slope)
    for got, want in [(y, y_ref), (dz, dy * d_ref)]:
        assert got.shape == shape and got.dtype == dtype
        np.testing.assert_allclose(got, want, **TOL[dtype])


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_activation_noncontiguous(backend, act):
    name, slope = act
    rng = np.random.default_rng(1)
    z = rng.standard_normal((4, 6))
    dy = rng.standard_normal((4, 6))
    base = run(backend, z, dy, ACTIVATIONS[name], slope)
    for view in (lambda a: np.asfortranarray(a), lambda a: np.repeat(a, 2, axis=1)[:, ::2]):
        zv, dyv = view(z), view(dy)
        assert not zv.flags.c_contiguous
        got = run(backend, zv, dyv, ACTIVATIONS[name], slope)
        for g, b in zip(got, base):
            np.testing.assert_array_equal(g, b)
    # a transposed input gives the transposed result
    y_t, dz_t = run(backend, z.T, dy.T, ACTIVATIONS[name], slope)
    np.testing.assert_array_equal(y_t, base[0].T)
    np.testing.assert_array_equal(dz_t, base[1].T)


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_activation_does_not_modify_inputs(backend, act):
    name, slope = act
    rng = np.random.default_rng(2)
    z = rng.standard_normal((3, 5)).astype(np.float32)
    dy = rng.standard_normal((3, 5)).astype(np.float32)
    ops = backend.ops()
    Z, DY = backend.asarray(z.copy()), backend.asarray(dy.copy())
    y = ops.activation_forward(Z, ACTIVATIONS[name], slope)
    y_copy = backend.to_numpy(y).copy()
    ops.activation_backward(DY, Z, y, ACTIVATIONS[name], slope)
    np.testing.assert_array_equal(backend.to_numpy(Z), z)
    np.testing.assert_array_equal(backend.to_numpy(DY), dy)
    np.testing.assert_array_equal(backend.to_numpy(y), y_copy)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_gradients_at_zero_follow_pytorch(backend, dtype):
    z = np.zeros(3, dtype)
    dy = np.ones(3, dtype)
    _, d_relu = run(backend, z, dy, ACTIVATIONS["relu"], 0.01)
    _, d_leaky = run(backend, z, dy, ACTIVATIONS["leaky_relu"], 0.01)
    _, d_leaky3 = run(backend, z, dy, ACTIVATIONS["leaky_relu"], 0.3)
    np.testing.assert_array_equal(d_relu, 0)
    np.testing.assert_array_equal(d_leaky, dtype(0.01))
    np.testing.assert_array_equal(d_leaky3, dtype(0.3))
    y_g, d_g = run(backend, z, dy, ACTIVATIONS["gelu"], 0.01)
    np.testing.assert_array_equal(y_g, 0)
    np.testing.assert_allclose(d_g, 0.5, rtol=1e-7)
    _, d_s = run(backend, z, dy, ACTIVATIONS["sigmoid"], 0.01)
    np.testing.assert_allclose(d_s, 0.25, rtol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_saturating_activations_are_exact_at_extremes_without_warnings(backend, dtype):
    """sigmoid(+-1000) = 1/0 exactly, tanh(+-1000) = +-1, gelu(-1000) = 0; no overflow anywhere."""
    z = np.array([-1e4, -1000.0, -100.0, 100.0, 1000.0, 1e4], dtype)
    dy = np.ones_like(z)
    y, d = run(backend, z, dy, ACTIVATIONS["sigmoid"], 0.01)
    np.testing.assert_array_equal(y[[0, 1, 4, 5]], [0, 0, 1, 1])
    assert y[2] > 0 and y[2] < 1e-40 and y[3] == 1  # exp(-100) survives in the stable branch
    np.testing.assert_array_equal(d[[0, 1, 4, 5]], 0)
    y, d = run(backend, z, dy, ACTIVATIONS["tanh"], 0.01)
    np.testing.assert_array_equal(y, np.sign(z))
    np.testing.assert_array_equal(d, 0)
    for name in ("gelu", "gelu_tanh"):
        y, d = run(backend, z, dy, ACTIVATIONS[name], 0.01)
        np.testing.assert_array_equal(y, np.where(z > 0, z, 0))
        np.testing.assert_array_equal(d, np.where(z > 0, 1, 0))
        assert np.isfinite(y).all() and np.isfinite(d).all()


def test_sigmoid_is_symmetric_and_accurate_in_the_tails(backend):
    z = np.linspace(-40, 40, 161)
    y, _ = run(backend, z, np.ones_like(z), ACTIVATIONS["sigmoid"], 0.01)
    want = np.array([1 / (1 + math.exp(-v)) for v in z])
    np.testing.assert_allclose(y, want, rtol=1e-14, atol=0)  # relative accuracy down in the tail
    ym, _ = run(backend, -z, np.ones_like(z), ACTIVATIONS["sigmoid"], 0.01)
    np.testing.assert_allclose(y + ym, 1.0, rtol=1e-15)


def test_gelu_exact_and_tanh_approximation_differ_by_at_most_4p7e_4(backend):
    z = np.linspace(-6, 6, 601)
    exact, _ = run(backend, z, np.ones_like(z), ACTIVATIONS["gelu"], 0.01)
    approx, _ = run(backend, z, np.ones_like(z), ACTIVATIONS["gelu_tanh"], 0.01)
    diff = np.abs(exact - approx)
    assert diff.max() <= 4.8e-4
    assert diff.max() >= 4.0e-4  # the two really are different functions
    assert 2.0 < abs(z[np.argmax(diff)]) < 3.5


def test_gelu_matches_erf_values():
    z = np.array([-3.0, -1.0, -0.5, 0.5, 1.0, 3.0])
    want = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in z])
    for ops in (Ops(), CpuOps()):
        np.testing.assert_allclose(ops.activation_forward(z, ACTIVATIONS["gelu"]), want, rtol=1e-15, atol=1e-17)


def test_backward_from_the_output_alone(backend):
    """relu, leaky_relu (slope >= 0), sigmoid, tanh and identity need only y: z may be None."""
    rng = np.random.default_rng(5)
    z = rng.standard_normal(10)
    dy = rng.standard_normal(10)
    ops = backend.ops()
    for name in ("identity", "relu", "leaky_relu", "sigmoid", "tanh"):
        code = ACTIVATIONS[name]
        assert not needs_preactivation(code)
        y = ops.activation_forward(backend.asarray(z), code)
        dz = backend.to_numpy(ops.activation_backward(backend.asarray(dy), None, y, code))
        np.testing.assert_allclose(dz, dy * act_and_grad(name, z, 0.01)[1], rtol=1e-13)


def test_needs_preactivation_table():
    assert needs_preactivation(ACTIVATIONS["gelu"]) and needs_preactivation(ACTIVATIONS["gelu_tanh"])
    assert needs_preactivation(ACTIVATIONS["leaky_relu"], -0.1)
    for name in ("identity", "relu", "leaky_relu", "sigmoid", "tanh"):
        assert not needs_preactivation(ACTIVATIONS[name], 0.01)


def test_every_registered_activation_has_a_test_reference():
    """The registry's definitions are checked against references written in tests/references.py:
    a new activation needs its entry there (float64 and PyTorch)."""
    assert set(ACTIVATIONS) <= set(ACTIVATION_REFS), set(ACTIVATIONS) - set(ACTIVATION_REFS)
    assert set(ACTIVATIONS) <= set(TORCH_ACTIVATIONS), set(ACTIVATIONS) - set(TORCH_ACTIVATIONS)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_matches_torch(name):
    torch = pytest.importorskip("torch")
    z = np.concatenate([np.linspace(-8, 8, 161), [-100.0, 100.0, 0.0]]).astype(np.float32)
    dy = np.random.default_rng(4).standard_normal(z.shape).astype(np.float32)
    Z = torch.tensor(z, requires_grad=True)
    want = TORCH_ACTIVATIONS[name](torch, Z, 0.01)
    want.backward(torch.tensor(dy))
    ops = CpuOps()
    code = ACTIVATIONS[name]
    y = ops.activation_forward(z, code)
    dz = ops.activation_backward(dy, z, y, code)
    np.testing.assert_allclose(y, want.detach().numpy(), rtol=1.3e-6, atol=1e-5)
    np.testing.assert_allclose(dz, Z.grad.numpy(), rtol=1.3e-6, atol=1e-5)


def test_activation_codes_and_aliases():
    assert activation_code(None) == activation_code("identity") == activation_code("linear") == activation_code("none")
    assert activation_code("ReLU") == ACTIVATIONS["relu"]
    assert sorted(ACTIVATIONS.values()) == list(range(len(ACTIVATIONS)))
    for bad in ("swish", "", 3, "gelu_erf"):
        with pytest.raises(ValueError) as info:
            activation_code(bad)
        msg = str(info.value)
        assert repr(bad) in msg and all(name in msg for name in ACTIVATIONS)


@pytest.mark.parametrize("ops", [Ops(), CpuOps()], ids=["reference", "cpu"])
def test_unknown_codes_are_refused(ops):
    x = np.array([[1.0, -2.0]])
    with pytest.raises(ValueError, match="unknown activation code 99"):
        ops.activation_forward(x, 99)
    with pytest.raises(ValueError, match="unknown activation code 7"):
        ops.activation_backward(x, x, x, 7)
    if isinstance(ops, CpuOps):  # the fused dense kernels check before they run
        with pytest.raises(ValueError, match="unknown activation code -1"):
            ops.dense_forward(x, np.ones((3, 2)), None, -1)
        with pytest.raises(ValueError, match="unknown activation code 12"):
            ops.dense_backward(np.ones((1, 3)), x, np.ones((3, 2)), np.ones((1, 3)), 12)


def test_cpu_kernel_names_change_with_fastmath(monkeypatch):
    """A kernel's cached name hashes the fastmath source it inlines (not visible from the formula's
    code), so Numba's disk cache cannot serve a kernel built with older math."""
    from gpunn.kernels import fastmath, registry
    from gpunn.kernels.activations import activation_forward_loop

    act = registry.retarget(registry.tanh_forward, registry.CPU_MATH, np.float32)
    before = registry.specialise(activation_forward_loop, {"act": act}, "tanh").__name__
    monkeypatch.setattr(fastmath.tanh, "fingerprint", "edited")
    after = registry.specialise(activation_forward_loop, {"act": act}, "tanh").__name__
    assert before != after
