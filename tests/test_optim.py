"""gpunn.optim's own behaviour: flat buffers, one fused kernel call per group, skipping, re-packing,
zero_grad, state_dict layout and validation, hyperparameter checks. Torch parity is in
test_optim_torch_parity.py; the kernels themselves in test_kernels_optimizers.py."""
from __future__ import annotations


import numpy as np
import pytest

import gpunn as gn
from gpunn.kernels import ops as ops_module
from gpunn.kernels import registry, use_kernels
from gpunn.optim.optimizer import Optimizer

SHAPES = [(4, 3), (4,), (2, 2, 2), ()]
ALL = [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.1)), ("AdamW", dict(lr=0.1)),
       ("RMSprop", dict(lr=0.1, momentum=0.5, centered=True)),
       ("Adagrad", dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.1))]


def make_params(seed=0, dtype=np.float32, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [gn.Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]


def quad_backward(params, which=None):
    """loss = sum_i sum(p_i^2 * (i + 1)) (grad 2 (i + 1) p_i) over the params in `which`."""
    loss = None
    for i, p in enumerate(params):
        if which is not None and i not in which:
            continue
        term = (p * p * float(i + 1)).sum()
        loss = term if loss is None else loss + term
    loss.backward()


def train(opt, params, steps=3, which=None):
    for _ in range(steps):
        opt.zero_grad()
        quad_backward(params, which)
        opt.step()


def snapshot(params):
    return [np.array(p.data, copy=True) for p in params]


@pytest.fixture
def count_kernel_calls(monkeypatch):
    """Wrap the optimizer kernels of both CPU Ops classes; returns the call counter."""
    calls = {"n": 0}
    for cls in (ops_module.Ops, ops_module.CpuOps):
        for name in (f"{n}_update" for n, m in registry.OPTIMIZERS.items() if registry.is_builtin(m)):
            fn = cls.__dict__[name].__func__ if hasattr(cls.__dict__[name], "__func__") else cls.__dict__[name]

            def wrapped(*a, _fn=fn, **k):
                calls["n"] += 1
                return _fn(*a, **k)

            monkeypatch.setattr(cls, name, staticmethod(wrapped))
    return calls


# ----------------------------------------------------------------------------- flat buffers

def test_params_become_views_of_one_flat_buffer():
    params = make_params()
    before = snapshot(params)
    opt = gn.optim.Adam(params)
    fg = opt._flat[0]
    assert fg.flat.ndim == 1 and fg.flat.size == sum(int(np.prod(s)) for s in SHAPES)
    for p, b, s in zip(params, before, SHAPES):
        assert p.data.shape == s and np.array_equal(p.data, b)
        assert np.shares_memory(p.data, fg.flat) and p.data.flags.c_contiguous
        sink = gn.autograd.grad_sink_of(p)
        assert sink is not None and np.shares_memory(sink, fg.grad)
    # the views tile the buffer in order, with no gaps
    np.testing.assert_array_equal(fg.flat, np.concatenate([b.ravel() for b in before]))


def test_backward_writes_gradients_into_the_flat_buffer():
    params = make_params()
    opt = gn.optim.SGD(params, lr=0.1)
    quad_backward(params)
    for i, p in enumerate(params):
        assert p.grad.data is opt._flat[0].gviews[i]
        np.testing.assert_allclose(p.grad.data, 2 * (i + 1) * p.data, rtol=1e-6)
    np.testing.assert_allclose(opt._flat[0].grad, np.concatenate([(2 * (i + 1) * p.data).ravel()
                                                                   for i, p in enumerate(params)]), rtol=1e-6)


@pytest.mark.parametrize("name,kw", ALL)
def test_one_kernel_call_per_group_and_step(count_kernel_calls, name, kw):
    params = make_params()
    opt = getattr(gn.optim, name)(params, **kw)
    train(opt, params, steps=3)
    assert count_kernel_calls["n"] == 3
    opt2 = getattr(gn.optim, name)([{"params": params[:2]}, {"params": params[2:], "lr": 0.01}], **kw)
    count_kernel_calls["n"] = 0
    train(opt2, params, steps=2)
    assert count_kernel_calls["n"] == 4


def test_missing_grad_falls_back_to_one_call_per_param(count_kernel_calls):
    params = make_params()
    opt = gn.optim.Adam(params, lr=0.1)
    train(opt, params, steps=1, which=[0, 1, 3])
    assert count_kernel_calls["n"] == 3
    # steps now differ (param 2 has none): the fused path waits until they agree again
    count_kernel_calls["n"] = 0
    train(opt, params, steps=1)
    assert count_kernel_calls["n"] == 4
    assert [float(opt.state[p]["step"]) for p in (params[0], params[2])] == [2.0, 1.0]


@pytest.mark.parametrize("name,kw", ALL)
def test_param_without_grad_is_untouched_and_has_no_state(name, kw):
    params = make_params()
    opt = getattr(gn.optim, name)(params, **kw)
    before = snapshot(params)
    train(opt, params, steps=3, which=[0, 2, 3])
    assert np.array_equal(params[1].data, before[1])
    if name == "Adagrad":  # its state exists from construction (as torch's): it stays at step 0
        assert float(opt.state[params[1]]["step"]) == 0 and float(opt.state_dict()["state"][1]["step"]) == 0
    else:
        assert params[1] not in opt.state and 1 not in opt.state_dict()["state"]
    for i in (0, 2, 3):
        assert not np.array_equal(params[i].data, before[i]) or before[i].size == 0
        assert params[i] in opt.state


def test_state_entries_are_views_of_the_flat_state():
    params = make_params()
    opt = gn.optim.Adam(params, lr=0.1, amsgrad=True)
    train(opt, params, steps=2)
    fg = opt._flat[0]
    for i, p in enumerate(params):
        st = opt.state[p]
        assert set(st) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
        assert float(st["step"]) == 2.0
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert st[key].shape == p.shape and np.shares_memory(st[key], fg.bufs[key])
    # in-place edits of a state view are what the next step uses (as in PyTorch)
    opt.state[params[0]]["exp_avg"][...] = 0
    assert not fg.bufs["exp_avg"][:12].any()


def test_grad_set_by_hand_is_used():
    """A .grad that is not the buffer's view (assigned by the user) is copied in, not ignored."""
    rng = np.random.default_rng(5)
    a, b = make_params(1), make_params(1)
    grads = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    oa, ob = gn.optim.Adam(a, lr=0.1), gn.optim.Adam(b, lr=0.1)
    for p, g in zip(a, grads):
        p.grad = gn.Tensor(g.copy())
    for p, gv, g in zip(b, ob._flat[0].gviews, grads):
        gv[...] = g
        p.grad = gn.Tensor(gv)
    oa.step()
    ob.step()
    for p, q in zip(a, b):
        assert np.array_equal(p.data, q.data)
    assert not np.shares_memory(a[0].grad.data, oa._flat[0].grad)  # the user's array was not rebound


def test_grads_accumulate_over_two_backwards_without_zero_grad():
    params = make_params()
    opt = gn.optim.SGD(params, lr=0.5)
    before = snapshot(params)
    quad_backward(params)
    quad_backward(params)
    opt.step()
    for i, (p, b) in enumerate(zip(params, before)):
        np.testing.assert_allclose(p.data, b - 0.5 * 2 * (2 * (i + 1) * b), rtol=1e-5, atol=1e-6)


def test_zero_grad_to_none_and_in_place():
    params = make_params()
    opt = gn.optim.SGD(params, lr=0.1)
    quad_backward(params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    quad_backward(params, which=[0, 1])
    held = params[0].grad
    opt.zero_grad(set_to_none=False)
    assert params[0].grad is held and not held.data.any() and not params[1].grad.data.any()
    assert params[2].grad is None  # never had a gradient: stays None, as in PyTorch
    user = gn.Tensor(np.ones(4, np.float32))
    params[1].grad = user
    opt.zero_grad(set_to_none=False)
    assert params[1].grad is user and not user.data.any()


def test_closure_is_evaluated_and_its_loss_returned():
    params = make_params()
    opt = gn.optim.SGD(params, lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (params[0] * params[0]).sum()
        loss.backward()
        return loss

    before = params[0].data.copy()
    loss = opt.step(closure)
    assert float(loss.item()) == pytest.approx(float((before * before).sum()), rel=1e-6)
    np.testing.assert_allclose(params[0].data, before * (1 - 0.2), rtol=1e-6)


def test_reference_and_fused_kernels_agree():
    a, b = make_params(2), make_params(2)
    oa = gn.optim.RMSprop(a, lr=0.05, momentum=0.5, centered=True, weight_decay=0.1)
    ob = gn.optim.RMSprop(b, lr=0.05, momentum=0.5, centered=True, weight_decay=0.1)
    train(oa, a, steps=5)
    with use_kernels("reference"):
        train(ob, b, steps=5)
    for p, q in zip(a, b):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- re-packing

def test_rebound_param_is_repacked_and_its_new_values_used():
    params = make_params()
    opt = gn.optim.Adam(params, lr=0.1)
    train(opt, params, steps=2)
    m0 = opt.state[params[1]]["exp_avg"].astype(np.float64)
    v0 = opt.state[params[1]]["exp_avg_sq"].astype(np.float64)
    new = np.full((4,), 3.0, np.float32)
    params[1].data = new.copy()
    opt.zero_grad()
    quad_backward(params)
    # the gradient of the rebound param was computed from its new values
    np.testing.assert_allclose(params[1].grad.data, 2 * 2 * new)
    opt.step()
    fg = opt._flat[0]
    assert all(p.data is v for p, v in zip(params, fg.views))
    assert np.shares_memory(params[1].data, fg.flat)
    assert float(opt.state[params[1]]["step"]) == 3.0
    # step 3 continued from the old state with the new values and their gradient
    g = 12.0
    m = 0.9 * m0 + 0.1 * g
    v = 0.999 * v0 + 0.001 * g * g
    expected = 3.0 - 0.1 / (1 - 0.9**3) * m / (np.sqrt(v) / np.sqrt(1 - 0.999**3) + 1e-8)
    np.testing.assert_allclose(opt.state[params[1]]["exp_avg"], m, rtol=1e-5)
    np.testing.assert_allclose(params[1].data, expected, rtol=1e-5)


def test_rebound_param_to_float64_repacks_group_in_float64():
    params = make_params()
    opt = gn.optim.SGD(params, lr=0.1, momentum=0.9)
    train(opt, params, steps=1)
    buf = opt.state[params[0]]["momentum_buffer"].copy()
    for p in params:
        p.data = p.data.astype(np.float64)
    train(opt, params, steps=1)
    fg = opt._flat[0]
    assert fg.flat.dtype == np.float64 and all(p.dtype == np.float64 for p in params)
    assert opt.state[params[0]]["momentum_buffer"].dtype == np.float64
    assert params[0].grad.dtype == np.float64 and params[0].grad.data is fg.gviews[0]
    assert not np.array_equal(opt.state[params[0]]["momentum_buffer"], buf)


def test_rebinding_one_param_to_another_dtype_is_refused_with_names():
    params = make_params()
    opt = gn.optim.SGD(params, lr=0.1)
    params[2].data = params[2].data.astype(np.float64)
    with pytest.raises(ValueError, match=r"parameter 2 .*float64"):
        opt.step()


def test_adagrad_initial_sum_follows_a_repack_and_a_new_group():
    """The sum starts at initial_accumulator_value; a parameter rebound (new shape, step 0) before
    its first step gets a fresh sum at that value; a group added later uses its own value."""
    params = make_params()
    opt = gn.optim.Adagrad(params[:3], lr=0.1, initial_accumulator_value=0.3)
    params[0].data = np.full((2, 2), 5.0, np.float32)
    for p in params[:3]:
        p.grad = gn.Tensor(np.ones(p.shape, np.float32))
    opt.step()
    np.testing.assert_allclose(opt.state[params[0]]["sum"], np.full((2, 2), 1.3), rtol=1e-6)
    np.testing.assert_allclose(params[0].data, 5.0 - 0.1 / np.sqrt(1.3), rtol=1e-6)
    opt.add_param_group({"params": [params[3]], "initial_accumulator_value": 2.0})
    assert float(opt.state[params[3]]["sum"]) == 2.0 and float(opt.state[params[3]]["step"]) == 0


def test_shape_change_after_state_is_refused():
    params = make_params()
    opt = gn.optim.Adam(params, lr=0.1)
    train(opt, params, steps=1)
    params[0].data = np.zeros((2, 2), np.float32)
    with pytest.raises(RuntimeError, match="parameter 0 changed shape"):
        opt.step()


@pytest.mark.skipif(not gn.gpu_status()[0], reason="needs a usable GPU (CuPy)")
def test_params_moved_to_gpu_take_their_state_along():
    import cupy

    params = make_params()
    opt = gn.optim.Adam(params, lr=0.1)
    train(opt, params, steps=2)
    m = [opt.state[p]["exp_avg"].copy() for p in params]
    for p in params:
        p.data = cupy.asarray(p.data)
    opt.zero_grad()
    quad_backward(params)
    opt.step()
    fg = opt._flat[0]
    assert type(fg.flat) is cupy.ndarray and type(fg.bufs["exp_avg"]) is cupy.ndarray
    assert params[0].grad.data is fg.gviews[0]
    got = cupy.asnumpy(opt.state[params[0]]["exp_avg"])
    assert not np.array_equal(got, m[0]) and float(opt.state[params[0]]["step"]) == 3.0


# ----------------------------------------------------------------------------- construction errors

def test_construction_errors():
    p = make_params()
    with pytest.raises(ValueError, match="empty parameter list"):
        gn.optim.SGD([])
    with pytest.raises(TypeError, match="iterable of Tensors"):
        gn.optim.SGD(p[0])
    with pytest.raises(TypeError, match="ordered collections"):
        gn.optim.SGD(set(p))
    with pytest.raises(TypeError, match="can only optimize Tensors"):
        gn.optim.SGD([np.zeros(3)])
    with pytest.raises(ValueError, match="duplicate parameters"):
        gn.optim.SGD([p[0], p[1], p[0]])
    with pytest.raises(ValueError, match="more than one parameter group"):
        gn.optim.SGD([{"params": [p[0]]}, {"params": [p[0], p[1]]}])
    nonleaf = p[0] * 2.0
    with pytest.raises(ValueError, match="non-leaf"):
        gn.optim.SGD([nonleaf])
    with pytest.raises(TypeError, match="float"):
        gn.optim.SGD([gn.Parameter(np.arange(3))])
    mixed = [gn.Parameter(np.zeros(3, np.float32)), gn.Parameter(np.zeros(2, np.float64))]
    with pytest.raises(ValueError, match=r"mixes dtypes.*parameter 1 .*float64"):
        gn.optim.Adam(mixed)
    gn.optim.Adam([{"params": mixed[:1]}, {"params": mixed[1:]}])  # separate groups are fine


INVALID = [
    ("SGD", dict(lr=-0.1), "lr"), ("SGD", dict(lr=float("nan")), "lr"), ("SGD", dict(momentum=-0.5), "momentum"),
    ("SGD", dict(weight_decay=-1e-4), "weight_decay"), ("SGD", dict(dampening=-0.1), "dampening"),
    ("SGD", dict(dampening=1.5), "dampening"), ("SGD", dict(nesterov=True), "Nesterov.*momentum"),
    ("SGD", dict(nesterov=True, momentum=0.9, dampening=0.1), "Nesterov.*dampening"),
    ("Adam", dict(lr=-1e-3), "lr"), ("Adam", dict(eps=-1e-8), "eps"), ("Adam", dict(betas=(1.0, 0.999)), r"betas\[0\]"),
    ("Adam", dict(betas=(0.9, -0.1)), r"betas\[1\]"), ("Adam", dict(betas=(0.9, 1.5)), r"betas\[1\]"),
    ("Adam", dict(betas=(0.9,)), "betas"), ("Adam", dict(weight_decay=-0.1), "weight_decay"),
    ("AdamW", dict(weight_decay=-0.01), "weight_decay"), ("AdamW", dict(betas=(-0.1, 0.9)), r"betas\[0\]"),
    ("RMSprop", dict(lr=-0.01), "lr"), ("RMSprop", dict(alpha=-0.5), "alpha"), ("RMSprop", dict(alpha=1.5), "alpha"),
    ("RMSprop", dict(eps=-1.0), "eps"), ("RMSprop", dict(momentum=-0.1), "momentum"),
    ("RMSprop", dict(weight_decay=-0.1), "weight_decay"),
    ("Adagrad", dict(lr=-0.01), "Invalid learning rate.*lr"), ("Adagrad", dict(lr_decay=-0.1), "lr_decay"),
    ("Adagrad", dict(weight_decay=-0.1), "weight_decay"), ("Adagrad", dict(eps=-1e-10), "eps"),
    ("Adagrad", dict(initial_accumulator_value=-1.0), "initial_accumulator_value"),
]


@pytest.mark.parametrize("name,kw,match", INVALID, ids=[f"{n}-{m}-{list(k.values())}" for n, k, m in INVALID])
def test_invalid_hyperparameters_raise_value_error_naming_them(name, kw, match):
    with pytest.raises(ValueError, match=match):
        getattr(gn.optim, name)(make_params(), **kw)


def test_hyperparameter_of_the_wrong_type_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="lr must be a number, got str"):
        gn.optim.Adagrad(make_params(), lr="0.1")


def test_invalid_group_option_is_refused_too():
    p = make_params()
    with pytest.raises(ValueError, match="lr"):
        gn.optim.SGD([{"params": p[:2]}, {"params": p[2:], "lr": -1.0}], lr=0.1)
    opt = gn.optim.Adam(p[:2])
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        opt.add_param_group({"params": p[2:], "betas": (0.9, 1.0)})
    assert len(opt.param_groups) == 1 and len(opt._flat) == 1
    with pytest.raises(TypeError, match="lr must be a number"):
        gn.optim.SGD(p, lr="0.1")


def test_add_param_group_fills_defaults_and_steps_the_new_group():
    p = make_params()
    opt = gn.optim.SGD(p[:2], lr=0.1, momentum=0.9)
    opt.add_param_group({"params": p[2:], "lr": 0.01})
    g = opt.param_groups[1]
    assert g["lr"] == 0.01 and g["momentum"] == 0.9 and g["params"][0] is p[2]
    before = snapshot(p)
    train(opt, p, steps=1)
    for i in (0, 1):
        np.testing.assert_allclose(p[i].data, before[i] - 0.1 * 2 * (i + 1) * before[i], rtol=1e-5, atol=1e-7)
    for i in (2, 3):
        np.testing.assert_allclose(p[i].data, before[i] - 0.01 * 2 * (i + 1) * before[i], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- state dict

def test_state_dict_layout_matches_pytorch():
    p = make_params()
    opt = gn.optim.Adam([{"params": p[:2]}, {"params": p[2:], "lr": 0.5}], lr=0.1, amsgrad=True)
    train(opt, p, steps=2, which=[0, 2, 3])
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2, 3]]
    assert sd["param_groups"][1]["lr"] == 0.5 and sd["param_groups"][0]["betas"] == (0.9, 0.999)
    assert set(sd["state"]) == {0, 2, 3}  # parameter 1 never had a gradient
    st = sd["state"][2]
    assert set(st) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert isinstance(st["exp_avg"], gn.Tensor) and st["exp_avg"].shape == SHAPES[2]
    assert float(st["step"].item()) == 2.0 and st["step"].dtype == np.float32
    # values are copies: editing them does not change the optimizer
    st["exp_avg"].data[...] = 123.0
    assert not np.any(opt.state[p[2]]["exp_avg"] == 123.0)
    # SGD keeps no step, only its momentum buffers
    sgd = gn.optim.SGD(p, lr=0.1, momentum=0.9)
    train(sgd, p, steps=1)
    assert set(sgd.state_dict()["state"][0]) == {"momentum_buffer"}
    assert gn.optim.SGD(p, lr=0.1).state_dict()["state"] == {}


def test_load_state_dict_accepts_numpy_and_restores_options():
    p, q = make_params(), make_params()
    opt = gn.optim.RMSprop(p, lr=0.05, momentum=0.5, centered=True)
    train(opt, p, steps=3)
    sd = opt.state_dict()
    as_np = {"state": {str(k): {n: v.numpy() for n, v in s.items()} for k, s in sd["state"].items()},
             "param_groups": sd["param_groups"]}
    for a, b in zip(q, p):
        a.data[...] = b.data
    other = gn.optim.RMSprop(q, lr=1.0)
    other.load_state_dict(as_np)
    assert other.param_groups[0]["lr"] == 0.05 and other.param_groups[0]["centered"] is True
    assert other.param_groups[0]["params"][0] is q[0]
    train(opt, p, steps=2)
    train(other, q, steps=2)
    for a, b in zip(p, q):
        assert np.array_equal(a.data, b.data)


def test_load_state_dict_is_copied_not_aliased():
    p = make_params()
    opt = gn.optim.Adam(p, lr=0.1)
    train(opt, p, steps=1)
    sd = opt.state_dict()
    opt.load_state_dict(sd)
    sd["state"][0]["exp_avg"].data[...] = 7.0
    assert not np.any(opt.state[p[0]]["exp_avg"] == 7.0)


def _sd(opt_name="Adam", steps=1):
    p = make_params()
    opt = getattr(gn.optim, opt_name)(p, lr=0.1)
    train(opt, p, steps=steps)
    return opt.state_dict()


LOAD_ERRORS = [
    (lambda sd: {"state": sd["state"]}, "'state' and 'param_groups'"),
    (lambda sd: {**sd, "param_groups": sd["param_groups"] * 2}, "different number of parameter groups"),
    (lambda sd: {**sd, "param_groups": [{**sd["param_groups"][0], "params": [0, 1, 2]}]},
     "doesn't match the size"),
    (lambda sd: {**sd, "state": {**sd["state"], 0: {**sd["state"][0], "exp_avg": np.zeros((3, 4), np.float32)}}},
     r"parameter 0: 'exp_avg' has shape \(3, 4\) but the parameter has shape \(4, 3\)"),
    (lambda sd: {**sd, "state": {**sd["state"], 1: {k: v for k, v in sd["state"][1].items() if k != "step"}}},
     "no 'step'"),
    (lambda sd: {**sd, "state": {**sd["state"], 1: {**sd["state"][1], "momentum_buffer": np.zeros(4, np.float32)}}},
     "'momentum_buffer' that Adam does not use"),
    (lambda sd: {**sd, "state": {**sd["state"], 9: sd["state"][0]}}, "parameter 9"),
    (lambda sd: {**sd, "state": {**sd["state"], 1: {k: v for k, v in sd["state"][1].items() if k != "exp_avg"}}},
     "lacks 'exp_avg'"),
    (lambda sd: {**sd, "state": {**sd["state"], 0: {**sd["state"][0], "step": np.array([1.0, 2.0])}}},
     "'step' must be a number"),
    (lambda sd: {**sd, "param_groups": [{**sd["param_groups"][0], "lr": -1.0}]}, "lr"),
]


@pytest.mark.parametrize("edit,match", LOAD_ERRORS)
def test_load_state_dict_errors_are_clear_and_change_nothing(edit, match):
    p = make_params()
    opt = gn.optim.Adam(p, lr=0.1)
    train(opt, p, steps=1)
    before = {k: v.numpy().copy() for k, v in opt.state_dict()["state"][0].items()}
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(edit(_sd()))
    after = opt.state_dict()["state"][0]
    for k, v in before.items():
        assert np.array_equal(after[k].numpy(), v)
    assert opt.param_groups[0]["lr"] == 0.1


def test_load_torch_style_sgd_state_with_none_buffer():
    p = make_params()
    opt = gn.optim.SGD(p, lr=0.1, momentum=0.9)
    sd = {"state": {0: {"momentum_buffer": None}, 1: {"momentum_buffer": np.ones(4, np.float32)}},
          "param_groups": [{"lr": 0.1, "momentum": 0.9, "dampening": 0, "weight_decay": 0, "nesterov": False,
                            "maximize": False, "foreach": None, "params": [0, 1, 2, 3]}]}
    opt.load_state_dict(sd)
    assert p[0] not in opt.state and np.array_equal(opt.state[p[1]]["momentum_buffer"], np.ones(4))
    before = p[1].data.copy()
    train(opt, p, steps=1, which=[1])
    np.testing.assert_allclose(opt.state[p[1]]["momentum_buffer"], 0.9 + 2 * 2 * before, rtol=1e-6)


# ----------------------------------------------------------------------------- misc

def test_exports_and_repr():
    for name in ("Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "lr_scheduler"):
        assert hasattr(gn.optim, name)
    assert issubclass(gn.optim.AdamW, gn.optim.Adam) and issubclass(gn.optim.SGD, Optimizer)
    opt = gn.optim.AdamW(make_params(), lr=0.1)
    text = repr(opt)
    assert text.startswith("AdamW (") and "Parameter Group 0" in text and "weight_decay: 0.01" in text
    assert opt.defaults["decoupled_weight_decay"] is True


def test_deepcopy_gives_an_independent_working_optimizer():
    import copy

    params = make_params()
    opt = gn.optim.Adam(params, lr=0.1)
    train(opt, params, steps=2)
    twin = copy.deepcopy(opt)
    tparams = twin.param_groups[0]["params"]
    assert tparams[0] is not params[0] and np.array_equal(tparams[0].data, params[0].data)
    assert np.shares_memory(tparams[0].data, twin._flat[0].flat)
    assert np.shares_memory(twin.state[tparams[0]]["exp_avg"], twin._flat[0].bufs["exp_avg"])
    before = snapshot(params)
    train(twin, tparams, steps=2)
    train(opt, params, steps=2)
    for a, b, c in zip(params, tparams, before):
        assert np.array_equal(a.data, b.data) and (c.size == 0 or not np.array_equal(a.data, c))


def test_grad_of_another_dtype_or_shape_is_refused():
    params = make_params()
    opt = gn.optim.SGD(params, lr=0.1)
    params[0].grad = gn.Tensor(np.ones((4, 3), np.float64))
    with pytest.raises(TypeError, match=r"parameter 0 is float32 .*\.grad is float64"):
        opt.step()
    params[0].grad = gn.Tensor(np.ones((3, 4), np.float32))
    with pytest.raises(RuntimeError, match=r"parameter 0 has shape \(4, 3\) but its .grad has shape \(3, 4\)"):
        opt.step()
