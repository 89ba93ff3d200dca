"""gpunn.profiler: what it records (kernels, phases, layers, shapes), its FLOP and byte counts
against hand-computed values, that it changes no number and records nothing when inactive, the
Chrome trace's structure (including the GPU stream track, from a synthetic profile), the roofline,
the peaks table and cache, and the GPU timing path against a stand-in CuPy."""
from __future__ import annotations

import inspect
import json
import sys
import time
import types

import numpy as np
import pytest

import gpunn as gn
from gpunn import nn, optim
from gpunn.kernels import Ops, activations, dense, losses, ops_for, optimizers, registry, softmax_ce, use_kernels
from gpunn.kernels import ops as kops
from gpunn.profiler import COSTS, peaks as peaks_mod, profile
from gpunn.profiler.recorder import KernelEvent, Recorder
from gpunn.profiler.trace import chrome_trace

FIXED_PEAKS = {"gflops": {"float32": 100.0, "float64": 50.0}, "gbps": 20.0}


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    """Peaks measured in a test go to a temporary cache, never to $HOME."""
    monkeypatch.setenv("GPUNN_CACHE_DIR", str(tmp_path / "cache"))


def mlp(widths=(5, 3, 4), seed=0, dtype=np.float32):
    gn.manual_seed(seed)
    mods = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        mods += [nn.Linear(a, b, dtype=dtype), nn.ReLU()]
    mods.append(nn.Linear(widths[-2], widths[-1], dtype=dtype))
    return nn.Sequential(*mods)


def training(widths=(5, 3, 4), batch=8, seed=0, opt_cls=optim.Adam, **opt_kw):
    model = mlp(widths, seed)
    opt = opt_cls(model.parameters(), **opt_kw)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    x = gn.tensor(rng.standard_normal((batch, widths[0])).astype(np.float32))
    y = gn.tensor(rng.integers(0, widths[-1], batch))

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return model, opt, step


# ----------------------------------------------------------------------------- inactive path

def test_inactive_path_records_nothing_and_dispatches_plain_ops():
    assert kops._recorder is None
    a = np.zeros(3, np.float32)
    assert type(ops_for(a)) is gn.kernels.CpuOps
    prof = profile(peaks=False)
    _, _, step = training()
    step()  # outside any profile
    assert prof.events == [] and prof.spans == []
    with prof:
        assert kops._recorder is not None
        assert "recording" in repr(ops_for(a))
    assert kops._recorder is None
    n = len(prof.events)
    assert n == 0  # nothing ran inside
    step()  # after the profile: nothing more is recorded
    assert len(prof.events) == n and prof.steps == 0
    assert type(ops_for(a)) is gn.kernels.CpuOps


def test_profile_restores_the_hook_after_an_exception():
    _, _, step = training()
    with pytest.raises(RuntimeError, match="boom"):
        with profile(peaks=False) as prof:
            step()
            raise RuntimeError("boom")
    assert kops._recorder is None
    assert prof.steps == 1 and prof.events


def test_profiles_do_not_nest_and_do_not_restart():
    with profile(peaks=False) as prof:
        with pytest.raises(RuntimeError, match="already active"):
            profile(peaks=False).start()
    with pytest.raises(RuntimeError, match="already run"):
        prof.start()
    assert kops._recorder is None


# ----------------------------------------------------------------------------- what is recorded

def test_records_every_kernel_with_phase_layer_shapes_dtype():
    _, _, step = training()
    step()
    with profile(peaks=False) as prof:
        for _ in range(3):
            step()
    assert prof.steps == 3
    per_step = len(prof.events) // 3
    got = [(ev.name, ev.phase, ev.layer) for ev in prof.events[:per_step]]
    assert got == [
        ("dense_forward", "forward", "0"),
        ("dense_forward", "forward", "2"),
        ("softmax_cross_entropy_forward", "loss", "loss"),
        ("softmax_cross_entropy_backward", "backward", "loss"),
        ("dense_backward", "backward", "2"),
        ("dense_backward", "backward", "0"),
        # no accumulate_grad: dense backward writes dW and db into the optimizer's gradient buffer
        ("adam_update", "optimizer", None),
    ]
    first = prof.events[0]
    assert first.backend == "cpu" and first.device == "cpu" and first.dtype == "float32"
    assert first.shapes == ((8, 5), (3, 5), (3,))
    assert prof.events[2].shapes == ((8, 4), (8,))
    assert all(ev.end_ns >= ev.start_ns >= 0 and ev.duration_ns == ev.end_ns - ev.start_ns for ev in prof.events)
    assert prof.launches_per_step() == {"forward": 2.0, "loss": 1.0, "backward": 3.0, "optimizer": 1.0, "total": 7.0}
    nodes = [s.name for s in prof.spans if s.kind == "node"][:6]
    assert nodes == ["Dense[0]", "Dense[2]", "CrossEntropy[loss]", "CrossEntropy[loss].backward",
                     "Dense[2].backward", "Dense[0].backward"]
    assert [s.name for s in prof.spans if s.kind == "phase"][:2] == ["backward", "optimizer"]


