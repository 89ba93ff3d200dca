"""gpunn's Numba CUDA kernels against the float64 references, one family at a time.

Without a GPU they run under Numba's CUDA simulator on NumPy arrays (tests/conftest.py turns it on)
with tiny shapes and the simulator's small launch geometries; on a GPU machine the same tests run
on CuPy arrays with the production geometries. float32 results are compared with a float64
reference computed from the same values, with tolerances that grow with the reduction length.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from cuda_util import target, tol  # noqa: F401  (target is a fixture)
from gpunn.backend import numba_cuda as nc
from gpunn.kernels import ACTIVATIONS, dense, losses, needs_preactivation, optimizers, softmax_ce
from gpunn.kernels import activations_cuda, dense_cuda, losses_cuda, optimizers_cuda, softmax_ce_cuda
from gpunn.kernels import registry
from gpunn.kernels.activations import activation_backward_ref, activation_forward_ref
from references import loss_inputs

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
ACTS = [(n, 0.01) for n in ACTIVATIONS] + [("leaky_relu", -0.5)]
ACT_IDS = [n if s == 0.01 else f"{n}{s}" for n, s in ACTS]


def r64(*arrays):
    return tuple(None if a is None else a.astype(np.float64) for a in arrays)


# ------------------------------------------------------------------------------------------ activations

@DTYPES
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_activation_kernels_match_reference(target, act, dtype):
    name, slope = act
    code = ACTIVATIONS[name]
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((5, 7)) * 2).astype(dtype)
    z[0, :3] = 0.0
    dy = rng.standard_normal((5, 7)).astype(dtype)
    y = activations_cuda.activation_forward(target.asarray(z), code, slope)
    y_ref = activation_forward_ref(z.astype(np.float64), code, slope)
    got = target.get(y)
    assert got.dtype == dtype and got.shape == z.shape
    np.testing.assert_allclose(got, y_ref, **tol(dtype))
    s_in = (z if needs_preactivation(code, slope) else y_ref.astype(dtype))
    pre = needs_preactivation(code, slope)
    dz = activations_cuda.activation_backward(target.asarray(dy), target.asarray(z) if pre else None,
                                              None if pre else target.asarray(s_in), code, slope)
    z64, y64 = z.astype(np.float64), s_in.astype(np.float64)
    dz_ref = activation_backward_ref(dy.astype(np.float64), z64 if pre else None, None if pre else y64, code, slope)
    np.testing.assert_allclose(target.get(dz), dz_ref, **tol(dtype))


def test_activation_shapes_layouts_and_errors(target):
    relu, gelu = ACTIVATIONS["relu"], ACTIVATIONS["gelu"]
    z0 = np.float64(-2.0) * np.ones(())
    y0 = target.get(activations_cuda.activation_forward(target.asarray(z0), relu))
    assert y0.shape == () and y0 == 0
    empty = np.zeros((0, 3))
    assert target.get(activations_cuda.activation_forward(target.asarray(empty), gelu)).shape == (0, 3)
    z = np.arange(12.0).reshape(3, 4) - 5
    zt = target.asarray(z).T  # not C-contiguous: copied first, the result is still z.T's
    np.testing.assert_array_equal(target.get(activations_cuda.activation_forward(zt, relu)), np.maximum(z, 0).T)
    with pytest.raises(ValueError, match="unknown activation code"):
        activations_cuda.activation_forward(target.asarray(z), 42)
    with pytest.raises(TypeError, match="float32 or float64"):
        activations_cuda.activation_forward(target.asarray(z.astype(np.float16)), relu)
    with pytest.raises(ValueError, match="needs z"):
        activations_cuda.activation_backward(target.asarray(z), None, target.asarray(z), gelu)
    with pytest.raises(ValueError, match="must match dy"):
        activations_cuda.activation_backward(target.asarray(z), None, target.asarray(z[:2]), relu)


# ------------------------------------------------------------------------------------------ dense

def dense_reference(x, W, b, dy, code, slope):
    y, saved = dense.dense_forward_ref(*r64(x, W, b), code, slope)
    grads = dense.dense_backward_ref(dy.astype(np.float64), *r64(x, W), saved, code, slope)
    return y, saved, grads


def make_dense(rng, n, k, m, dtype, bias=True):
    x = rng.standard_normal((n, k)).astype(dtype)
    W = (rng.standard_normal((m, k)) / np.sqrt(max(k, 1))).astype(dtype)
    b = rng.standard_normal(m).astype(dtype) if bias else None
    dy = rng.standard_normal((n, m)).astype(dtype)
    return x, W, b, dy


def run_dense(target, impl, x, W, b, dy, code, slope, need=(True, True, True), tile=None):
    """(y, saved, [dx, dW, db]) on the host, and whether forward's `saved` was y itself."""
    X, WW, B, DY = (target.asarray(a) for a in (x, W, b, dy))
    if impl == "fused":
        y, saved = dense_cuda.forward_fused(X, WW, B, code, slope, tile)
        grads = dense_cuda.backward_fused(DY, X, WW, saved, code, slope, *need, tile=tile)
    else:
        y, saved = dense_cuda.forward_cublas(X, WW, B, code, slope)
        grads = dense_cuda.backward_cublas(DY, X, WW, saved, code, slope, *need)
    return target.get(y), target.get(saved), [target.get(g) for g in grads], saved is y


