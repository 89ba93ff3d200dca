"""LayerNorm, BatchNorm1d, Dropout (modules and functional): float64 gradient checks and forward
references through the harness, train/eval behaviour, running statistics, state_dict, save/load,
errors; PyTorch parity (per test, skipped without torch) at float32 tolerances."""
import numpy as np
import pytest

import gpunn as gn
from gpunn import functional as F
from gpunn import nn
from harness import FunctionTestCase, parameterize, product
from torch_util import requires_torch, torch

F32_TOL = dict(rtol=1.3e-6, atol=1e-5)  # PyTorch's assert_close defaults for float32
GRAD_TOL = dict(rtol=1e-5, atol=1e-5)   # float32 gradients through a normalisation (a few roundings more)


def _ref_normalize(x, axes, eps):
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


# ----------------------------------------------------------------------------- functional, harness

@parameterize(*product(shape=[(3, 4), (2, 3, 4)], normalized=[1, 2], affine=["both", "weight", "none"]))
class TestLayerNorm(FunctionTestCase):
    def inputs(self):
        shape = (self.batch,) + self.shape
        norm = self.shape[len(self.shape) - self.normalized:]
        x = self.rng.standard_normal(shape) * 2 + 0.5
        w = self.rng.standard_normal(norm)
        b = self.rng.standard_normal(norm)
        return {"both": (x, w, b), "weight": (x, w), "none": (x,)}[self.affine]

    def forward(self, x, w=None, b=None):
        return F.layer_norm(x, self.shape[len(self.shape) - self.normalized:], w, b, eps=1e-5)

    def reference(self, x, w=None, b=None):
        y = _ref_normalize(x, tuple(range(x.ndim - self.normalized, x.ndim)), 1e-5)
        return y * (1 if w is None else w) + (0 if b is None else b)


# one value per channel is refused in training (tested below): batch 1 only where L > 1
@parameterize(*[dict(features=f, affine=a, batch_sizes=bs) for f, bs in [((3,), (0, 2)), ((3, 5), (1, 0))]
                for a in (True, False)])
class TestBatchNormTraining(FunctionTestCase):
    batch = 4

    def inputs(self):
        x = self.rng.standard_normal((self.batch,) + self.features) * 1.5 - 0.3
        if not self.affine:
            return (x,)
        return x, self.rng.standard_normal(self.features[0]), self.rng.standard_normal(self.features[0])

    def forward(self, x, w=None, b=None):
        return F.batch_norm(x, None, None, w, b, training=True)

    def reference(self, x, w=None, b=None):
        shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        y = _ref_normalize(x, (0,) + tuple(range(2, x.ndim)), 1e-5)
        if w is not None:
            y = y * w.reshape(shape) + b.reshape(shape)
        return y


RUNNING_MEAN = np.array([0.3, -1.0, 2.0])
RUNNING_VAR = np.array([0.5, 2.0, 1.5])


@parameterize(*product(features=[(3,), (3, 4)]))
class TestBatchNormEval(FunctionTestCase):
    def inputs(self):
        x = self.rng.standard_normal((self.batch,) + self.features)
        return x, self.rng.standard_normal(3), self.rng.standard_normal(3)

    def forward(self, x, w, b):
        stats = [gn.Tensor(x.device.xp.asarray(a, dtype=x.dtype)) for a in (RUNNING_MEAN, RUNNING_VAR)]
        return F.batch_norm(x, *stats, w, b, training=False, eps=1e-3)

    def reference(self, x, w, b):
        shape = (1, 3) + (1,) * (x.ndim - 2)
        xhat = (x - RUNNING_MEAN.reshape(shape)) / np.sqrt(RUNNING_VAR.reshape(shape) + 1e-3)
        return xhat * w.reshape(shape) + b.reshape(shape)


# ----------------------------------------------------------------------------- dropout

def test_dropout_masks_scales_and_backpropagates_the_same_mask(backend):
    x = gn.Tensor(backend.asarray(np.random.default_rng(0).uniform(1, 2, (400, 250)).astype(np.float32)),
                  requires_grad=True)
    with backend.activate():
        gn.manual_seed(3)
        y = F.dropout(x, 0.3)
        y.backward(gn.Tensor(backend.asarray(np.full(x.shape, 2.0, np.float32))))
    yn, xn, gx = backend.to_numpy(y), backend.to_numpy(x), backend.to_numpy(x.grad)
    kept = yn != 0
    scale = np.float32(1) / np.float32(0.7)
    np.testing.assert_array_equal(yn[kept], xn[kept] * scale)
    # 100000 Bernoulli(0.7) draws: the kept share is 0.7 within 5 standard deviations (0.0072)
    assert abs(kept.mean() - 0.7) < 5 * np.sqrt(0.7 * 0.3 / kept.size)
    np.testing.assert_array_equal(gx, np.where(kept, 2 * scale, 0).astype(np.float32))
    assert y.dtype == np.float32 and x.grad.dtype == np.float32