def test_reference_kernels_are_recorded_as_such():
    _, _, step = training()
    with use_kernels("reference"):
        step()
        with profile(peaks=False) as prof:
            step()
    assert {ev.backend for ev in prof.events if ev.name != "accumulate_grad"} == {"reference"}
    rows = {r.key: r for r in prof.key_averages()}
    assert rows["dense_forward"].backend == "reference" and rows["dense_forward"].calls == 2


def test_unfused_graph_nodes_and_module_paths():
    """Ops without a gpunn kernel count as one unfused op per node; modules run one by one keep
    their paths (a Linear outside a Sequential's fusion, a standalone activation)."""
    x = gn.tensor(np.ones((4, 3), np.float32), requires_grad=True)
    W = gn.tensor(np.ones((3, 2), np.float32), requires_grad=True)
    with profile(peaks=False) as prof:
        (x @ W).sum().backward()
    names = [(ev.name, ev.backend, ev.phase) for ev in prof.events]
    assert names[:4] == [("MatMul.forward", "numpy", "forward"), ("Sum.forward", "numpy", "forward"),
                         ("Sum.backward", "numpy", "backward"), ("MatMul.backward", "numpy", "backward")]
    assert all(ev.flops is None for ev in prof.events[:4])
    assert "-" in prof.table(group_by="kernel")  # no GFLOP/s for them
    model = nn.Sequential(nn.Linear(3, 2), nn.Sigmoid())
    with profile(peaks=False) as prof:
        model[0](gn.tensor(np.ones((4, 3), np.float32)))
        model(gn.tensor(np.ones((4, 3), np.float32)))
    assert [(ev.name, ev.layer) for ev in prof.events] == [("dense_forward", "0"), ("dense_forward", "0")]
    assert prof.steps == 0 and prof.launches_per_step()["total"] == 2.0


def test_kernel_time_is_consistent_with_the_wall_time():
    """Kernels never take longer than the steps they ran in, and they are most of a step.

    On the CPU a kernel's time is perf_counter_ns around its call, and kernels run one after another
    on one thread, so their sum can never exceed the measured wall time. What else a step does
    (graph building, Python dispatch, zero_grad, the profiler's own bookkeeping) costs tens of
    microseconds per kernel; with GEMMs of 256x512x512 taking milliseconds, kernels must make more
    than half of the step even on a loaded 2-core CI machine (on a quiet one they make 90-97%).
    """
    _, _, step = training(widths=(256, 512, 512, 10), batch=256)
    for _ in range(2):
        step()
    with profile(peaks=False) as prof:
        t0 = time.perf_counter_ns()
        for _ in range(6):
            step()
        wall = time.perf_counter_ns() - t0
    total = sum(ev.duration_ns for ev in prof.events)
    assert total == prof.kernel_ns
    assert total <= wall <= prof.wall_ns
    assert total >= 0.5 * wall, f"kernels {total / 1e6:.2f} ms of {wall / 1e6:.2f} ms"
    ordered = sorted(prof.events, key=lambda ev: ev.start_ns)
    for a, b in zip(ordered, ordered[1:]):
        assert a.end_ns <= b.start_ns  # one thread: kernels never overlap


