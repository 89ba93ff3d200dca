"""Cross-entropy with class weights and label smoothing, and NLL (issue #15): PyTorch 2.13 parity
for every combination of (weight, ignored targets, label_smoothing, reduction) on every backend,
float64 central-difference gradients, the all-ignored batch, nn modules' repr and state, errors,
and the profiler's costs of the new arguments."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import gpunn as gn
from gpunn import functional as F
from gpunn import nn
from gpunn.kernels import softmax_ce

RTOL, ATOL = 1.3e-6, 1e-5  # torch.testing.assert_close defaults for float32
N, C = 7, 5
IGNORED = (1, 4)
IGNORE = {"none": (), "some": IGNORED, "all": range(N)}  # which targets are ignore_index
COMBOS = list(itertools.product([False, True], list(IGNORE), [0.0, 0.3], ["none", "sum", "mean"]))
COMBO_IDS = [f"{'w' if w else 'now'}-ignore_{i}-ls{ls}-{r}" for w, i, ls, r in COMBOS]


def data(seed=0, dtype=np.float32, ignored=()):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((N, C)) * 2).astype(dtype)
    y = rng.integers(0, C, N)
    y[list(ignored)] = -100
    w = rng.uniform(0.2, 3.0, C).astype(dtype)
    return x, y, w


def run_gpunn(backend, fn, x, y, cot, weight=None):
    t = gn.Tensor(backend.asarray(x), requires_grad=True)
    with backend.activate():
        w = None if weight is None else gn.Tensor(backend.asarray(weight))
        out = fn(t, gn.Tensor(backend.asarray(y)), w)
        out.backward(backend.asarray(cot))
    return backend.to_numpy(out.data), backend.to_numpy(t.grad.data)


def run_torch(fn, x, y, cot, weight=None):
    import torch

    t = torch.tensor(x, requires_grad=True)
    out = fn(t, torch.tensor(y), None if weight is None else torch.tensor(weight))
    out.backward(torch.tensor(cot))
    return out.detach().numpy(), t.grad.numpy()


def compare(got, want):
    for g, t, what in zip(got, want, ("loss", "input gradient")):
        assert g.shape == t.shape and g.dtype == t.dtype, what
        np.testing.assert_allclose(g, t, rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=what)


def cot_for(reduction, rng):
    return (rng.standard_normal(N) if reduction == "none" else np.asarray(rng.standard_normal())).astype(np.float32)


@pytest.mark.parametrize("weighted,ignore,smoothing,reduction", COMBOS, ids=COMBO_IDS)
def test_cross_entropy_matches_torch(backend, weighted, ignore, smoothing, reduction):
    """Every target ignored: torch gives NaN for "mean" (0 / 0), 0 for "sum", zero gradients."""
    TF = pytest.importorskip("torch.nn.functional")
    x, y, w = data(1, ignored=IGNORE[ignore])
    cot = cot_for(reduction, np.random.default_rng(2))
    weight = w if weighted else None
    got = run_gpunn(backend, lambda a, b, c: F.cross_entropy(a, b, c, reduction=reduction,
                                                             label_smoothing=smoothing), x, y, cot, weight)
    want = run_torch(lambda a, b, c: TF.cross_entropy(a, b, c, reduction=reduction, label_smoothing=smoothing),
                     x, y, cot, weight)
    assert np.isnan(want[0]).any() == (ignore == "all" and reduction == "mean")
    compare(got, want)


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_counted_weights_summing_to_zero_match_torch(backend, smoothing):
    """Mean over rows whose class weights are all 0: NaN loss and NaN gradients on those rows (0 on
    the ignored ones), as torch."""
    TF = pytest.importorskip("torch.nn.functional")
    x, y, w = data(19, ignored=IGNORED)
    w[np.unique(y[y >= 0])] = 0
    cot = np.asarray(0.5, np.float32)
    got = run_gpunn(backend, lambda a, b, c: F.cross_entropy(a, b, c, label_smoothing=smoothing), x, y, cot, w)
    want = run_torch(lambda a, b, c: TF.cross_entropy(a, b, c, label_smoothing=smoothing), x, y, cot, w)
    assert np.isnan(want[0]) and np.isnan(want[1][y >= 0]).all() and (want[1][y < 0] == 0).all()
    compare(got, want)


# gpunn graph, torch function: log_softmax -> nll_loss against torch's cross_entropy (not gpunn's
# own), and nll_loss on arbitrary inputs (not log-probabilities: it picks -w_y x_y) against torch's
NLL_CASES = {"log_softmax_nll_vs_torch_cross_entropy": (
                 lambda a, b, c, r: F.nll_loss(F.log_softmax(a, dim=1), b, c, reduction=r),
                 lambda TF, a, b, c, r: TF.cross_entropy(a, b, c, reduction=r)),
             "nll_loss": (lambda a, b, c, r: F.nll_loss(a, b, c, reduction=r),
                          lambda TF, a, b, c, r: TF.nll_loss(a, b, c, reduction=r))}


@pytest.mark.parametrize("case", list(NLL_CASES))
@pytest.mark.parametrize("weighted,ignore,reduction",
                         list(itertools.product([False, True], [False, True], ["none", "sum", "mean"])))
def test_nll_matches_torch(backend, case, weighted, ignore, reduction):
    TF = pytest.importorskip("torch.nn.functional")
    fn, tfn = NLL_CASES[case]
    x, y, w = data(5, ignored=IGNORED if ignore else ())
    cot = cot_for(reduction, np.random.default_rng(6))
    weight = w if weighted else None
    got = run_gpunn(backend, lambda a, b, c: fn(a, b, c, reduction), x, y, cot, weight)
    want = run_torch(lambda a, b, c: tfn(TF, a, b, c, reduction), x, y, cot, weight)
    compare(got, want)


def test_nll_all_ignored_and_custom_ignore_index_match_torch():
    torch = pytest.importorskip("torch")
    x, y, w = data(9)
    lp = torch.log_softmax(torch.tensor(x), 1).numpy()
    for target, ign in ((np.full(N, -100), -100), (y, int(y[0]))):
        for weight in (None, w):
            tw = None if weight is None else torch.tensor(weight)
            want = torch.nn.functional.nll_loss(torch.tensor(lp), torch.tensor(target), tw, ignore_index=ign)
            got = F.nll_loss(gn.tensor(lp), target, None if weight is None else gn.tensor(weight), ignore_index=ign)
            np.testing.assert_allclose(got.item(), want.item(), rtol=RTOL, atol=ATOL, equal_nan=True)


# ------------------------------------------------------------------------ float64 finite differences

@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weighted,smoothing", [(True, 0.0), (False, 0.4), (True, 0.4), (True, 1.0)])
def test_cross_entropy_gradcheck(backend, weighted, smoothing, reduction):
    """The input gradient against central differences; the weights are held fixed (no gradient)."""
    x, y, w = data(10, np.float64, ignored=(2,))
    with backend.activate():
        xt = gn.Tensor(backend.asarray(x), requires_grad=True)
        wt = gn.Tensor(backend.asarray(w)) if weighted else None
        yt = gn.Tensor(backend.asarray(y))
        assert gn.gradcheck(lambda a: F.cross_entropy(a, yt, wt, reduction=reduction, label_smoothing=smoothing),
                            [xt], eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_nll_loss_gradcheck(backend, reduction):
    x, y, w = data(11, np.float64, ignored=(0, 3))
    with backend.activate():
        xt = gn.Tensor(backend.asarray(x), requires_grad=True)
        wt, yt = gn.Tensor(backend.asarray(w)), gn.Tensor(backend.asarray(y))
        assert gn.gradcheck(lambda a: F.nll_loss(F.log_softmax(a, dim=1), yt, wt, reduction=reduction), [xt],
                            eps=1e-6, atol=1e-5, rtol=1e-3)
        assert gn.gradcheck(lambda a: F.nll_loss(a, yt, wt, reduction=reduction), [xt], eps=1e-6, atol=1e-5,
                            rtol=1e-3)


def test_weight_gets_no_gradient():
    x, y, w = data(12, np.float64)
    wt = gn.tensor(w)
    xt = gn.tensor(x, requires_grad=True)
    F.cross_entropy(xt, y, wt, label_smoothing=0.1).backward()
    assert wt.grad is None and xt.grad is not None
    with pytest.raises(ValueError, match="weight requires grad.*no gradient"):
        F.cross_entropy(xt, y, gn.tensor(w, requires_grad=True))


def test_zero_smoothing_and_unit_weights_equal_the_plain_loss():
    """The general kernels reduce to the fast path's values (to float64 rounding)."""
    x, y, _ = data(13, np.float64, ignored=(1,))
    for reduction in ("none", "sum", "mean"):
        plain = F.cross_entropy(x, y, reduction=reduction).numpy()
        ones = F.cross_entropy(x, y, gn.tensor(np.ones(C)), reduction=reduction).numpy()
        np.testing.assert_allclose(ones, plain, rtol=1e-14, atol=1e-15)


