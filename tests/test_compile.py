"""gn.compile: replays are bit-identical to eager steps; what cannot be replayed is refused or warned."""
import warnings

import numpy as np
import pytest

import gpunn as gn
from gpunn.compiler import CompileError, CompileWarning

gcompile = gn.compile

RNG = np.random.default_rng(0)
X = RNG.standard_normal((40, 6)).astype(np.float32)
Y = RNG.integers(0, 3, 40)


def _setup(opt="adam", seed=0):
    gn.manual_seed(seed)
    model = gn.nn.Sequential(gn.nn.Linear(6, 8), gn.nn.Tanh(), gn.nn.Linear(8, 3))
    o = {"adam": lambda p: gn.optim.Adam(p, lr=1e-2), "sgd": lambda p: gn.optim.SGD(p, lr=0.1, momentum=0.9),
         "adagrad": lambda p: gn.optim.Adagrad(p, lr=0.05, lr_decay=0.01)}[opt](model.parameters())
    return model, o, gn.nn.CrossEntropyLoss()


def _step_fn(model, opt, loss_fn, zero_grad=True):
    """The PyTorch-style training step (zero_grad=False: the caller resets the gradients)."""
    def step(x, y):
        if zero_grad:
            opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def _train(compiled, epochs=4, batch=16, opt="adam", between=None):
    """Losses and final parameters of `epochs` epochs (a short last batch each), StepLR per step."""
    model, o, lf = _setup(opt)
    sched = gn.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.7)
    step = _step_fn(model, o, lf)
    f = gcompile(step) if compiled else step
    losses = []
    for e in range(epochs):
        for s in range(0, len(X), batch):
            losses.append(f(gn.tensor(X[s:s + batch]), gn.tensor(Y[s:s + batch])).item())
            sched.step()
            if between is not None:
                between(e, s, model, o)
    return losses, [p.data.copy() for p in model.parameters()], f


@pytest.mark.parametrize("opt", ["adam", "sgd", "adagrad"])
def test_bit_identical_to_eager_with_scheduler_and_short_batch(opt):
    le, pe, _ = _train(False, opt=opt)
    lc, pc, f = _train(True, opt=opt)
    assert lc == le
    for a, b in zip(pc, pe):
        np.testing.assert_array_equal(a, b)
    # two signatures (batch 16 and the short batch 8), each traced twice, the rest replayed
    assert f.stats == {"traces": 4, "replays": 8, "kernel_replays": 8, "graph_replays": 0, "eager": 0}


def test_state_changes_between_steps_are_read_at_replay():
    def poke(e, s, model, o):
        if e == 2 and s == 0:
            o.param_groups[0]["lr"] = 0.05
            o.param_groups[0]["betas"] = (0.8, 0.99)
        if e == 3 and s == 16:
            o.load_state_dict(saved[0])
        if e == 1 and s == 32:
            saved.append(o.state_dict())

    saved = []
    le, pe, _ = _train(False, between=poke)
    saved.clear()
    lc, pc, f = _train(True, between=poke)
    assert f.stats["kernel_replays"] > 0
    assert lc == le
    for a, b in zip(pc, pe):
        np.testing.assert_array_equal(a, b)


def test_inference_under_no_grad_and_eval():
    model, _, _ = _setup()
    model.eval()

    @gcompile
    def predict(x):
        with gn.no_grad():
            return model(x).softmax(-1)

    for i in range(4):
        x = gn.tensor(X[i * 8:(i + 1) * 8])
        np.testing.assert_array_equal(predict(x).numpy(), model(x).softmax(-1).numpy())
    assert predict.stats["replays"] == 2


def test_numpy_array_arguments_are_bound_per_call():
    model, o, lf = _setup()
    f = gcompile(lambda x: model(gn.Tensor(x)))
    for i in range(4):
        x = X[i * 8:(i + 1) * 8]
        np.testing.assert_array_equal(f(x).numpy(), model(gn.Tensor(x)).numpy())
    assert f.stats["replays"] == 2