def test_profiler_changes_no_numerical_result():
    def run(profiled):
        model, opt, step = training(widths=(6, 16, 16, 3), batch=10, seed=3)
        losses_ = []
        if profiled:
            with profile(peaks=False):
                losses_ = [step().item() for _ in range(5)]
        else:
            losses_ = [step().item() for _ in range(5)]
        return ({k: v.numpy().copy() for k, v in model.state_dict().items()}, losses_,
                opt.state_dict()["state"][0]["exp_avg"].numpy().copy())

    w0, l0, s0 = run(False)
    w1, l1, s1 = run(True)
    assert l0 == l1
    assert np.array_equal(s0, s1)
    for k in w0:
        assert np.array_equal(w0[k], w1[k]), k


# ----------------------------------------------------------------------------- cost models

def test_every_kernel_has_a_cost_model_with_its_signature():
    public = sorted(n for n in dir(Ops) if not n.startswith("_") and n != "name")
    assert sorted(COSTS) == public
    for name in public:
        kernel = inspect.signature(getattr(Ops, name))
        cost = inspect.signature(COSTS[name])
        assert list(cost.parameters) == list(kernel.parameters), name
        assert [p.default for p in cost.parameters.values()] == [p.default for p in kernel.parameters.values()], name


def test_costs_of_a_profiled_step_equal_hand_counts():
    """Linear(5,3)+ReLU, Linear(3,4), cross-entropy, Adam; batch 8, float32 (4 bytes)."""
    _, _, step = training()
    with profile(peaks=False) as prof:
        step()
    got = {(ev.name, ev.layer): (ev.flops, ev.bytes) for ev in prof.events if ev.name != "accumulate_grad"}
    assert got == {
        # GEMM 2*8*5*3 + bias 8*3 + relu 8*3; read x 40, W 15, b 3, write y 24 elements
        ("dense_forward", "0"): (288, 4 * (40 + 15 + 3 + 24)),
        # GEMM 2*8*3*4 + bias 8*4 (identity); read x 24, W 12, b 4, write y 32
        ("dense_forward", "2"): (224, 4 * (24 + 12 + 4 + 32)),
        # 5 per logit (8*4) + 4 per row + 1 per row for the mean; read logits, write probs (32 each),
        # losses 8, int64 labels 8*8 bytes
        ("softmax_cross_entropy_forward", "loss"): (5 * 32 + 5 * 8, 4 * (32 + 32 + 8) + 64),
        # one multiply per logit + one subtract per row; the mean's upstream gradient is one value
        ("softmax_cross_entropy_backward", "loss"): (32 + 8, 4 * (32 + 32 + 1) + 64),
        # identity: no act'; dx 2*8*4*3, dW 2*8*4*3, db 8*4; read dy 32, W 12, x 24; write dx 24, dW 12, db 4
        ("dense_backward", "2"): (192 + 192 + 32, 4 * (32 + 12 + 24 + 24 + 12 + 4)),
        # relu' 8*3, no dx (the data needs no gradient), dW 2*8*3*5, db 8*3;
        # read dy, y (24 each), x 40; write dW 15, db 3
        ("dense_backward", "0"): (24 + 240 + 24, 4 * (24 + 24 + 40 + 15 + 3)),
        # 13 FLOPs per parameter (34 of them); read p, g, m, v and write p, m, v
        ("adam_update", None): (13 * 34, 7 * 34 * 4),
    }
    # dW and db are written straight into the optimizer's flat gradient buffer: nothing to copy
    assert not [ev for ev in prof.events if ev.name == "accumulate_grad"]


def test_gradient_copies_are_costed_where_there_is_no_optimizer_buffer():
    """Without an optimizer a leaf's first gradient is copied into .grad (read and written once, no
    FLOPs), and a second backward adds into it (one FLOP per element; read both, write one)."""
    model = mlp((5, 3, 4), 0)
    rng = np.random.default_rng(0)
    x = gn.tensor(rng.standard_normal((8, 5)).astype(np.float32))
    y = gn.tensor(rng.integers(0, 4, 8))
    with profile(peaks=False) as prof:
        nn.CrossEntropyLoss()(model(x), y).backward()
        nn.CrossEntropyLoss()(model(x), y).backward()
    copies = [(ev.layer, ev.flops, ev.bytes) for ev in prof.events if ev.name == "accumulate_grad"]
    first = [("0", 0, 2 * 60), ("0", 0, 2 * 12), ("2", 0, 2 * 48), ("2", 0, 2 * 16)]
    second = [("0", 15, 3 * 60), ("0", 3, 3 * 12), ("2", 12, 3 * 48), ("2", 4, 3 * 16)]
    assert copies == first + second