def test_dropout_gradcheck_with_a_fixed_seed(backend):
    x = gn.Tensor(backend.asarray(np.random.default_rng(1).standard_normal((5, 4))), requires_grad=True)

    def f(t):
        gn.manual_seed(11)  # the same mask at every evaluation
        return F.dropout(t, 0.4) * t

    with backend.activate():
        assert gn.gradcheck(f, [x])


def test_dropout_seeded_masks_repeat_and_calls_draw_fresh_ones():
    x = gn.ones(64, 64)
    gn.manual_seed(5)
    a, b = F.dropout(x, 0.5).numpy(), F.dropout(x, 0.5).numpy()
    gn.manual_seed(5)
    np.testing.assert_array_equal(F.dropout(x, 0.5).numpy(), a)
    assert not np.array_equal(a, b)


def test_dropout_edge_probabilities_eval_mode_and_dtypes():
    x = gn.tensor(np.random.default_rng(0).standard_normal((6, 7)))  # float64
    assert F.dropout(x, 0.5, training=False) is x
    np.testing.assert_array_equal(F.dropout(x, 0.0).numpy(), x.numpy())
    z = F.dropout(x, 1.0)
    assert z.dtype == np.float64 and not z.numpy().any()
    assert F.dropout(x, 0.3).dtype == np.float64
    layer = nn.Dropout(0.5)
    layer.eval()
    assert layer(x) is x
    layer.train()
    assert (layer(x).numpy() == 0).any()


def test_dropout_inplace_writes_into_the_input_where_no_graph_is_recorded():
    x = gn.ones(50, 4)
    y = F.dropout(x, 0.5, inplace=True)
    assert y is x and set(np.unique(x.numpy())) <= {0.0, 2.0} and x._version == 1
    w = gn.ones(50, 4, requires_grad=True)
    h = w * 1.0
    out = nn.Dropout(0.5, inplace=True)(h)  # in a recorded graph: a new tensor with the dropout values
    assert out is not h and out.requires_grad
    np.testing.assert_array_equal(h.numpy(), 1.0)
    out.sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), out.numpy())  # d(sum)/dw = the mask = the output here


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_dropout_rejects_p_outside_0_1(p):
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got"):
        nn.Dropout(p)
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        F.dropout(gn.ones(2), p)
    with pytest.raises(TypeError, match="p must be a number"):
        nn.Dropout("0.5")


@requires_torch
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_dropout_scale_equals_torch(p):
    scale_t = np.unique(torch.nn.functional.dropout(torch.ones(1000), p).numpy())
    scale_g = np.unique(F.dropout(gn.ones(1000), p).numpy())
    np.testing.assert_array_equal(scale_g, scale_t)  # [0, the same float32 1/(1-p)]
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    t = torch.nn.functional.dropout(torch.from_numpy(x), p).numpy()
    g = F.dropout(gn.tensor(x), p).numpy()
    np.testing.assert_array_equal(t[t != 0], x[t != 0] * scale_t[1])  # both multiply x by that scale
    np.testing.assert_array_equal(g[g != 0], x[g != 0] * scale_t[1])


# ----------------------------------------------------------------------------- LayerNorm module

def test_layer_norm_module_parameters_repr_and_state_dict():
    ln = nn.LayerNorm((3, 4))
    assert ln.normalized_shape == (3, 4) and ln.eps == 1e-5
    np.testing.assert_array_equal(ln.weight.numpy(), np.ones((3, 4), np.float32))
    np.testing.assert_array_equal(ln.bias.numpy(), np.zeros((3, 4), np.float32))
    assert list(ln.state_dict()) == ["weight", "bias"]
    assert repr(ln) == "LayerNorm((3, 4), eps=1e-05, elementwise_affine=True, bias=True)"
    assert list(nn.LayerNorm(4, bias=False).state_dict()) == ["weight"]
    plain = nn.LayerNorm(4, elementwise_affine=False)
    assert plain.weight is None and plain.bias is None and list(plain.state_dict()) == []
    assert nn.LayerNorm(4, dtype=np.float64).weight.dtype == np.float64


