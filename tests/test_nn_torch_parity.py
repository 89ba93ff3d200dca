"""gpunn.nn against torch.nn (float32, PyTorch's own assert_close tolerances): weights in and out
through state_dict, forward outputs, and every parameter gradient for each loss and reduction."""
from collections import OrderedDict

import numpy as np
import pytest

import gpunn as gn
from gpunn import nn

torch = pytest.importorskip("torch")

F32_TOL = dict(rtol=1.3e-6, atol=1e-5)
N, D_IN, H, C = 12, 6, 10, 3


def _pair():
    """The same MLP with every activation, in torch and in gpunn."""
    def build(m):
        return m.Sequential(
            m.Linear(D_IN, H), m.ReLU(),
            m.Linear(H, H), m.LeakyReLU(0.1),
            m.Linear(H, H), m.GELU(),
            m.Linear(H, H), m.GELU(approximate="tanh"),
            m.Linear(H, H), m.Sigmoid(),
            m.Linear(H, H), m.Tanh(),
            m.Linear(H, C))
    torch.manual_seed(0)
    tm = build(torch.nn)
    with torch.no_grad():  # larger weights than the default, so every activation is exercised
        for p in tm.parameters():
            p.mul_(2.5)
    gm = build(nn)
    gm.load_state_dict(tm.state_dict())
    return tm, gm


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D_IN)).astype(np.float32)
    labels = rng.integers(0, C, N)
    labels[[2, 7]] = -100
    target = rng.standard_normal((N, C)).astype(np.float32)
    binary = (rng.random((N, C)) > 0.5).astype(np.float32)
    return x, labels, target, binary


def _close(gn_value, torch_value, what=""):
    np.testing.assert_allclose(np.asarray(gn_value), torch_value.detach().numpy(), **F32_TOL, err_msg=what)


def test_state_dict_keys_and_repr_identical_to_torch():
    tm, gm = _pair()
    assert list(gm.state_dict()) == list(tm.state_dict())
    assert [n for n, _ in gm.named_parameters()] == [n for n, _ in tm.named_parameters()]
    assert [tuple(p.shape) for p in gm.parameters()] == [tuple(p.shape) for p in tm.parameters()]
    assert repr(gm) == repr(tm)
    t2 = torch.nn.Sequential(OrderedDict([("fc", torch.nn.Linear(3, 4)), ("act", torch.nn.ReLU()),
                                          ("out", torch.nn.Linear(4, 2, bias=False))]))
    g2 = nn.Sequential(OrderedDict([("fc", nn.Linear(3, 4)), ("act", nn.ReLU()), ("out", nn.Linear(4, 2, bias=False))]))
    assert list(g2.state_dict()) == list(t2.state_dict()) == ["fc.weight", "fc.bias", "out.weight"]
    assert repr(g2) == repr(t2)
    assert [n for n, _ in g2.named_children()] == [n for n, _ in t2.named_children()] == ["fc", "act", "out"]


def test_weights_round_trip_both_ways():
    tm, gm = _pair()  # torch -> gpunn happened in _pair
    for k, v in gm.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), tm.state_dict()[k].numpy())
    gn.manual_seed(5)
    for m in gm:
        if isinstance(m, nn.Linear):
            m.reset_parameters()
    assert not np.array_equal(gm[0].weight.numpy(), tm[0].weight.detach().numpy())
    # gpunn -> torch
    tm.load_state_dict({k: torch.from_numpy(v.numpy().copy()) for k, v in gm.state_dict().items()})
    for k, v in tm.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), gm.state_dict()[k].numpy())
    x, *_ = _data()
    with torch.no_grad():
        _close(gm(gn.tensor(x)).numpy(), tm(torch.from_numpy(x)))


def test_forward_matches_torch_with_every_activation():
    tm, gm = _pair()
    x, *_ = _data()
    with torch.no_grad():
        expected = tm(torch.from_numpy(x))
    _close(gm(gn.tensor(x)).numpy(), expected, "fused Sequential")
    h = gn.tensor(x)
    for m in gm:
        h = m(h)
    _close(h.numpy(), expected, "module by module")
    # the hidden activations are neither all saturated nor all zero: the test exercises each one
    with torch.no_grad():
        t = torch.from_numpy(x)
        for i, m in enumerate(tm):
            t = m(t)
            if i % 2 == 1:
                assert 0.05 < float((t.abs() > 1e-3).float().mean()) and float(t.std()) > 1e-3


def _losses():
    cases = []
    for red in ("mean", "sum", "none"):
        cases += [("mse", red), ("l1", red), ("ce", red), ("bce", red), ("bce_pw", red)]
    return cases