@pytest.mark.parametrize("code,flops,nbytes", [
    (activations.GELU, 240 + 24 + 5 * 24, 4 * (40 + 15 + 3 + 24 + 24)),   # z is saved beside y
    (activations.TANH, 240 + 24 + 24, 4 * (40 + 15 + 3 + 24)),
    (activations.IDENTITY, 240 + 24, 4 * (40 + 15 + 3 + 24)),
])
def test_dense_forward_cost_by_activation(code, flops, nbytes):
    x, W, b = np.zeros((8, 5), np.float32), np.zeros((3, 5), np.float32), np.zeros(3, np.float32)
    assert dense.dense_forward_cost(x, W, b, code) == (flops, nbytes)
    assert dense.dense_forward_cost(x, W, None, activations.IDENTITY) == (240, 4 * (40 + 15 + 24))


def test_dense_backward_cost_float64():
    dy, x, W = np.zeros((8, 3)), np.zeros((8, 5)), np.zeros((3, 5))
    # sigmoid' 3 per element; dx and dW 240 each; db 24; read dy, y, W, x; write dx, dW, db
    assert dense.dense_backward_cost(dy, x, W, dy, activations.SIGMOID) == \
        (72 + 240 + 240 + 24, 8 * (24 + 24 + 15 + 40 + 40 + 15 + 3))
    assert dense.dense_backward_cost(dy, x, W, dy, activations.RELU, need_dw=False, need_db=False) == \
        (24 + 240, 8 * (24 + 24 + 15 + 40))


def test_optimizer_and_loss_costs():
    p = np.zeros(100, np.float32)
    assert optimizers.adam_update_cost(p, p, p, p, None, 1e-3) == (1300, 2800)
    assert optimizers.adam_update_cost(p, p, p, p, p, 1e-3, weight_decay=0.1, amsgrad=True) == (1600, 3600)
    assert optimizers.adam_update_cost(p, p, p, p, None, 1e-3, weight_decay=0.1, decoupled=True) == (1400, 2800)
    assert optimizers.sgd_update_cost(p, p, None, 0.1) == (200, 1200)
    assert optimizers.sgd_update_cost(p, p, p, 0.1, momentum=0.9) == (200, 1600)  # first step: buf = g
    assert optimizers.sgd_update_cost(p, p, p, 0.1, momentum=0.9, nesterov=True, first_step=False) == (700, 2000)
    assert optimizers.rmsprop_update_cost(p, p, p, None, None, 1e-2) == (900, 2000)
    assert optimizers.rmsprop_update_cost(p, p, p, p, p, 1e-2, momentum=0.9, centered=True) == (1600, 3600)
    x = np.zeros((4, 5), np.float32)
    g = np.broadcast_to(np.float32(0.05), x.shape)
    assert losses.loss_forward_cost("mse", x, x) == (40, 3 * 80)
    assert losses.loss_backward_cost("mse", g, x, x) == (60, 3 * 80 + 4)
    assert losses.loss_backward_cost("l1", g, x, x) == (60, 3 * 80 + 4)
    assert losses.loss_forward_cost("bce_with_logits", x, x, np.ones(5, np.float32)) == (16 * 20, 3 * 80 + 20)
    assert losses.loss_backward_cost("bce_with_logits", g, x, x, wrt="target") == (13 * 20, 3 * 80 + 4)
    assert activations.activation_forward_cost(x, activations.SIGMOID) == (100, 160)
    assert activations.activation_backward_cost(x, x, None, activations.GELU) == (220, 240)
    assert activations.activation_backward_cost(x, None, None, activations.IDENTITY) == (0, 160)
    logits, labels = np.zeros((8, 10), np.float32), np.zeros(8, np.int64)
    assert softmax_ce.softmax_cross_entropy_forward_cost(logits, labels) == (432, 2 * 320 + 32 + 64)
    assert softmax_ce.softmax_cross_entropy_backward_cost(np.ones(8, np.float32), logits, labels) == \
        (88, 2 * 320 + 32 + 64)


# ----------------------------------------------------------------------------- table