def check_dense(got, want, dtype, n, k, m, what=""):
    y, saved, grads, _ = got
    y_ref, s_ref, g_ref = want
    assert y.dtype == dtype and y.shape == (n, m)
    np.testing.assert_allclose(y, y_ref, err_msg=f"{what} y", **tol(dtype, k))
    np.testing.assert_allclose(saved, s_ref, err_msg=f"{what} saved", **tol(dtype, k))
    for g, r, name, length in zip(grads, g_ref, ("dx", "dW", "db"), (m, n, n)):
        if g is None:
            continue
        assert g.dtype == dtype and g.shape == r.shape, (name, g.shape, g.dtype)
        np.testing.assert_allclose(g, r, err_msg=f"{what} {name}", **tol(dtype, length))


@DTYPES
@pytest.mark.parametrize("impl", ["fused", "cublas"])
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_dense_matches_reference(target, act, impl, dtype):
    """Every activation, both implementations; 11 rows and 9 outputs span two simulator tiles."""
    name, slope = act
    code = ACTIVATIONS[name]
    n, k, m = 11, 6, 9
    x, W, b, dy = make_dense(np.random.default_rng(1), n, k, m, dtype, bias=name != "tanh")
    got = run_dense(target, impl, x, W, b, dy, code, slope)
    check_dense(got, dense_reference(x, W, b, dy, code, slope), dtype, n, k, m, f"{impl} {name}")
    # backward needs z only for these; for the rest forward keeps no second (N, M) array
    assert got[3] is not needs_preactivation(code, slope)


@pytest.mark.parametrize("impl", ["fused", "cublas"])
@pytest.mark.parametrize("act", ["gelu", "relu", "identity"])
def test_dense_need_flags(target, act, impl):
    code = ACTIVATIONS[act]
    n, k, m = 10, 5, 4
    x, W, b, dy = make_dense(np.random.default_rng(2), n, k, m, np.float64)
    want = dense_reference(x, W, b, dy, code, 0.01)
    X, WW, B, DY = (target.asarray(a) for a in (x, W, b, dy))
    fwd = dense_cuda.forward_fused if impl == "fused" else dense_cuda.forward_cublas
    bwd = dense_cuda.backward_fused if impl == "fused" else dense_cuda.backward_cublas
    _, saved = fwd(X, WW, B, code)
    for need in itertools.product([True, False], repeat=3):
        grads = bwd(DY, X, WW, saved, code, 0.01, *need)
        for g, r, flag in zip(grads, want[2], need):
            if not flag:
                assert g is None
            else:
                np.testing.assert_allclose(target.get(g), r, **tol(np.float64, n))


@pytest.mark.parametrize("tile", [dense_cuda.TileConfig(4, 8, 2, 2, 2), dense_cuda.TileConfig(8, 4, 4, 2, 1)],
                         ids=lambda t: t.name)
def test_dense_fused_non_square_tiles(target, tile):
    """BM != BN and TM != TN catch any row/column mix-up in the tile indexing; ragged edges everywhere."""
    if target.is_gpu:
        pytest.skip("simulator tiles (the GPU tiles are covered by test_dense_production_tiles)")
    n, k, m = 13, 7, 11
    x, W, b, dy = make_dense(np.random.default_rng(3), n, k, m, np.float64)
    code = ACTIVATIONS["gelu"]
    got = run_dense(target, "fused", x, W, b, dy, code, 0.01, tile=tile)
    check_dense(got, dense_reference(x, W, b, dy, code, 0.01), np.float64, n, k, m, tile.name)


def _misaligned(target, a):
    """A C-contiguous copy of `a` that starts one element past a 16-byte boundary."""
    buf = target.xp.empty(a.size + 1, dtype=a.dtype)
    out = buf[1:].reshape(a.shape)
    out[...] = target.asarray(a)
    return out


@DTYPES
def test_dense_fused_vector_and_element_loads(target, dtype):
    """Operands 16-byte aligned with rows of a multiple of the load width take the vector loads,
    others element loads (`vector_width`); both match the reference, with ragged row tiles and, in
    dx/dW, a ragged dz (m = 10 is no multiple of 4 or 8). Tile 8x8x8/2x2: width 4 (float32), 2."""
    tile = dense_cuda.TileConfig(8, 8, 8, 2, 2)
    width = dense_cuda.max_vector_width(tile, np.dtype(dtype).itemsize)
    assert width == 16 // np.dtype(dtype).itemsize
    code = ACTIVATIONS["gelu"]
    for n, k, m in ((13, 12, 8), (9, 16, 10)):
        x, W, b, dy = make_dense(np.random.default_rng(5), n, k, m, dtype)
        X, WW, B, DY = (target.asarray(a) for a in (x, W, b, dy))
        assert dense_cuda.vector_width(tile, X, WW) == width
        Xm = _misaligned(target, x)
        assert dense_cuda.vector_width(tile, Xm, WW) == 1
        want = dense_reference(x, W, b, dy, code, 0.01)
        for xin in (X, Xm):
            y, saved = dense_cuda.forward_fused(xin, WW, B, code, 0.01, tile)
            grads = dense_cuda.backward_fused(DY, xin, WW, saved, code, 0.01, tile=tile)
            got = target.get(y), target.get(saved), [target.get(g) for g in grads], saved is y
            check_dense(got, want, dtype, n, k, m, f"{n}x{k}x{m} width {dense_cuda.vector_width(tile, xin, WW)}")


