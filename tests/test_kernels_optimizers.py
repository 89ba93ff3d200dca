"""gpunn.kernels.optimizers: every `*_cpu` (Numba, made from the registry's update) equals the array-
expression reference in tests/references.py for every
option combination, in float32 and float64; neither writes what it must not (the gradient, unused
buffers, memory beside the arrays); both refuse bad arguments with a Python error; and the reference
follows the closed formulas of numerics.md computed independently here."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpunn.kernels import ops_for, registry, use_kernels
from gpunn.kernels import optimizers as K
import references as R

DTYPES = [np.float32, np.float64]
# cpu computes in float64 and rounds once; ref rounds after every float32 operation
TOL = {np.float32: dict(rtol=2e-6, atol=1e-6), np.float64: dict(rtol=1e-13, atol=1e-14)}
GUARD = 7  # elements of sentinel on each side of every array


def guarded(values, sentinel=-777.0):
    """`values` as the middle of a longer array whose ends hold a sentinel (to catch stray writes)."""
    big = np.full(values.size + 2 * GUARD, sentinel, dtype=values.dtype)
    big[GUARD:GUARD + values.size] = values
    return big, big[GUARD:GUARD + values.size]


def arrays(n, dtype, seed):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    # state of a run in progress: momenta of either sign, squared averages > 0
    s1 = rng.standard_normal(n).astype(dtype) * 0.1
    s2 = rng.uniform(0.01, 1.0, n).astype(dtype)
    s3 = rng.uniform(0.01, 1.0, n).astype(dtype)
    return p, g, s1, s2, s3


SGD_OPTS = [dict(momentum=m, dampening=d, nesterov=nv, weight_decay=wd, maximize=mx, first_step=fs)
            for m, d, nv, wd, mx, fs in itertools.product([0.0, 0.9], [0.0, 0.25], [False, True], [0.0, 0.1],
                                                            [False, True], [False, True])
            if not (nv and (m == 0 or d != 0))]
ADAM_OPTS = [dict(weight_decay=wd, decoupled=dc, amsgrad=a, maximize=mx, step=t)
             for wd, dc, a, mx, t in itertools.product([0.0, 0.1], [False, True], [False, True], [False, True], [1, 7])]
RMSPROP_OPTS = [dict(momentum=m, centered=c, weight_decay=wd, maximize=mx)
            for m, c, wd, mx in itertools.product([0.0, 0.5], [False, True], [0.0, 0.1], [False, True])]
ADAGRAD_OPTS = [dict(lr_decay=ld, weight_decay=wd, maximize=mx, step=t)
                for ld, wd, mx, t in itertools.product([0.0, 0.1], [0.0, 0.1], [False, True], [1, 7])]


def run_sgd(fn, n, dtype, seed, o):
    p, g, buf, _, _ = arrays(n, dtype, seed)
    bigs = [guarded(a) for a in (p, g, buf)]
    (bp, p), (bg, g), (bb, buf) = bigs
    g0 = bg.copy()
    fn(p, g, buf if o["momentum"] else None, 0.05, o["momentum"], o["dampening"], o["nesterov"], o["weight_decay"],
       o["maximize"], o["first_step"])
    return bp, bg, bb, g0


def run_adam(fn, n, dtype, seed, o):
    p, g, m, v, vmax = arrays(n, dtype, seed)
    (bp, p), (bg, g), (bm, m), (bv, v), (bx, vmax) = [guarded(a) for a in (p, g, m, v, vmax)]
    g0, x0 = bg.copy(), bx.copy()
    fn(p, g, m, v, vmax if o["amsgrad"] else None, 0.01, 0.9, 0.99, 1e-8, o["weight_decay"], o["decoupled"],
       o["amsgrad"], o["maximize"], o["step"])
    return bp, bg, bm, bv, bx, g0, x0


def run_rms(fn, n, dtype, seed, o):
    p, g, buf, sq, gavg = arrays(n, dtype, seed)
    gavg = (gavg * 0.1).astype(dtype)  # keep sq - gavg^2 > 0, as in a real run
    (bp, p), (bg, g), (bb, buf), (bs, sq), (ba, gavg) = [guarded(a) for a in (p, g, buf, sq, gavg)]
    g0, b0, a0 = bg.copy(), bb.copy(), ba.copy()
    fn(p, g, sq, buf if o["momentum"] else None, gavg if o["centered"] else None, 0.01, 0.9, 1e-8,
       o["weight_decay"], o["momentum"], o["centered"], o["maximize"])
    return bp, bg, bb, bs, ba, g0, b0, a0


def run_adagrad(fn, n, dtype, seed, o):
    p, g, _, s, _ = arrays(n, dtype, seed)
    (bp, p), (bg, g), (bs, s) = [guarded(a) for a in (p, g, s)]
    g0 = bg.copy()
    fn(p, g, s, 0.05, o["lr_decay"], o["weight_decay"], 1e-10, o["maximize"], o["step"])
    return bp, bg, bs, g0


def _close(a, b, dtype, what):
    np.testing.assert_allclose(a, b, **TOL[dtype], err_msg=what)


def _guards_intact(big, what, sentinel=-777.0):
    assert np.all(big[:GUARD] == sentinel) and np.all(big[-GUARD:] == sentinel), f"{what}: wrote outside its array"


def _match_within_guards(got, want, names, dtype, what):
    """Each named array of `got` close to `want`'s, and nothing written outside its array."""
    for name, a, b in zip(names, want, got):
        _close(b, a, dtype, f"{what}: {name}")
        _guards_intact(b, name)