def test_table_rows_and_errors():
    _, _, step = training()
    step()
    with profile(peaks=FIXED_PEAKS) as prof:
        for _ in range(2):
            step()
    text = prof.table()
    lines = text.splitlines()
    assert lines[0].startswith("gpunn profile: 2 steps,") and "device cpu" in lines[0]
    assert lines[1].split()[:4] == ["kernel", "backend", "calls", "total"]
    assert "% peak" in lines[1] and "GFLOP/s" in lines[1] and "GB/s" in lines[1]
    assert any(line.startswith("dense_forward ") for line in lines)
    assert "kernel launches per step: 7 (forward 2, loss 1, backward 3, optimizer 1)" in text
    assert "peaks: cpu: 100 GFLOP/s float32, 50 GFLOP/s float64, 20.0 GB/s (given)" in text
    rows = prof.key_averages("kernel", "total")
    assert [r.total_ns for r in rows] == sorted((r.total_ns for r in rows), reverse=True)
    dense_row = next(r for r in rows if r.key == "dense_forward")
    assert dense_row.calls == 4 and dense_row.flops == 2 * (288 + 224)
    assert dense_row.gflops == pytest.approx(dense_row.flops / dense_row.total_ns)
    assert dense_row.pct_peak == pytest.approx(100 * max(dense_row.gflops / 100.0, dense_row.gbps / 20.0))
    assert sum(r.calls for r in prof.key_averages("phase")) == len(prof.events)
    assert {r.key for r in prof.key_averages("layer")} == {"0", "2", "loss", "(optimizer)"}
    assert {r.key for r in prof.key_averages("phase")} == {"forward", "loss", "backward", "optimizer"}
    assert prof.table(group_by="phase", sort_by="name").splitlines()[3].startswith("backward")
    assert "more rows" in prof.table(row_limit=1)
    with pytest.raises(ValueError, match="group_by must be one of"):
        prof.table(group_by="module")
    with pytest.raises(ValueError, match="sort_by must be one of"):
        prof.table(sort_by="fastest")
    with pytest.raises(TypeError, match="peaks must be"):
        profile(peaks=3.0)


# ----------------------------------------------------------------------------- Chrome trace

def _nested(events) -> None:
    """X events of one track (integer ns) nest: each one ends before the one it lies in."""
    stack = []
    for ev in sorted(events, key=lambda e: (e[0], -e[1])):
        s, e = ev[0], ev[0] + ev[1]
        while stack and stack[-1] <= s:
            stack.pop()
        assert not stack or e <= stack[-1], f"{ev} crosses the end of the span it starts in"
        stack.append(e)


def _check_trace(trace: dict, kernel_cat="kernel"):
    evs = trace["traceEvents"]
    assert all({"name", "ph", "pid"} <= set(e) for e in evs)
    meta = [e for e in evs if e["ph"] == "M"]
    xs = [e for e in evs if e["ph"] == "X"]
    assert any(e["name"] == "process_name" for e in meta)
    named = {e["tid"] for e in meta if e["name"] == "thread_name"}
    assert {e["tid"] for e in xs} <= named
    for e in xs:
        assert {"ts", "dur", "tid", "cat"} <= set(e) and e["dur"] >= 0
    by_track = {}
    for e in xs:
        by_track.setdefault(e["tid"], []).append((round(e["ts"] * 1000), round(e["dur"] * 1000), e["cat"], e["name"]))
    for tid, items in by_track.items():
        _nested(items)
        spans = [i for i in items if i[2] in ("node", "phase", "step")]
        for k in [i for i in items if i[2] == kernel_cat]:
            around = {s[2] for s in spans if s[0] <= k[0] and k[0] + k[1] <= s[0] + s[1]}
            assert {"phase", "step"} <= around, f"kernel {k} on track {tid} lies outside its phase or step"
            if k[3] != "adam_update" and k[3] != "accumulate_grad":
                assert "node" in around, f"kernel {k} on track {tid} lies outside its layer's span"
    return by_track


