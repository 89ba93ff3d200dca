"""gpunn.optim against torch.optim: every optimizer, every option combination, 10 steps.

Both libraries start from the same parameters and minimise (or, with maximize, ascend) the same
smooth objective through their own autograd, so gradients change every step and depend on the
parameters each library has reached. Parameters and optimizer state are compared after every
step with PyTorch's own float32 tolerances (rtol 1.3e-6, atol 1e-5) or float64 ones (1e-7).
The tests run on every backend present (reference and fused kernels; the GPU ones where CuPy runs).
Those that compare with torch skip when it is absent; the rest run without it.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import gpunn as gn
from gpunn import functional as F
from torch_util import requires_torch, torch

TOL = {np.float32: dict(rtol=1.3e-6, atol=1e-5), np.float64: dict(rtol=1e-7, atol=1e-7)}
# State buffers such as RMSprop's momentum (a sum of g / sqrt(v)) amplify the last-bit differences
# between the two autograd engines' gradients; parameters (scaled by lr) stay within TOL.
STATE_TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-7, atol=1e-7)}
SHAPES = [(5, 3), (5,), (2, 3, 4), ()]
STATE_KEYS = {"SGD": ("momentum_buffer",), "Adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
              "AdamW": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
              "RMSprop": ("square_avg", "momentum_buffer", "grad_avg"), "Adagrad": ("sum",)}


def _problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    coef = [rng.uniform(0.5, 2.0, s).astype(dtype) for s in SHAPES]
    target = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    return init, coef, target


class Pair:
    """The same parameters in gpunn (on `backend`) and in torch, and the objective for both:
    sum_i 0.5 * c_i * (p_i - t_i)^2 + tanh(p_i)."""

    def __init__(self, backend, dtype=np.float32, seed=0):
        self.backend = backend
        self.dtype = dtype
        init, coef, target = _problem(dtype, seed)
        self.gp = [gn.Parameter(backend.asarray(a.copy())) for a in init]
        self.tp = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
        self.gc = [gn.Tensor(backend.asarray(c)) for c in coef]
        self.gt = [gn.Tensor(backend.asarray(t)) for t in target]
        self.tc = [torch.from_numpy(c) for c in coef]
        self.tt = [torch.from_numpy(t) for t in target]

    def gpunn_backward(self, which=None):
        loss = None
        for i, (p, c, t) in enumerate(zip(self.gp, self.gc, self.gt)):
            if which is not None and i not in which:
                continue
            d = p - t
            term = (d * d * c * 0.5).sum() + p.tanh().sum()
            loss = term if loss is None else loss + term
        loss.backward()

    def torch_backward(self, which=None):
        loss = sum(((p - t) ** 2 * c * 0.5).sum() + p.tanh().sum()
                   for i, (p, c, t) in enumerate(zip(self.tp, self.tc, self.tt)) if which is None or i in which)
        loss.backward()

    def take_torch_state(self, topt):
        """gpunn's parameters set to torch's; torch's optimizer state_dict with NumPy arrays."""
        for g, t in zip(self.gp, self.tp):
            g.data[...] = self.backend.asarray(t.detach().numpy())
        tsd = topt.state_dict()
        return {"state": {i: {k: v.numpy() for k, v in s.items()} for i, s in tsd["state"].items()},
                "param_groups": tsd["param_groups"]}

    def assert_params_close(self, what):
        for i, (g, t) in enumerate(zip(self.gp, self.tp)):
            np.testing.assert_allclose(self.backend.to_numpy(g.data), t.detach().numpy(), **TOL[self.dtype],
                                       err_msg=f"{what}: parameter {i}")

    def assert_state_close(self, gopt, topt, what):
        name = type(gopt).__name__
        for i, (g, t) in enumerate(zip(self.gp, self.tp)):
            gs, ts = gopt.state.get(g, {}), topt.state.get(t, {})
            for key in STATE_KEYS[name]:
                assert (key in gs) == (key in ts and ts[key] is not None), f"{what}: state key {key} of param {i}"
                if key in gs:
                    np.testing.assert_allclose(self.backend.to_numpy(gs[key]), ts[key].numpy(), **STATE_TOL[self.dtype],
                                               err_msg=f"{what}: state {key} of parameter {i}")
            if "step" in ts:
                assert float(gs["step"]) == float(ts["step"]), f"{what}: step of parameter {i}"


