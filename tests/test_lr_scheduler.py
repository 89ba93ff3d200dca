"""gpunn.optim.lr_scheduler: every schedule's learning rates over 3*T steps equal torch's and the
closed forms of numerics.md; state_dict round trips; invalid arguments raise ValueError. The
comparisons with torch skip when it is absent; the rest run without it."""
from __future__ import annotations

import math

import numpy as np
import pytest

import gpunn as gn
from gpunn.optim import lr_scheduler as S
from torch_util import requires_torch, torch

TS = torch.optim.lr_scheduler if torch is not None else None

T = 6
BASE = (0.1, 0.03)  # two param groups with different base rates


def gpunn_opt(cls=gn.optim.SGD):
    p = [gn.Parameter(np.ones(3, np.float32)), gn.Parameter(np.ones(2, np.float32))]
    return cls([{"params": p[:1], "lr": BASE[0]}, {"params": p[1:], "lr": BASE[1]}], lr=BASE[0])


def torch_opt():
    p = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    return torch.optim.SGD([{"params": p[:1], "lr": BASE[0]}, {"params": p[1:], "lr": BASE[1]}], lr=BASE[0])


def lrs_over(sched, opt, steps):
    """The rates after construction and after each of `steps` step() calls: lrs[t][group]."""
    out = [[g["lr"] for g in opt.param_groups]]
    assert out[0] == list(sched.get_last_lr())
    for _ in range(steps):
        opt.step()
        sched.step()
        out.append([g["lr"] for g in opt.param_groups])
        assert out[-1] == list(sched.get_last_lr())
    return np.array(out)


def closed(fn, steps=3 * T):
    return np.array([[fn(b, t) for b in BASE] for t in range(steps + 1)])


# each case: name, gpunn factory, torch factory, closed form (base, t) -> lr or None
def _cosine(b, t, tmax=T, eta=0.001):
    return eta + (b - eta) * (1 + math.cos(math.pi * t / tmax)) / 2


def _warm_restarts(b, t, t0=2, mult=2, eta=0.0):
    t_cur, t_i = 0, t0
    for _ in range(t):
        t_cur += 1
        if t_cur >= t_i:
            t_cur -= t_i
            t_i *= mult
    return eta + (b - eta) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