def test_chrome_trace_is_valid_json_with_nested_tracks(tmp_path):
    _, _, step = training()
    step()
    with profile(peaks=False) as prof:
        for _ in range(3):
            step()
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    trace = json.loads(path.read_text())
    by_track = _check_trace(trace)
    assert list(by_track) == [1]
    names = [(i[2], i[3]) for i in sorted(by_track[1])]
    assert [n for c, n in names if c == "step"] == ["step 0", "step 1", "step 2"]
    assert [n for c, n in names if c == "phase"][:4] == ["forward", "loss", "backward", "optimizer"]
    kernels = [e for e in trace["traceEvents"] if e.get("cat") == "kernel"]
    assert len(kernels) == len(prof.events)
    dense_ev = next(e for e in kernels if e["name"] == "dense_forward")
    assert dense_ev["args"]["flops"] == 288 and dense_ev["args"]["shapes"] == "8x5 3x5 3"
    assert dense_ev["args"]["layer"] == "0" and dense_ev["args"]["phase"] == "forward"
    assert trace["otherData"]["steps"] == 3
    # ts/dur carry the recorded nanoseconds exactly (three decimals of a microsecond)
    first = prof.events[0]
    assert round(dense_ev["ts"] * 1000) == first.start_ns and round(dense_ev["dur"] * 1000) == first.duration_ns


def test_chrome_trace_gpu_stream_track_from_a_synthetic_profile():
    """The GPU layout (kernels at their CUDA-event times on a stream track, under redrawn spans),
    from a CPU profile whose events are given device times as CUDA events would give them: later
    than the launch, back to back."""
    _, _, step = training()
    step()
    with profile(peaks=False) as prof:
        for _ in range(2):
            step()
    t = 0
    for ev in sorted(prof.events, key=lambda ev: ev.start_ns):
        t = max(t, ev.start_ns + 5000)
        ev.device_start_ns, ev.device_end_ns, ev.stream = t, t + 3000, 0
        t += 3000
    trace = chrome_trace(prof)
    by_track = _check_trace(trace)
    assert sorted(by_track) == [1, 1001]
    meta = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert meta[1001] == "cpu stream default"
    host_cats = {i[2] for i in by_track[1]}
    assert "launch" in host_cats and "kernel" not in host_cats
    assert sum(1 for i in by_track[1001] if i[2] == "kernel") == len(prof.events)
    assert sum(1 for i in by_track[1001] if i[2] == "step") == 2


# ----------------------------------------------------------------------------- roofline

def test_roofline_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")  # in the test extra; the plot extra for users
    _, _, step = training(widths=(32, 64, 10), batch=32)
    step()
    with profile(peaks=FIXED_PEAKS) as prof:
        for _ in range(2):
            step()
    path = tmp_path / "roofline.png"
    prof.roofline(str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    from gpunn.profiler.roofline import roofline_points

    labels = {p["label"] for p in roofline_points(prof)}
    assert {"dense_forward [0]", "dense_backward [2]", "adam_update", "softmax_cross_entropy_forward [loss]"} <= labels


def test_roofline_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    _, _, step = training()
    with profile(peaks=FIXED_PEAKS) as prof:
        step()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r'pip install "gpunn\[plot\]"'):
        prof.roofline(str(tmp_path / "r.png"))


def test_roofline_of_an_empty_profile_says_why(tmp_path):
    pytest.importorskip("matplotlib")
    with profile(peaks=FIXED_PEAKS) as prof:
        pass
    with pytest.raises(ValueError, match="no kernel with a FLOP count"):
        prof.roofline(str(tmp_path / "r.png"))


# ----------------------------------------------------------------------------- peaks

@pytest.mark.parametrize("name,label,gflops,gbps", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 67000.0, 3350.0),
    ("NVIDIA H100 PCIe", "H100 PCIe", 51000.0, 2000.0),
    ("NVIDIA H200", "H200", 67000.0, 4800.0),
    ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM", 19500.0, 2039.0),
    ("NVIDIA L4", "L4", 30300.0, 300.0),
    ("Tesla T4", "T4", 8100.0, 320.0),
])
def test_known_devices(name, label, gflops, gbps):
    p = peaks_mod._table(name, "gpu:0")
    assert p.source == f"table: {label}" and p.flops_for("float32") == gflops and p.gbps == pytest.approx(gbps)
    assert peaks_mod._table("Some Future GPU", "gpu:0") is None