def run_both(pair, gopt, topt, steps=10, skip=None):
    """`steps` steps in both libraries; `skip(step)` gives the parameter indices left without a grad."""
    n = len(pair.gp)
    for k in range(steps):
        which = None if skip is None else [i for i in range(n) if i not in skip(k)]
        gopt.zero_grad()
        pair.gpunn_backward(which)
        gopt.step()
        topt.zero_grad()
        pair.torch_backward(which)
        topt.step()
        pair.assert_params_close(f"after step {k + 1}")
    pair.assert_state_close(gopt, topt, f"after {steps} steps")


# ----------------------------------------------------------------------------- option grids

def _sgd_grid():
    out = []
    for m, d, n, wd, mx in itertools.product([0.0, 0.9], [0.0, 0.3], [False, True], [0.0, 0.05], [False, True]):
        if n and (m == 0 or d != 0):
            continue
        out.append(dict(lr=0.05, momentum=m, dampening=d, nesterov=n, weight_decay=wd, maximize=mx))
    return out


def _adam_grid():
    # betas[1] = 0.6 lets v fall as gradients shrink, so amsgrad's max actually differs
    return [dict(lr=0.05, betas=(0.9, b2), amsgrad=a, weight_decay=wd, maximize=mx)
            for a, wd, mx, b2 in itertools.product([False, True], [0.0, 0.1], [False, True], [0.999, 0.6])]


def _rmsprop_grid():
    return [dict(lr=0.01, momentum=m, centered=c, weight_decay=wd, maximize=mx)
            for m, c, wd, mx in itertools.product([0.0, 0.5], [False, True], [0.0, 0.1], [False, True])]


def _adagrad_grid():
    return [dict(lr=0.05, lr_decay=ld, weight_decay=wd, initial_accumulator_value=iv, maximize=mx)
            for ld, wd, iv, mx in itertools.product([0.0, 0.05], [0.0, 0.1], [0.0, 0.1], [False, True])]


def _ids(grid):
    return ["-".join(f"{k}={v}" for k, v in kw.items() if k != "lr") for kw in grid]


CASES = ([("SGD", kw) for kw in _sgd_grid()] + [("Adam", kw) for kw in _adam_grid()]
         + [("AdamW", kw) for kw in _adam_grid()] + [("RMSprop", kw) for kw in _rmsprop_grid()]
         + [("Adagrad", kw) for kw in _adagrad_grid()])


def test_grid_covers_every_option():
    """The grids hit each option both ways (a guard against a grid that silently shrinks)."""
    for name, opts in (("SGD", ("momentum", "dampening", "nesterov", "weight_decay", "maximize")),
                       ("Adam", ("amsgrad", "weight_decay", "maximize")),
                       ("RMSprop", ("momentum", "centered", "weight_decay", "maximize")),
                       ("Adagrad", ("lr_decay", "weight_decay", "initial_accumulator_value", "maximize"))):
        kws = [kw for n, kw in CASES if n == name]
        for opt in opts:
            assert len({bool(kw[opt]) for kw in kws}) == 2, (name, opt)
    assert len(CASES) == 20 + 16 + 16 + 16 + 16


@requires_torch
@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{i}" for n, i in zip([c[0] for c in CASES], _ids([c[1] for c in CASES]))])
def test_ten_steps_equal_torch(backend, name, kw):
    pair = Pair(backend)
    with backend.activate():
        gopt = getattr(gn.optim, name)(pair.gp, **kw)
        topt = getattr(torch.optim, name)(pair.tp, **kw)
        run_both(pair, gopt, topt)
        assert gopt.state_dict()["param_groups"][0]["lr"] == kw["lr"]