# ------------------------------------------------------------------------ modules

def test_modules_match_torch_repr_state_and_values():
    torch = pytest.importorskip("torch")
    x, y, w = data(14, ignored=(3,))
    pairs = [(nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()),
             (nn.CrossEntropyLoss(w, reduction="sum", label_smoothing=0.2, ignore_index=-100),
              torch.nn.CrossEntropyLoss(torch.tensor(w), reduction="sum", label_smoothing=0.2)),
             (nn.NLLLoss(gn.tensor(w)), torch.nn.NLLLoss(torch.tensor(w))),
             (nn.NLLLoss(reduction="none"), torch.nn.NLLLoss(reduction="none"))]
    for g, t in pairs:
        assert repr(g) == repr(t)
        gs, ts = g.state_dict(), t.state_dict()
        assert list(gs) == list(ts)
        for k in ts:
            np.testing.assert_array_equal(gs[k].numpy(), ts[k].numpy())
        inp = x if isinstance(g, nn.CrossEntropyLoss) else torch.log_softmax(torch.tensor(x), 1).numpy()
        np.testing.assert_allclose(g(gn.tensor(inp), gn.tensor(y)).numpy(),
                                   t(torch.tensor(inp), torch.tensor(y)).numpy(), rtol=RTOL, atol=ATOL)
    m = nn.CrossEntropyLoss(w, ignore_index=2, label_smoothing=0.1)
    assert (m.ignore_index, m.label_smoothing, m.reduction) == (2, 0.1, "mean")
    assert [n for n, _ in m.named_buffers()] == ["weight"] and list(m.parameters()) == []
    assert nn.CrossEntropyLoss().weight is None