def test_peaks_are_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUNN_CACHE_DIR", str(tmp_path / "c"))
    assert peaks_mod.cache_path() == str(tmp_path / "c" / "peaks.json")
    calls = []

    def fake_measure(xp, sync, **sizes):
        calls.append(xp)
        return {"float32": 123.0, "float64": 61.0}, 9.5, "measured (test)"

    monkeypatch.setattr(peaks_mod, "_measure", fake_measure)
    first = peaks_mod.device_peaks("cpu")
    assert first.gflops == {"float32": 123.0, "float64": 61.0} and first.gbps == 9.5 and len(calls) == 1
    cached = peaks_mod.device_peaks("cpu")
    assert len(calls) == 1 and cached.gflops == first.gflops and "cached in" in cached.source
    assert json.loads((tmp_path / "c" / "peaks.json").read_text())
    peaks_mod.device_peaks("cpu", recalibrate=True)
    assert len(calls) == 2


def test_calibration_measures_positive_peaks(tmp_path):
    p = peaks_mod.calibrate("cpu", save=False, gemm_n=128, copy_mib=4, reps=2)
    assert p.gflops["float32"] > 0 and p.gflops["float64"] > 0 and p.gbps > 0
    assert p.device == "cpu" and "cpus)" in p.name


def test_profile_uses_measured_peaks_by_default(monkeypatch):
    monkeypatch.setattr(peaks_mod, "_measure", lambda xp, sync, **s: ({"float32": 10.0}, 2.0, "measured (test)"))
    _, _, step = training()
    with profile() as prof:
        step()
    assert prof.peaks().gbps == 2.0 and "measured (test)" in prof.table()
    with profile(peaks=False) as off:
        step()
    assert off.peaks() is None and all(r.pct_peak is None for r in off.key_averages())


# ----------------------------------------------------------------------------- GPU timing path, stand-in CuPy

class _FakeEvent:
    clock = [0.0]

    def record(self, stream=None):
        _FakeEvent.clock[0] += 0.25  # ms: each recorded event lies 250 us after the previous one
        self.t = _FakeEvent.clock[0]

    def synchronize(self):
        pass


class _FakeArray:
    ndim = 1
    shape = (4,)
    strides = (4,)
    dtype = np.dtype(np.float32)
    size = 4
    device = types.SimpleNamespace(id=0)


def test_gpu_timing_path_with_a_stand_in_cupy(monkeypatch):
    """CUDA events bracket each kernel on the current stream, NVTX ranges open and close in
    order (named after the kernel and its layer), and the device times are read at the end."""
    ranges = []
    synced = []

    class Device:
        def __init__(self, i=0):
            self.i = i

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def synchronize(self):
            synced.append(self.i)

    nvtx = types.SimpleNamespace(available=True, RangePush=lambda msg: ranges.append(("push", msg)),
                                 RangePop=lambda: ranges.append(("pop",)))
    cuda = types.SimpleNamespace(Event=_FakeEvent, Device=Device, nvtx=nvtx,
                                 get_current_stream=lambda: types.SimpleNamespace(ptr=0),
                                 get_elapsed_time=lambda a, b: b.t - a.t)
    fake = types.SimpleNamespace(cuda=cuda)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cuda)

    class FakeOps:
        name = "cuda-test"

        @staticmethod
        def loss_forward(name, x, y):
            return x

    rec = Recorder()
    a = _FakeArray()
    proxy = rec(FakeOps(), a)
    assert proxy.name == "cuda-test"
    assert proxy.loss_forward("mse", a, a) is a
    with rec.phase("optimizer"):
        proxy.loss_forward("mse", a, a)
    rec.finish()
    first, second = rec.events
    for ev in rec.events:
        assert ev.device == "gpu:0" and ev.backend == "cuda-test" and ev.stream == 0
        assert ev.flops == 8 and ev.bytes == 48  # the cost model beside the loss kernels
        assert ev.duration_ns == 250_000  # its two events lie 0.25 ms apart
    clock = rec._clocks[0]
    assert first.device_start_ns == clock.ref_ns + 250_000  # placed on the host clock after the reference event
    assert second.device_start_ns == first.device_end_ns + 500_000  # the phase's start event lies between
    assert ranges == [("push", "loss_forward"), ("pop",), ("push", "optimizer"), ("push", "loss_forward"), ("pop",),
                      ("pop",)]
    assert synced  # the device was synchronised before the events were read
    assert rec.step_ends and rec._pending == []


def test_kernel_event_duration_prefers_device_time():
    ev = KernelEvent("k", "b", "gpu:0", "forward", None, (), None, 0, 10, None, None, 1)
    assert ev.duration_ns == 10
    ev.device_start_ns, ev.device_end_ns = 100, 350
    assert ev.duration_ns == 250