def test_cache_is_bounded():
    model, _, _ = _setup()
    f = gcompile(lambda x: model(x), cache_size=2)
    for n in (1, 2, 3, 1):
        f(gn.tensor(X[:n]))
    assert len(f._cache) == 2 and f.stats["traces"] == 4


def _expect_fallback(fn, match, calls=4):
    f = gcompile(fn)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        outs = [f(gn.tensor(X[:8]), gn.tensor(Y[:8])) for _ in range(calls)]
    msgs = [str(x.message) for x in w if issubclass(x.category, CompileWarning)]
    assert len(msgs) == 1 and match in msgs[0], msgs
    assert f.stats["replays"] == 0
    strict = gcompile(fn, strict=True)
    with pytest.raises(CompileError, match=match.replace("(", r"\(").replace(")", r"\)")):
        for _ in range(2):  # a difference between traces shows on the second
            strict(gn.tensor(X[:8]), gn.tensor(Y[:8]))
    return outs


def test_host_read_inside_fn_falls_back_with_one_warning():
    model, o, lf = _setup()

    def step(x, y):
        o.zero_grad()
        loss = lf(model(x), y)
        if loss.item() > 100:  # Python control flow on a value: cannot be baked into a replay
            return loss
        loss.backward()
        o.step()
        return loss

    _expect_fallback(step, "Tensor.item()")


def test_tensor_created_inside_fn_is_refused():
    model, o, lf = _setup()
    scale = [1.0]

    def step(x, y):
        scale[0] *= 2  # a fresh tensor each call: its value must not be baked in
        return lf(model(x), y) * gn.tensor(np.float32(scale[0]))

    _expect_fallback(step, "takes a different input on the second trace")


def test_different_graph_on_second_trace_is_refused():
    model, o, lf = _setup()
    calls = [0]

    def step(x, y):
        calls[0] += 1
        out = model(x)
        if calls[0] % 2 == 0:
            out = out.tanh()
        return lf(out, y)

    _expect_fallback(step, "the second trace ran 4 recorded operations, the first 3")


def test_parameters_replaced_after_tracing_retrace():
    model, o, lf = _setup()
    step = gcompile(_step_fn(model, o, lf))
    for _ in range(3):
        step(gn.tensor(X[:8]), gn.tensor(Y[:8]))
    assert step.stats["replays"] == 1
    extra = gn.nn.Parameter(np.zeros(3, dtype=np.float32))
    o.add_param_group({"params": [extra]})
    step(gn.tensor(X[:8]), gn.tensor(Y[:8]))
    assert step.stats["traces"] == 3  # the optimizer's parameters changed: traced again, not replayed


def test_non_tensor_return_is_refused():
    model, o, lf = _setup()
    _expect_fallback(lambda x, y: lf(model(x), y).data, "fn returns a ndarray")


def test_returned_loss_holds_this_steps_value():
    model, o, lf = _setup()
    step = gcompile(_step_fn(model, o, lf))
    outs = [step(gn.tensor(X[i * 8:(i + 1) * 8]), gn.tensor(Y[i * 8:(i + 1) * 8])) for i in range(5)]
    vals = [float(t.numpy()) for t in outs]
    assert len(set(vals)) == 5  # every returned loss is its own step's, not an alias of one buffer