@requires_torch
@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.05)),
                                     ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, maximize=True)),
                                     ("Adam", dict(lr=0.05, betas=(0.9, 0.6), amsgrad=True, weight_decay=0.1)),
                                     ("AdamW", dict(lr=0.05, weight_decay=0.1)),
                                     ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1)),
                                     ("Adagrad", dict(lr=0.05, lr_decay=0.05, weight_decay=0.1,
                                                      initial_accumulator_value=0.1))])
def test_float64_equal_torch(backend, name, kw):
    pair = Pair(backend, dtype=np.float64)
    with backend.activate():
        gopt = getattr(gn.optim, name)(pair.gp, **kw)
        topt = getattr(torch.optim, name)(pair.tp, **kw)
        run_both(pair, gopt, topt)
    assert pair.gp[0].dtype == np.float64


@requires_torch
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_defaults_equal_torch(backend, name):
    pair = Pair(backend)
    with backend.activate():
        gopt = getattr(gn.optim, name)(pair.gp)
        topt = getattr(torch.optim, name)(pair.tp)
        for key, value in topt.defaults.items():
            if key in gopt.defaults:
                assert gopt.defaults[key] == value, key
        run_both(pair, gopt, topt)


# ----------------------------------------------------------------------------- first steps

def test_first_adam_step_magnitude_is_lr_g_over_g_plus_eps(backend):
    g = np.array([3.0, -2.0, 1e-3, -1e-6, 1e-8, 2e-9, 0.0], dtype=np.float32)
    p = gn.Parameter(backend.asarray(np.ones_like(g)))
    lr, eps = 0.01, 1e-8
    with backend.activate():
        opt = gn.optim.Adam([p], lr=lr, eps=eps)
        p.grad = gn.Tensor(backend.asarray(g.copy()))
        opt.step()
    delta = backend.to_numpy(p.data).astype(np.float64) - 1.0
    expected = -lr * g / (np.abs(g) + eps)
    np.testing.assert_allclose(delta, expected, rtol=1e-4, atol=1e-9)
    # the size-independent part: |step| ~ lr for large gradients, tiny where |g| << eps
    assert np.all(np.abs(delta[:2]) > 0.99 * lr) and abs(delta[-1]) == 0.0


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_first_sgd_momentum_buffer_is_g(backend, wd):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    g = rng.standard_normal((3, 4)).astype(np.float32)
    p = gn.Parameter(backend.asarray(w.copy()))
    with backend.activate():
        opt = gn.optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.5, weight_decay=wd)
        p.grad = gn.Tensor(backend.asarray(g.copy()))
        opt.step()
    buf = backend.to_numpy(opt.state[p]["momentum_buffer"])
    np.testing.assert_allclose(buf, g + wd * w, rtol=1e-6, atol=1e-7)  # no dampening on the first step
    np.testing.assert_allclose(backend.to_numpy(p.data), w - 0.1 * (g + wd * w), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- groups, skipping, state

@requires_torch
def test_param_groups_with_different_options_equal_torch(backend):
    pair = Pair(backend)
    with backend.activate():
        gopt = gn.optim.SGD([{"params": pair.gp[:2]}, {"params": pair.gp[2:], "lr": 0.01, "momentum": 0.5}],
                            lr=0.1, momentum=0.9)
        topt = torch.optim.SGD([{"params": pair.tp[:2]}, {"params": pair.tp[2:], "lr": 0.01, "momentum": 0.5}],
                               lr=0.1, momentum=0.9)
        run_both(pair, gopt, topt)
        gopt2 = gn.optim.Adam([{"params": pair.gp[:1], "lr": 0.2}, {"params": pair.gp[1:]}], lr=0.02)
        topt2 = torch.optim.Adam([{"params": pair.tp[:1], "lr": 0.2}, {"params": pair.tp[1:]}], lr=0.02)
        run_both(pair, gopt2, topt2)
    assert [g["lr"] for g in gopt2.param_groups] == [0.2, 0.02]


@requires_torch
@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.05, momentum=0.9)), ("Adam", dict(lr=0.05)),
                                     ("AdamW", dict(lr=0.05, amsgrad=True)),
                                     ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True)),
                                     ("Adagrad", dict(lr=0.05, initial_accumulator_value=0.1))])
