"""gn.compile's straight-line replay (gpunn/compiler_codegen.py): a kernel program written as one
function makes the interpreter's calls, in its order, with its arguments; the backward walk's
claims end when a kernel raises. (Replays against eager mode: tests/test_compile.py.)"""
import gc
import linecache
import traceback

import numpy as np
import pytest

import gpunn as gn
from gpunn.autograd import grad_sink
from gpunn.compiler import _bound_call, _run_steps
from gpunn.compiler_codegen import straight_line
from test_compile import _step_fn

META = ((None, None, None),)


class _Owner:
    def __init__(self, log):
        self.log = log

    def note(self, *a, **kw):
        self.log.append(("call", a, kw))


def _program(log):
    """A hand-made kernel program using every kind of step and argument spec, and the calls it must
    make on arguments a0 (2x3) and a1 (3,)."""
    leaf = gn.tensor(np.zeros(3, np.float32), requires_grad=True)
    sink = np.full(3, -1.0, np.float32)
    grad_sink.register_grad_sink(leaf, sink)
    owner = _Owner(log)
    const_w = np.arange(3, dtype=np.float32)

    def k_pair(x, w, scale=1.0):
        log.append(("pair", x.shape, scale))
        return x * scale, (x + w).reshape(6)  # the second is a view of a fresh array: its base has no role

    def k_take(flat, parts, out):
        log.append(("take", flat.shape, parts[0].shape, out is sink))
        out[...] = flat[0] + parts[1]
        return out.copy()

    steps = [
        ("call", _Owner.note, owner, (1,), {"b": 2}),
        _bound_call(k_pair, [("arg", 0), ("c", const_w)], {"scale": ("c", 2.0)}, 0) + META,
        ("pass", "begin"),
        ("claim", leaf, 2, None),
        _bound_call(k_take, [("view", ("base", 0, 1), np.dtype(np.float32), (2, 3), (12, 4), 0),
                             ("seq", tuple, (("res", 0, 0), ("arg", 1)))], {"out": ("res", 2, None)}, 3) + META,
        ("acc", leaf._accumulate_grad, ("res", 2, None)),
        ("pass", "end"),
    ]
    return steps, leaf, sink


def _run(kind):
    log = []
    steps, leaf, sink = _program(log)
    a0 = np.arange(6, dtype=np.float32).reshape(2, 3)
    a1 = np.array([10, 20, 30], np.float32)
    res = [None] * 4
    if kind == "interpreter":
        _run_steps(steps, (a0, a1), res, None)
    else:
        straight_line(steps, 2, {0, 3})(a0, a1, res)
    return log, res, leaf, sink


@pytest.mark.parametrize("kind", ["interpreter", "straight_line"])
def test_a_program_makes_its_calls_in_order_with_its_arguments(kind):
    log, res, leaf, sink = _run(kind)
    assert log == [("call", (1,), {"b": 2}), ("pair", (2, 3), 2.0), ("take", (2, 3), (2, 3), True)]
    # base of (a0 + w) seen as 2x3, first row [0, 2, 4] + a1 (the second part of the sequence)
    np.testing.assert_array_equal(sink, [10, 22, 34])
    np.testing.assert_array_equal(res[3], [10, 22, 34])
    np.testing.assert_array_equal(res[0][0], np.arange(6).reshape(2, 3) * 2)
    assert leaf.grad.data is sink  # the claimed sink became .grad: nothing copied aside
    assert grad_sink._claimed.get() is None  # the walk's claims ended


def test_only_the_results_asked_for_are_kept():
    log = []
    steps, _, _ = _program(log)
    res = [None] * 4
    replay = straight_line(steps, 2, {3})
    replay(np.zeros((2, 3), np.float32), np.zeros(3, np.float32), res)
    assert res[0] is None and res[3] is not None
    assert "dense" not in replay.source and "k_take" in replay.source  # each call names its kernel


def test_a_kernel_that_raises_inside_the_walk_ends_its_claims():
    def boom(*a):
        raise FloatingPointError("kernel failed")

    steps = [("pass", "begin"), _bound_call(boom, [("arg", 0)], {}, 1) + META, ("pass", "end")]
    replay = straight_line(steps, 1, set())
    with pytest.raises(FloatingPointError, match="kernel failed") as err:
        replay(np.zeros(2), [None, None])
    shown = "".join(traceback.format_tb(err.tb))
    assert "r1 = k" in shown and "# test_a_kernel_that_raises_inside_the_walk_ends_its_claims.<locals>.boom" in shown
    filename = replay.__code__.co_filename
    assert filename in linecache.cache
    del replay, err
    gc.collect()
    assert filename not in linecache.cache  # the source lives as long as its function
    assert grad_sink._claimed.get() is None
    empty = straight_line([("pass", "begin"), ("pass", "end")], 0, set())  # a walk with nothing in it
    empty([])
    assert grad_sink._claimed.get() is None


def test_a_compiled_training_step_replays_through_the_straight_line_function():
    gn.manual_seed(0)
    model = gn.nn.Sequential(gn.nn.Linear(4, 5), gn.nn.ReLU(), gn.nn.Linear(5, 2))
    opt = gn.optim.Adam(model.parameters(), lr=1e-2)
    step = gn.compile(_step_fn(model, opt, gn.nn.CrossEntropyLoss()))
    x = gn.tensor(np.ones((3, 4), np.float32))
    y = gn.tensor(np.array([0, 1, 0]))
    for _ in range(3):
        step(x, y)
    source = step.replay_source(x, y)
    assert source == next(iter(step._cache.values()))[1].kernels._straight.source  # the function that ran
    for name in ("Optimizer.zero_grad", "dense_forward_cpu", "softmax_cross_entropy_backward_cpu",
                 "dense_backward_cpu", "Optimizer.step"):
        assert f"# {name}" in source
    assert step.stats["kernel_replays"] == 1


def test_replay_source_says_how_a_signature_runs_when_it_is_not_a_kernel_replay():
    gn.manual_seed(0)
    model = gn.nn.Sequential(gn.nn.Linear(4, 2))
    opt = gn.optim.SGD(model.parameters(), lr=0.1)

    def step(x, y):  # a loss written with Tensor operators: its nodes do array work of their own
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        return loss

    f = gn.compile(step)
    x, y = gn.tensor(np.ones((3, 4), np.float32)), gn.tensor(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"gn.compile\(step\): this signature does not replay kernel by kernel "
                                         r"\(tracing\)"):
        f.replay_source(x, y)
    for _ in range(3):
        f(x, y)
    with pytest.raises(ValueError, match=r"kernel by kernel \(nodes: .*array work of their own"):
        f.replay_source(x, y)