def test_layer_norm_errors_name_the_layer_and_shapes():
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(5))
    with pytest.raises(ValueError, match=r"layer_norm layer '1': Given normalized_shape=\[5\], expected input with "
                                         r"shape \[\*, 5\], but got input of size \[2, 6\]"):
        model(gn.ones(2, 4))
    with pytest.raises(ValueError, match=r"expected weight of shape \(4,\) for an input of shape \(2, 4\), got "
                                         r"weight of shape \(3,\)"):
        F.layer_norm(gn.ones(2, 4), 4, weight=gn.ones(3))
    with pytest.raises(TypeError, match="dtypes differ"):
        F.layer_norm(gn.ones(2, 4), 4, weight=gn.ones(4, dtype=gn.float64))
    with pytest.raises(ValueError, match="normalized_shape must be a positive int"):
        nn.LayerNorm(0)
    with pytest.raises(TypeError, match="must be a float tensor"):
        F.layer_norm(gn.tensor([[1, 2]]), 2)


@pytest.mark.parametrize("spread,offset", [(1.0, 1e4), (1e-3, 1e3)])
def test_layer_norm_statistics_are_exact_to_float32_far_from_zero(spread, offset):
    """float32 rows far from 0 next to their spread: a one-pass E[x^2] - E[x]^2 loses every digit,
    and a plain two-pass one keeps the mean's rounding (an ulp of the offset, ~1e-3 of the spread
    here); the output must be float32-accurate against float64 on the same float32 values."""
    x = (np.random.default_rng(0).standard_normal((8, 64)) * spread + offset).astype(np.float32)
    y = F.layer_norm(gn.tensor(x), 64).numpy()
    np.testing.assert_allclose(y, _ref_normalize(x.astype(np.float64), (1,), 1e-5), rtol=0, atol=2e-6)
    z = F.batch_norm(gn.tensor(x.T.copy()), None, None, training=True).numpy()
    np.testing.assert_allclose(z, _ref_normalize(x.T.astype(np.float64), (0,), 1e-5), rtol=0, atol=2e-6)


# ----------------------------------------------------------------------------- BatchNorm1d module

def test_batch_norm_state_dict_buffers_and_repr():
    bn = nn.BatchNorm1d(3)
    sd = bn.state_dict()
    assert list(sd) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert sd["num_batches_tracked"].dtype == np.int64 and sd["num_batches_tracked"].shape == ()
    np.testing.assert_array_equal(sd["running_var"].numpy(), np.ones(3, np.float32))
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]
    assert repr(bn) == "BatchNorm1d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)"
    assert list(nn.BatchNorm1d(3, affine=False, track_running_stats=False).state_dict()) == []
    assert list(nn.BatchNorm1d(3, bias=False).state_dict()) == ["weight", "running_mean", "running_var",
                                                                "num_batches_tracked"]
    bn.double()
    assert bn.running_mean.dtype == np.float64 and bn.num_batches_tracked.dtype == np.int64


def _batches(n=4, shape=(6, 3), seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(shape) * (1 + i) + i).astype(np.float32) for i in range(n)]


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5)])
def test_batch_norm_running_statistics_follow_the_momentum_rule(shape):
    bn = nn.BatchNorm1d(3, momentum=0.2)
    axes = (0,) + tuple(range(2, len(shape)))
    mean, var = np.zeros(3), np.ones(3)
    for xb in _batches(shape=shape):
        bn(gn.tensor(xb))
        n = xb.size // 3
        mean = 0.8 * mean + 0.2 * xb.mean(axis=axes)
        var = 0.8 * var + 0.2 * xb.astype(np.float64).var(axis=axes) * n / (n - 1)
    np.testing.assert_allclose(bn.running_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), var, rtol=1e-5, atol=1e-6)
    assert int(bn.num_batches_tracked) == 4


def test_batch_norm_momentum_none_is_a_cumulative_average():
    bn = nn.BatchNorm1d(3, momentum=None)
    batches = _batches(5)
    for xb in batches:
        bn(gn.tensor(xb))
    np.testing.assert_allclose(bn.running_mean.numpy(), np.mean([b.mean(0) for b in batches], axis=0), rtol=1e-5)
    np.testing.assert_allclose(bn.running_var.numpy(), np.mean([b.var(0, ddof=1) for b in batches], axis=0),
                               rtol=1e-5)


