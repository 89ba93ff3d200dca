"""Launches per GPU training step, Numba and CuPy alike, counted on gpunn's GPU code path.

Without a GPU the step runs on stand-in CuPy arrays (tests/launch_count.py): every CuPy operation
is counted as CuPy would launch it, and every Numba kernel is counted at gpunn's launch helper and
run in Numba's simulator, so the step's values are checked against the CPU too. On a machine with
CuPy the same code path runs on real arrays (tests/test_cuda_gpu.py); the count is taken here.
"""
from __future__ import annotations

import types

import numpy as np
import pytest

import gpunn as gn
from cuda_util import requires_simulator
from launch_count import counting_gpu
from test_compile import _step_fn

pytestmark = requires_simulator

LAYERS = 3


def _model_and_data(seed=0):
    gn.manual_seed(seed)
    model = gn.nn.Sequential(gn.nn.Dense(4, 6, activation="relu"), gn.nn.Dense(6, 5, activation="relu"),
                             gn.nn.Linear(5, 3))
    rng = np.random.default_rng(seed)
    return model, rng.standard_normal((8, 4)).astype(np.float32), rng.integers(0, 3, 8)


def _step(model, opt, X, y):
    opt.zero_grad()
    loss = gn.nn.CrossEntropyLoss()(model(gn.Tensor(X)), gn.Tensor(y))
    loss.backward()
    opt.step()
    return loss


def test_the_counter_counts_cupy_operations_and_not_views(monkeypatch):
    with counting_gpu(monkeypatch) as (cp, counter):
        a = cp.asarray(np.arange(6.0).reshape(2, 3))
        counter.reset()
        v = a.T.reshape(-1)[:2]  # a copy: the transpose is not contiguous
        w = a[1]
        s = (a + 1).sum()
        cp.broadcast_to(w, (4, 3))
        a.fill(0)
        assert counter.launches == ["reshape(copy)", "__add__", "sum", "memset"]
        assert float(s) == 21.0 and counter.syncs == ["float"]
        assert v.shape == (2,) and w.shape == (3,)


def test_a_training_step_with_adam_makes_at_most_3L_plus_2_launches(monkeypatch):
    """3 dense forwards, 5 dense backward kernels (dx and dW+db, no dx for the first layer), ONE
    softmax-CE forward (loss, mean, count and label check), ONE backward, ONE Adam update: no CuPy
    launch and no host synchronisation. The step's values equal the CPU's."""
    model, X, y = _model_and_data()
    cpu_model, _, _ = _model_and_data()
    cpu_opt = gn.optim.Adam(cpu_model.parameters(), lr=0.01)
    with counting_gpu(monkeypatch) as (cp, counter):
        for p in model.parameters():
            p.data = cp.asarray(p.data)
        opt = gn.optim.Adam(model.parameters(), lr=0.01)
        Xd, yd = cp.asarray(X), cp.asarray(y)
        _step(model, opt, Xd, yd)  # the first step also allocates Adam's state and compiles
        _step(cpu_model, cpu_opt, X, y)
        counter.reset()
        loss = _step(model, opt, Xd, yd)
        launches, syncs = list(counter.launches), list(counter.syncs)
        cpu_loss = _step(cpu_model, cpu_opt, X, y)
        assert syncs == []
        assert len(launches) <= 3 * LAYERS + 2, launches
        assert launches == ["dense_forward_kernel"] * 3 + ["softmax_ce_forward_kernel", "softmax_ce_backward_kernel"] \
            + ["dense_dx_kernel", "dense_dw_kernel"] * 2 + ["dense_dw_kernel", "adam_kernel"]
        np.testing.assert_allclose(loss.item(), cpu_loss.item(), rtol=1e-5)
        for p, q in zip(model.parameters(), cpu_model.parameters()):
            np.testing.assert_allclose(p.data._a, q.data, rtol=1e-5, atol=1e-6)