def test_fit_under_a_profile_counts_its_steps():
    model, opt, _ = training(widths=(4, 8, 3))
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 4)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    with profile(peaks=False) as prof:
        gn.train.fit(model, nn.CrossEntropyLoss(), opt, X, y, epochs=2, batch_size=10, progress=False, seed=0)
    assert prof.steps == 8
    lps = prof.launches_per_step()
    assert lps["optimizer"] == 1.0 and lps["loss"] == 1.0
    assert kops._recorder is None


def test_a_failing_node_records_no_kernel_and_leaves_no_span_open():
    with profile(peaks=False) as prof:
        with pytest.raises(ValueError):
            gn.tensor(np.ones((2, 3), np.float32)).reshape(4, 4)
        y = gn.tensor(np.ones((2, 3), np.float32)).reshape(3, 2)
    assert [ev.name for ev in prof.events] == ["Reshape.forward"] and y.shape == (3, 2)
    assert [s.name for s in prof.spans] == ["Reshape", "Reshape"]


def test_a_cached_peak_that_is_exceeded_is_measured_again(monkeypatch):
    """A peak cached from a busy machine is too low: above 100% of it, the profile measures again, once."""
    name = peaks_mod._device_name("cpu")
    import os

    os.makedirs(os.path.dirname(peaks_mod.cache_path()), exist_ok=True)
    entry = {"name": name, "gflops": {"float32": 1e-9, "float64": 1e-9}, "gbps": 1e-9, "source": "busy"}
    with open(peaks_mod.cache_path(), "w") as f:
        json.dump({peaks_mod._key("cpu", name): entry}, f)
    calls = []

    def fake_measure(xp, sync, **sizes):
        calls.append(1)
        return {"float32": 1e6, "float64": 5e5}, 1e6, "measured (test)"

    monkeypatch.setattr(peaks_mod, "_measure", fake_measure)
    _, _, step = training()
    with profile() as prof:
        step()
    rows = prof.key_averages()
    assert len(calls) == 1 and prof.peaks().gbps == 1e6 and not prof.peaks().cached
    assert all(r.pct_peak is None or r.pct_peak < 100 for r in rows)
    prof.key_averages()
    assert len(calls) == 1  # once per profile
    assert json.load(open(peaks_mod.cache_path()))[peaks_mod._key("cpu", name)]["gbps"] == 1e6
    with profile(peaks={"gflops": 1e-9, "gbps": 1e-9}) as given:
        step()
    assert all(r.pct_peak is None or r.pct_peak > 100 for r in given.key_averages()) and len(calls) == 1


def test_cpu_epilogues_show_as_parts_of_their_dense_kernels():
    """The bias+activation pass after the GEMM (and its backward with db) is timed as a part of
    its dense kernel: rows indented under it in the kernel table, inside the kernel's time, with
    the pass's own cost; never an extra kernel or launch."""
    gn.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 3))
    x = gn.tensor(np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32))
    with profile(peaks=False) as prof:
        model(x).sum().backward()
    assert dense.part_hook is None  # cleared when the profile stops
    names = [ev.name for ev in prof.parts]
    assert names == ["dense_forward / bias+gelu", "dense_forward / bias", "dense_backward / db",
                     "dense_backward / gelu'+db"]
    kernels = [ev for ev in prof.events if ev.name.startswith("dense_")]
    assert len(kernels) == 4 and prof.kernel_ns == sum(ev.duration_ns for ev in prof.events)
    for part, kernel in zip(prof.parts, kernels):
        assert kernel.start_ns <= part.start_ns <= part.end_ns <= kernel.end_ns
        assert part.layer == kernel.layer and part.phase == kernel.phase
    gelu = prof.parts[0]
    n = 8 * 16
    assert (gelu.flops, gelu.bytes) == ((registry.activation(activations.GELU).flops + 1) * n, (3 * n + 16) * 4)
    lines = prof.table().splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("dense_forward "))
    assert lines[i + 1].startswith("  dense_forward / bias ") and lines[i + 2].startswith("  dense_forward / bias+gelu")
    assert "/" not in "".join(r.key for r in prof.key_averages("layer"))
