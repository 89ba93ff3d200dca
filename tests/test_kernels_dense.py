"""The fused dense kernels (`dense_forward` / `dense_backward`) on every backend against a float64
NumPy reference written here: every activation, with and without bias, every need_* flag,
float32 and float64, 0, 1 and many rows, non-contiguous operands, inputs never modified."""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from gpunn.kernels import ACTIVATIONS, CpuOps, Ops, needs_preactivation
from harness import strict_numerics
from references import act_and_grad

# (activation name, negative_slope): every registered activation, and leaky_relu's other slopes
ACTS = [(name, 0.01) for name in ACTIVATIONS] + [("leaky_relu", 0.2), ("leaky_relu", -0.5), ("leaky_relu", 0.0)]
ACT_IDS = [f"{n}" if s == 0.01 else f"{n}{s}" for n, s in ACTS]
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-11, atol=1e-12)}


def reference(x, W, b, dy, name, slope):
    x, W, dy = (a.astype(np.float64) for a in (x, W, dy))
    z = x @ W.T + (0 if b is None else b.astype(np.float64))
    y, d = act_and_grad(name, z, slope)
    dz = dy * d
    return z, y, dz @ W, dz.T @ x, dz.sum(axis=0)


def make(rng, n, k, m, dtype, bias=True):
    x = rng.standard_normal((n, k)).astype(dtype)
    W = (rng.standard_normal((m, k)) / math.sqrt(k)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype) if bias else None
    dy = rng.standard_normal((n, m)).astype(dtype)
    return x, W, b, dy