def test_a_bad_label_costs_no_launch_and_is_reported_when_the_loss_is_read(monkeypatch):
    model, X, y = _model_and_data(1)
    with counting_gpu(monkeypatch) as (cp, counter):
        for p in model.parameters():
            p.data = cp.asarray(p.data)
        logits = model(gn.Tensor(cp.asarray(X)))
        gn.functional.cross_entropy(logits, gn.Tensor(cp.asarray(y))).item()  # zeroes the kernel's ticket once
        y[5] = 3  # 3 classes: out of range
        yd = cp.asarray(y)
        counter.reset()
        loss = gn.functional.cross_entropy(logits, gn.Tensor(yd))
        assert counter.launches == ["softmax_ce_forward_kernel"] and counter.syncs == []
        with pytest.raises(ValueError, match=r"^cross_entropy: target\[5\] = 3 is out of range for 3 classes "
                                             r"\(valid: 0..2 or ignore_index=-100\) \(labels on the GPU are checked "
                                             r"at the next host synchronisation"):
            loss.item()
        y[5] = -100  # ignored: no error, the mean is over the other 7 rows
        good = gn.functional.cross_entropy(logits, gn.Tensor(cp.asarray(y)))
        rows = gn.functional.cross_entropy(logits, gn.Tensor(cp.asarray(y)), reduction="none")
        np.testing.assert_allclose(good.item(), rows.numpy().sum() / 7, rtol=1e-6)


# ------------------------------------------------------------------------- gn.compile on the GPU path