@pytest.mark.parametrize("tile", list(dense_cuda.TILES))
def test_dense_production_tiles(target, tile):
    """The GPU's tile configurations (256 threads per block: slow in the simulator, so one small case)."""
    shape = (70, 40, 66) if target.is_gpu else (5, 7, 6)
    x, W, b, dy = make_dense(np.random.default_rng(4), *shape, np.float32)
    code = ACTIVATIONS["sigmoid"]
    got = run_dense(target, "fused", x, W, b, dy, code, 0.01, tile=tile)
    check_dense(got, dense_reference(x, W, b, dy, code, 0.01), np.float32, *shape, tile)


@pytest.mark.parametrize("impl", ["fused", "cublas"])
@pytest.mark.parametrize("shape", [(0, 3, 4), (3, 0, 4), (3, 4, 0), (1, 1, 1)], ids=str)
def test_dense_degenerate_shapes(target, impl, shape):
    n, k, m = shape
    x, W, b, dy = make_dense(np.random.default_rng(5), n, k, m, np.float64)
    got = run_dense(target, impl, x, W, b, dy, ACTIVATIONS["relu"], 0.01)
    check_dense(got, dense_reference(x, W, b, dy, ACTIVATIONS["relu"], 0.01), np.float64, n, k, m)


@pytest.mark.parametrize("impl", ["fused", "cublas"])
def test_dense_bias_gradient_is_deterministic_and_float64_accumulated(target, impl):
    """db: fixed-order float64 sums (several row chunks on the cublas path), bit-identical across runs."""
    n = 40
    dy = np.full((n, 3), 0.1, np.float32)
    dy[::3] = 1e4  # a float32 running sum would lose the small terms next to the large ones
    x = np.ones((n, 2), np.float32)
    W = np.ones((3, 2), np.float32)
    code = ACTIVATIONS["identity"]
    runs = [run_dense(target, impl, x, W, None, dy, code, 0.01) for _ in range(2)]
    np.testing.assert_array_equal(runs[0][2][2], runs[1][2][2])
    want = dy.astype(np.float64).sum(axis=0)
    np.testing.assert_allclose(runs[0][2][2], want.astype(np.float32), rtol=0, atol=0)
    for a, c in zip(runs[0][2], runs[1][2]):
        np.testing.assert_array_equal(a, c)


def test_dense_does_not_modify_inputs(target):
    x, W, b, dy = make_dense(np.random.default_rng(6), 6, 5, 4, np.float32)
    X, WW, B, DY = (target.asarray(a.copy()) for a in (x, W, b, dy))
    for impl in ("fused", "cublas"):
        for act in ("relu", "gelu"):
            fwd = dense_cuda.forward_fused if impl == "fused" else dense_cuda.forward_cublas
            bwd = dense_cuda.backward_fused if impl == "fused" else dense_cuda.backward_cublas
            y, saved = fwd(X, WW, B, ACTIVATIONS[act])
            s_copy, y_copy = target.get(saved).copy(), target.get(y).copy()
            bwd(DY, X, WW, saved, ACTIVATIONS[act])
            np.testing.assert_array_equal(target.get(saved), s_copy)
            np.testing.assert_array_equal(target.get(y), y_copy)
    for a, c in zip((X, WW, B, DY), (x, W, b, dy)):
        np.testing.assert_array_equal(target.get(a), c)


def test_dense_refuses_bad_calls_before_launch(target):
    x, W, b, dy = make_dense(np.random.default_rng(7), 4, 3, 2, np.float32)
    X, WW, B, DY = (target.asarray(a) for a in (x, W, b, dy))
    relu = ACTIVATIONS["relu"]
    for fwd in (dense_cuda.forward_fused, dense_cuda.forward_cublas):
        with pytest.raises(ValueError, match="disagree on in_features"):
            fwd(X, target.asarray(W[:, :2].copy()), B, relu)
        with pytest.raises(ValueError, match="b must have shape"):
            fwd(X, WW, target.asarray(b[:1].copy()), relu)
        with pytest.raises(ValueError, match="dtype"):
            fwd(X, target.asarray(W.astype(np.float64)), B, relu)
        with pytest.raises(ValueError, match="C-contiguous"):
            fwd(target.asarray(np.asfortranarray(x)), WW, B, relu)
        with pytest.raises(TypeError, match="float32 or float64"):
            fwd(target.asarray(x.astype(np.float16)), target.asarray(W.astype(np.float16)), None, relu)
        with pytest.raises(ValueError, match="unknown activation code"):
            fwd(X, WW, B, 99)
        with pytest.raises(ValueError, match="2-D"):
            fwd(target.asarray(x[0].copy()), WW, B, relu)
    _, saved = dense_cuda.forward_fused(X, WW, B, relu)
    with pytest.raises(ValueError, match="dy must have shape"):
        dense_cuda.backward_fused(target.asarray(dy[:2].copy()), X, WW, saved, relu)
    with pytest.raises(ValueError, match="saved must have shape"):
        dense_cuda.backward_cublas(DY, X, WW, target.asarray(dy[:, :1].copy()), relu)
    with pytest.raises(ValueError, match="invalid tile"):
        dense_cuda.forward_fused(X, WW, B, relu, tile=dense_cuda.TileConfig(64, 64, 16, 1, 1))


def test_tile_configurations_are_valid():
    for cfg in list(dense_cuda.TILES.values()) + [dense_cuda.SIM_TILE]:
        cfg.check()
        assert cfg.threads <= 1024 and cfg.shared_bytes(8) <= 48 * 1024
    assert dense_cuda.TILES[dense_cuda.DEFAULT_TILE].threads == 256
    assert dense_cuda.fused_fits(65535 * 64, dense_cuda.TILES["64x64x16/4x4"])
    assert not dense_cuda.fused_fits(65535 * 64 + 1, dense_cuda.TILES["64x64x16/4x4"])
    with pytest.raises(ValueError, match="unknown tile"):
        dense_cuda.tile_config("3x3")