def test_positional_arguments_follow_torch():
    """torch's order: weight, size_average, ignore_index, reduce, reduction, label_smoothing; the
    deprecated size_average/reduce map to a reduction with a DeprecationWarning, as in torch."""
    torch = pytest.importorskip("torch")
    x, y, w = data(18)
    y[[2, 5]] = 1  # ignore_index=1 below
    tx, ty, tw = torch.tensor(x), torch.tensor(y), torch.tensor(w)
    got = nn.CrossEntropyLoss(w, None, 1, None, "sum", 0.1)(gn.tensor(x), gn.tensor(y)).item()
    want = torch.nn.CrossEntropyLoss(tw, None, 1, None, "sum", 0.1)(tx, ty).item()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    lp = torch.log_softmax(tx, 1)
    np.testing.assert_allclose(F.nll_loss(gn.tensor(lp.numpy()), y, gn.tensor(w), None, 1, None, "none").numpy(),
                               torch.nn.functional.nll_loss(lp, ty, tw, None, 1, None, "none").numpy(),
                               rtol=RTOL, atol=ATOL)
    with pytest.warns(DeprecationWarning, match="size_average and reduce are deprecated"):
        total = F.cross_entropy(gn.tensor(x), y, size_average=False).item()
    np.testing.assert_allclose(total, torch.nn.functional.cross_entropy(tx, ty, reduction="sum").item(),
                               rtol=RTOL, atol=ATOL)


def test_module_weight_loads_and_casts():
    w = np.array([1.0, 2.0, 3.0], np.float32)
    m = nn.CrossEntropyLoss(w)
    m.load_state_dict({"weight": gn.tensor(np.array([3.0, 2.0, 1.0], np.float32))})
    np.testing.assert_array_equal(m.weight.numpy(), [3, 2, 1])
    m.to(np.float64)
    assert m.weight.dtype == np.float64
    x = gn.tensor(np.zeros((2, 3)), requires_grad=True)
    np.testing.assert_allclose(m(x, gn.tensor([0, 2])).item(), np.log(3.0))


# ------------------------------------------------------------------------ errors