def _gpu_case(kind, seed=0):
    """(model, loss, X, target) for one kind of step, on the host (moved to the stand-in by the test)."""
    gn.manual_seed(seed)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((8, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 8)
    if kind == "mse":
        model, loss, y = (gn.nn.Sequential(gn.nn.Linear(4, 6), gn.nn.ReLU(), gn.nn.Linear(6, 1)), gn.nn.MSELoss(),
                          rng.standard_normal((8, 1)).astype(np.float32))
    elif kind == "batchnorm-dropout":
        model, loss, y = (gn.nn.Sequential(gn.nn.Linear(4, 6), gn.nn.BatchNorm1d(6), gn.nn.GELU(), gn.nn.Dropout(0.3),
                                           gn.nn.Linear(6, 3)), gn.nn.CrossEntropyLoss(), labels)
    elif kind == "batchnorm":
        model, loss, y = (gn.nn.Sequential(gn.nn.Linear(4, 6), gn.nn.BatchNorm1d(6), gn.nn.ReLU(), gn.nn.Linear(6, 3)),
                          gn.nn.CrossEntropyLoss(), labels)
    elif kind == "layernorm":
        model, loss, y = (gn.nn.Sequential(gn.nn.Linear(4, 6), gn.nn.LayerNorm(6), gn.nn.Tanh(), gn.nn.Linear(6, 3)),
                          gn.nn.CrossEntropyLoss(label_smoothing=0.1), labels)
    else:  # bce
        model, loss, y = (gn.nn.Sequential(gn.nn.Linear(4, 6), gn.nn.Sigmoid(), gn.nn.Linear(6, 3)),
                          gn.nn.BCEWithLogitsLoss(), (rng.random((8, 3)) > 0.5).astype(np.float32))
    return model, loss, X, y


def _to_standin(cp, model):
    for t in list(model.parameters()) + list(model.buffers()):
        t.data = cp.asarray(t.data)


def _twins(cp, kind, **compile_options):
    """Two copies of one case on the stand-in, each with its own Adam: `eager` steps one of them
    eagerly, `compiled` is gn.compile(strict=True, **compile_options) of the other's step."""
    eager_model, loss_fn, X, y = _gpu_case(kind)
    model, _, _, _ = _gpu_case(kind)
    _to_standin(cp, eager_model)
    _to_standin(cp, model)
    eager_opt = gn.optim.Adam(eager_model.parameters(), lr=0.01)
    opt = gn.optim.Adam(model.parameters(), lr=0.01)
    return types.SimpleNamespace(
        eager_model=eager_model, eager_opt=eager_opt, eager=_step_fn(eager_model, eager_opt, loss_fn),
        model=model, opt=opt, compiled=gn.compile(_step_fn(model, opt, loss_fn), strict=True, **compile_options),
        X=X, y=y, x=gn.Tensor(cp.asarray(X)), t=gn.Tensor(cp.asarray(y)))


def _same_bits(a, b):
    """Whether two models' parameters and buffers are equal bit for bit."""
    pairs = list(zip(a.parameters(), b.parameters())) + list(zip(a.buffers(), b.buffers()))
    return all(p.data.get().tobytes() == q.data.get().tobytes() for p, q in pairs)


@pytest.mark.parametrize("kind", ["mse", "batchnorm-dropout", "layernorm", "bce"])
def test_a_compiled_gpu_step_replays_its_kernels_with_the_eager_launches_and_bits(monkeypatch, kind):
    """gn.compile on the GPU path (stand-in CuPy arrays, kernels in the simulator): from the third call
    the step replays kernel by kernel, with exactly an eager step's launches and no host
    synchronisation, and its losses and parameters equal an eager GPU model's bit for bit while the
    learning rate changes every step (read at replay time) and Dropout draws a fresh mask."""
    with counting_gpu(monkeypatch) as (cp, counter):
        tw = _twins(cp, kind)
        x, t = tw.x, tw.t
        for i in range(5):
            for o in (tw.eager_opt, tw.opt):
                o.param_groups[0]["lr"] = 0.01 / (i + 1)
            gn.manual_seed(100 + i)
            counter.reset()
            eager_loss = tw.eager(x, t)
            eager_launches = list(counter.launches)
            gn.manual_seed(100 + i)
            counter.reset()
            loss = tw.compiled(x, t)
            if i >= 2:
                assert tw.compiled.explain(x, t) == "kernels"
                assert counter.launches == eager_launches and counter.syncs == []
            assert loss.data.get().tobytes() == eager_loss.data.get().tobytes()
            assert _same_bits(tw.model, tw.eager_model), i
        assert tw.compiled.stats["kernel_replays"] == 3


def test_the_standin_records_a_capture_and_runs_it_at_each_launch(monkeypatch):
    """The stand-in's capture is CUDA's: operations issued while it lasts run only when the graph is
    launched, each launch runs them all again on the same memory, and host reads are refused."""
    with counting_gpu(monkeypatch) as (cp, counter):
        a = cp.zeros(3, dtype=np.float32)
        b = cp.asarray(np.arange(3.0, dtype=np.float32))
        s = cp.cuda.Stream(non_blocking=True)
        counter.reset()
        with s:
            s.begin_capture()
            a += b
            c = a * 2
            with pytest.raises(RuntimeError, match="capturing"):
                float(c.sum())
            g = s.end_capture()
        assert counter.launches == [] and a.get().tolist() == [0, 0, 0]
        g.launch()
        g.launch()
        assert counter.launches == ["graph", "graph"]
        assert a.get().tolist() == [0, 2, 4] and c.get().tolist() == [0, 4, 8]


@pytest.mark.parametrize("kind", ["mse", "layernorm", "bce", "batchnorm"])
def test_a_cuda_graph_replay_launches_one_graph_and_matches_eager_bit_for_bit(monkeypatch, kind):
    """gn.compile(cuda_graph=True) on the GPU path: the second kernel replay captures the whole step
    (forward, backward, Adam's update) into one graph; from then on a step is one copy per argument,
    the upload of the optimizer's scalars, one graph launch and the loss's copy, with no host
    synchronisation. Losses, parameters and buffers equal an eager GPU model's bit for bit while the
    learning rate changes every step and Adam's bias corrections move with the step count: nothing
    per step is frozen into the graph. The returned losses keep their own step's value."""
    rng = np.random.default_rng(1)
    with counting_gpu(monkeypatch) as (cp, counter):
        tw = _twins(cp, kind, cuda_graph=True)
        losses, eager_losses = [], []
        for i in range(7):
            xs = tw.X + np.float32(0.1 * i) * rng.standard_normal(tw.X.shape).astype(np.float32)
            x, t = gn.Tensor(cp.asarray(xs)), tw.t
            for o in (tw.eager_opt, tw.opt):
                o.param_groups[0]["lr"] = 0.01 / (i + 1)
            counter.reset()
            eager_losses.append(tw.eager(x, t))
            eager_launches = list(counter.launches)
            counter.reset()
            losses.append(tw.compiled(x, t))
            if i >= 4:  # traced twice, one kernel replay, the capture; then graph launches
                assert tw.compiled.explain(x, t) == "graph"
                label_check = ["copy"] if kind in ("layernorm", "batchnorm") else []  # cross-entropy's flags
                assert counter.launches == ["setitem", "setitem", "host_to_device", "graph"] + label_check + ["copy"]
                assert counter.syncs == [] and len(eager_launches) > len(counter.launches) + 2
            assert _same_bits(tw.model, tw.eager_model), i
        assert [a.data.get().tobytes() for a in losses] == [a.data.get().tobytes() for a in eager_losses]
        assert tw.compiled.stats["graph_replays"] == 4


def test_a_bad_label_after_the_capture_is_still_reported_with_its_own_step(monkeypatch):
    """The graph overwrites its label flags at every launch, so each step's deferred check reads a
    snapshot of its own: an out-of-range label in one step is reported at the next host read even
    after later, good steps, naming that step's row and value."""
    model, X, y = _model_and_data(2)
    with counting_gpu(monkeypatch) as (cp, counter):
        _to_standin(cp, model)
        opt = gn.optim.Adam(model.parameters(), lr=0.01)
        compiled = gn.compile(_step_fn(model, opt, gn.nn.CrossEntropyLoss()), cuda_graph=True)
        x = gn.Tensor(cp.asarray(X))
        for _ in range(5):
            compiled(x, gn.Tensor(cp.asarray(y)))
        assert compiled.explain(x, gn.Tensor(cp.asarray(y))) == "graph"
        bad = y.copy()
        bad[6] = 7
        compiled(x, gn.Tensor(cp.asarray(bad)))
        loss = compiled(x, gn.Tensor(cp.asarray(y)))
        with pytest.raises(ValueError, match=r"^cross_entropy: target\[6\] = 7 is out of range for 3 classes"):
            loss.item()
        assert compiled.stats["graph_replays"] == 4


def test_steps_a_graph_cannot_hold_keep_their_kernel_replay_and_say_why(monkeypatch):
    """Dropout draws from a generator at every call, and a step that leaves zero_grad to its caller
    may meet a .grad it must add into: neither is captured, both still replay kernel by kernel."""
    with counting_gpu(monkeypatch) as (cp, counter):
        model, loss_fn, X, y = _gpu_case("batchnorm-dropout")
        _to_standin(cp, model)
        opt = gn.optim.SGD(model.parameters(), lr=0.1)
        dropout = gn.compile(_step_fn(model, opt, loss_fn), cuda_graph=True)
        x, t = gn.Tensor(cp.asarray(X)), gn.Tensor(cp.asarray(y))
        for _ in range(4):
            dropout(x, t)
        assert dropout.explain(x, t).startswith("kernels: no CUDA graph: a kernel takes an object made at every call")

        model, loss_fn, X, y = _gpu_case("mse")
        _to_standin(cp, model)
        opt = gn.optim.SGD(model.parameters(), lr=0.1)

        acc = gn.compile(_step_fn(model, opt, loss_fn, zero_grad=False), cuda_graph=True)
        x, t = gn.Tensor(cp.asarray(X)), gn.Tensor(cp.asarray(y))
        for _ in range(4):
            opt.zero_grad()
            acc(x, t)
        assert acc.explain(x, t).startswith("kernels: no CUDA graph: a leaf's gradient is not reset by "
                                            "optimizer.zero_grad()")
        assert dropout.stats["graph_replays"] == acc.stats["graph_replays"] == 0
        assert dropout.stats["kernel_replays"] == acc.stats["kernel_replays"] == 2


def test_an_update_that_needs_another_kernel_variant_runs_the_kernel_replay_then_is_captured_again(monkeypatch):
    """Switching Adam's weight decay on changes its kernel variant: the call that finds this undoes the
    optimizer's step count, runs the kernel replay, and the next call captures the step again; every
    step equals eager bit for bit."""
    with counting_gpu(monkeypatch) as (cp, counter):
        tw = _twins(cp, "mse", cuda_graph=True)
        used = []
        for i in range(9):
            if i == 5:
                for o in (tw.eager_opt, tw.opt):
                    o.param_groups[0]["weight_decay"] = 0.1
            before = tw.compiled.stats["graph_replays"]
            loss = tw.compiled(tw.x, tw.t)
            used.append(tw.compiled.stats["graph_replays"] - before)
            assert loss.data.get().tobytes() == tw.eager(tw.x, tw.t).data.get().tobytes(), i
            assert _same_bits(tw.model, tw.eager_model), i
        assert used == [0, 0, 0, 1, 1, 0, 1, 1, 1]
        assert tw.opt.state_dict()["state"][0]["step"] == tw.eager_opt.state_dict()["state"][0]["step"] == 9


def test_a_step_whose_updates_overflow_the_scalar_buffer_keeps_its_kernel_replay(monkeypatch):
    """Found while capturing: that call undoes the optimizer's step count and replays kernel by kernel,
    equal to eager, and the signature stays at the kernel replay with the reason in explain."""
    from gpunn import compiler_graph

    monkeypatch.setattr(compiler_graph, "SCALAR_SLOTS", 4)  # Adam's update takes more
    with counting_gpu(monkeypatch) as (cp, counter):
        tw = _twins(cp, "mse", cuda_graph=True)
        for i in range(6):
            loss = tw.compiled(tw.x, tw.t)
            assert loss.data.get().tobytes() == tw.eager(tw.x, tw.t).data.get().tobytes(), i
        assert _same_bits(tw.model, tw.eager_model)
        assert tw.compiled.explain(tw.x, tw.t) == "kernels: no CUDA graph: its optimizer updates take more than 4 scalars"
        assert tw.compiled.stats["graph_replays"] == 0 and tw.compiled.stats["kernel_replays"] == 4


def test_a_capture_that_fails_warns_once_and_leaves_the_step_at_its_kernel_replay(monkeypatch):
    """Nothing runs on the device while capturing, so a capture that raises (here: the staged kernel)
    costs nothing but the graph: that call and the later ones replay kernel by kernel, as eager."""
    from gpunn.compiler import CompileWarning
    from gpunn.kernels import optimizers_cuda

    def broken(*args):
        raise RuntimeError("cudaErrorStreamCaptureUnsupported")

    monkeypatch.setattr(optimizers_cuda, "staged_kernel", broken)
    with counting_gpu(monkeypatch) as (cp, counter):
        tw = _twins(cp, "mse", cuda_graph=True)
        with pytest.warns(CompileWarning, match=r"capturing it failed \(RuntimeError: "
                                                    r"cudaErrorStreamCaptureUnsupported\)") as caught:
            for i in range(6):
                loss = tw.compiled(tw.x, tw.t)
                assert loss.data.get().tobytes() == tw.eager(tw.x, tw.t).data.get().tobytes(), i
        assert len(caught) == 1 and _same_bits(tw.model, tw.eager_model)
        assert tw.compiled.explain(tw.x, tw.t).startswith("kernels: no CUDA graph: capturing it failed")
        assert tw.compiled.stats["graph_replays"] == 0