CASES = [
    ("StepLR", lambda o: S.StepLR(o, step_size=4, gamma=0.5), lambda o: TS.StepLR(o, step_size=4, gamma=0.5),
     lambda b, t: b * 0.5 ** (t // 4)),
    ("MultiStepLR", lambda o: S.MultiStepLR(o, [2, 5, 5, 11], gamma=0.3),
     lambda o: TS.MultiStepLR(o, [2, 5, 5, 11], gamma=0.3),
     lambda b, t: b * 0.3 ** sum(m <= t for m in [2, 5, 5, 11])),
    ("ExponentialLR", lambda o: S.ExponentialLR(o, gamma=0.8), lambda o: TS.ExponentialLR(o, gamma=0.8),
     lambda b, t: b * 0.8 ** t),
    ("LinearLR", lambda o: S.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=T),
     lambda o: TS.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=T),
     lambda b, t: b * (0.1 + 0.9 * min(t, T) / T)),
    ("LinearLR-defaults", lambda o: S.LinearLR(o), lambda o: TS.LinearLR(o),
     lambda b, t: b * (1 / 3 + (2 / 3) * min(t, 5) / 5)),
    ("LinearLR-decay", lambda o: S.LinearLR(o, start_factor=1.0, end_factor=0.2, total_iters=T),
     lambda o: TS.LinearLR(o, start_factor=1.0, end_factor=0.2, total_iters=T),
     lambda b, t: b * (1.0 - 0.8 * min(t, T) / T)),
    ("CosineAnnealingLR", lambda o: S.CosineAnnealingLR(o, T_max=T, eta_min=0.001),
     lambda o: TS.CosineAnnealingLR(o, T_max=T, eta_min=0.001), _cosine),
    ("CosineAnnealingWarmRestarts", lambda o: S.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=2),
     lambda o: TS.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=2), _warm_restarts),
    ("CosineAnnealingWarmRestarts-1", lambda o: S.CosineAnnealingWarmRestarts(o, T_0=4, eta_min=0.01),
     lambda o: TS.CosineAnnealingWarmRestarts(o, T_0=4, eta_min=0.01),
     lambda b, t: 0.01 + (b - 0.01) * (1 + math.cos(math.pi * (t % 4) / 4)) / 2),
    ("SequentialLR", lambda o: S.SequentialLR(o, [S.LinearLR(o, start_factor=0.1, total_iters=3),
                                                  S.CosineAnnealingLR(o, T_max=T, eta_min=0.001)], milestones=[3]),
     lambda o: TS.SequentialLR(o, [TS.LinearLR(o, start_factor=0.1, total_iters=3),
                                   TS.CosineAnnealingLR(o, T_max=T, eta_min=0.001)], milestones=[3]),
     lambda b, t: b * (0.1 + 0.9 * t / 3) if t < 3 else _cosine(b, t - 3)),
    ("LambdaLR", lambda o: S.LambdaLR(o, lambda t: 1.0 / (1 + t)), lambda o: TS.LambdaLR(o, lambda t: 1.0 / (1 + t)),
     lambda b, t: b / (1 + t)),
    ("MultiplicativeLR", lambda o: S.MultiplicativeLR(o, lambda t: 0.9), lambda o: TS.MultiplicativeLR(o, lambda t: 0.9),
     lambda b, t: b * 0.9 ** t),
    ("ConstantLR", lambda o: S.ConstantLR(o, factor=0.5, total_iters=4),
     lambda o: TS.ConstantLR(o, factor=0.5, total_iters=4), lambda b, t: b * (0.5 if t < 4 else 1.0)),
    ("PolynomialLR", lambda o: S.PolynomialLR(o, total_iters=T, power=2.0),
     lambda o: TS.PolynomialLR(o, total_iters=T, power=2.0), lambda b, t: b * (1 - min(t, T) / T) ** 2),
    ("ChainedScheduler", lambda o: S.ChainedScheduler([S.ConstantLR(o, factor=0.5, total_iters=3),
                                                       S.ExponentialLR(o, gamma=0.9)]),
     lambda o: TS.ChainedScheduler([TS.ConstantLR(o, factor=0.5, total_iters=3), TS.ExponentialLR(o, gamma=0.9)]),
     lambda b, t: b * (0.5 if t < 3 else 1.0) * 0.9 ** t),
]


@requires_torch
@pytest.mark.parametrize("name,make,make_torch,formula", CASES, ids=[c[0] for c in CASES])
def test_rates_over_three_periods_equal_torch_and_the_closed_form(name, make, make_torch, formula):
    opt, topt = gpunn_opt(), torch_opt()
    ours = lrs_over(make(opt), opt, 3 * T)
    theirs = lrs_over(make_torch(topt), topt, 3 * T)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ours, closed(formula), rtol=1e-9, atol=1e-15)
    assert all(g["initial_lr"] == b for g, b in zip(opt.param_groups, BASE))


def test_cosine_is_not_clamped_after_t_max():
    opt = gpunn_opt()
    lrs = lrs_over(S.CosineAnnealingLR(opt, T_max=T), opt, 2 * T)[:, 0]
    assert lrs[T] == pytest.approx(0.0, abs=1e-15) and lrs[2 * T] == pytest.approx(BASE[0], rel=1e-9)
    assert np.all(np.diff(lrs[T:]) > 0)  # rises again


@requires_torch
def test_warm_restarts_fractional_epochs_equal_torch():
    opt, topt = gpunn_opt(), torch_opt()
    ours = S.CosineAnnealingWarmRestarts(opt, T_0=3, T_mult=2, eta_min=0.001)
    theirs = TS.CosineAnnealingWarmRestarts(topt, T_0=3, T_mult=2, eta_min=0.001)
    iters = 5
    got, want = [], []
    for epoch in range(12):
        for i in range(iters):
            e = epoch + i / iters
            ours.step(e)
            theirs.step(e)
            got.append(ours.get_last_lr())
            want.append(theirs.get_last_lr())
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # restarts at epochs 3 and 3 + 6 = 9: back to the base rate there
    assert got[3 * iters] == pytest.approx(list(BASE)) and got[9 * iters] == pytest.approx(list(BASE))
    assert ours.T_i == 12 and ours.last_epoch == 11
    with pytest.raises(ValueError, match="non-negative epoch"):
        ours.step(-1)