# ----------------------------------------------------------------------------- cpu == ref

@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("o", SGD_OPTS, ids=[str(i) for i in range(len(SGD_OPTS))])
def test_sgd_cpu_equals_ref(dtype, o):
    ref = run_sgd(R.sgd_ref, 37, dtype, 1, o)
    cpu = run_sgd(K.sgd_update_cpu, 37, dtype, 1, o)
    _match_within_guards(cpu, ref, ("param", "grad", "momentum_buffer"), dtype, f"sgd {o}")
    for out in (ref, cpu):
        assert np.array_equal(out[1], out[3]), "the gradient was written"
        if not o["momentum"]:
            assert np.array_equal(out[2], guarded(arrays(37, dtype, 1)[2])[0]), "unused buffer was written"
    assert not np.array_equal(cpu[0], guarded(arrays(37, dtype, 1)[0])[0])  # the params did move


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("o", ADAM_OPTS, ids=[str(i) for i in range(len(ADAM_OPTS))])
def test_adam_cpu_equals_ref(dtype, o):
    ref = run_adam(R.adam_ref, 41, dtype, 2, o)
    cpu = run_adam(K.adam_update_cpu, 41, dtype, 2, o)
    _match_within_guards(cpu, ref, ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"), dtype, f"adam {o}")
    for out in (ref, cpu):
        assert np.array_equal(out[1], out[5]), "the gradient was written"
        if not o["amsgrad"]:
            assert np.array_equal(out[4], out[6]), "max_exp_avg_sq was written without amsgrad"


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("o", RMSPROP_OPTS, ids=[str(i) for i in range(len(RMSPROP_OPTS))])
def test_rmsprop_cpu_equals_ref(dtype, o):
    ref = run_rms(R.rmsprop_ref, 29, dtype, 3, o)
    cpu = run_rms(K.rmsprop_update_cpu, 29, dtype, 3, o)
    _match_within_guards(cpu, ref, ("param", "grad", "momentum_buffer", "square_avg", "grad_avg"), dtype,
                         f"rmsprop {o}")
    for out in (ref, cpu):
        assert np.array_equal(out[1], out[5]), "the gradient was written"
        if not o["momentum"]:
            assert np.array_equal(out[2], out[6]), "momentum_buffer was written without momentum"
        if not o["centered"]:
            assert np.array_equal(out[4], out[7]), "grad_avg was written without centered"


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("o", ADAGRAD_OPTS, ids=[str(i) for i in range(len(ADAGRAD_OPTS))])
def test_adagrad_cpu_equals_float64_ref(dtype, o):
    ref = run_adagrad(R.adagrad_ref, 31, dtype, 10, o)
    cpu = run_adagrad(K.adagrad_update_cpu, 31, dtype, 10, o)
    _match_within_guards(cpu, ref, ("param", "grad", "sum"), dtype, f"adagrad {o}")
    for out in (ref, cpu):
        assert np.array_equal(out[1], out[3]), "the gradient was written"
    assert not np.array_equal(cpu[0], guarded(arrays(31, dtype, 10)[0])[0])  # the params did move


def test_every_registered_optimizer_has_a_test_reference():
    """Adding an optimizer update to the registry means adding its reference to tests/references.py
    (and its option grid here)."""
    for name, m in registry.OPTIMIZERS.items():
        if registry.is_builtin(m):
            assert callable(getattr(R, f"{name}_ref", None)), f"tests/references.py has no {name}_ref"
            assert f"{name.upper()}_OPTS" in globals(), f"no option grid for {name}"


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 300), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16),
       lr=st.floats(0.0, 1.0), b1=st.floats(0.0, 0.99), b2=st.floats(0.0, 0.999), step=st.integers(1, 1000),
       wd=st.sampled_from([0.0, 0.01, 0.5]), amsgrad=st.booleans(), decoupled=st.booleans())