def test_batch_norm_eval_uses_running_statistics_and_no_running_stats_uses_the_batch():
    bn = nn.BatchNorm1d(3)
    for xb in _batches():
        bn(gn.tensor(xb))
    bn.eval()
    x = _batches(1, seed=9)[0]
    rm, rv = bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()
    np.testing.assert_allclose(bn(gn.tensor(x)).numpy(), (x - rm) / np.sqrt(rv + 1e-5), **F32_TOL)
    np.testing.assert_array_equal(bn.running_mean.numpy(), rm)  # eval updates nothing
    assert int(bn.num_batches_tracked) == 4
    free = nn.BatchNorm1d(3, track_running_stats=False).eval()
    np.testing.assert_allclose(free(gn.tensor(x)).numpy(), _ref_normalize(x.astype(np.float64), (0,), 1e-5),
                               **F32_TOL)


def test_batch_norm_empty_batch_counts_but_keeps_the_statistics():
    bn = nn.BatchNorm1d(3)
    x = gn.zeros(0, 3, requires_grad=True)
    y = bn(x)
    y.sum().backward()
    assert y.shape == (0, 3) and x.grad.shape == (0, 3)
    np.testing.assert_array_equal(bn.running_mean.numpy(), np.zeros(3, np.float32))
    assert int(bn.num_batches_tracked) == 1 and bn.weight.grad.numpy().tolist() == [0, 0, 0]


def test_batch_norm_errors_name_the_layer_and_shapes():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match=r"batch_norm layer '1': Expected more than 1 value per channel when training, got "
                                         r"input size \(1, 3\)"):
        model(gn.ones(1, 4))
    model.eval()
    assert model(gn.ones(1, 4)).shape == (1, 3)  # fine in eval mode, as in PyTorch
    with pytest.raises(ValueError, match=r"batch_norm layer '1': expected 2D or 3D input \(got 4D input of shape "
                                         r"\(2, 3, 1, 1\)\)"):
        model[1](gn.ones(2, 3, 1, 1))
    with pytest.raises(ValueError, match=r"batch_norm layer '1': expected 3 features \(input dimension 1\), got "
                                         r"input of shape \(2, 5\)"):
        model[1](gn.ones(2, 5))
    with pytest.raises(ValueError, match=r"expected running_mean of shape \(3,\) for an input of shape \(2, 3\), "
                                         r"got running_mean of shape \(4,\)"):
        F.batch_norm(gn.ones(2, 3), gn.zeros(4), gn.ones(4))
    with pytest.raises(ValueError, match="must be defined in evaluation mode"):
        F.batch_norm(gn.ones(2, 3), None, None)
    with pytest.raises(ValueError, match="non-negative integer"):
        nn.BatchNorm1d(-1)


def test_normalization_layers_in_sequential_save_load_roundtrip(tmp_path):
    gn.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 8),
                          nn.LayerNorm(8), nn.Linear(8, 2))
    opt = gn.optim.SGD(model.parameters(), lr=0.1)
    x = gn.tensor(np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32))
    for _ in range(3):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    gn.save(model, tmp_path / "m.safetensors")
    gn.manual_seed(1)
    other = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 8),
                          nn.LayerNorm(8), nn.Linear(8, 2))
    gn.load(tmp_path / "m.safetensors", other)
    for (k, a), (k2, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(other[1].num_batches_tracked) == 3
    model.eval()
    other.eval()
    np.testing.assert_array_equal(model(x).numpy(), other(x).numpy())


def test_fit_trains_a_model_with_dropout_and_normalization():
    from gpunn.train import fit, predict

    rng = np.random.default_rng(0)
    X = rng.standard_normal((96, 5)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    gn.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 16),
                          nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 2))
    h = fit(model, nn.CrossEntropyLoss(), gn.optim.Adam(model.parameters(), lr=1e-2), X, y, epochs=5,
            batch_size=16, seed=0, progress=False, validation=(X, y))
    assert h["loss"][-1] < h["loss"][0] and h["val_accuracy"][-1] > 0.8
    assert int(model[1].num_batches_tracked) == 5 * 6 and model.training
    np.testing.assert_array_equal(predict(model, X), predict(model, X))  # eval mode: no dropout


# ----------------------------------------------------------------------------- PyTorch parity

def _to_torch(a):
    return torch.from_numpy(np.array(a, copy=True))


DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
TOLS = {np.float32: (F32_TOL, GRAD_TOL), np.float64: (dict(rtol=1e-12, atol=1e-12), dict(rtol=1e-11, atol=1e-11))}