# ------------------------------------------------------------------------------------------ softmax-CE

def sce_reference(logits, labels, g, ignore_index=-100):
    x = logits.astype(np.float64)
    losses_, probs, _ = softmax_ce.softmax_cross_entropy_forward_ref(x, labels.astype(np.int64), ignore_index)
    d = softmax_ce.softmax_cross_entropy_backward_ref(np.broadcast_to(g, (x.shape[0],)).astype(np.float64),
                                                      probs, labels.astype(np.int64), ignore_index)
    return losses_, probs, d


@DTYPES
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8], ids=["int64", "int32", "uint8"])
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (7, 10), (3, 17)], ids=str)
def test_softmax_ce_matches_reference(target, shape, label_dtype, dtype):
    n, c = shape
    rng = np.random.default_rng(c)
    logits = (rng.standard_normal(shape) * 3).astype(dtype)
    labels = rng.integers(0, c, n).astype(label_dtype)
    g = rng.standard_normal(n).astype(dtype)
    L, Y = target.asarray(logits), target.asarray(labels)
    losses_, probs, stats = softmax_ce_cuda.softmax_cross_entropy_forward(L, Y)
    d = softmax_ce_cuda.softmax_cross_entropy_backward(target.asarray(g), probs, Y)
    l_ref, p_ref, d_ref = sce_reference(logits, labels, g)
    for got, want in zip((losses_, probs, d), (l_ref, p_ref, d_ref)):
        got = target.get(got)
        assert got.dtype == dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, **tol(dtype, c))
    np.testing.assert_array_equal(target.get(stats), [n, 0, 0, c])


@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_softmax_ce_ignore_index_and_scalar_upstream(target, ignore_index):
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((6, 4)) * 2
    labels = np.array([ignore_index, 1, 2, ignore_index, 0, 3])
    g = np.broadcast_to(np.float64(0.25), (6,))  # one value for every row: a stride-0 view
    L, Y = target.asarray(logits), target.asarray(labels)
    losses_, probs, stats = softmax_ce_cuda.softmax_cross_entropy_forward(L, Y, ignore_index)
    gd = target.xp.broadcast_to(target.xp.asarray(np.float64(0.25)), (6,))
    d = target.get(softmax_ce_cuda.softmax_cross_entropy_backward(gd, probs, Y, ignore_index))
    l_ref, p_ref, d_ref = sce_reference(logits, labels, g, ignore_index)
    np.testing.assert_allclose(target.get(losses_), l_ref, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(d, d_ref, rtol=1e-13, atol=1e-15)
    ignored = labels == ignore_index
    np.testing.assert_array_equal(target.get(losses_)[ignored], 0)
    np.testing.assert_array_equal(d[ignored], 0)
    np.testing.assert_array_equal(target.get(stats), [(~ignored).sum(), 0, 1, 4])


def _cpu_and_cuda(target, logits, labels, g, ignore_index, reduction):
    """(loss, probs, stats, dlogits) from CpuOps and from the CUDA kernels."""
    from gpunn.kernels import CpuOps

    out = []
    for fwd, bwd, conv, get in (
            (CpuOps.softmax_cross_entropy_forward, CpuOps.softmax_cross_entropy_backward, np.asarray, np.asarray),
            (softmax_ce_cuda.softmax_cross_entropy_forward, softmax_ce_cuda.softmax_cross_entropy_backward,
             target.asarray, target.get)):
        Y = conv(labels)
        loss, probs, stats = fwd(conv(logits), Y, ignore_index, reduction)
        d = bwd(conv(g), probs, Y, ignore_index, reduction, stats)
        out.append(tuple(get(a) for a in (loss, probs, stats, d)))
    return out


@DTYPES
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_softmax_ce_kernel_equals_the_cpu_path(target, reduction, dtype):
    """Loss (reduced in the kernel's last block), probs, stats and gradient equal CpuOps'. Seven
    rows are four blocks in the simulator, so the last-block reduction sees other blocks' rows."""
    rng = np.random.default_rng(11)
    logits = (rng.standard_normal((7, 5)) * 2).astype(dtype)
    labels = np.array([3, -100, 0, 4, -100, 1, 2])
    g = (rng.standard_normal(7) if reduction == "none" else np.asarray(0.7)).astype(dtype)
    for _ in range(2):  # twice: the ticket is back at 0 after every launch
        cpu, gpu = _cpu_and_cuda(target, logits, labels, g, -100, reduction)
        for c, k in zip(cpu, gpu):
            assert c.shape == k.shape and c.dtype == k.dtype
            np.testing.assert_allclose(k, c, **tol(dtype, 7))
        np.testing.assert_array_equal(gpu[2], [5, 0, 2, 5])


@DTYPES
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weighted,smoothing", [(True, 0.0), (False, 0.3), (True, 0.3)],
                         ids=["weight", "smoothing", "weight+smoothing"])