def test_sequential_warmup_then_cosine_hands_over_at_the_milestone():
    opt = gpunn_opt()
    warm = 4
    sched = S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.25, total_iters=warm),
                                 S.CosineAnnealingLR(opt, T_max=10)], milestones=[warm])
    lrs = lrs_over(sched, opt, warm + 10)[:, 0]
    np.testing.assert_allclose(lrs[:warm], [BASE[0] * (0.25 + 0.75 * t / warm) for t in range(warm)], rtol=1e-12)
    assert lrs[warm] == pytest.approx(BASE[0], rel=1e-12)  # the cosine starts at its own t = 0
    np.testing.assert_allclose(lrs[warm:], [_cosine(BASE[0], t, 10, 0.0) for t in range(11)], rtol=1e-9, atol=1e-15)


def test_scheduler_drives_the_optimizer_updates():
    p = gn.Parameter(np.zeros(1, np.float32))
    opt = gn.optim.SGD([p], lr=1.0)
    sched = S.StepLR(opt, step_size=1, gamma=0.5)
    moves = []
    for _ in range(3):
        before = float(p.data[0])
        p.grad = gn.Tensor(np.ones(1, np.float32))
        opt.step()
        sched.step()
        moves.append(before - float(p.data[0]))
    assert moves == [1.0, 0.5, 0.25]


@pytest.mark.parametrize("name,make,make_torch,formula", CASES, ids=[c[0] for c in CASES])
def test_state_dict_round_trip(name, make, make_torch, formula):
    """Save after 5 steps; a fresh optimizer + scheduler loads both states and continues exactly."""
    opt = gpunn_opt()
    sched = make(opt)
    lrs_over(sched, opt, 5)
    sd = sched.state_dict()
    assert "optimizer" not in sd and all("optimizer" not in s for s in sd.get("_schedulers", []))
    if name != "ChainedScheduler":
        assert sd["last_epoch"] == 5
    osd = opt.state_dict()
    opt2 = gpunn_opt()
    sched2 = make(opt2)
    opt2.load_state_dict(osd)
    sched2.load_state_dict(sd)
    assert sched2.get_last_lr() == sched.get_last_lr()
    np.testing.assert_array_equal(lrs_over(sched2, opt2, 2 * T), lrs_over(sched, opt, 2 * T))


def test_lambda_state_dict_keeps_callable_objects_state_but_not_functions():
    class Decay:
        def __init__(self):
            self.rate = 0.5

        def __call__(self, t):
            return self.rate ** t

    opt = gpunn_opt()
    sched = S.LambdaLR(opt, [Decay(), lambda t: 1.0])
    sched.lr_lambdas[0].rate = 0.25
    sd = sched.state_dict()
    assert sd["lr_lambdas"] == [{"rate": 0.25}, None] and "optimizer" not in sd
    opt2 = gpunn_opt()
    sched2 = S.LambdaLR(opt2, [Decay(), lambda t: 1.0])
    sched2.load_state_dict(sd)
    assert sched2.lr_lambdas[0].rate == 0.25
    sched2.step()
    assert sched2.get_last_lr()[0] == pytest.approx(BASE[0] * 0.25)


@requires_torch
def test_reduce_on_plateau_equals_torch():
    metrics = [1.0, 0.9, 0.9, 0.91, 0.95, 0.89, 0.9, 0.9, 0.9, 0.9, 0.5, 0.6, 0.6, 0.6, 0.6]
    for kw in (dict(patience=1), dict(mode="max", patience=0, factor=0.5, cooldown=2, min_lr=0.01),
               dict(threshold_mode="abs", threshold=0.05, patience=1, min_lr=[0.02, 0.0])):
        opt, topt = gpunn_opt(), torch_opt()
        ours, theirs = S.ReduceLROnPlateau(opt, **kw), TS.ReduceLROnPlateau(topt, **kw)
        got, want = [], []
        for m in metrics:
            ours.step(m)
            theirs.step(m)
            got.append(ours.get_last_lr())
            want.append(theirs.get_last_lr())
        assert got == want, kw
        assert got[-1] != got[0]


