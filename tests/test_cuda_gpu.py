"""CuPy-only paths of the GPU backend: they need a real CUDA device and are skipped without one
(the kernels themselves are also tested under Numba's simulator, in test_cuda_kernels.py).

What runs here on a GPU: CudaOps on CuPy arrays through ops_for(), launches on CuPy's current
(non-default) stream, the cuBLAS path and the fused path on shapes larger than a tile, full float32
(no TF32) in cuBLAS, and end-to-end training on the GPU equal to the CPU's.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import gpunn as gn
from cuda_util import requires_gpu
from gpunn.backend import numba_cuda as nc
from gpunn.kernels import ACTIVATIONS, dense, ops_for

pytestmark = requires_gpu


@pytest.fixture(scope="module")
def cp():
    import cupy

    return cupy


def test_cupy_arrays_get_cuda_ops(cp):
    from gpunn.kernels.cuda_ops import CudaOps

    assert isinstance(ops_for(cp.zeros(3, cp.float32)), CudaOps)
    from numba.core import config

    nc.numba_cuda()
    assert int(config.CUDA_ARRAY_INTERFACE_SYNC) == 0


def test_kernels_launch_on_cupys_current_stream(cp):
    rng = np.random.default_rng(0)
    x, W, b = rng.standard_normal((300, 70)), rng.standard_normal((50, 70)), rng.standard_normal(50)
    ops = ops_for(cp.zeros(1))
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        st = nc.stream_for(cp.zeros(1))
        handle = getattr(st.handle, "value", None)
        handle = int(st.handle) if handle is None else handle
        assert handle == s.ptr
        X, WW, B = cp.asarray(x), cp.asarray(W), cp.asarray(b)
        y, _ = ops.dense_forward(X, WW, B, ACTIVATIONS["relu"])
        probs = ops.softmax_cross_entropy_forward(y, cp.zeros(300, cp.int64))[1]
    s.synchronize()
    want = np.maximum(x @ W.T + b, 0)
    np.testing.assert_allclose(y.get(), want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(probs.get().sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("impl", ["fused:64x64x16/4x4", "fused:128x128x8/8x8", "fused:32x32x8/2x2",
                                  "fused:64x64x16/4x4@3", "cublas"])
@pytest.mark.parametrize("shape", [(300, 130, 70), (1000, 512, 10), (64, 1024, 1024)], ids=str)
@pytest.mark.parametrize("act", ["relu", "gelu", "sigmoid"])
def test_dense_on_real_shapes(cp, impl, shape, act):
    from gpunn.kernels import dense_dispatch

    n, k, m = shape
    code = ACTIVATIONS[act]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, k)).astype(np.float32)
    W = (rng.standard_normal((m, k)) / math.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    dy = rng.standard_normal((n, m)).astype(np.float32)
    y, saved = dense_dispatch.dense_forward(cp.asarray(x), cp.asarray(W), cp.asarray(b), code, impl=impl)
    grads = dense_dispatch.dense_backward(cp.asarray(dy), cp.asarray(x), cp.asarray(W), saved, code, impl=impl)
    y_ref, s_ref = dense.dense_forward_ref(*(a.astype(np.float64) for a in (x, W, b)), code)
    g_ref = dense.dense_backward_ref(dy.astype(np.float64), x.astype(np.float64), W.astype(np.float64), s_ref, code)
    t = lambda length: dict(rtol=2e-5, atol=2e-5 * max(1.0, math.sqrt(length / 4)))  # noqa: E731
    np.testing.assert_allclose(y.get(), y_ref, **t(k))
    for g, r, length in zip(grads, g_ref, (m, n, n)):
        np.testing.assert_allclose(g.get(), r, **t(length))


def test_cublas_float32_is_full_precision_not_tf32(cp):
    """TF32 keeps 10 mantissa bits (relative error ~1e-3); float32 GEMMs must stay near 1e-6."""
    from gpunn.kernels import dense_dispatch

    rng = np.random.default_rng(2)
    x = rng.uniform(1, 2, (256, 1024)).astype(np.float32)
    W = rng.uniform(1, 2, (256, 1024)).astype(np.float32)
    for impl in ("cublas", "fused"):
        y, _ = dense_dispatch.dense_forward(cp.asarray(x), cp.asarray(W), None, ACTIVATIONS["identity"], impl=impl)
        rel = np.abs(y.get() - x.astype(np.float64) @ W.T.astype(np.float64)) / (x.astype(np.float64) @ W.T)
        assert rel.max() < 2e-5, (impl, rel.max())


def _fit(device, dtype, epochs=3):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((96, 8)).astype(dtype)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)
    gn.manual_seed(0)
    model = gn.nn.Sequential(gn.nn.Dense(8, 32, activation="gelu"), gn.nn.Dense(32, 16), gn.nn.Linear(16, 3))
    model = model.to(dtype).to(device)
    opt = gn.optim.AdamW(model.parameters(), lr=1e-2)
    hist = gn.train.fit(model, gn.nn.CrossEntropyLoss(), opt, X, y, epochs=epochs, batch_size=16, progress=False,
                        seed=0)
    params = [p.data.get() if hasattr(p.data, "get") else p.data for p in model.parameters()]
    return hist, params


def test_training_on_the_gpu_equals_the_cpu():
    h_gpu, p_gpu = _fit("gpu", np.float64)
    h_cpu, p_cpu = _fit("cpu", np.float64)
    np.testing.assert_allclose(h_gpu.history["loss"], h_cpu.history["loss"], rtol=1e-9)
    for a, c in zip(p_gpu, p_cpu):
        np.testing.assert_allclose(a, c, rtol=1e-8, atol=1e-10)
    h32, _ = _fit("gpu", np.float32, epochs=10)
    assert h32.history["loss"][-1] < 0.7 * h32.history["loss"][0]


def test_a_step_compiles_nothing_new_after_the_first(cp):
    model = gn.nn.Sequential(gn.nn.Dense(8, 16), gn.nn.Linear(16, 4)).to("gpu")
    opt = gn.optim.Adam(model.parameters())
    X = cp.asarray(np.random.default_rng(4).standard_normal((32, 8)).astype(np.float32))
    y = cp.asarray(np.arange(32) % 4)

    def step():
        opt.zero_grad()
        gn.nn.CrossEntropyLoss()(model(gn.Tensor(X)), gn.Tensor(y)).backward()
        opt.step()

    step()
    n = len(nc.compile_log())
    for _ in range(3):
        step()
    assert len(nc.compile_log()) == n


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["kernels", "graph"])
def test_a_compiled_gpu_step_equals_eager_and_with_cuda_graph_launches_one_graph(cp, cuda_graph):
    """gn.compile on a real GPU: the kernel replay, and the CUDA-graph capture and launches, give the
    eager step's losses and parameters while the learning rate changes every step (the optimizer
    reads it afresh), and a returned loss keeps its own step's value."""
    rng = np.random.default_rng(6)
    X = rng.standard_normal((5, 64, 8)).astype(np.float32)
    y = rng.integers(0, 4, (5, 64))
    models, opts = [], []
    for _ in range(2):
        gn.manual_seed(0)
        models.append(gn.nn.Sequential(gn.nn.Dense(8, 16, activation="gelu"), gn.nn.LayerNorm(16),
                                       gn.nn.Linear(16, 4)).to("gpu"))
        opts.append(gn.optim.Adam(models[-1].parameters(), lr=1e-2))
    loss_fn = gn.nn.CrossEntropyLoss()

    def step(model, opt, x, t):
        opt.zero_grad()
        loss = loss_fn(model(x), t)
        loss.backward()
        opt.step()
        return loss

    compiled = gn.compile(lambda x, t: step(models[1], opts[1], x, t), strict=True, cuda_graph=cuda_graph)
    eager_losses, losses = [], []
    for i in range(8):
        x, t = gn.Tensor(cp.asarray(X[i % 5])), gn.Tensor(cp.asarray(y[i % 5]))
        for o in opts:
            o.param_groups[0]["lr"] = 1e-2 / (i + 1)
        eager_losses.append(step(models[0], opts[0], x, t))
        losses.append(compiled(x, t))
    assert compiled.explain(x, t) == ("graph" if cuda_graph else "kernels")
    assert compiled.stats["graph_replays"] == (4 if cuda_graph else 0)
    np.testing.assert_allclose([v.item() for v in losses], [v.item() for v in eager_losses], rtol=1e-6)
    for p, q in zip(models[1].parameters(), models[0].parameters()):
        np.testing.assert_allclose(p.data.get(), q.data.get(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss_name", ["cross_entropy", "mse", "bce"])
def test_a_training_step_never_waits_for_the_gpu(cp, loss_name):
    """Forward, loss (label check and mean count included), backward and the optimizer step queue
    GPU work only: CuPy raises DeviceSynchronized at any host synchronisation inside the block."""
    import cupyx

    if not hasattr(cupyx, "allow_synchronize"):  # deprecated since CuPy 10; the only sync detector CuPy has
        pytest.skip(f"CuPy {cp.__version__} has no cupyx.allow_synchronize to detect synchronisations")
    rng = np.random.default_rng(5)
    model = gn.nn.Sequential(gn.nn.Dense(8, 16, activation="gelu"), gn.nn.Linear(16, 4)).to("gpu")
    opt = gn.optim.AdamW(model.parameters(), lr=1e-3)
    X = gn.Tensor(cp.asarray(rng.standard_normal((64, 8)).astype(np.float32)))
    if loss_name == "cross_entropy":
        loss_fn, y = gn.nn.CrossEntropyLoss(), cp.asarray(rng.integers(0, 4, 64))
    elif loss_name == "mse":
        loss_fn, y = gn.nn.MSELoss(), cp.asarray(rng.standard_normal((64, 4)).astype(np.float32))
    else:
        loss_fn, y = gn.nn.BCEWithLogitsLoss(), cp.asarray((rng.random((64, 4)) < 0.5).astype(np.float32))
    for _ in range(2):  # the first step compiles kernels (host work, no synchronisation either)
        with cupyx.allow_synchronize(False):
            opt.zero_grad()
            loss = loss_fn(model(X), gn.Tensor(y))
            loss.backward()
            opt.step()
    assert math.isfinite(loss.item())


def test_a_bad_label_on_the_gpu_is_reported_at_the_next_read(cp):
    logits = gn.Tensor(cp.zeros((4, 3), cp.float32), requires_grad=True)
    labels = cp.asarray([0, 1, 7, 2])
    loss = gn.functional.cross_entropy(logits, labels)  # queued, not yet checked: no synchronisation
    with pytest.raises(ValueError, match=r"target\[2\] = 7 is out of range for 3 classes.*next host synchronisation"):
        loss.item()
    ok = gn.functional.cross_entropy(logits, cp.asarray([0, 1, -100, 2]))  # ignore_index passes
    assert ok.item() == pytest.approx(math.log(3), rel=1e-6)


def test_cross_entropy_mean_over_no_targets_is_nan_on_the_gpu_too(cp):
    logits = gn.Tensor(cp.zeros((2, 3), cp.float32), requires_grad=True)
    loss = gn.functional.cross_entropy(logits, cp.asarray([-100, -100]))
    loss.backward()
    assert math.isnan(loss.item())
    assert (logits.grad.data == 0).all()  # every row ignored: zero gradient, as on the CPU and in PyTorch


def _normalised_step(device):
    """Three clipped SGD steps of Linear-BatchNorm1d-ReLU-Linear-LayerNorm-Linear in float64: the
    buffers, parameters and the clipping norm, as NumPy."""
    rng = np.random.default_rng(5)
    gn.manual_seed(0)
    nn = gn.nn
    model = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12, momentum=None), nn.ReLU(), nn.Linear(12, 12),
                          nn.LayerNorm(12), nn.Linear(12, 3)).to(np.float64).to(device)
    opt = gn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    norms = []
    for _ in range(3):
        x = gn.tensor(rng.standard_normal((10, 6)), device=device)
        opt.zero_grad()
        (model(x) ** 2).mean().backward()
        norms.append(gn.nn.utils.clip_grad_norm_(model.parameters(), 0.5).item())
        opt.step()
    return norms, {k: v.cpu().numpy() for k, v in model.state_dict().items()}