def test_softmax_ce_general_kernels_equal_the_cpu_path(target, weighted, smoothing, reduction, dtype):
    """Class weights and label smoothing (the "general" kernels): loss, probs, stats (divisor =
    sum of w_y over the counted rows, W = sum of the weights) and gradient equal CpuOps'."""
    from gpunn.kernels import CpuOps

    rng = np.random.default_rng(13)
    logits = (rng.standard_normal((7, 5)) * 2).astype(dtype)
    labels = np.array([3, -100, 0, 4, -100, 1, 2])
    w = rng.uniform(0.2, 3.0, 5).astype(dtype) if weighted else None
    g = (rng.standard_normal(7) if reduction == "none" else np.asarray(0.7)).astype(dtype)
    cpu_f = CpuOps.softmax_cross_entropy_forward(logits, labels, -100, reduction, w, smoothing)
    cpu_d = CpuOps.softmax_cross_entropy_backward(g, cpu_f[1], labels, -100, reduction, cpu_f[2], w, smoothing)
    W = None if w is None else target.asarray(w)
    Y = target.asarray(labels)
    gpu_f = softmax_ce_cuda.softmax_cross_entropy_forward(target.asarray(logits), Y, -100, reduction, W, smoothing)
    gpu_d = softmax_ce_cuda.softmax_cross_entropy_backward(target.asarray(g), gpu_f[1], Y, -100, reduction,
                                                           gpu_f[2], W, smoothing)
    for c, k in zip((*cpu_f, cpu_d), (*gpu_f, gpu_d)):
        k = target.get(k)
        assert c.shape == k.shape and c.dtype == k.dtype
        np.testing.assert_allclose(k, c, **tol(dtype, 7))
    divisor = w[labels[labels >= 0]].astype(np.float64).sum() if weighted else 5
    np.testing.assert_allclose(target.get(gpu_f[2]), [divisor, 0, 2, w.astype(np.float64).sum() if weighted else 5],
                               rtol=1e-6 if dtype == np.float32 else 1e-15)


def test_softmax_ce_general_kernels_bad_labels_and_all_ignored(target):
    """With weights: a bad label is never used as an index into them (NaN row, stats[1]); every row
    ignored gives a NaN mean and zero gradients, as on the CPU."""
    from gpunn.kernels import CpuOps

    logits = np.random.default_rng(14).standard_normal((5, 3))
    w = np.array([0.5, 2.0, 1.5])
    for labels in (np.array([0, 7, 1, -5, 2]), np.full(5, -100)):
        Y = target.asarray(labels)
        loss, probs, stats = softmax_ce_cuda.softmax_cross_entropy_forward(target.asarray(logits), Y, -100, "mean",
                                                                           target.asarray(w), 0.2)
        d = softmax_ce_cuda.softmax_cross_entropy_backward(target.asarray(np.asarray(1.0)), probs, Y, -100, "mean",
                                                           stats, target.asarray(w), 0.2)
        c_loss, c_probs, c_stats = CpuOps.softmax_cross_entropy_forward(logits, labels, -100, "mean", w, 0.2)
        c_d = CpuOps.softmax_cross_entropy_backward(np.asarray(1.0), c_probs, labels, -100, "mean", c_stats, w, 0.2)
        assert np.isnan(target.get(loss)) and np.isnan(c_loss)
        np.testing.assert_array_equal(target.get(stats), c_stats)
        np.testing.assert_allclose(target.get(d), c_d, rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(target.get(stats), [0, 0, 1, 4])
    np.testing.assert_array_equal(target.get(d), 0)


def test_softmax_ce_every_row_ignored(target):
    logits = np.random.default_rng(12).standard_normal((5, 3)).astype(np.float32)
    labels = np.full(5, -100)
    cpu, gpu = _cpu_and_cuda(target, logits, labels, np.asarray(1.0, np.float32), -100, "mean")
    assert np.isnan(gpu[0]) and np.isnan(cpu[0])
    np.testing.assert_array_equal(gpu[2], [0, 0, 1, 3])
    np.testing.assert_array_equal(gpu[3], 0)
    np.testing.assert_allclose(gpu[1], cpu[1], **tol(np.float32, 3))


@DTYPES
def test_softmax_ce_extreme_logits_and_bad_labels(target, dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4], [-1e4, 1e4, 5.0]], dtype)
    labels = np.array([1, 0, 0, 7])  # 7 is out of range: NaN loss, never an out-of-bounds read
    losses_, probs, stats = softmax_ce_cuda.softmax_cross_entropy_forward(target.asarray(logits),
                                                                          target.asarray(labels))
    got = target.get(losses_)
    np.testing.assert_allclose(got[:3], [2e4, np.log(3.0), np.log(2.0)], rtol=1e-6)
    assert np.isnan(got[3])
    assert np.isfinite(target.get(probs)).all()
    np.testing.assert_array_equal(target.get(stats), [4, 4, 0, 3])


def test_softmax_ce_reports_the_first_bad_label_of_any_block(target):
    """stats[1] is 1 + the FIRST bad row although later blocks have bad rows too (a min over rows,
    whatever the order the blocks finish in); the mean is NaN."""
    logits = np.zeros((9, 3))
    labels = np.array([0, 1, 2, -100, 3, 0, -7, 1, 99])
    cpu, gpu = _cpu_and_cuda(target, logits, labels, np.asarray(1.0), -100, "mean")
    np.testing.assert_array_equal(gpu[2], [8, 5, 4, 3])
    np.testing.assert_array_equal(gpu[2], cpu[2])
    assert np.isnan(gpu[0])


