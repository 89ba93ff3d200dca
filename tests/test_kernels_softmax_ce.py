"""The fused softmax cross-entropy kernels on every backend against a float64 NumPy reference:
ignore_index, logits at +-1e4, invariance to shifting a row, label dtypes, 0/1 rows, 1 class,
non-contiguous inputs, inputs never modified; the reductions, the count and the label check
that the forward kernel does itself (its stats)."""
from __future__ import annotations

import numpy as np
import pytest

from gpunn.kernels import CpuOps, Ops
from harness import strict_numerics

TOL = {np.float32: dict(rtol=2e-6, atol=2e-6), np.float64: dict(rtol=1e-13, atol=1e-14)}


def reference(logits, labels, ignore_index=-100):
    """(losses, probs, dlogits for unit row gradients) in float64."""
    x = logits.astype(np.float64)
    n = x.shape[0]
    m = x.max(axis=1, keepdims=True) if n else np.zeros((0, 1))
    lse = m + np.log(np.exp(x - m).sum(axis=1, keepdims=True))
    p = np.exp(x - lse)
    valid = labels != ignore_index
    safe = np.where(valid, labels, 0).astype(np.int64)
    losses = np.where(valid, lse[:, 0] - x[np.arange(n), safe], 0.0)
    onehot = np.zeros_like(p)
    onehot[np.arange(n)[valid], safe[valid]] = 1
    return losses, p, (p - onehot) * valid[:, None]


def run(backend, logits, labels, row_grads, ignore_index=-100):
    ops = backend.ops()
    L, Y, G = (backend.asarray(a) for a in (logits, labels, row_grads))
    with strict_numerics():
        losses, probs, _ = ops.softmax_cross_entropy_forward(L, Y, ignore_index)
        d = ops.softmax_cross_entropy_backward(G, probs, Y, ignore_index)
    return backend.to_numpy(losses), backend.to_numpy(probs), backend.to_numpy(d)


def data(rng, n, c, dtype, label_dtype=np.int64, scale=3.0):
    return ((rng.standard_normal((n, c)) * scale).astype(dtype), rng.integers(0, c, n).astype(label_dtype),
            rng.standard_normal(n).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8], ids=["int64", "int32", "uint8"])
@pytest.mark.parametrize("shape", [(0, 4), (1, 4), (5, 1), (7, 10), (64, 3)], ids=str)
def test_softmax_ce_matches_reference(backend, shape, label_dtype, dtype):
    logits, labels, g = data(np.random.default_rng(shape[0]), *shape, dtype, label_dtype)
    losses, probs, d = run(backend, logits, labels, g)
    l_ref, p_ref, d_ref = reference(logits, labels)
    assert losses.shape == (shape[0],) and probs.shape == shape and d.shape == shape
    assert losses.dtype == probs.dtype == d.dtype == dtype
    np.testing.assert_allclose(losses, l_ref, **TOL[dtype])
    np.testing.assert_allclose(probs, p_ref, **TOL[dtype])
    np.testing.assert_allclose(d, d_ref * g.astype(np.float64)[:, None], **TOL[dtype])
    if shape[0]:
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=4 * np.finfo(dtype).eps * shape[1])
    if shape[1] == 1:  # one class: the loss and its gradient are exactly 0
        np.testing.assert_array_equal(losses, 0)
        np.testing.assert_array_equal(d, 0)


@pytest.mark.parametrize("ignore_index", [-100, 2, -1])
def test_ignored_rows_have_zero_loss_and_zero_gradient(backend, ignore_index):
    rng = np.random.default_rng(1)
    logits, labels, g = data(rng, 6, 4, np.float64)
    labels[[0, 3]] = ignore_index
    losses, probs, d = run(backend, logits, labels, g, ignore_index)
    l_ref, p_ref, d_ref = reference(logits, labels, ignore_index)
    np.testing.assert_array_equal(losses[[0, 3]], 0)
    np.testing.assert_array_equal(d[[0, 3]], 0)
    np.testing.assert_allclose(losses, l_ref, rtol=1e-13)
    np.testing.assert_allclose(d, d_ref * g[:, None], rtol=1e-13, atol=1e-15)
    assert (losses[[1, 2, 4, 5]] > 0).all() or ignore_index == 2  # label 2 rows are ignored there too