def test_param_without_grad_is_skipped_like_torch(backend, name, kw):
    """Parameter 1 gets no gradient on even steps, parameter 3 never: PyTorch skips them (no
    update, no state, no step count; Adagrad's state, made at construction, stays at step 0); so
    must gpunn, on its per-parameter fallback path."""
    pair = Pair(backend)
    never = backend.to_numpy(pair.gp[3].data).copy()
    with backend.activate():
        gopt = getattr(gn.optim, name)(pair.gp, **kw)
        topt = getattr(torch.optim, name)(pair.tp, **kw)
        run_both(pair, gopt, topt, skip=lambda k: {3} | ({1} if k % 2 == 0 else set()))
    assert np.array_equal(backend.to_numpy(pair.gp[3].data), never)
    if name == "Adagrad":
        assert float(gopt.state[pair.gp[3]]["step"]) == 0
        np.testing.assert_array_equal(backend.to_numpy(gopt.state[pair.gp[3]]["sum"]), np.float32(0.1))
    else:
        assert pair.gp[3] not in gopt.state
    if name != "SGD":
        assert float(gopt.state[pair.gp[1]]["step"]) == 5 and float(gopt.state[pair.gp[0]]["step"]) == 10


@requires_torch
@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
                                     ("Adam", dict(lr=0.05, betas=(0.9, 0.6), amsgrad=True)),
                                     ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True)),
                                     ("Adagrad", dict(lr=0.05, lr_decay=0.05, initial_accumulator_value=0.1))])
def test_state_dict_round_trip_continues_bit_identically(backend, name, kw):
    """Save after 5 steps, load into a fresh optimizer over copies of the parameters, take 5 more
    steps in both: bit-identical. Both also stay equal to torch doing the same."""
    pair = Pair(backend)
    with backend.activate():
        gopt = getattr(gn.optim, name)(pair.gp, **kw)
        topt = getattr(torch.optim, name)(pair.tp, **kw)
        run_both(pair, gopt, topt, steps=5)
        sd = gopt.state_dict()
        twin = Pair(backend)
        for q, p in zip(twin.gp, pair.gp):
            q.data[...] = p.data
        fresh = getattr(gn.optim, name)(twin.gp, lr=123.0)  # options come from the state dict
        fresh.load_state_dict(sd)
        assert fresh.param_groups[0]["lr"] == kw["lr"]
        tsd = topt.state_dict()
        topt2 = getattr(torch.optim, name)(pair.tp, **kw)
        topt2.load_state_dict(tsd)
        run_both(pair, gopt, topt2, steps=5)
        for _ in range(5):
            fresh.zero_grad()
            twin.gpunn_backward()
            fresh.step()
    for a, b in zip(pair.gp, twin.gp):
        assert np.array_equal(backend.to_numpy(a.data), backend.to_numpy(b.data))


@requires_torch
def test_torch_state_dict_loads_into_gpunn(backend):
    """A torch Adam state_dict, its tensors turned into NumPy arrays, continues in gpunn as in torch."""
    pair = Pair(backend)
    kw = dict(lr=0.05, betas=(0.9, 0.6), amsgrad=True, weight_decay=0.1)
    with backend.activate():
        topt = torch.optim.Adam(pair.tp, **kw)
        for _ in range(4):
            topt.zero_grad()
            pair.torch_backward()
            topt.step()
        as_numpy = pair.take_torch_state(topt)
        gopt = gn.optim.Adam(pair.gp)
        gopt.load_state_dict(as_numpy)
        assert gopt.param_groups[0]["amsgrad"] is True
        run_both(pair, gopt, topt, steps=6)