def tol_for(dtype, k=4):
    t = dict(TOL[dtype])
    if dtype == np.float32:  # rounding grows with the length of the dot products
        t["atol"] *= max(1.0, math.sqrt(k / 4))
    return t


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("n", [0, 1, 5])
def test_dense_forward_and_backward_match_reference(backend, act, bias, dtype, n):
    name, slope = act
    code = ACTIVATIONS[name]
    ops = backend.ops()
    xp = backend.xp
    x, W, b, dy = make(np.random.default_rng(n), n, 4, 3, dtype, bias)
    z_ref, y_ref, dx_ref, dW_ref, db_ref = reference(x, W, b, dy, name, slope)
    X, WW, B, DY = (None if a is None else backend.asarray(a) for a in (x, W, b, dy))
    with strict_numerics():
        y, saved = ops.dense_forward(X, WW, B, code, slope)
    y_np, saved_np = backend.to_numpy(y), backend.to_numpy(saved)
    assert y_np.shape == (n, 3) and y_np.dtype == dtype
    np.testing.assert_allclose(y_np, y_ref, **tol_for(dtype))
    # what backward needs: z for gelu/gelu_tanh/negative-slope leaky_relu, the output otherwise
    np.testing.assert_allclose(saved_np, z_ref if needs_preactivation(code, slope) else y_ref, **tol_for(dtype))
    for need in itertools.product([True, False], repeat=3):
        with strict_numerics():
            dx, dW, db = ops.dense_backward(DY, X, WW, saved, code, slope,
                                            need_dx=need[0], need_dw=need[1], need_db=need[2])
        for got, want, flag, nm in [(dx, dx_ref, need[0], "dx"), (dW, dW_ref, need[1], "dW"), (db, db_ref, need[2], "db")]:
            if not flag:
                assert got is None, f"{nm} was not asked for"
                continue
            got = backend.to_numpy(got)
            assert got.shape == want.shape and got.dtype == dtype, (nm, got.shape, got.dtype)
            np.testing.assert_allclose(got, want, err_msg=nm, **tol_for(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_dense_larger_shapes(backend, act, dtype):
    """Many rows and a long inner dimension (tolerances grow with its length)."""
    name, slope = act
    if name == "gelu" and backend.kernels == "reference" and backend.device == "cpu":
        n, k, m = 40, 65, 17  # the NumPy reference evaluates erf element by element: keep it small
    else:
        n, k, m = 257, 130, 33
    x, W, b, dy = make(np.random.default_rng(7), n, k, m, dtype)
    ops = backend.ops()
    _, y_ref, dx_ref, dW_ref, db_ref = reference(x, W, b, dy, name, slope)
    X, WW, B, DY = (backend.asarray(a) for a in (x, W, b, dy))
    y, saved = ops.dense_forward(X, WW, B, ACTIVATIONS[name], slope)
    dx, dW, db = ops.dense_backward(DY, X, WW, saved, ACTIVATIONS[name], slope)
    t = tol_for(dtype, k)
    np.testing.assert_allclose(backend.to_numpy(y), y_ref, **t)
    np.testing.assert_allclose(backend.to_numpy(dx), dx_ref, **tol_for(dtype, m))
    np.testing.assert_allclose(backend.to_numpy(dW), dW_ref, **tol_for(dtype, n))
    np.testing.assert_allclose(backend.to_numpy(db), db_ref, **tol_for(dtype, n))


@pytest.mark.parametrize("act", ["identity", "relu", "gelu", "sigmoid"])
def test_dense_noncontiguous_operands(backend, act):
    """Transposed/strided x, W, b and dy give the results of their contiguous copies."""
    ops = backend.ops()
    code = ACTIVATIONS[act]
    x, W, b, dy = make(np.random.default_rng(3), 6, 5, 4, np.float64)
    xs = np.asfortranarray(x)
    Ws = np.ascontiguousarray(W.T).T           # a transposed view of a (5, 4) buffer
    bs = np.repeat(b, 2)[::2]                  # every other element
    dys = np.asfortranarray(dy)
    assert not (xs.flags.c_contiguous or Ws.flags.c_contiguous or bs.flags.c_contiguous or dys.flags.c_contiguous)
    y0, s0 = ops.dense_forward(*(backend.asarray(a) for a in (x, W, b)), code)
    g0 = ops.dense_backward(backend.asarray(dy), backend.asarray(x), backend.asarray(W), s0, code)
    y1, s1 = ops.dense_forward(*(backend.asarray(a) for a in (xs, Ws, bs)), code)
    g1 = ops.dense_backward(backend.asarray(dys), backend.asarray(xs), backend.asarray(Ws), s1, code)
    np.testing.assert_allclose(backend.to_numpy(y1), backend.to_numpy(y0), rtol=1e-13, atol=1e-14)
    for a, c in zip(g1, g0):
        np.testing.assert_allclose(backend.to_numpy(a), backend.to_numpy(c), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("act", ["identity", "relu", "gelu", "tanh"])
def test_dense_does_not_modify_its_inputs(backend, act):
    ops = backend.ops()
    code = ACTIVATIONS[act]
    arrays = make(np.random.default_rng(4), 5, 3, 4, np.float32)
    x, W, b, dy = (backend.asarray(a.copy()) for a in arrays)
    y, saved = ops.dense_forward(x, W, b, code)
    saved_copy = backend.to_numpy(saved).copy()
    y_copy = backend.to_numpy(y).copy()
    ops.dense_backward(dy, x, W, saved, code)
    for got, want, nm in zip((x, W, b, dy), arrays, "x W b dy".split()):
        np.testing.assert_array_equal(backend.to_numpy(got), want, err_msg=f"{nm} was modified")
    np.testing.assert_array_equal(backend.to_numpy(saved), saved_copy, err_msg="backward modified saved")
    np.testing.assert_array_equal(backend.to_numpy(y), y_copy, err_msg="backward modified the output")


def test_dense_is_deterministic(backend):
    ops = backend.ops()
    x, W, b, dy = (backend.asarray(a) for a in make(np.random.default_rng(5), 300, 20, 10, np.float32))
    runs = []
    for _ in range(2):
        y, s = ops.dense_forward(x, W, b, ACTIVATIONS["tanh"])
        runs.append([backend.to_numpy(a).copy() for a in (y, *ops.dense_backward(dy, x, W, s, ACTIVATIONS["tanh"]))])
    for a, c in zip(*runs):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_cpu_fused_agrees_with_reference_ops(act, dtype):
    """CpuOps within float tolerances of the reference Ops (the fused path vs the unfused one)."""
    name, slope = act
    code = ACTIVATIONS[name]
    x, W, b, dy = make(np.random.default_rng(11), 9, 6, 5, dtype)
    ref, cpu = Ops(), CpuOps()
    yr, sr = ref.dense_forward(x, W, b, code, slope)
    yc, sc = cpu.dense_forward(x, W, b, code, slope)
    t = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(yc, yr, **t)
    np.testing.assert_allclose(sc, sr, **t)
    for gc, gr in zip(cpu.dense_backward(dy, x, W, sc, code, slope), ref.dense_backward(dy, x, W, sr, code, slope)):
        np.testing.assert_allclose(gc, gr, **t)


@pytest.mark.parametrize("act", ["identity", "relu", "tanh"])  # a separate pass, fused into relu's and tanh's
def test_cpu_bias_gradient_accumulates_in_float64(act):
    """db sums many float32 rows in float64: exact where a float32 running sum would drift."""
    n = 100_000
    dy = np.full((n, 2), 0.1, np.float32)
    x = np.ones((n, 1), np.float32)
    W = np.ones((2, 1), np.float32)
    saved = np.zeros_like(dy) if act == "tanh" else dy  # act'(.) = 1 there: dz = dy
    _, _, db = CpuOps().dense_backward(dy, x, W, saved, ACTIVATIONS[act], need_dx=False, need_dw=False)
    want = np.float64(np.float32(0.1)) * n
    assert abs(float(db[0]) - want) <= 1e-6 * want


@pytest.mark.parametrize("act", ["identity", "relu", "gelu"])
def test_dense_backward_writes_dw_and_db_into_given_outputs(backend, act):
    """dW_out / db_out (an optimizer's flat gradient buffer): the very arrays come back, holding
    exactly what a call without them returns."""
    code = ACTIVATIONS[act]
    ops = backend.ops()
    xp = backend.xp
    x, W, b, dy = make(np.random.default_rng(8), 9, 5, 4, np.float32, True)
    X, WW, B, DY = (backend.asarray(a) for a in (x, W, b, dy))
    _, saved = ops.dense_forward(X, WW, B, code)
    want = ops.dense_backward(DY, X, WW, saved, code)
    flat = xp.full(4 * 5 + 4 + 3, np.nan, dtype=np.float32)  # dW and db as views of one buffer
    dW_out, db_out = flat[:20].reshape(4, 5), flat[20:24]
    got = ops.dense_backward(DY, X, WW, saved, code, dW_out=dW_out, db_out=db_out)
    assert got[1] is dW_out and got[2] is db_out
    for g, w in zip(got, want):
        np.testing.assert_array_equal(backend.to_numpy(g), backend.to_numpy(w))
    assert np.isnan(backend.to_numpy(flat[24:])).all()  # nothing written past them


def test_dense_backward_refuses_a_wrong_output(backend):
    ops = backend.ops()
    x, W, b, dy = make(np.random.default_rng(9), 6, 3, 2, np.float32, True)
    X, WW, B, DY = (backend.asarray(a) for a in (x, W, b, dy))
    _, saved = ops.dense_forward(X, WW, B, ACTIVATIONS["relu"])
    for bad in (backend.xp.zeros((3, 2), np.float32), backend.xp.zeros((2, 3), np.float64),
                backend.xp.zeros((3, 4), np.float32)[:, :2].T):
        with pytest.raises(ValueError, match="dense_backward: an output for a gradient of shape"):
            ops.dense_backward(DY, X, WW, saved, ACTIVATIONS["relu"], dW_out=bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cpu_outer_products_are_exact(dtype):
    """A product with inner dimension 1 (x @ W.T with one input feature; dx of a layer with one
    output; dW at batch 1, into a given output) holds each correctly rounded product: the CPU path
    computes these as an outer product, not through OpenBLAS's GEMM."""
    ops = CpuOps()
    rng = np.random.default_rng(3)
    code = ACTIVATIONS["identity"]

    def exact(a, b):  # the exact rational product, rounded once (float32 products are exact in float64)
        a, b = np.broadcast_arrays(a, b)
        return np.array([float(Fraction(float(u)) * Fraction(float(v))) for u, v in zip(a.ravel(), b.ravel())]
                        ).astype(dtype).reshape(a.shape)

    x1, W1 = rng.standard_normal((7, 1)).astype(dtype), rng.standard_normal((5, 1)).astype(dtype)
    y, _ = ops.dense_forward(x1, W1, None, code)
    np.testing.assert_array_equal(y, exact(x1, W1.T))
    x, W, dy = rng.standard_normal((6, 4)).astype(dtype), rng.standard_normal((1, 4)).astype(dtype), \
        rng.standard_normal((6, 1)).astype(dtype)
    dx, _, _ = ops.dense_backward(dy, x, W, dy, code)
    np.testing.assert_array_equal(dx, exact(dy, W))
    xb, Wb, dyb = rng.standard_normal((1, 4)).astype(dtype), rng.standard_normal((3, 4)).astype(dtype), \
        rng.standard_normal((1, 3)).astype(dtype)
    dW_out = np.full((3, 4), np.nan, dtype)
    _, dW, _ = ops.dense_backward(dyb, xb, Wb, dyb, code, dW_out=dW_out)
    assert dW is dW_out
    np.testing.assert_array_equal(dW, exact(dyb.T, xb))
    # a zero product is +0, as a GEMM's sum starting from 0 gives (NumPy's matmul: the same bits)
    a, b = np.array([[-1.0], [0.0]], dtype), np.array([[0.0, -0.0, 2.0]], dtype)
    y, _ = ops.dense_forward(a, b.T, None, code)
    assert not np.signbit(y[y == 0]).any()
    assert y.tobytes() == np.matmul(a, b).tobytes()