@pytest.mark.parametrize("weight,error,pattern", [
    (np.ones(4, np.float32), ValueError, r"weight must be 1-D with one value per class: shape \(5,\) for input of "
                                         r"shape \(7, 5\), got weight of shape \(4,\)"),
    (np.ones((1, 5), np.float32), ValueError, r"shape \(5,\) .* got weight of shape \(1, 5\)"),
    (np.ones(5, np.float64), TypeError, "dtype"),
    ([1.0] * 5, TypeError, "weight must be a Tensor or an array"),
])
@pytest.mark.parametrize("fn", [F.cross_entropy, F.nll_loss], ids=["cross_entropy", "nll_loss"])
def test_weight_errors(fn, weight, error, pattern):
    x, y, _ = data(15)
    with pytest.raises(error, match=f"^{fn.__name__}: .*{pattern}"):
        fn(gn.tensor(x), y, weight)


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), True, "0.1"])
def test_label_smoothing_errors(value):
    x, y, _ = data(16)
    with pytest.raises(ValueError, match=r"label_smoothing must be a number in \[0, 1\]"):
        F.cross_entropy(gn.tensor(x), y, label_smoothing=value)


def test_module_and_target_errors():
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: label_smoothing must be in \[0, 1\], got 2"):
        nn.CrossEntropyLoss(label_smoothing=2)
    with pytest.raises(ValueError, match=r"NLLLoss: weight must be a 1-D float tensor .* shape \(2, 2\)"):
        nn.NLLLoss(np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="reduction must be one of"):
        nn.NLLLoss(reduction="avg")
    x, _, _ = data(17)
    with pytest.raises(TypeError, match="class-probability targets are not supported"):
        F.cross_entropy(gn.tensor(x), np.full((N, C), 1 / C, np.float32))
    with pytest.raises(ValueError, match=r"nll_loss: input must be log-probabilities of shape \(batch, classes\)"):
        F.nll_loss(gn.tensor(x[0]), np.array([1]))
    with pytest.raises(ValueError, match=r"nll_loss: target\[2\] = 5 is out of range for 5 classes"):
        F.nll_loss(gn.tensor(x), np.array([0, 1, 5, 0, 0, 0, 0]), gn.tensor(np.ones(C, np.float32)))
    with pytest.raises(ValueError, match=r"cross_entropy: target\[0\] = -3 is out of range"):
        F.cross_entropy(gn.tensor(x), np.array([-3, 1, 5, 0, 0, 0, 0]), gn.tensor(np.ones(C, np.float32)),
                        label_smoothing=0.5)


def test_kernels_refuse_bad_options(backend):
    ops = backend.ops()
    x, y = backend.asarray(np.zeros((2, 3))), backend.asarray(np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        ops.softmax_cross_entropy_forward(x, y, -100, "none", backend.asarray(np.ones(4)))
    with pytest.raises(ValueError, match="weight has dtype float32 but the input has float64"):
        ops.softmax_cross_entropy_forward(x, y, -100, "none", backend.asarray(np.ones(3, np.float32)))
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        ops.softmax_cross_entropy_forward(x, y, -100, "none", None, 1.01)
    with pytest.raises(ValueError, match="with class weights or label smoothing needs the forward's stats"):
        ops.softmax_cross_entropy_backward(backend.asarray(np.ones(2)), x, y, -100, "none", None, None, 0.1)


# ------------------------------------------------------------------------ profiler costs

def test_costs_count_the_new_arguments():
    logits, labels = np.zeros((8, 10), np.float32), np.zeros(8, np.int64)
    w, g = np.ones(10, np.float32), np.ones(8, np.float32)
    base_f = softmax_ce.softmax_cross_entropy_forward_cost(logits, labels)
    assert softmax_ce.softmax_cross_entropy_forward_cost(logits, labels, -100, "none", w) == \
        (base_f[0] + 2 * 8 + 10, base_f[1] + 40)
    assert softmax_ce.softmax_cross_entropy_forward_cost(logits, labels, -100, "none", None, 0.1) == \
        (base_f[0] + 3 * 80 + 2 * 8, base_f[1])
    assert softmax_ce.softmax_cross_entropy_backward_cost(g, logits, labels, -100, "none", None, w, 0.1) == \
        (3 * 80 + 5 * 8, 2 * 320 + 32 + 64 + 40)
    assert softmax_ce.nll_loss_forward_cost(logits, labels, -100, "mean", w) == (4 * 8, 2 * 32 + 64 + 40)
    assert softmax_ce.nll_loss_backward_cost(g, logits, labels) == (8, 320 + 32 + 64)