def test_adam_cpu_equals_ref_drawn(n, dtype, seed, lr, b1, b2, step, wd, amsgrad, decoupled):
    """Any size (empty and size 1 included) and hyperparameters in range: the two agree."""
    outs = []
    for fn in (R.adam_ref, K.adam_update_cpu):
        p, g, m, v, vmax = arrays(n, dtype, seed)
        fn(p, g, m, v, vmax, lr, b1, b2, 1e-8, wd, decoupled, amsgrad, False, step)
        outs.append((p, m, v, vmax))
    for a, b in zip(*outs):
        np.testing.assert_allclose(b, a, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


# ----------------------------------------------------------------------------- closed formulas

@pytest.mark.parametrize("fn", [R.sgd_ref, K.sgd_update_cpu], ids=["ref", "cpu"])
def test_sgd_follows_the_formula(fn):
    p, g, buf, _, _ = arrays(10, np.float64, 4)
    p0, b0 = p.copy(), buf.copy()
    mu, d, wd, lr = 0.9, 0.2, 0.1, 0.05
    fn(p, g, buf, lr, mu, d, False, wd, False, False)
    gg = g + wd * p0
    nb = mu * b0 + (1 - d) * gg
    np.testing.assert_allclose(buf, nb, rtol=1e-14)
    np.testing.assert_allclose(p, p0 - lr * nb, rtol=1e-14)
    p, g, buf, _, _ = arrays(10, np.float64, 4)
    fn(p, g, buf, lr, mu, 0.0, True, 0.0, True, True)  # nesterov, maximize, first step
    np.testing.assert_allclose(buf, -g, rtol=1e-14)
    np.testing.assert_allclose(p, p0 - lr * (-g + mu * -g), rtol=1e-14)


@pytest.mark.parametrize("fn", [R.adam_ref, K.adam_update_cpu], ids=["ref", "cpu"])
@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_follows_the_formula(fn, decoupled):
    p, g, m, v, vmax = arrays(10, np.float64, 5)
    p0, m0, v0, x0 = p.copy(), m.copy(), v.copy(), vmax.copy()
    lr, b1, b2, eps, wd, t = 0.01, 0.8, 0.95, 1e-3, 0.2, 4
    fn(p, g, m, v, vmax, lr, b1, b2, eps, wd, decoupled, True, False, t)
    q = p0 * (1 - lr * wd) if decoupled else p0
    gg = g if decoupled else g + wd * p0
    em = b1 * m0 + (1 - b1) * gg
    ev = b2 * v0 + (1 - b2) * gg**2
    ex = np.maximum(x0, ev)
    ep = q - lr / (1 - b1**t) * em / (np.sqrt(ex) / math.sqrt(1 - b2**t) + eps)  # eps after bias correction
    for a, e in ((m, em), (v, ev), (vmax, ex), (p, ep)):
        np.testing.assert_allclose(a, e, rtol=1e-13)


@pytest.mark.parametrize("fn", [R.rmsprop_ref, K.rmsprop_update_cpu], ids=["ref", "cpu"])
def test_rmsprop_follows_the_formula(fn):
    p, g, buf, sq, gavg = arrays(10, np.float64, 6)
    gavg *= 0.1
    p0, b0, s0, a0 = p.copy(), buf.copy(), sq.copy(), gavg.copy()
    lr, al, eps, mu = 0.01, 0.9, 1e-6, 0.3
    fn(p, g, sq, buf, gavg, lr, al, eps, 0.0, mu, True, False)
    es = al * s0 + (1 - al) * g**2
    ea = al * a0 + (1 - al) * g
    eb = mu * b0 + g / (np.sqrt(es - ea**2) + eps)
    for a, e in ((sq, es), (gavg, ea), (buf, eb), (p, p0 - lr * eb)):
        np.testing.assert_allclose(a, e, rtol=1e-13)


def test_amsgrad_max_propagates_nan_in_both():
    for fn in (R.adam_ref, K.adam_update_cpu):
        p, g, m, v, vmax = arrays(4, np.float32, 7)
        g[1] = np.nan
        fn(p, g, m, v, vmax, 0.01, 0.9, 0.999, 1e-8, 0.0, False, True, False, 1)
        assert np.isnan(vmax[1]) and np.isnan(p[1]) and not np.isnan(vmax[[0, 2, 3]]).any()


def test_division_by_zero_gives_ieee_results_not_errors():
    """eps = 0 and a zero gradient: 0/0 is nan in both (no ZeroDivisionError from Numba)."""
    outs = []
    for fn in (R.rmsprop_ref, K.rmsprop_update_cpu):
        p = np.ones(3, np.float32)
        g = np.array([0.0, 1.0, -1.0], np.float32)
        sq = np.zeros(3, np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            fn(p, g, sq, None, None, 0.1, 0.5, 0.0)
        outs.append(p)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert np.isnan(outs[1][0])


# ----------------------------------------------------------------------------- argument checks

BAD_CALLS = [
    ("grad size", lambda a: (a[0], a[1][:-1], a[2], a[3], a[4]), "grad must match params"),
    ("grad dtype", lambda a: (a[0], a[1].astype(np.float64), a[2], a[3], a[4]), "grad must match params"),
    ("2-D params", lambda a: (a[0].reshape(2, -1), a[1], a[2], a[3], a[4]), "1-D float array"),
    ("strided state", lambda a: (a[0], a[1], np.repeat(a[2], 2)[::2], a[3], a[4]), "C-contiguous"),
    ("int params", lambda a: (a[0].astype(np.int64), a[1], a[2], a[3], a[4]), "1-D float array"),
]


@pytest.mark.parametrize("impl", ["ref", "cpu"])
@pytest.mark.parametrize("what,edit,match", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_arguments_raise_before_any_write(impl, what, edit, match):
    a = arrays(12, np.float32, 8)
    p, g, s1, s2, s3 = edit([x.copy() for x in a])
    keep = [x.copy() for x in (p, s1, s2, s3)]
    calls = {
        "sgd": lambda: getattr(K, f"sgd_update_{impl}")(p, g, s1, 0.1, 0.9),
        "adam": lambda: getattr(K, f"adam_update_{impl}")(p, g, s1, s2, s3, 0.1, amsgrad=True),
        "rmsprop": lambda: getattr(K, f"rmsprop_update_{impl}")(p, g, s2, s1, s3, 0.1, momentum=0.5, centered=True),
        "adagrad": lambda: getattr(K, f"adagrad_update_{impl}")(p, g, s1, 0.1, lr_decay=0.1, step=3),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=match):
            call()
        for x, k in zip((p, s1, s2, s3), keep):
            assert np.array_equal(x, k), f"{name} wrote before refusing"


@pytest.mark.parametrize("impl", ["ref", "cpu"])
def test_missing_buffer_the_options_need_is_refused(impl):
    p, g, s1, s2, s3 = arrays(5, np.float32, 9)
    with pytest.raises(ValueError, match="sgd_update: momentum_buffer is None, but the options given turn on MOMENTUM"):
        getattr(K, f"sgd_update_{impl}")(p, g, None, 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="max_exp_avg_sq is None.*AMSGRAD"):
        getattr(K, f"adam_update_{impl}")(p, g, s1, s2, None, 0.1, amsgrad=True)
    with pytest.raises(ValueError, match="exp_avg_sq is None, but adam always uses it"):
        getattr(K, f"adam_update_{impl}")(p, g, s1, None, None, 0.1)
    with pytest.raises(ValueError, match="grad_avg is None.*CENTERED"):
        getattr(K, f"rmsprop_update_{impl}")(p, g, s2, None, None, 0.1, centered=True)
    with pytest.raises(ValueError, match="momentum_buffer is None.*MOMENTUM"):
        getattr(K, f"rmsprop_update_{impl}")(p, g, s2, None, None, 0.1, momentum=0.5)
    with pytest.raises(ValueError, match="state_sum is None, but adagrad always uses it"):
        getattr(K, f"adagrad_update_{impl}")(p, g, None, 0.1)
    with pytest.raises(TypeError, match="missing array argument.*state_sum"):
        getattr(K, f"adagrad_update_{impl}")(p, g)
    with pytest.raises(TypeError, match="unexpected keyword argument 'betas'"):
        getattr(K, f"adagrad_update_{impl}")(p, g, s1, 0.1, betas=(0.9, 0.99))
    # and without those options the buffers may be None
    getattr(K, f"sgd_update_{impl}")(p, g, None, 0.1)
    getattr(K, f"adam_update_{impl}")(p, g, s1, s2, None, 0.1)
    getattr(K, f"rmsprop_update_{impl}")(p, g, s2, None, None, 0.1)
    assert np.isfinite(p).all()


def test_dispatch_picks_cpu_kernels_unless_reference_is_asked_for():
    x = np.zeros(3, np.float32)
    ops = ops_for(x)
    names = list(registry.OPTIMIZERS)
    assert {"sgd", "adam", "rmsprop", "adagrad"} <= set(names)
    for name in names:
        assert getattr(ops, f"{name}_update") is getattr(K, f"{name}_update_cpu") is K.update_cpu(name)
    with use_kernels("reference"):
        ref = ops_for(x)
        for name in names:
            assert getattr(ref, f"{name}_update") is getattr(K, f"{name}_update_ref") is K.update_reference(name)


def test_keyword_arrays_and_the_signature_come_from_the_registry():
    import inspect

    assert str(inspect.signature(K.adagrad_update_cpu)) == \
        "(p, grad, state_sum, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10, maximize=False, step=1)"
    outs = []
    for call in (lambda p, g, s: K.adagrad_update_cpu(p, g, s, 0.1, weight_decay=0.1),
                 lambda p, g, s: K.adagrad_update_cpu(p=p, grad=g, state_sum=s, lr=0.1, weight_decay=0.1)):
        p, g, _, s, _ = arrays(6, np.float64, 11)
        call(p, g, s)
        outs.append((p, s))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    with pytest.raises(ValueError, match="unknown optimizer update 'nope'; registered: sgd, adam"):
        K.update_cpu("nope")
    with pytest.raises(AttributeError, match="nope_update_cpu"):
        K.nope_update_cpu  # noqa: B018