def test_softmax_ce_refuses_bad_calls(target):
    L = target.asarray(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        softmax_ce_cuda.softmax_cross_entropy_forward(L, target.asarray(np.zeros(2, np.int64)))
    with pytest.raises(ValueError, match="integers"):
        softmax_ce_cuda.softmax_cross_entropy_forward(L, target.asarray(np.zeros(3)))
    with pytest.raises(ValueError, match="2-D"):
        softmax_ce_cuda.softmax_cross_entropy_forward(target.asarray(np.zeros(3)), target.asarray(np.zeros(3, int)))
    with pytest.raises(ValueError, match=r"grad must have shape \(3,\)"):
        softmax_ce_cuda.softmax_cross_entropy_backward(target.asarray(np.zeros(2)), L,
                                                       target.asarray(np.zeros(3, np.int64)))
    with pytest.raises(ValueError, match="grad must hold one value"):
        softmax_ce_cuda.softmax_cross_entropy_backward(target.asarray(np.zeros(2)), L,
                                                       target.asarray(np.zeros(3, np.int64)), -100, "sum")
    with pytest.raises(ValueError, match="stats must be the forward's"):
        softmax_ce_cuda.softmax_cross_entropy_backward(target.asarray(np.zeros(())), L,
                                                       target.asarray(np.zeros(3, np.int64)), -100, "mean",
                                                       target.asarray(np.zeros(3)))
    empty_l, empty_p, empty_s = softmax_ce_cuda.softmax_cross_entropy_forward(target.asarray(np.zeros((0, 4))),
                                                                              target.asarray(np.zeros(0, np.int64)))
    assert empty_l.shape == (0,) and empty_p.shape == (0, 4)
    np.testing.assert_array_equal(target.get(empty_s), [0, 0, 0, 4])


def test_softmax_block_shapes():
    assert softmax_ce_cuda.block_shape(10) == (32, 8)
    assert softmax_ce_cuda.block_shape(1000) == (128, 2)
    assert softmax_ce_cuda.block_shape(50000) == (256, 1)
    for c in (1, 10, 1000, 50000):
        tx, ty = softmax_ce_cuda.block_shape(c)
        assert tx * ty == 256 and tx & (tx - 1) == 0  # a power of two: the tree reduction needs it
    for c in (1, 8, 9, 100):
        tx, ty = softmax_ce_cuda.block_shape(c, simulator=True)
        assert tx & (tx - 1) == 0


# ------------------------------------------------------------------------------------------ losses

LOSS_LAYOUTS = [(name, kind) for name, m in registry.LOSSES.items()
                for kind in (("none", "scalar", "per_class", "full") if m.operand else ("none",))]


@DTYPES
@pytest.mark.parametrize("name, w_kind", LOSS_LAYOUTS)
def test_loss_kernels_match_the_cpu_kernels(target, name, w_kind, dtype):
    """Every registered loss, forward and gradients (upstream per element and broadcast), against
    the CPU kernels made from the same definition (and both against the float64 reference in
    tests/test_kernels_losses.py)."""
    m = registry.LOSSES[name]
    rng = np.random.default_rng(4)
    x, y = loss_inputs(name, (4, 3), dtype, seed=4)
    w = {"none": None, "scalar": np.array([1.7], dtype), "per_class": rng.uniform(0.5, 2, 3).astype(dtype),
         "full": rng.uniform(0.5, 2, (4, 3)).astype(dtype)}[w_kind]
    a = 0.7 if m.scalar else None
    X, Yt, W = (None if v is None else target.asarray(v) for v in (x, y, w))
    got = target.get(losses_cuda.loss_forward(name, X, Yt, W, a))
    assert got.dtype == dtype
    np.testing.assert_allclose(got, losses.loss_forward_cpu(name, x, y, w, a), **tol(dtype))
    g_full = rng.standard_normal((4, 3)).astype(dtype)
    for wrt in ("input", "target") if m.grad_target else ("input",):
        for scalar_g in (False, True):
            g = np.broadcast_to(dtype(0.3), x.shape) if scalar_g else g_full
            G = target.xp.broadcast_to(target.xp.asarray(dtype(0.3)), x.shape) if scalar_g else target.asarray(g)
            got = target.get(losses_cuda.loss_backward(name, G, X, Yt, W, a, wrt=wrt))
            np.testing.assert_allclose(got, losses.loss_backward_cpu(name, g, x, y, w, a, wrt=wrt), **tol(dtype))


def test_losses_handle_layouts_nan_and_errors(target):
    x = np.array([[1.0, np.nan], [2.0, -1.0]])
    y = np.array([[1.0, 0.0], [1.0, 1.0]])
    d = target.get(losses_cuda.loss_backward("l1", target.asarray(np.ones((2, 2))), target.asarray(x),
                                             target.asarray(y)))
    np.testing.assert_array_equal(d, [[0.0, np.nan], [1.0, -1.0]])
    xf = target.asarray(np.asfortranarray(np.arange(6.0).reshape(2, 3)))
    yf = target.asarray(np.zeros((2, 3)))
    np.testing.assert_array_equal(target.get(losses_cuda.loss_forward("mse", xf, yf)), np.arange(6.0).reshape(2, 3) ** 2)
    with pytest.raises(ValueError, match="target must be"):
        losses_cuda.loss_forward("mse", target.asarray(np.zeros(3)), target.asarray(np.zeros(4)))
    with pytest.raises(ValueError, match="operand of shape"):
        losses_cuda.loss_forward("bce_with_logits", target.asarray(np.zeros((2, 3))), target.asarray(np.zeros((2, 3))),
                                 target.asarray(np.ones(2)))
    with pytest.raises(ValueError, match="does not broadcast"):
        losses_cuda.loss_backward("mse", target.asarray(np.ones(4)), target.asarray(np.zeros(3)),
                                  target.asarray(np.zeros(3)))
    with pytest.raises(TypeError, match="float32 or float64"):
        losses_cuda.loss_forward("mse", target.asarray(np.zeros(3, np.int32)), target.asarray(np.zeros(3, np.int32)))
    assert losses_cuda.loss_forward("mse", target.asarray(np.zeros((0, 2))),
                                    target.asarray(np.zeros((0, 2)))).shape == (0, 2)


# ------------------------------------------------------------------------------------------ optimizers

SGD_OPTIONS = [dict(), dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=0.1),
               dict(momentum=0.5, dampening=0.2, maximize=True), dict(weight_decay=0.05, maximize=True)]