def test_all_rows_ignored(backend):
    logits, labels, g = data(np.random.default_rng(2), 3, 4, np.float32)
    labels[:] = -100
    losses, probs, d = run(backend, logits, labels, g)
    np.testing.assert_array_equal(losses, 0)
    np.testing.assert_array_equal(d, 0)
    assert np.isfinite(probs).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_extreme_logits_are_finite_and_exact(backend, dtype):
    """Logits at +-1e4: no overflow, losses equal to lse - x_y computed in float64."""
    logits = np.array([[1e4, -1e4, 0.0],
                       [-1e4, -1e4, -1e4],
                       [1e4, 1e4, -1e4],
                       [-1e4, 1e4, 5.0]], dtype)
    labels = np.array([1, 0, 0, 1])
    g = np.ones(4, dtype)
    losses, probs, d = run(backend, logits, labels, g)
    for a in (losses, probs, d):
        assert np.isfinite(a).all()
    np.testing.assert_allclose(losses, [2e4, np.log(3.0), np.log(2.0), 0.0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(probs, reference(logits, labels)[1], rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(d, reference(logits, labels)[2], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shift", [-1e3, -7.5, 30.0, 1e3])
def test_shifting_a_row_changes_nothing(backend, dtype, shift):
    rng = np.random.default_rng(3)
    logits, labels, g = data(rng, 5, 6, dtype, scale=2.0)
    shifts = (rng.uniform(0.5, 1.0, (5, 1)) * shift).astype(dtype)
    base = run(backend, logits, labels, g)
    moved = run(backend, logits + shifts, labels, g)
    # the shifted logits themselves are rounded in float32: tolerance follows |shift| * eps
    eps = np.finfo(dtype).eps
    atol = 8 * eps * max(1.0, abs(shift))
    for a, b in zip(moved, base):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)


def test_softmax_ce_noncontiguous_inputs(backend):
    rng = np.random.default_rng(4)
    logits, labels, g = data(rng, 6, 5, np.float64)
    base = run(backend, logits, labels, g)
    moved = run(backend, np.asfortranarray(logits), np.repeat(labels, 2)[::2], np.repeat(g, 2)[::2])
    for a, b in zip(moved, base):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-16)


def test_softmax_ce_does_not_modify_inputs(backend):
    logits, labels, g = data(np.random.default_rng(5), 4, 3, np.float32)
    labels[1] = -100
    copies = [a.copy() for a in (logits, labels, g)]
    ops = backend.ops()
    L, Y, G = (backend.asarray(a) for a in (logits, labels, g))
    losses, probs, _ = ops.softmax_cross_entropy_forward(L, Y, -100)
    p_copy = backend.to_numpy(probs).copy()
    ops.softmax_cross_entropy_backward(G, probs, Y, -100)
    for a, c in zip((L, Y, G), copies):
        np.testing.assert_array_equal(backend.to_numpy(a), c)
    np.testing.assert_array_equal(backend.to_numpy(probs), p_copy)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cpu_fused_agrees_with_reference_ops(dtype):
    logits, labels, g = data(np.random.default_rng(6), 33, 7, dtype)
    labels[::5] = -100
    t = dict(rtol=1e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-15)
    r_l, r_p, r_s = Ops().softmax_cross_entropy_forward(logits, labels, -100)
    c_l, c_p, c_s = CpuOps().softmax_cross_entropy_forward(logits, labels, -100)
    np.testing.assert_array_equal(c_s, r_s)
    np.testing.assert_allclose(c_l, r_l, **t)
    np.testing.assert_allclose(c_p, r_p, **t)
    np.testing.assert_allclose(CpuOps().softmax_cross_entropy_backward(g, c_p, labels, -100),
                               Ops().softmax_cross_entropy_backward(g, r_p, labels, -100), **t)


def test_float32_loss_is_accurate_for_confident_predictions():
    """The CPU kernel accumulates in float64: a tiny loss keeps its relative accuracy."""
    logits = np.array([[20.0, 0.0, 0.0]], np.float32)
    losses, _, _ = CpuOps().softmax_cross_entropy_forward(logits, np.array([0]), -100)
    want = np.log1p(2 * np.exp(-20.0))
    np.testing.assert_allclose(losses, [want], rtol=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reductions_count_and_mean_gradient(backend, reduction, dtype):
    """The kernel's sum/mean (over non-ignored rows) and count; the mean's backward divides by it."""
    logits, labels, _ = data(np.random.default_rng(7), 9, 4, dtype)
    labels[[1, 5, 6]] = -100
    ops = backend.ops()
    L, Y = backend.asarray(logits), backend.asarray(labels)
    g = backend.asarray(np.asarray(1.5, dtype))
    with strict_numerics():
        loss, probs, stats = ops.softmax_cross_entropy_forward(L, Y, -100, reduction)
        d = ops.softmax_cross_entropy_backward(g, probs, Y, -100, reduction, stats)
    l_ref, _, d_ref = reference(logits, labels)
    count = 6
    np.testing.assert_array_equal(backend.to_numpy(stats), [count, 0, 2, 4])
    want = l_ref.sum() / (count if reduction == "mean" else 1)
    loss = backend.to_numpy(loss)
    assert loss.shape == () and loss.dtype == dtype
    np.testing.assert_allclose(loss, want, **TOL[dtype])
    np.testing.assert_allclose(backend.to_numpy(d), d_ref * 1.5 / (count if reduction == "mean" else 1), **TOL[dtype])


def test_every_row_ignored_gives_nan_mean_and_zero_gradient(backend):
    """As PyTorch: the mean over no targets is NaN, its gradient 0; the sum is 0."""
    logits, labels, _ = data(np.random.default_rng(8), 3, 4, np.float32)
    labels[:] = -100
    ops = backend.ops()
    L, Y = backend.asarray(logits), backend.asarray(labels)
    with strict_numerics():
        mean, probs, stats = ops.softmax_cross_entropy_forward(L, Y, -100, "mean")
        d = ops.softmax_cross_entropy_backward(backend.asarray(np.ones((), np.float32)),
                                               probs, Y, -100, "mean", stats)
        total, _, _ = ops.softmax_cross_entropy_forward(L, Y, -100, "sum")
    assert np.isnan(backend.to_numpy(mean))
    assert backend.to_numpy(total) == 0
    np.testing.assert_array_equal(backend.to_numpy(stats), [0, 0, 1, 4])
    np.testing.assert_array_equal(backend.to_numpy(d), 0)


@pytest.mark.parametrize("bad", [4, -1, -100])
def test_bad_labels_are_reported_in_stats(backend, bad):
    """A label outside [0, C) that is not ignore_index: NaN loss and gradient on its row (never an
    out-of-bounds read) and stats[1] = 1 + the first such row; -100 is bad when ignore_index is 7."""
    logits, labels, g = data(np.random.default_rng(9), 6, 4, np.float64)
    labels[[2, 4]] = bad
    ops = backend.ops()
    L, Y = backend.asarray(logits), backend.asarray(labels)
    losses, probs, stats = ops.softmax_cross_entropy_forward(L, Y, 7)
    d = backend.to_numpy(ops.softmax_cross_entropy_backward(backend.asarray(g), probs, Y, 7))
    losses = backend.to_numpy(losses)
    np.testing.assert_array_equal(backend.to_numpy(stats), [6, 3, 0, 4])
    assert np.isnan(losses[[2, 4]]).all() and np.isfinite(np.delete(losses, [2, 4])).all()
    assert np.isnan(d[[2, 4]]).all() and np.isfinite(np.delete(d, [2, 4], axis=0)).all()
    mean, _, _ = ops.softmax_cross_entropy_forward(L, Y, 7, "mean")
    assert np.isnan(backend.to_numpy(mean))


def test_bad_reduction_and_mean_without_stats_are_refused(backend):
    ops = backend.ops()
    L, Y = backend.asarray(np.zeros((2, 3))), backend.asarray(np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="reduction must be one of"):
        ops.softmax_cross_entropy_forward(L, Y, -100, "avg")
    with pytest.raises(ValueError, match="needs the forward's stats"):
        ops.softmax_cross_entropy_backward(backend.asarray(np.ones(())), L, Y, -100, "mean")