@requires_torch
def test_adagrad_state_dict_has_torchs_layout_and_loads_from_torch(backend):
    """Adagrad's state exists from construction (step 0, sum = initial_accumulator_value), so its
    state_dict lists every parameter, as torch's does; a torch state_dict (one parameter never
    stepped) loads into gpunn and both continue alike."""
    pair = Pair(backend)
    kw = dict(lr=0.05, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.1)
    with backend.activate():
        gopt, topt = gn.optim.Adagrad(pair.gp, **kw), torch.optim.Adagrad(pair.tp, **kw)
        mine, theirs = gopt.state_dict(), topt.state_dict()
        assert sorted(mine["state"]) == sorted(theirs["state"]) == [0, 1, 2, 3]
        for i, entry in theirs["state"].items():
            assert sorted(mine["state"][i]) == sorted(entry) == ["step", "sum"]
            assert float(mine["state"][i]["step"]) == 0.0
            np.testing.assert_array_equal(backend.to_numpy(mine["state"][i]["sum"].data), entry["sum"].numpy())
        run_both(pair, gopt, topt, steps=4, skip=lambda k: {3})
        as_numpy = pair.take_torch_state(topt)
        fresh = gn.optim.Adagrad(pair.gp)
        fresh.load_state_dict(as_numpy)
        assert fresh.param_groups[0]["lr_decay"] == 0.05
        assert [float(fresh.state[p]["step"]) for p in pair.gp] == [4.0, 4.0, 4.0, 0.0]
        run_both(pair, fresh, topt, steps=6)


@requires_torch
def test_adagrad_with_a_scheduler_equals_torch(backend):
    """lr changed by StepLR every 3 steps while lr_decay shrinks the step: both libraries alike."""
    pair = Pair(backend)
    kw = dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.05)
    with backend.activate():
        gopt, topt = gn.optim.Adagrad(pair.gp, **kw), torch.optim.Adagrad(pair.tp, **kw)
        gs = gn.optim.lr_scheduler.StepLR(gopt, step_size=3, gamma=0.5)
        ts = torch.optim.lr_scheduler.StepLR(topt, step_size=3, gamma=0.5)
        for _ in range(10):
            run_both(pair, gopt, topt, steps=1)
            gs.step()
            ts.step()
            assert gopt.param_groups[0]["lr"] == topt.param_groups[0]["lr"]
    assert gopt.param_groups[0]["lr"] == 0.1 * 0.5**3


@requires_torch
def test_mlp_with_fused_dense_equals_torch(backend):
    """A 4-parameter MLP (dense + tanh, dense, MSE): gradients come from the fused dense backward
    straight into the flat gradient buffer; Adam matches torch over 10 steps."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 8)).astype(np.float32)
    y = rng.standard_normal((16, 2)).astype(np.float32)
    init = [rng.standard_normal((12, 8)).astype(np.float32) * 0.3, np.zeros(12, np.float32),
            rng.standard_normal((2, 12)).astype(np.float32) * 0.3, np.zeros(2, np.float32)]
    gp = [gn.Parameter(backend.asarray(a.copy())) for a in init]
    tp = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    with backend.activate():
        gopt = gn.optim.Adam(gp, lr=0.01)
        topt = torch.optim.Adam(tp, lr=0.01)
        gx, gy = gn.tensor(backend.asarray(x)), gn.tensor(backend.asarray(y))
        losses = []
        for _ in range(10):
            gopt.zero_grad()
            h = F.dense(gx, gp[0], gp[1], activation="tanh")
            loss = F.mse_loss(F.dense(h, gp[2], gp[3], activation=None), gy)
            loss.backward()
            assert all(p.grad.data is v for p, v in zip(gp, gopt._flat[0].gviews))
            gopt.step()
            losses.append(float(loss.item()))
            topt.zero_grad()
            th = torch.tanh(torch.from_numpy(x) @ tp[0].T + tp[1])
            torch.nn.functional.mse_loss(th @ tp[2].T + tp[3], torch.from_numpy(y)).backward()
            topt.step()
            for a, b in zip(gp, tp):
                np.testing.assert_allclose(backend.to_numpy(a.data), b.detach().numpy(), rtol=1e-5, atol=1e-5)
    assert losses[-1] < losses[0]