@pytest.mark.parametrize("kind,reduction", _losses())
def test_loss_and_parameter_gradients_match_torch(kind, reduction):
    tm, gm = _pair()
    x, labels, target, binary = _data(1)
    pw = np.array([0.5, 2.0, 3.0], np.float32)
    if kind == "mse":
        g_loss, t_loss, tgt = nn.MSELoss(reduction=reduction), torch.nn.MSELoss(reduction=reduction), target
    elif kind == "l1":
        g_loss, t_loss, tgt = nn.L1Loss(reduction=reduction), torch.nn.L1Loss(reduction=reduction), target
    elif kind == "ce":
        g_loss = nn.CrossEntropyLoss(reduction=reduction)
        t_loss, tgt = torch.nn.CrossEntropyLoss(reduction=reduction), labels
    elif kind == "bce":
        g_loss, t_loss = nn.BCEWithLogitsLoss(reduction=reduction), torch.nn.BCEWithLogitsLoss(reduction=reduction)
        tgt = binary
    else:
        g_loss = nn.BCEWithLogitsLoss(pos_weight=pw, reduction=reduction)
        t_loss = torch.nn.BCEWithLogitsLoss(pos_weight=torch.from_numpy(pw), reduction=reduction)
        tgt = binary

    tx = torch.from_numpy(x).requires_grad_(True)
    t_out = t_loss(tm(tx), torch.from_numpy(tgt))
    gx = gn.tensor(x, requires_grad=True)
    g_out = g_loss(gm(gx), gn.tensor(tgt))
    _close(g_out.numpy(), t_out, f"{kind} {reduction} loss value")

    if reduction == "none":
        cot = np.random.default_rng(2).standard_normal(tuple(t_out.shape)).astype(np.float32)
        t_out.backward(torch.from_numpy(cot))
        g_out.backward(gn.tensor(cot))
    else:
        t_out.backward()
        g_out.backward()
    for (name, gp), (tname, tp) in zip(gm.named_parameters(), tm.named_parameters()):
        assert name == tname
        _close(gp.grad.numpy(), tp.grad, f"{kind} {reduction}: grad of {name}")
    _close(gx.grad.numpy(), tx.grad, f"{kind} {reduction}: grad of the input")


def test_activation_and_shape_modules_match_torch():
    x = np.random.default_rng(3).standard_normal((4, 3, 5)).astype(np.float32) * 3
    pairs = [(nn.Softmax(dim=1), torch.nn.Softmax(dim=1)), (nn.LogSoftmax(dim=-1), torch.nn.LogSoftmax(dim=-1)),
             (nn.Flatten(), torch.nn.Flatten()), (nn.Flatten(0, 1), torch.nn.Flatten(0, 1)),
             (nn.Identity(), torch.nn.Identity()), (nn.LeakyReLU(0.3), torch.nn.LeakyReLU(0.3)),
             (nn.GELU("tanh"), torch.nn.GELU("tanh")), (nn.Sigmoid(), torch.nn.Sigmoid())]
    for g, t in pairs:
        gx = gn.tensor(x, requires_grad=True)
        tx = torch.from_numpy(x).requires_grad_(True)
        gy, ty = g(gx), t(tx)
        _close(gy.numpy(), ty, repr(g))
        cot = np.random.default_rng(4).standard_normal(tuple(ty.shape)).astype(np.float32)
        gy.backward(gn.tensor(cot))
        ty.backward(torch.from_numpy(cot))
        _close(gx.grad.numpy(), tx.grad, f"grad of {g!r}")
        assert repr(g) == repr(t)


def test_dense_matches_torch_linear_plus_activation():
    x = np.random.default_rng(5).standard_normal((7, 4)).astype(np.float32)
    for act, t_act in (("relu", torch.nn.ReLU()), ("gelu", torch.nn.GELU()), ("tanh", torch.nn.Tanh()),
                       ("leaky_relu", torch.nn.LeakyReLU(0.2))):
        torch.manual_seed(2)
        tl = torch.nn.Linear(4, 5)
        d = nn.Dense(4, 5, act, negative_slope=0.2)
        d.load_state_dict(tl.state_dict())
        tx = torch.from_numpy(x).requires_grad_(True)
        ty = t_act(tl(tx))
        gx = gn.tensor(x, requires_grad=True)
        gy = d(gx)
        _close(gy.numpy(), ty, act)
        ty.sum().backward()
        gy.sum().backward()
        _close(d.weight.grad.numpy(), tl.weight.grad, act)
        _close(d.bias.grad.numpy(), tl.bias.grad, act)
        _close(gx.grad.numpy(), tx.grad, act)


def test_gains_match_torch():
    for nl, param in (("linear", None), ("sigmoid", None), ("tanh", None), ("relu", None), ("leaky_relu", None),
                      ("leaky_relu", 0.2), ("selu", None), ("conv2d", None)):
        assert nn.init.calculate_gain(nl, param) == pytest.approx(torch.nn.init.calculate_gain(nl, param))


def test_linear_default_init_distribution_matches_torch():
    gn.manual_seed(0)
    torch.manual_seed(0)
    g, t = nn.Linear(300, 200), torch.nn.Linear(300, 200)
    for gv, tv in ((g.weight.numpy(), t.weight.detach().numpy()), (g.bias.numpy(), t.bias.detach().numpy())):
        assert abs(np.abs(gv).max() - np.abs(tv).max()) < 0.01 / np.sqrt(300)
        assert abs(gv.std() - tv.std()) < 0.1 * tv.std()