def _match_torch_forward_backward(gm, tm, x, g, ftol, gtol):
    """One forward of x and backward of g through gpunn module gm and torch module tm (their
    gradients zeroed first): the outputs, the input's and every parameter's gradients agree."""
    xt = _to_torch(x).requires_grad_()
    tm.zero_grad()
    yt = tm(xt)
    yt.backward(_to_torch(g))
    xg = gn.tensor(x, requires_grad=True)
    gm.zero_grad()
    yg = gm(xg)
    yg.backward(gn.tensor(g))
    np.testing.assert_allclose(yg.numpy(), yt.detach().numpy(), **ftol)
    np.testing.assert_allclose(xg.grad.numpy(), xt.grad.numpy(), **gtol)
    for name, p in gm.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), getattr(tm, name).grad.numpy(), **gtol)


@requires_torch
@DTYPES
@pytest.mark.parametrize("kind", ["both", "no_bias", "no_affine"])
@pytest.mark.parametrize("shape,normalized", [((5, 7), (7,)), ((4, 3, 6), (3, 6))])
def test_layer_norm_matches_torch(kind, shape, normalized, dtype):
    kw = {"both": {}, "no_bias": {"bias": False}, "no_affine": {"elementwise_affine": False}}[kind]
    rng = np.random.default_rng(0)
    ftol, gtol = TOLS[dtype]
    tl = torch.nn.LayerNorm(normalized, **kw).to(torch.float64 if dtype == np.float64 else torch.float32)
    if tl.weight is not None:
        with torch.no_grad():
            tl.weight.copy_(_to_torch(rng.standard_normal(normalized).astype(np.float32)))
            if tl.bias is not None:
                tl.bias.copy_(_to_torch(rng.standard_normal(normalized).astype(np.float32)))
    gl = nn.LayerNorm(normalized, **kw)
    if dtype == np.float64:
        gl.double()
    gl.load_state_dict(tl.state_dict())
    assert repr(gl) == repr(tl)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    _match_torch_forward_backward(gl, tl, x, rng.standard_normal(shape).astype(dtype), ftol, gtol)


@requires_torch
@DTYPES
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shape", [(8, 4), (5, 4, 3)])
def test_batch_norm_matches_torch_in_training_and_eval(momentum, shape, dtype):
    rng = np.random.default_rng(1)
    ftol, gtol = TOLS[dtype]
    tb = torch.nn.BatchNorm1d(4, momentum=momentum).to(torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        tb.weight.copy_(_to_torch(rng.standard_normal(4).astype(np.float32)))
        tb.bias.copy_(_to_torch(rng.standard_normal(4).astype(np.float32)))
    gb = nn.BatchNorm1d(4, momentum=momentum)
    if dtype == np.float64:
        gb.double()
    gb.load_state_dict(tb.state_dict())
    assert repr(gb) == repr(tb)
    for step in range(3):
        x = (rng.standard_normal(shape) * 2 + step).astype(dtype)
        _match_torch_forward_backward(gb, tb, x, rng.standard_normal(shape).astype(dtype), ftol, gtol)
    for key, value in tb.state_dict().items():
        np.testing.assert_allclose(gb.state_dict()[key].numpy(), value.numpy(), **ftol)
    tb.eval()
    gb.eval()
    x = rng.standard_normal(shape).astype(dtype)
    np.testing.assert_allclose(gb(gn.tensor(x)).numpy(), tb(_to_torch(x)).detach().numpy(), **ftol)


@requires_torch
def test_batch_norm_loads_a_trained_torch_state_dict():
    rng = np.random.default_rng(2)
    tb = torch.nn.BatchNorm1d(5)
    for _ in range(4):
        tb(_to_torch(rng.standard_normal((7, 5)).astype(np.float32) * 3 + 1))
    gb = nn.BatchNorm1d(5)
    gb.load_state_dict(tb.state_dict())
    assert int(gb.num_batches_tracked) == 4 and gb.num_batches_tracked.dtype == np.int64
    tb.eval()
    gb.eval()
    x = rng.standard_normal((6, 5)).astype(np.float32)
    np.testing.assert_allclose(gb(gn.tensor(x)).numpy(), tb(_to_torch(x)).detach().numpy(), **F32_TOL)


@requires_torch
def test_module_reprs_equal_torch():
    for args, kw in [((0.5,), {}), ((0.2,), {"inplace": True})]:
        assert repr(nn.Dropout(*args, **kw)) == repr(torch.nn.Dropout(*args, **kw))
    for kw in [{}, {"affine": False}, {"bias": False}, {"momentum": None}, {"track_running_stats": False}]:
        assert repr(nn.BatchNorm1d(6, **kw)) == repr(torch.nn.BatchNorm1d(6, **kw))
    for shape, kw in [(5, {}), ((2, 3), {"bias": False}), (4, {"elementwise_affine": False})]:
        assert repr(nn.LayerNorm(shape, **kw)) == repr(torch.nn.LayerNorm(shape, **kw))
