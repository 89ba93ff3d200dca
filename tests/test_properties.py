"""Property tests (hypothesis) over drawn shapes, size-1 and empty batches included: dense,
activations, cross-entropy, losses and broadcasting arithmetic never crash, never broadcast
silently, give finite outputs of the right shape and dtype, and every backend agrees."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gpunn as gn
from gpunn import functional as F
from gpunn.kernels import ACTIVATIONS
from harness import present_backends, strict_numerics

SETTINGS = settings(max_examples=30, deadline=None)
BACKENDS = present_backends()
# the exact GELU's NumPy reference evaluates erf per element: fine at these sizes
batch = st.integers(0, 6)
width = st.integers(1, 5)
dtypes = st.sampled_from([np.float32, np.float64])
activations = st.sampled_from(list(ACTIVATIONS))


def agree(results, dtype, what):
    """Every backend's arrays equal the first backend's within float tolerances."""
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    first = results[0]
    for other in results[1:]:
        for a, b in zip(first, other):
            if a is None or b is None:
                assert a is None and b is None
                continue
            np.testing.assert_allclose(a, b, err_msg=what, **tol)


def run_all(fn, arrays, grad_mask):
    """fn on every backend: (output, gradients) as NumPy, with a ones cotangent."""
    results = []
    for be in BACKENDS:
        ts = [gn.Tensor(be.asarray(a), requires_grad=g) for a, g in zip(arrays, grad_mask)]
        with be.activate(), strict_numerics():
            out = fn(*ts)
            out.backward(be.xp.ones(out.shape, out.dtype))
        results.append([be.to_numpy(out.data)] + [be.to_numpy(t.grad.data) if g else None
                                                    for t, g in zip(ts, grad_mask)])
    return results


@SETTINGS
@given(n=batch, k=width, m=width, act=activations, bias=st.booleans(), dtype=dtypes,
       lead=st.sampled_from([(), (2,)]), seed=st.integers(0, 2**16))
def test_dense_properties(n, k, m, act, bias, dtype, lead, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(lead + (n, k)).astype(dtype)
    W = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    arrays = [x, W, b] if bias else [x, W]
    results = run_all(lambda *t: F.dense(*t, activation=act), arrays, [True] * len(arrays))
    out, *grads = results[0]
    assert out.shape == lead + (n, m) and out.dtype == dtype
    assert np.isfinite(out).all()
    for a, g in zip(arrays, grads):
        assert g.shape == a.shape and g.dtype == dtype and np.isfinite(g).all()
    agree(results, dtype, f"dense {act}")


@SETTINGS
@given(n=batch, k=width, k2=width, dtype=dtypes)
def test_dense_never_broadcasts_a_wrong_width(n, k, k2, dtype):
    x = gn.tensor(np.ones((n, k), dtype))
    W = gn.tensor(np.ones((3, k2), dtype))
    if k == k2:
        assert F.dense(x, W).shape == (n, 3)
    else:
        with pytest.raises(ValueError, match=f"expects input of shape \\(batch, {k2}\\)"):
            F.dense(x, W)


@SETTINGS
@given(x=hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
                    elements=st.floats(-1e4, 1e4, width=32)),
       act=activations)
def test_activation_properties(x, act):
    fn = {"identity": lambda t: t * 1.0, "relu": F.relu, "leaky_relu": F.leaky_relu, "gelu": F.gelu,
          "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "sigmoid": F.sigmoid, "tanh": F.tanh}[act]
    results = run_all(fn, [x], [True])
    out, g = results[0]
    assert out.shape == x.shape and out.dtype == x.dtype and g.shape == x.shape
    assert np.isfinite(out).all() and np.isfinite(g).all()
    if act == "sigmoid":
        assert ((out >= 0) & (out <= 1)).all()
    if act == "tanh":
        assert (np.abs(out) <= 1).all()
    if act in ("relu", "gelu", "gelu_tanh", "sigmoid"):
        assert (out >= -0.2).all()  # gelu's minimum is about -0.17
    agree(results, x.dtype, act)


@SETTINGS
@given(n=batch, c=width, dtype=dtypes, reduction=st.sampled_from(["mean", "sum", "none"]),
       scale=st.sampled_from([1.0, 30.0, 1e4]), data=st.data())
def test_cross_entropy_properties(n, c, dtype, reduction, scale, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = (rng.standard_normal((n, c)) * scale).astype(dtype)
    y = rng.integers(0, c, n)
    ignore = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    y[np.array(ignore, bool)] = -100
    results = run_all(lambda t, lab: F.cross_entropy(t, lab, reduction=reduction), [x, y], [True, False])
    out, g, _ = results[0]
    counted = int((y != -100).sum())
    assert out.shape == ((n,) if reduction == "none" else ())
    assert out.dtype == dtype and g.shape == x.shape and g.dtype == dtype
    if reduction == "mean" and counted == 0:
        assert np.isnan(out)
    else:
        assert np.isfinite(out).all() and (out >= 0).all()
    assert np.isfinite(g).all()
    np.testing.assert_array_equal(g[y == -100], 0)
    if reduction == "sum":  # each counted row's gradient sums to 0 (softmax minus one-hot)
        np.testing.assert_allclose(g.sum(axis=1), 0, atol=1e-5 if dtype == np.float32 else 1e-12)
    agree(results, dtype, "cross_entropy")


@SETTINGS
@given(n=batch, c=width, bad=st.sampled_from(["too_big", "negative", "float", "shape"]))
def test_cross_entropy_refuses_bad_labels(n, c, bad):
    x = gn.tensor(np.zeros((max(n, 1), c), np.float32))
    rows = x.shape[0]
    y = np.zeros(rows, np.int64)
    if bad == "too_big":
        y[-1] = c
        err = ValueError
    elif bad == "negative":
        y[0] = -1
        err = ValueError
    elif bad == "float":
        y = y.astype(np.float32)
        err = TypeError
    else:
        y = np.zeros((rows, 1), np.int64)
        err = ValueError
    with pytest.raises(err, match="target"):
        F.cross_entropy(x, y)


shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4)


@SETTINGS
@given(sx=shapes, sy=shapes, loss=st.sampled_from(["mse", "l1", "bce"]), dtype=dtypes,
       reduction=st.sampled_from(["mean", "sum", "none"]), seed=st.integers(0, 2**16))
def test_pointwise_losses_never_broadcast(sx, sy, loss, dtype, reduction, seed):
    fn = {"mse": F.mse_loss, "l1": F.l1_loss, "bce": F.binary_cross_entropy_with_logits}[loss]
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(sx) * 10).astype(dtype)
    y = rng.uniform(0, 1, sy).astype(dtype)
    if sx != sy:
        with pytest.raises(ValueError, match="broadcast"):
            fn(gn.tensor(x), gn.tensor(y), reduction=reduction)
        return
    results = run_all(lambda a, b: fn(a, b, reduction=reduction), [x, y], [True, True])
    out, gx, gy = results[0]
    assert out.shape == (sx if reduction == "none" else ()) and out.dtype == dtype
    if reduction == "mean" and x.size == 0:
        assert np.isnan(out)
    else:
        assert np.isfinite(out).all() and (out >= 0).all()
    for g in (gx, gy):
        assert g.shape == sx and g.dtype == dtype and np.isfinite(g).all()
    agree(results, dtype, loss)


@SETTINGS
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=0, max_side=3),
       op=st.sampled_from(["add", "sub", "mul", "div"]), seed=st.integers(0, 2**16))
def test_broadcasting_arithmetic_shapes_and_gradients(shapes, op, seed):
    (sa, sb), result = shapes.input_shapes, shapes.result_shape
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(sa)
    b = rng.uniform(0.5, 2.0, sb)
    fn = {"add": lambda p, q: p + q, "sub": lambda p, q: p - q, "mul": lambda p, q: p * q,
          "div": lambda p, q: p / q}[op]
    results = run_all(fn, [a, b], [True, True])
    out, ga, gb = results[0]
    assert out.shape == result
    np.testing.assert_allclose(out, fn(a, b), rtol=1e-14)
    assert ga.shape == sa and gb.shape == sb
    # with a ones cotangent, d(a+b)/da summed over broadcast axes is the broadcast count
    if op == "add":
        count = int(np.prod(result)) // max(int(np.prod(sa)), 1) if np.prod(sa) else 0
        np.testing.assert_allclose(ga, np.full(sa, float(count)) if np.prod(result) else np.zeros(sa))
    agree(results, np.float64, op)


@SETTINGS
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4), data=st.data())
def test_reductions_over_any_axes(shape, data):
    axis = data.draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1),
                               st.lists(st.integers(0, len(shape) - 1), unique=True, min_size=1).map(tuple)))
    keep = data.draw(st.booleans())
    x = np.random.default_rng(0).permutation(int(np.prod(shape))).reshape(shape).astype(np.float64)
    for op, ref in (("sum", np.sum), ("mean", np.mean), ("amax", np.amax)):
        t = gn.tensor(x, requires_grad=True)
        out = t.amax(axis, keep) if op == "amax" else getattr(t, op)(axis=axis, keepdims=keep)
        np.testing.assert_allclose(out.numpy(), ref(x, axis=axis, keepdims=keep), rtol=1e-13)
        out.backward(np.ones(out.shape))
        assert t.grad.shape == shape
        # ones in: sum sends 1 to every element; mean and max (no ties) send a total of 1 per output
        np.testing.assert_allclose(t.grad.numpy().sum(), x.size if op == "sum" else out.numpy().size, rtol=1e-12)