def test_normalisation_layers_and_clipping_on_the_gpu_equal_the_cpu():
    n_gpu, s_gpu = _normalised_step("gpu")
    n_cpu, s_cpu = _normalised_step("cpu")
    np.testing.assert_allclose(n_gpu, n_cpu, rtol=1e-10)
    for k in s_cpu:
        assert s_gpu[k].dtype == s_cpu[k].dtype, k
        np.testing.assert_allclose(s_gpu[k], s_cpu[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_dropout_on_the_gpu_draws_on_the_device_from_the_seed(cp):
    x = gn.ones(300, 200, device="gpu")
    gn.manual_seed(2)
    a = gn.functional.dropout(x, 0.25)
    b = gn.functional.dropout(x, 0.25)
    gn.manual_seed(2)
    a2 = gn.functional.dropout(x, 0.25)
    assert isinstance(a.data, cp.ndarray) and a.dtype == np.float32
    a, b, a2 = a.numpy(), b.numpy(), a2.numpy()
    np.testing.assert_array_equal(a, a2)
    assert not np.array_equal(a, b)
    assert set(np.unique(a)) == {0.0, np.float32(1) / np.float32(0.75)}
    assert abs((a != 0).mean() - 0.75) < 5 * math.sqrt(0.75 * 0.25 / a.size)