def test_resuming_needs_initial_lr():
    opt = gpunn_opt()
    with pytest.raises(KeyError, match="initial_lr"):
        S.StepLR(opt, step_size=2, last_epoch=3)
    S.StepLR(opt, step_size=2)
    resumed = S.StepLR(opt, step_size=2, last_epoch=3)
    assert resumed.last_epoch == 4 and resumed.base_lrs == list(BASE)


INVALID = [
    (lambda o: S.StepLR(o, step_size=0), "step_size"), (lambda o: S.StepLR(o, step_size=2.5), "step_size"),
    (lambda o: S.StepLR(o, step_size=2, gamma=-0.1), "gamma"), (lambda o: S.MultiStepLR(o, [2, -1]), "milestone"),
    (lambda o: S.MultiStepLR(o, 3), "milestones"), (lambda o: S.ExponentialLR(o, gamma=0.0), "gamma"),
    (lambda o: S.LinearLR(o, start_factor=0.0), "start_factor"), (lambda o: S.LinearLR(o, start_factor=1.5),
                                                                   "start_factor"),
    (lambda o: S.LinearLR(o, end_factor=-0.5), "end_factor"), (lambda o: S.LinearLR(o, total_iters=0), "total_iters"),
    (lambda o: S.CosineAnnealingLR(o, T_max=0), "T_max"), (lambda o: S.CosineAnnealingLR(o, T_max=5, eta_min=-1),
                                                           "eta_min"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, T_0=0), "T_0"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=0), "T_mult"),
    (lambda o: S.CosineAnnealingWarmRestarts(o, T_0=2.5), "T_0"),
    (lambda o: S.ConstantLR(o, factor=1.5), "factor"), (lambda o: S.PolynomialLR(o, total_iters=0), "total_iters"),
    (lambda o: S.SequentialLR(o, [S.ExponentialLR(o, 0.9), S.ExponentialLR(o, 0.5)], milestones=[]), "milestone"),
    (lambda o: S.SequentialLR(o, [S.ExponentialLR(o, 0.9), S.ExponentialLR(o, 0.5), S.ExponentialLR(o, 0.5)],
                              milestones=[4, 2]), "increasing"),
    (lambda o: S.SequentialLR(o, [S.ExponentialLR(gpunn_opt(), 0.9), S.ExponentialLR(o, 0.5)], milestones=[2]),
     "same optimizer"),
    (lambda o: S.SequentialLR(o, [], milestones=[]), "at least one"),
    (lambda o: S.LambdaLR(o, [lambda t: 1.0]), "lr_lambdas"),
    (lambda o: S.ReduceLROnPlateau(o, factor=1.0), "factor"), (lambda o: S.ReduceLROnPlateau(o, mode="up"), "mode"),
    (lambda o: S.ReduceLROnPlateau(o, threshold_mode="x"), "threshold_mode"),
    (lambda o: S.ReduceLROnPlateau(o, min_lr=[0.1]), "min_lrs"), (lambda o: S.StepLR(o, 2, last_epoch=-2), "last_epoch"),
]


@pytest.mark.parametrize("make,match", INVALID, ids=[m for _, m in INVALID])
def test_invalid_arguments_raise_value_error(make, match):
    opt = gpunn_opt()
    with pytest.raises(ValueError, match=match):
        make(opt)


def test_non_optimizer_and_non_callable_are_type_errors():
    with pytest.raises(TypeError, match="not an Optimizer"):
        S.StepLR(object(), step_size=2)
    with pytest.raises(TypeError, match="lr_lambda should be a function"):
        S.LambdaLR(gpunn_opt(), 0.5)


def test_works_with_every_optimizer():
    for cls in (gn.optim.SGD, gn.optim.Adam, gn.optim.AdamW, gn.optim.RMSprop, gn.optim.Adagrad):
        opt = gpunn_opt(cls)
        sched = S.ExponentialLR(opt, gamma=0.5)
        sched.step()
        assert [g["lr"] for g in opt.param_groups] == [BASE[0] * 0.5, BASE[1] * 0.5]