ADAM_OPTIONS = [dict(), dict(amsgrad=True), dict(weight_decay=0.1), dict(weight_decay=0.1, decoupled=True),
                dict(maximize=True, amsgrad=True, weight_decay=0.01, decoupled=True)]
RMS_OPTIONS = [dict(), dict(centered=True), dict(momentum=0.9), dict(centered=True, momentum=0.5, weight_decay=0.1),
               dict(maximize=True, weight_decay=0.01)]
ADAGRAD_OPTIONS = [dict(), dict(lr_decay=0.1, weight_decay=0.1), dict(maximize=True, eps=1e-6)]


def _opt_tol(dtype):
    # same formulas and rounding points as the CPU kernels; a GPU may fuse multiply-adds (1 ulp)
    return dict(rtol=4 * np.finfo(dtype).eps, atol=4 * np.finfo(dtype).eps)


def _steps(target, dtype, names, update_gpu, update_cpu, n=37, steps=3):
    rng = np.random.default_rng(6)
    p = rng.standard_normal(n).astype(dtype)
    state = {k: np.zeros(n, dtype) for k in names}
    cpu = [p.copy()] + [state[k].copy() for k in names]
    dev = [target.asarray(a.copy()) for a in cpu]
    for t in range(1, steps + 1):
        g = rng.standard_normal(n).astype(dtype)
        update_gpu(dev, target.asarray(g), t)
        update_cpu(cpu, g, t)
    for a, c, name in zip(dev, cpu, ["params"] + list(names)):
        np.testing.assert_allclose(target.get(a), c, err_msg=name, **_opt_tol(dtype))


@DTYPES
@pytest.mark.parametrize("kw", SGD_OPTIONS, ids=str)
def test_sgd_update_matches_cpu_kernel(target, kw, dtype):
    mom = kw.get("momentum", 0) != 0

    def run(impl, arrays, g, t):
        impl(arrays[0], g, arrays[1] if mom else None, 0.1, first_step=t == 1, **kw)

    _steps(target, dtype, ["momentum_buffer"], lambda a, g, t: run(optimizers_cuda.sgd_update, a, g, t),
           lambda a, g, t: run(optimizers.sgd_update_cpu, a, g, t))


@DTYPES
@pytest.mark.parametrize("kw", ADAM_OPTIONS, ids=str)
def test_adam_update_matches_cpu_kernel(target, kw, dtype):
    ams = kw.get("amsgrad", False)

    def run(impl, a, g, t):
        impl(a[0], g, a[1], a[2], a[3] if ams else None, 1e-2, step=t, **kw)

    _steps(target, dtype, ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
           lambda a, g, t: run(optimizers_cuda.adam_update, a, g, t),
           lambda a, g, t: run(optimizers.adam_update_cpu, a, g, t))


@DTYPES
@pytest.mark.parametrize("kw", RMS_OPTIONS, ids=str)
def test_rmsprop_update_matches_cpu_kernel(target, kw, dtype):
    mom, cen = kw.get("momentum", 0) > 0, kw.get("centered", False)

    def run(impl, a, g, t):
        impl(a[0], g, a[1], a[2] if mom else None, a[3] if cen else None, 1e-2, **kw)

    _steps(target, dtype, ["square_avg", "momentum_buffer", "grad_avg"],
           lambda a, g, t: run(optimizers_cuda.rmsprop_update, a, g, t),
           lambda a, g, t: run(optimizers.rmsprop_update_cpu, a, g, t))


@DTYPES
@pytest.mark.parametrize("kw", ADAGRAD_OPTIONS, ids=str)
def test_adagrad_update_matches_cpu_kernel(target, kw, dtype):
    def run(impl, a, g, t):
        impl(a[0], g, a[1], 1e-1, step=t, **kw)

    _steps(target, dtype, ["sum"], lambda a, g, t: run(optimizers_cuda.adagrad_update, a, g, t),
           lambda a, g, t: run(optimizers.adagrad_update_cpu, a, g, t))