def test_fit_compile_matches_eager():
    from gpunn.train import fit

    Xf = RNG.standard_normal((70, 6)).astype(np.float32)
    yf = RNG.integers(0, 3, 70)
    runs = []
    for compiled in (False, True):
        model, o, lf = _setup()
        sched = gn.optim.lr_scheduler.ExponentialLR(o, gamma=0.9)
        h = fit(model, lf, o, Xf, yf, epochs=4, batch_size=16, seed=3, progress=False, scheduler=sched,
                scheduler_step="batch", compile=compiled)
        runs.append((h["loss"], h["accuracy"], [p.data.copy() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    for a, b in zip(runs[0][2], runs[1][2]):
        np.testing.assert_array_equal(a, b)


def test_cli_train_compile_prints_the_same_results(capsys):
    from gpunn.cli import main

    args = ["train", "--data", "moons", "--epochs", "3", "--seed", "4", "--no-progress"]
    outs = []
    for extra in ([], ["--compile"]):
        assert main(args + extra) == 0
        outs.append(capsys.readouterr().out.split("trained")[1].split("\n", 1)[1])
    assert outs[0] == outs[1] and "accuracy" in outs[0]


def test_freezing_a_parameter_after_tracing_matches_eager():
    def freeze(e, s, model, o):
        if e == 2 and s == 0:
            model[0].weight.requires_grad_(False)

    le, pe, _ = _train(False, between=freeze)
    lc, pc, f = _train(True, between=freeze)
    assert lc == le
    for a, b in zip(pc, pe):
        np.testing.assert_array_equal(a, b)
    assert f.stats["traces"] == 8  # both signatures traced twice again after the freeze


def test_in_place_update_inside_fn_falls_back():
    model, o, lf = _setup()

    def manual_sgd(x, y):
        for p in model.parameters():
            p.grad = None
        loss = lf(model(x), y)
        loss.backward()
        with gn.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
        return loss

    _expect_fallback(manual_sgd, "in-place Tensor.sub_()")


# ----------------------------------------------------------------------------- dropout, batch norm, modes

def _regularised(momentum=0.1, seed=0):
    gn.manual_seed(seed)
    model = gn.nn.Sequential(gn.nn.Linear(6, 8), gn.nn.BatchNorm1d(8, momentum=momentum), gn.nn.ReLU(),
                             gn.nn.Dropout(0.4), gn.nn.Linear(8, 8), gn.nn.LayerNorm(8), gn.nn.Linear(8, 3))
    return model, gn.optim.Adam(model.parameters(), lr=1e-2), gn.nn.CrossEntropyLoss()


@pytest.mark.parametrize("momentum", [0.1, None])
def test_dropout_and_batch_norm_replay_like_eager(momentum):
    """Each replay draws a fresh dropout mask (the same draws as eager mode) and updates the running
    statistics: losses, parameters and buffers bit-identical to eager steps."""
    runs = []
    for compiled in (False, True):
        model, o, lf = _regularised(momentum)
        step = _step_fn(model, o, lf)
        f = gcompile(step, strict=True) if compiled else step
        gn.manual_seed(7)
        losses = [f(gn.tensor(X[s:s + 8]), gn.tensor(Y[s:s + 8])).item() for s in range(0, 40, 8) for _ in (0, 1)]
        runs.append((losses, model.state_dict(), f))
    (le, se, _), (lc, sc, f) = runs
    assert f.stats == {"traces": 2, "replays": 8, "kernel_replays": 8, "graph_replays": 0, "eager": 0}
    assert lc == le and len(set(lc)) == len(lc)
    for k in se:
        np.testing.assert_array_equal(sc[k].numpy(), se[k].numpy(), err_msg=k)
    assert int(sc["1.num_batches_tracked"]) == 10


def test_dropout_mask_is_never_frozen_by_a_replay():
    drop = gn.nn.Dropout(0.5)
    f = gcompile(lambda x: drop(x), strict=True)
    outs = [f(gn.ones(16, 16)).numpy() for _ in range(5)]
    assert f.stats["replays"] == 3
    assert all(not np.array_equal(outs[i], outs[j]) for i in range(5) for j in range(i))


def test_train_eval_switch_traces_again_instead_of_replaying_the_other_mode():
    model, _, _ = _regularised()
    f = gcompile(lambda x: model(x), strict=True)
    x = gn.tensor(X[:8])
    for _ in range(3):
        f(x)
    assert f.stats == {"traces": 2, "replays": 1, "kernel_replays": 1, "graph_replays": 0, "eager": 0}
    model.eval()
    expected = model(x).numpy()  # eval: no dropout, running statistics: deterministic
    for _ in range(3):
        np.testing.assert_array_equal(f(x).numpy(), expected)
    assert f.stats == {"traces": 4, "replays": 2, "kernel_replays": 2, "graph_replays": 0, "eager": 0}
    model.train()
    nbt = int(model[1].num_batches_tracked)
    f(x)
    assert int(model[1].num_batches_tracked) == nbt + 1  # training again: the running statistics move


def test_gradient_clipping_inside_fn_falls_back():
    model, o, lf = _setup()

    def clipped_step(x, y):
        o.zero_grad()
        loss = lf(model(x), y)
        loss.backward()
        gn.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        o.step()
        return loss

    _expect_fallback(clipped_step, "in-place Tensor.mul_()")

    def value_clipped_step(x, y):
        o.zero_grad()
        loss = lf(model(x), y)
        loss.backward()
        gn.nn.utils.clip_grad_value_(model.parameters(), 0.01)  # the flat-buffer path: one copy_
        o.step()
        return loss

    _expect_fallback(value_clipped_step, "in-place Tensor.copy_()")


def test_fit_compile_with_dropout_batch_norm_and_validation_matches_eager():
    from gpunn.train import fit

    Xf = RNG.standard_normal((64, 6)).astype(np.float32)
    yf = RNG.integers(0, 3, 64)
    runs = []
    for compiled in (False, True):
        model, o, lf = _regularised()
        h = fit(model, lf, o, Xf, yf, epochs=3, batch_size=16, seed=3, progress=False, validation=(Xf, yf),
                compile=compiled)
        runs.append((h["loss"], h["val_loss"], model.state_dict()))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    for k in runs[0][2]:
        np.testing.assert_array_equal(runs[0][2][k].numpy(), runs[1][2][k].numpy(), err_msg=k)


def test_batch_norm_replay_updates_the_buffers_a_dtype_round_trip_rebinds():
    """module.double().float() gives the buffers new arrays under the same Tensors and the same input
    signature: replays must update those, not the arrays seen while tracing."""
    states = []
    for compiled in (False, True):
        model, o, lf = _regularised()
        step = _step_fn(model, o, lf)
        f = gcompile(step, strict=True) if compiled else step
        gn.manual_seed(3)
        for s in range(0, 40, 8):
            f(gn.tensor(X[s:s + 8]), gn.tensor(Y[s:s + 8]))
            if s == 16:
                model.double().float()
        states.append(model.state_dict())
    assert f.stats["replays"] > 0
    for k in states[0]:
        np.testing.assert_array_equal(states[1][k].numpy(), states[0][k].numpy(), err_msg=k)


def test_a_ready_replay_runs_under_the_profiler_with_the_eager_kernels_and_phases():
    """Under gn.profiler a signature not yet ready runs eagerly (a trace would hide the kernels);
    a ready one replays, recorded like an eager step, with the same result."""
    from gpunn import profiler

    model, o, lf = _setup()
    f = gcompile(_step_fn(model, o, lf))
    x, y = gn.tensor(X[:16]), gn.tensor(Y[:16])
    with profiler.profile() as eager_prof:
        f(x, y)
    assert f.stats == {"traces": 0, "replays": 0, "kernel_replays": 0, "graph_replays": 0, "eager": 1}
    f(x, y), f(x, y)  # trace, check
    with profiler.profile() as prof:
        f(x, y)
    assert f.stats["replays"] == f.stats["kernel_replays"] == 1  # profiled kernel by kernel
    key = lambda p: sorted((e.name, e.phase, e.layer) for e in p.events)  # noqa: E731
    assert key(prof) == key(eager_prof)
    spans = lambda p: sorted((s.kind, s.name, s.phase, s.layer) for s in p.spans)  # noqa: E731
    assert spans(prof) == spans(eager_prof)
    assert prof.launches_per_step() == eager_prof.launches_per_step()


def _eager_then_compiled(layers, loss_fn, batches):
    """Train a fresh Sequential(*layers()) with Adam on `batches` ((x, y) arrays) eagerly, then
    compiled (strict); assert equal losses and parameters bit for bit; return the compiled step."""
    runs = []
    for compiled in (False, True):
        gn.manual_seed(0)
        model = gn.nn.Sequential(*layers())
        step = _step_fn(model, gn.optim.Adam(model.parameters(), lr=1e-2), loss_fn)
        f = gcompile(step, strict=True) if compiled else step
        losses = [f(gn.tensor(x), gn.tensor(y)).item() for x, y in batches]
        runs.append((losses, [p.data.copy() for p in model.parameters()], f))
    (le, pe, _), (lc, pc, f) = runs
    assert lc == le
    for a, b in zip(pc, pe):
        np.testing.assert_array_equal(a, b)
    return f


def test_batch_norm_replays_kernel_by_kernel_as_eager():
    """BatchNorm's running statistics are updated by a replayed glue function, on the buffers'
    arrays of the moment (a dtype round trip rebinds them: that call replays node by node)."""
    f = _eager_then_compiled(lambda: (gn.nn.Linear(6, 8), gn.nn.BatchNorm1d(8), gn.nn.Tanh(), gn.nn.Linear(8, 3)),
                             gn.nn.CrossEntropyLoss(), [(X[:16], Y[:16])] * 5)
    assert f.stats == {"traces": 2, "replays": 3, "kernel_replays": 3, "graph_replays": 0, "eager": 0}
    assert f.explain(gn.tensor(X[:16]), gn.tensor(Y[:16])) == "kernels"


def test_dropout_and_layer_norm_replay_kernel_by_kernel_with_the_generator_of_the_moment():
    """Dropout's mask comes from the generator current at replay time: re-seeding between steps
    (manual_seed makes a new generator) gives the masks eager mode draws."""
    runs = []
    for compiled in (False, True):
        gn.manual_seed(0)
        model = gn.nn.Sequential(gn.nn.Linear(6, 16), gn.nn.LayerNorm(16), gn.nn.GELU(), gn.nn.Dropout(0.3),
                                 gn.nn.Linear(16, 3))
        step = _step_fn(model, gn.optim.Adam(model.parameters(), lr=1e-2), gn.nn.CrossEntropyLoss())
        f = gcompile(step, strict=True) if compiled else step
        losses = []
        for i in range(6):
            if i == 4:
                gn.manual_seed(123)
            losses.append(f(gn.tensor(X[:16]), gn.tensor(Y[:16])).item())
        runs.append((losses, [p.data.copy() for p in model.parameters()], f))
    (le, pe, _), (lc, pc, f) = runs
    assert lc == le and len(set(lc)) == len(lc)
    for a, b in zip(pc, pe):
        np.testing.assert_array_equal(a, b)
    assert f.stats == {"traces": 2, "replays": 4, "kernel_replays": 4, "graph_replays": 0, "eager": 0}


@pytest.mark.parametrize("loss", ["mse", "l1", "huber", "bce_with_logits"])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
def test_elementwise_loss_steps_replay_kernel_by_kernel_as_eager(loss, weighted):
    """The elementwise losses' glue (weights, reduction, the upstream gradient) is replayed with
    their kernels: bit-identical to eager, every replay kernel by kernel."""
    t = (Y[:16] % 2).astype(np.float32).reshape(-1, 1)
    w = np.linspace(0.5, 1.5, 16, dtype=np.float32).reshape(-1, 1) if weighted else None
    fns = {"mse": lambda a, b: gn.functional.mse_loss(a, b, weight=w),
           "l1": lambda a, b: gn.functional.l1_loss(a, b, weight=w),
           "huber": lambda a, b: gn.functional.huber_loss(a, b, weight=w),
           "bce_with_logits": lambda a, b: gn.functional.binary_cross_entropy_with_logits(a, b, weight=w)}
    f = _eager_then_compiled(lambda: (gn.nn.Linear(6, 8), gn.nn.Tanh(), gn.nn.Linear(8, 1)), fns[loss],
                             [(X[s:s + 16], t) for s in (0, 8, 16, 24, 0, 8)])
    assert f.stats == {"traces": 2, "replays": 4, "kernel_replays": 4, "graph_replays": 0, "eager": 0}


def test_explain_says_how_each_signature_runs():
    model, o, lf = _setup()
    f = gcompile(_step_fn(model, o, lf))
    x, y = gn.tensor(X[:16]), gn.tensor(Y[:16])
    assert f.explain(x, y) == "tracing"
    f(x, y), f(x, y)
    assert f.explain(x, y) == "kernels"
    assert f.explain(gn.tensor(X[:8]), gn.tensor(Y[:8])) == "tracing"


def test_bad_labels_raise_in_a_kernel_replay_as_in_eager():
    model, o, lf = _setup()
    f = gcompile(_step_fn(model, o, lf))
    for _ in range(3):
        f(gn.tensor(X[:16]), gn.tensor(Y[:16]))
    assert f.stats["kernel_replays"] == 1
    bad = Y[:16].copy()
    bad[5] = 3
    with pytest.raises(ValueError, match=r"target\[5\] = 3 is out of range for 3 classes"):
        f(gn.tensor(X[:16]), gn.tensor(bad))
    assert f.stats["kernel_replays"] == 2


def test_a_parameter_array_rebound_after_tracing_replays_as_eager():
    """The kernel program holds each parameter's array: rebinding `.data` sends the step back to
    the node-level replay, which reads the tensor afresh (as eager does)."""
    def rebind(e, s, model, o):
        if e == 1 and s == 16:
            w = model[0].weight
            w.data = w.data.copy()

    le, pe, _ = _train(False, between=rebind)
    lc, pc, f = _train(True, between=rebind)
    assert lc == le
    for a, b in zip(pc, pe):
        np.testing.assert_array_equal(a, b)
    assert 0 < f.stats["kernel_replays"] < f.stats["replays"]


def test_inference_of_a_dense_model_replays_kernel_by_kernel_with_fresh_outputs():
    model, _, _ = _setup()

    @gcompile
    def predict(x):
        with gn.no_grad():
            return model(x)

    outs = []
    for i in range(5):
        x = gn.tensor(X[i * 8:(i + 1) * 8])
        outs.append(predict(x))
        np.testing.assert_array_equal(outs[-1].numpy(), model(x).numpy())
    assert predict.stats["kernel_replays"] == 3
    assert len({o.data.ctypes.data for o in outs[2:]}) == 3  # each replay's output is its own array


def test_a_three_dimensional_input_replays_as_eager():
    """Dense flattens leading axes with views, rebuilt on each replay's arrays; a call whose input
    is laid out otherwise than when traced (same shape, Fortran order) replays node by node."""
    x3 = X[:24].reshape(4, 6, 6)
    f = _eager_then_compiled(lambda: (gn.nn.Linear(6, 8), gn.nn.Tanh(), gn.nn.Linear(8, 3)),
                             lambda out, y: gn.functional.mse_loss(out, y),
                             [(x3, np.zeros((4, 6, 3), np.float32))] * 4 + [(np.asfortranarray(x3), np.zeros((4, 6, 3), np.float32))])
    assert f.stats["replays"] == 3 and f.stats["kernel_replays"] == 2  # the Fortran-order call: node by node


def test_gradient_accumulation_across_calls_replays_as_eager():
    """zero_grad outside the step and not before every call: whether a leaf's gradient is written
    into its sink or added to the one there is decided at replay time, as in eager mode."""
    def run(compiled):
        model, o, lf = _setup()

        def step(x, y):
            loss = lf(model(x), y)
            loss.backward()
            return loss

        f = gcompile(step, strict=True) if compiled else step
        losses = []
        for i in range(9):
            if i in (0, 1, 4, 7):
                o.zero_grad()
            losses.append(f(gn.tensor(X[i:i + 8]), gn.tensor(Y[i:i + 8])).item())
            if i in (3, 6, 8):
                o.step()
        return losses, [p.data.copy() for p in model.parameters()], [p.grad.numpy().copy() for p in model.parameters()], f

    le, pe, ge, _ = run(False)
    lc, pc, gc, f = run(True)
    assert lc == le
    for a, b in zip(pc + gc, pe + ge):
        np.testing.assert_array_equal(a, b)
    assert f.stats["replays"] == 7


def test_a_post_accumulate_hook_registered_after_tracing_still_runs():
    model, o, lf = _setup()
    f = gcompile(_step_fn(model, o, lf))
    for _ in range(3):
        f(gn.tensor(X[:16]), gn.tensor(Y[:16]))
    assert f.stats["kernel_replays"] == 1
    seen = []
    model[0].weight.register_post_accumulate_grad_hook(lambda t: seen.append(t.grad.numpy().copy()))
    f(gn.tensor(X[:16]), gn.tensor(Y[:16]))
    assert len(seen) == 1 and f.stats["kernel_replays"] == 1  # the engine's walk ran it


def test_a_loss_written_with_tensor_operators_replays_node_by_node_as_eager():
    t = (Y[:16] % 2).astype(np.float32).reshape(-1, 1)
    f = _eager_then_compiled(lambda: (gn.nn.Linear(6, 8), gn.nn.Tanh(), gn.nn.Linear(8, 1)),
                             lambda out, y: ((out - y) ** 2).mean(), [(X[:16], t)] * 4)
    assert f.stats == {"traces": 2, "replays": 2, "kernel_replays": 0, "graph_replays": 0, "eager": 0}
    assert "nodes do array work of their own" in f.explain(gn.tensor(X[:16]), gn.tensor(t))


@pytest.mark.parametrize("make_opt", [
    lambda p: gn.optim.AdamW(p, lr=1e-2, weight_decay=0.1, amsgrad=True),
    lambda p: gn.optim.RMSprop(p, lr=1e-2, momentum=0.9, centered=True, weight_decay=1e-3),
    lambda p: gn.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
], ids=["adamw-amsgrad", "rmsprop-centered", "sgd-nesterov"])
@pytest.mark.parametrize("act", [gn.nn.GELU, gn.nn.Sigmoid, gn.nn.LeakyReLU], ids=["gelu", "sigmoid", "leaky_relu"])
def test_kernel_replays_match_eager_across_optimizers_and_activations(make_opt, act):
    runs = []
    for compiled in (False, True):
        gn.manual_seed(0)
        model = gn.nn.Sequential(gn.nn.Linear(6, 16), act(), gn.nn.Linear(16, 16), act(), gn.nn.Linear(16, 3))
        o = make_opt(model.parameters())
        sched = gn.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5)
        step = _step_fn(model, o, gn.nn.CrossEntropyLoss(label_smoothing=0.1))
        f = gcompile(step, strict=True) if compiled else step
        losses = []
        for s in (0, 16, 24, 0, 16, 24, 0, 16):
            losses.append(f(gn.tensor(X[s:s + 16]), gn.tensor(Y[s:s + 16])).item())
            sched.step()
        runs.append((losses, [p.data.copy() for p in model.parameters()], f))
    (le, pe, _), (lc, pc, f) = runs
    assert lc == le
    for a, b in zip(pc, pe):
        np.testing.assert_array_equal(a, b)
    assert f.stats["kernel_replays"] == f.stats["replays"] == 6


def test_batch_norm_buffers_rebound_alone_are_followed_by_the_replay():
    """Only the running statistics' arrays replaced (not the parameters'): the kernel replay, which
    holds the traced arrays, steps aside for the node-level one, which reads the buffers afresh."""
    states = []
    for compiled in (False, True):
        model, o, lf = _regularised()
        f = gcompile(_step_fn(model, o, lf), strict=True) if compiled else _step_fn(model, o, lf)
        gn.manual_seed(3)
        for i in range(6):
            f(gn.tensor(X[:8]), gn.tensor(Y[:8]))
            if i == 3:
                bn = model[1]
                bn.running_mean.data = bn.running_mean.data.copy()
                bn.running_var.data = bn.running_var.data.copy()
        states.append(model.state_dict())
    for k in states[0]:
        np.testing.assert_array_equal(states[1][k].numpy(), states[0][k].numpy(), err_msg=k)
    assert f.stats == {"traces": 2, "replays": 4, "kernel_replays": 2, "graph_replays": 0, "eager": 0}


def test_cuda_graph_on_host_arrays_replays_kernel_by_kernel_and_says_why():
    model, o, lf = _setup()
    f = gcompile(_step_fn(model, o, lf), cuda_graph=True)
    x, y = gn.tensor(X[:16]), gn.tensor(Y[:16])
    for _ in range(4):
        f(x, y)
    assert f.explain(x, y) == "kernels: no CUDA graph: its arrays are on the host (CUDA graphs are for GPU steps)"
    assert f.stats == {"traces": 2, "replays": 2, "kernel_replays": 2, "graph_replays": 0, "eager": 0}