@DTYPES
def test_staged_update_kernels_compute_what_the_scalar_ones_do_bit_for_bit(target, dtype):
    """For every registered update and option combination, the kernel a CUDA graph captures (its
    scalars read from a float64 device array, gpunn/compiler_graph.py) writes the same bits as the
    update's own kernel given the same scalars as arguments."""
    from gpunn.kernels.cuda_elementwise import launch

    rng = np.random.default_rng(8)
    n = 8
    for m in registry.OPTIMIZERS.values():
        for flags in m.variants():
            flags = tuple(sorted(flags.items()))
            scalars = rng.uniform(0.1, 0.9, len(m.params) - len(m.arrays))
            start = [rng.standard_normal(n).astype(dtype) for _ in m.arrays[:2]]
            # state in [0.5, 1], a mean gradient in [0.25, 0.5]: RMSprop's centred variance stays positive
            start += [(rng.uniform(0.5, 1.0, n) * (0.5 if name == "grad_avg" else 1.0)).astype(dtype)
                      for name in m.arrays[2:]]
            plain, staged = [target.asarray(a.copy()) for a in start], [target.asarray(a.copy()) for a in start]
            launch(optimizers_cuda._kernel(m, np.dtype(dtype), flags), n, plain[0], *plain, *map(float, scalars))
            launch(optimizers_cuda.staged_kernel(m, dtype, flags), n, staged[0], *staged,
                   target.asarray(scalars.astype(np.float64)))
            for name, a, b in zip(m.arrays, plain, staged):
                assert target.get(a).tobytes() == target.get(b).tobytes(), (m.name, flags, name)


def test_optimizer_kernels_refuse_bad_calls_and_leave_unused_state_alone(target):
    p = target.asarray(np.ones(5, np.float32))
    g = target.asarray(np.ones(5, np.float32))
    with pytest.raises(ValueError, match="grad must match params"):
        optimizers_cuda.sgd_update(p, target.asarray(np.ones(4, np.float32)), None, 0.1)
    with pytest.raises(ValueError, match="momentum_buffer"):
        optimizers_cuda.sgd_update(p, g, None, 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="max_exp_avg_sq"):
        optimizers_cuda.adam_update(p, g, target.asarray(np.zeros(5, np.float32)),
                                    target.asarray(np.zeros(5, np.float32)), None, 0.1, amsgrad=True)
    with pytest.raises(ValueError, match="C-contiguous"):
        optimizers_cuda.sgd_update(target.asarray(np.ones(10, np.float32))[::2], g, None, 0.1)
    with pytest.raises(TypeError, match="float32 or float64"):
        h = target.asarray(np.ones(5, np.float16))
        optimizers_cuda.sgd_update(h, h.copy(), None, 0.1)
    untouched = target.asarray(np.full(5, 7.0, np.float32))
    m, v = target.asarray(np.zeros(5, np.float32)), target.asarray(np.zeros(5, np.float32))
    optimizers_cuda.adam_update(p, g, m, v, untouched, 0.1)  # amsgrad off: max_exp_avg_sq is not used
    optimizers_cuda.sgd_update(p, g, untouched, 0.1)  # momentum 0: the buffer is not used
    np.testing.assert_array_equal(target.get(untouched), 7.0)
    np.testing.assert_array_equal(target.get(g), 1.0)
    optimizers_cuda.adam_update(target.asarray(np.zeros(0, np.float32)), target.asarray(np.zeros(0, np.float32)),
                                target.asarray(np.zeros(0, np.float32)), target.asarray(np.zeros(0, np.float32)),
                                None, 0.1)


# ------------------------------------------------------------------------------------------ compilation

def test_kernels_compile_once_per_signature(target):
    x = target.asarray(np.ones(4, np.float32))
    activations_cuda.activation_forward(x, ACTIVATIONS["tanh"])
    n = len(nc.compile_log())
    keys = [k for k, _ in nc.compile_log()]
    assert ("activation_forward", ACTIVATIONS["tanh"], "float32") in keys
    for _ in range(3):
        activations_cuda.activation_forward(x, ACTIVATIONS["tanh"])
    assert len(nc.compile_log()) == n
    assert all(seconds >= 0 for _, seconds in nc.compile_log())


def test_kernel_registry_builds_once_and_times_its_own_builds():
    reg = nc.KernelRegistry()
    calls = []

    def inner():
        calls.append("inner")
        return "I"

    def outer():
        calls.append("outer")
        assert reg.get("inner", inner) == "I"  # a build may ask for what it calls (re-entrant)
        return "O"

    assert reg.get("outer", outer) == "O"
    assert reg.get("outer", outer) == "O" and reg.get("inner", inner) == "I"
    assert calls == ["outer", "inner"] and len(reg) == 2
    log = dict(reg.compile_log())
    assert set(log) == {"outer", "inner"} and all(v >= 0 for v in log.values())


@pytest.mark.parametrize("impl", ["fused", "cublas"])
@pytest.mark.parametrize("act", ["identity", "gelu"])
def test_dense_backward_into_given_outputs(target, act, impl):
    """dW / db written into caller-given views of one flat buffer (an optimizer's gradient buffer):
    the very arrays come back with what a call without them gives, nothing written past them."""
    from gpunn.kernels import dense_dispatch

    code = ACTIVATIONS[act]
    x, W, b, dy = make_dense(np.random.default_rng(6), 9, 5, 6, np.float32)
    X, WW, B, DY = (target.asarray(a) for a in (x, W, b, dy))
    _, saved = dense_dispatch.dense_forward(X, WW, B, code, impl=impl)
    want = dense_dispatch.dense_backward(DY, X, WW, saved, code, impl=impl)
    flat = target.asarray(np.full(6 * 5 + 6 + 2, np.nan, np.float32))
    dW_out, db_out = flat[:30].reshape(6, 5), flat[30:36]
    got = dense_dispatch.dense_backward(DY, X, WW, saved, code, impl=impl, dW_out=dW_out, db_out=db_out)
    assert got[1] is dW_out and got[2] is db_out
    for g, w in zip(got, want):
        np.testing.assert_array_equal(target.get(g), target.get(w))
    assert np.isnan(target.get(flat[36:])).all()
