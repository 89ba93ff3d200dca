"""gpunn.nn without torch: Module bookkeeping, layers, the fused Sequential, losses, Perceptron, errors."""
from collections import OrderedDict

import numpy as np
import pytest

import gpunn as gn
from gpunn import nn
from gpunn.kernels import registry
from torch_util import requires_torch

F32_TOL = dict(rtol=1.3e-6, atol=1e-5)  # PyTorch's assert_close defaults for float32
ACTIVATION_NAMES = [n for n in registry.ACTIVATIONS if n != "identity"]
ACTIVATIONS = [nn.ReLU, lambda: nn.LeakyReLU(0.1), lambda: nn.LeakyReLU(-0.2), nn.GELU,
               lambda: nn.GELU("tanh"), nn.Sigmoid, nn.Tanh]


def _x(n=6, k=5, seed=0, dtype=np.float32):
    return gn.tensor(np.random.default_rng(seed).standard_normal((n, k)).astype(dtype))


def _mlp(act_factory, dtype=np.float32, sizes=(5, 7, 3)):
    gn.manual_seed(1)
    return nn.Sequential(nn.Linear(sizes[0], sizes[1], dtype=dtype), act_factory(),
                         nn.Linear(sizes[1], sizes[2], dtype=dtype))


def _unfused(seq, x):
    for m in seq:
        x = m(x)
    return x


# ----------------------------------------------------------------------------- Module bookkeeping

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 3)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(3, 2, bias=False)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Block()
        self.head = nn.Sequential(nn.Linear(2, 2), nn.Tanh())
        self.scale = nn.Parameter(np.ones(2, np.float32))

    def forward(self, x):
        return self.head(self.encoder(x)) * self.scale


def test_registration_names_and_order_match_pytorch_layout():
    m = Model()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["scale", "encoder.fc1.weight", "encoder.fc1.bias", "encoder.fc2.weight",
                     "head.0.weight", "head.0.bias"]
    assert list(m.state_dict()) == names
    assert [n for n, _ in m.named_children()] == ["encoder", "head"]
    assert [n for n, _ in m.named_modules()] == ["", "encoder", "encoder.fc1", "encoder.act", "encoder.fc2",
                                                 "head", "head.0", "head.1"]
    assert len(list(m.modules())) == 8
    assert [type(c).__name__ for c in m.children()] == ["Block", "Sequential"]
    assert [p.shape for p in m.encoder.parameters(recurse=True)] == [(3, 4), (3,), (2, 3)]
    assert list(m.parameters(recurse=False)) == [m.scale]
    assert m.get_submodule("head.1") is m.head[1]
    assert m.encoder.fc2.bias is None and "encoder.fc2.bias" not in m.state_dict()


def test_paths_are_set_on_registration_and_propagate():
    m = Model()
    assert m._path == ""
    assert m.encoder.fc1._path == "encoder.fc1"
    assert m.head[0]._path == "head.0"
    outer = nn.Sequential(OrderedDict(model=m))
    assert m.encoder.fc1._path == "model.encoder.fc1"
    assert outer.model.head[1]._path == "model.head.1"


def test_shared_parameters_and_modules_are_listed_once():
    lin = nn.Linear(3, 3)
    seq = nn.Sequential(lin, nn.ReLU(), lin)
    assert len(list(seq.parameters())) == 2
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias"]
    assert len(list(seq.modules())) == 3  # seq, lin, relu
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]  # as PyTorch


def test_parameter_cache_follows_structure_changes():
    seq = nn.Sequential(nn.Linear(2, 2))
    assert len(list(seq.parameters())) == 2
    seq.append(nn.Linear(2, 1, bias=False))
    assert len(list(seq.parameters())) == 3
    seq[0].bias = None
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "1.weight"]
    del seq[0]
    assert [n for n, _ in seq.named_parameters()] == ["0.weight"]


def test_setattr_errors():
    class Forgot(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match="super\\(\\).__init__"):
        Forgot()
    lin = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="parameter 'weight'"):
        lin.weight = np.zeros((2, 2), np.float32)
    seq = nn.Sequential(nn.ReLU())
    with pytest.raises(TypeError, match="child module '0'"):
        seq.__setattr__("0", 3)
    with pytest.raises(TypeError, match="not a Module"):
        nn.Sequential(nn.ReLU(), "relu")


def test_zero_grad_train_eval_requires_grad():
    seq = _mlp(nn.ReLU)
    nn.MSELoss()(seq(_x()), gn.tensor(np.zeros((6, 3), np.float32))).backward()
    assert all(p.grad is not None for p in seq.parameters())
    seq.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.numpy().any() for p in seq.parameters())
    seq.zero_grad()
    assert all(p.grad is None for p in seq.parameters())

    assert seq.training and all(m.training for m in seq.modules())
    assert seq.eval() is seq
    assert not any(m.training for m in seq.modules())
    seq.train()
    assert all(m.training for m in seq.modules())
    with pytest.raises(ValueError, match="bool"):
        seq.train("no")
    seq.requires_grad_(False)
    assert not any(p.requires_grad for p in seq.parameters())


def test_to_cpu_and_dtype():
    seq = _mlp(nn.ReLU)
    before = [p.data for p in seq.parameters()]
    assert seq.to("cpu") is seq
    assert all(p.data is b for p, b in zip(seq.parameters(), before))  # already there: not copied
    assert all(p.device == gn.device("cpu") for p in seq.parameters())
    params = list(seq.parameters())
    seq.to(np.float64)
    assert list(seq.parameters()) == params  # same Parameter objects
    assert all(p.dtype == np.float64 for p in seq.parameters())
    np.testing.assert_array_equal(seq[0].weight.numpy(), before[0].astype(np.float64))
    y = seq(_x(dtype=np.float64))
    assert y.dtype == np.float64
    with pytest.raises(ValueError, match="Unknown device"):
        seq.to("tpu")


def test_to_gpu_without_gpu_says_why():
    usable, why = gn.gpu_status()
    if usable:
        seq = _mlp(nn.ReLU).to("gpu")
        assert all(p.device.is_gpu for p in seq.parameters())
        assert seq.to("cpu")[0].weight.device == gn.device("cpu")
    else:
        with pytest.raises(gn.DeviceError, match="no GPU is usable"):
            _mlp(nn.ReLU).to("gpu")


def test_repr_matches_pytorch_format():
    seq = nn.Sequential(nn.Linear(2, 3), nn.LeakyReLU(0.1), nn.GELU("tanh"), nn.Softmax(-1), nn.Flatten(),
                        nn.Identity(), nn.Linear(3, 1, bias=False), nn.Sequential(nn.Tanh()))
    assert repr(seq) == (
        "Sequential(\n"
        "  (0): Linear(in_features=2, out_features=3, bias=True)\n"
        "  (1): LeakyReLU(negative_slope=0.1)\n"
        "  (2): GELU(approximate='tanh')\n"
        "  (3): Softmax(dim=-1)\n"
        "  (4): Flatten(start_dim=1, end_dim=-1)\n"
        "  (5): Identity()\n"
        "  (6): Linear(in_features=3, out_features=1, bias=False)\n"
        "  (7): Sequential(\n"
        "    (0): Tanh()\n"
        "  )\n"
        ")")
    assert repr(nn.Dense(2, 3, "leaky_relu", negative_slope=0.2)) == \
        "Dense(in_features=2, out_features=3, bias=True, activation='leaky_relu', negative_slope=0.2)"
    assert repr(nn.MSELoss()) == "MSELoss()"


# ----------------------------------------------------------------------------- state_dict

def test_state_dict_shares_memory_and_keys():
    seq = _mlp(nn.ReLU)
    sd = seq.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(type(v) is gn.Tensor and not v.requires_grad for v in sd.values())
    assert np.shares_memory(sd["0.weight"].data, seq[0].weight.data)
    kv = seq.state_dict(keep_vars=True)
    assert kv["2.bias"] is seq[2].bias


def test_load_state_dict_copies_in_place_from_numpy_tensors_and_duck_typed_tensors():
    src, dst = _mlp(nn.ReLU), _mlp(nn.ReLU)
    for p in src.parameters():
        p.data[...] = np.random.default_rng(3).standard_normal(p.shape)
    # parameters as views into one flat buffer, as the optimizers keep them
    flat = np.zeros(sum(p.numel() for p in dst.parameters()), np.float32)
    off = 0
    for p in dst.parameters():
        view = flat[off:off + p.numel()].reshape(p.shape)
        view[...] = p.data
        p.data = view
        off += p.numel()
    arrays = [p.data for p in dst.parameters()]

    class FakeTorchTensor:  # what torch.Tensor offers: .detach().cpu().numpy()
        def __init__(self, a):
            self.a = a

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return self.a

    sd = src.state_dict()
    mixed = OrderedDict([("0.weight", sd["0.weight"]), ("0.bias", sd["0.bias"].numpy().copy()),
                         ("2.weight", FakeTorchTensor(sd["2.weight"].numpy().copy())),
                         ("2.bias", sd["2.bias"].numpy().astype(np.float64))])  # float64: cast, as copy_
    result = dst.load_state_dict(mixed)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert all(p.data is a for p, a in zip(dst.parameters(), arrays))  # never rebound
    np.testing.assert_array_equal(flat, np.concatenate([p.numpy().ravel() for p in src.parameters()]))
    assert dst[2].bias.dtype == np.float32
    x = _x()
    np.testing.assert_array_equal(dst(x).numpy(), src(x).numpy())


def test_load_state_dict_errors_name_every_bad_key_and_copy_nothing():
    seq = _mlp(nn.ReLU)
    before = {k: v.numpy().copy() for k, v in seq.state_dict().items()}
    bad = OrderedDict([("0.weight", np.ones((7, 5), np.float32)),       # fine, but must not be copied
                       ("0.bias", np.ones((8,), np.float32)),           # wrong shape
                       ("2.weight", np.ones((3, 7), np.int64)),         # integer dtype
                       ("extra.weight", np.ones(2, np.float32))])       # unexpected; 2.bias missing
    with pytest.raises(nn.StateDictError) as info:
        seq.load_state_dict(bad)
    msg = str(info.value)
    assert "Missing key(s) in state_dict: '2.bias'" in msg
    assert "Unexpected key(s) in state_dict: 'extra.weight'" in msg
    assert "size mismatch for '0.bias': expected shape (7,), got shape (8,)" in msg
    assert "dtype mismatch for '2.weight'" in msg and "int64" in msg
    assert "'0.weight'" not in msg
    for k, v in seq.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k])  # nothing was copied

    with pytest.raises(nn.StateDictError, match="cannot read the value"):
        seq.load_state_dict({**{k: v for k, v in before.items()}, "0.bias": "zeros"})
    with pytest.raises(TypeError, match="mapping"):
        seq.load_state_dict([1, 2])


def test_load_state_dict_non_strict():
    seq = _mlp(nn.ReLU)
    w = np.full((7, 5), 0.5, np.float32)
    res = seq.load_state_dict({"0.weight": w, "head.bias": np.zeros(1, np.float32)}, strict=False)
    assert res.missing_keys == ["0.bias", "2.weight", "2.bias"]
    assert res.unexpected_keys == ["head.bias"]
    np.testing.assert_array_equal(seq[0].weight.numpy(), w)
    with pytest.raises(nn.StateDictError, match="size mismatch for '0.weight'"):
        seq.load_state_dict({"0.weight": np.zeros((5, 7), np.float32)}, strict=False)


# ----------------------------------------------------------------------------- Linear and Dense

def test_linear_shapes_init_and_seed():
    gn.manual_seed(7)
    a = nn.Linear(64, 32)
    gn.manual_seed(7)
    b = nn.Linear(64, 32)
    c = nn.Linear(64, 32)
    assert a.weight.shape == (32, 64) and a.bias.shape == (32,)
    assert a.weight.dtype == np.float32 and a.weight.requires_grad and a.weight.is_leaf
    np.testing.assert_array_equal(a.weight.numpy(), b.weight.numpy())
    np.testing.assert_array_equal(a.bias.numpy(), b.bias.numpy())
    assert not np.array_equal(a.weight.numpy(), c.weight.numpy())
    bound = 1 / np.sqrt(64)
    assert np.abs(a.weight.numpy()).max() <= bound and np.abs(a.bias.numpy()).max() <= bound
    assert np.abs(a.weight.numpy()).max() > 0.9 * bound
    x = _x(3, 64)
    np.testing.assert_allclose(a(x).numpy(), x.numpy() @ a.weight.numpy().T + a.bias.numpy(), **F32_TOL)
    nb = nn.Linear(64, 2, bias=False)
    np.testing.assert_allclose(nb(x).numpy(), x.numpy() @ nb.weight.numpy().T, **F32_TOL)
    x3 = gn.tensor(np.ones((2, 3, 64), np.float32))
    assert a(x3).shape == (2, 3, 32)
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(-1, 3)
    with pytest.raises(TypeError, match="float dtype"):
        nn.Linear(2, 3, dtype=np.int32)


def test_wrong_width_names_layer_path_and_shapes():
    with pytest.raises(ValueError, match=r"'Linear'.*\(batch, 4\).*\(2, 5\)"):
        nn.Linear(4, 3)(_x(2, 5))
    m = Model()
    with pytest.raises(ValueError, match=r"'encoder\.fc1'.*\(batch, 4\) but got \(2, 5\)"):
        m(_x(2, 5))
    seq = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(3, 2))  # broken middle layer
    with pytest.raises(ValueError, match=r"dense layer '2'.*\(batch, 3\) but got \(6, 4\)"):
        seq(_x())
    outer = nn.Sequential(OrderedDict(encoder=nn.Sequential(nn.Linear(4, 4), nn.GELU())))
    with pytest.raises(ValueError, match=r"'encoder\.0'.*\(batch, 4\) but got \(6, 5\)"):
        outer(_x())


def test_dense_module():
    gn.manual_seed(2)
    d = nn.Dense(5, 4, activation="tanh")
    assert list(d.state_dict()) == ["weight", "bias"]
    x = _x()
    np.testing.assert_allclose(d(x).numpy(), np.tanh(x.numpy() @ d.weight.numpy().T + d.bias.numpy()), **F32_TOL)
    with pytest.raises(ValueError, match="Unknown activation 'swish'.*relu.*leaky_relu.*gelu_tanh.*sigmoid"):
        nn.Dense(5, 4, activation="swish")
    with pytest.raises(ValueError, match="Unknown activation"):
        d.activation = "softplus"
    lk = nn.Dense(5, 4, "leaky_relu", negative_slope=0.3)
    z = x.numpy() @ lk.weight.numpy().T + lk.bias.numpy()
    np.testing.assert_allclose(lk(x).numpy(), np.where(z > 0, z, 0.3 * z), **F32_TOL)


# ----------------------------------------------------------------------------- activation modules

def test_activation_modules_match_formulas():
    from math import erf
    x = _x(4, 6)
    a = x.numpy().astype(np.float64)
    verf = np.vectorize(erf)
    cases = {
        nn.ReLU(): np.maximum(a, 0),
        nn.LeakyReLU(): np.where(a > 0, a, 0.01 * a),
        nn.LeakyReLU(0.2): np.where(a > 0, a, 0.2 * a),
        nn.GELU(): 0.5 * a * (1 + verf(a / np.sqrt(2))),
        nn.GELU("tanh"): 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a ** 3))),
        nn.Sigmoid(): 1 / (1 + np.exp(-a)),
        nn.Tanh(): np.tanh(a),
        nn.Softmax(dim=1): np.exp(a) / np.exp(a).sum(1, keepdims=True),
        nn.Softmax(dim=0): np.exp(a) / np.exp(a).sum(0, keepdims=True),
        nn.LogSoftmax(): a - np.log(np.exp(a).sum(1, keepdims=True)),
        nn.Identity(3, foo=1): a,
    }
    for mod, ref in cases.items():
        np.testing.assert_allclose(mod(x).numpy(), ref, **F32_TOL, err_msg=repr(mod))
    with pytest.raises(ValueError, match="approximate"):
        nn.GELU("fast")


def test_flatten():
    x = gn.tensor(np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5), requires_grad=True)
    assert nn.Flatten()(x).shape == (2, 60)
    assert nn.Flatten(0)(x).shape == (120,)
    assert nn.Flatten(1, 2)(x).shape == (2, 12, 5)
    assert nn.Flatten(-2)(x).shape == (2, 3, 20)
    np.testing.assert_array_equal(nn.Flatten()(x).numpy(), x.numpy().reshape(2, 60))
    nn.Flatten()(x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.ones(x.shape))
    with pytest.raises(IndexError, match="out of range"):
        nn.Flatten(5)(x)
    seq = nn.Sequential(nn.Flatten(), nn.Linear(60, 2), nn.ReLU())
    assert seq(x).shape == (2, 2)


# ----------------------------------------------------------------------------- Sequential

def test_sequential_container_protocol():
    a, r, b = nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)
    seq = nn.Sequential(a, r, b)
    assert len(seq) == 3 and list(seq) == [a, r, b]
    assert seq[0] is a and seq[-1] is b and getattr(seq, "1") is r
    with pytest.raises(IndexError, match="out of range"):
        seq[3]
    sl = seq[1:]
    assert isinstance(sl, nn.Sequential) and list(sl) == [r, b]
    assert list(sl._modules) == ["1", "2"] and b._path == "2"  # a view: paths unchanged
    t = nn.Tanh()
    seq[1] = t
    assert seq[1] is t and t._path == "1"
    assert seq.append(nn.Sigmoid()) is seq and len(seq) == 4
    del seq[1]
    assert list(seq._modules) == ["0", "1", "2"] and seq[1] is b and b._path == "1"
    seq.insert(1, nn.ReLU())
    assert [type(m).__name__ for m in seq] == ["Linear", "ReLU", "Linear", "Sigmoid"]
    seq.insert(-1, nn.Identity())
    assert [type(m).__name__ for m in seq] == ["Linear", "ReLU", "Linear", "Identity", "Sigmoid"]
    assert type(seq.pop()).__name__ == "Sigmoid" and len(seq) == 4
    seq.extend([nn.Tanh()])
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]

    od = nn.Sequential(OrderedDict([("fc1", nn.Linear(3, 4)), ("act", nn.GELU()), ("fc2", nn.Linear(4, 1))]))
    assert list(od.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert od.fc1 is od[0] and od.fusion_plan() == ["dense(fc1, gelu)", "dense(fc2, identity)"]


def test_fusion_plan():
    seq = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.LeakyReLU(0.2), nn.Identity(),
                        nn.Linear(8, 8), nn.Softmax(), nn.Dense(8, 8, "sigmoid"), nn.Tanh(),
                        nn.Dense(8, 8, None), nn.GELU("tanh"), nn.Linear(8, 3))
    assert seq.fusion_plan() == ["dense(0, relu)", "dense(2, leaky_relu)", "dense(5, identity)", "Softmax",
                                 "dense(7, sigmoid)", "Tanh", "dense(9, gelu_tanh)", "dense(11, identity)"]

    class MyLinear(nn.Linear):  # a subclass may override forward: never fused
        def forward(self, x):
            return super().forward(x) * 2.0

    sub = nn.Sequential(MyLinear(5, 3), nn.ReLU())
    assert sub.fusion_plan() == ["MyLinear", "ReLU"]
    x = _x()
    np.testing.assert_allclose(sub(x).numpy(), np.maximum(_unfused(sub, x).numpy(), 0), **F32_TOL)


@pytest.mark.parametrize("act", ACTIVATIONS, ids=["relu", "leaky", "leaky_neg", "gelu", "gelu_tanh",
                                                   "sigmoid", "tanh"])
def test_fused_sequential_equals_module_by_module(act):
    seq = _mlp(act)
    assert seq.fusion_plan()[0] != "Linear"
    x = gn.tensor(_x().numpy(), requires_grad=True)
    target = gn.tensor(np.random.default_rng(5).standard_normal((6, 3)).astype(np.float32))

    fused = seq(x)
    nn.MSELoss()(fused, target).backward()
    g_fused = [p.grad.numpy().copy() for p in seq.parameters()] + [x.grad.numpy().copy()]
    seq.zero_grad()
    x.grad = None
    unfused = _unfused(seq, x)
    nn.MSELoss()(unfused, target).backward()
    g_unfused = [p.grad.numpy() for p in seq.parameters()] + [x.grad.numpy()]

    np.testing.assert_allclose(fused.numpy(), unfused.numpy(), **F32_TOL)
    for gf, gu in zip(g_fused, g_unfused):
        np.testing.assert_allclose(gf, gu, **F32_TOL)
    # the fused Sequential builds fewer graph nodes: one per Linear
    assert fused.grad_fn.name == "Dense" and fused.grad_fn.inputs[0].grad_fn.name == "Dense"


def test_sequential_fallback_paths_agree_with_fast_path():
    seq = _mlp(nn.GELU)
    x = _x()
    fast = seq(x).numpy()
    np.testing.assert_allclose(seq(x.numpy()).numpy(), fast, **F32_TOL)  # raw array input
    x3 = gn.tensor(x.numpy().reshape(2, 3, 5))  # 3-D input: checked path
    np.testing.assert_allclose(seq(x3).numpy().reshape(6, 3), fast, **F32_TOL)
    with pytest.raises(TypeError, match="dtypes differ"):
        seq(_x(dtype=np.float64))
    with pytest.raises(ValueError, match=r"dense layer '0'"):
        seq(gn.tensor(np.ones(4, np.float32)))


def test_sequential_plan_is_rebuilt_when_modules_change():
    seq = _mlp(nn.ReLU)
    x = _x()
    z = _unfused(seq[:1], x).numpy()  # first layer's pre-activation
    np.testing.assert_allclose(seq(x).numpy(), np.maximum(z, 0) @ seq[2].weight.numpy().T + seq[2].bias.numpy(),
                               **F32_TOL)
    seq[1] = nn.Tanh()
    np.testing.assert_allclose(seq(x).numpy(), _unfused(seq, x).numpy(), **F32_TOL)
    h = np.tanh(z)
    np.testing.assert_allclose(seq(x).numpy(), h @ seq[2].weight.numpy().T + seq[2].bias.numpy(), **F32_TOL)
    seq[1] = nn.LeakyReLU(0.5)
    out1 = seq(x).numpy()
    seq[1].negative_slope = 0.0
    out2 = seq(x).numpy()
    assert not np.allclose(out1, out2)
    np.testing.assert_allclose(out2, _unfused(seq, x).numpy(), **F32_TOL)
    w = nn.Parameter(np.zeros((7, 5), np.float32))
    seq[0].weight = w  # rebinding a parameter is seen at once
    np.testing.assert_allclose(seq(x).numpy(), _unfused(seq, x).numpy(), **F32_TOL)


def test_gradcheck_linear_dense_and_fused_sequential():
    rng = np.random.default_rng(0)
    x = gn.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    lin = nn.Linear(4, 3, dtype=np.float64)
    assert gn.gradcheck(lambda x, W, b: lin(x), (x, lin.weight, lin.bias))
    for act in [*ACTIVATION_NAMES, None]:
        d = nn.Dense(4, 3, act, dtype=np.float64)
        assert gn.gradcheck(lambda x, W, b: d(x), (x, d.weight, d.bias)), act
    for act in ACTIVATIONS:
        seq = _mlp(act, dtype=np.float64, sizes=(4, 5, 2))
        assert len(seq.fusion_plan()) == 2
        assert gn.gradcheck(lambda x, *params: seq(x), (x, *seq.parameters()))
    nb = nn.Sequential(nn.Linear(4, 3, bias=False, dtype=np.float64), nn.Sigmoid())
    assert gn.gradcheck(lambda x, W: nb(x), (x, nb[0].weight))


# ----------------------------------------------------------------------------- losses

def test_loss_modules_wrap_functional_and_validate_reduction():
    rng = np.random.default_rng(1)
    x = gn.tensor(rng.standard_normal((5, 3)).astype(np.float32))
    t = gn.tensor(rng.standard_normal((5, 3)).astype(np.float32))
    d = x.numpy().astype(np.float64) - t.numpy()
    np.testing.assert_allclose(nn.MSELoss()(x, t).item(), (d ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(nn.MSELoss(reduction="sum")(x, t).item(), (d ** 2).sum(), rtol=1e-5)
    np.testing.assert_allclose(nn.L1Loss(reduction="none")(x, t).numpy(), np.abs(d), **F32_TOL)
    labels = gn.tensor(np.array([0, 2, -100, 1, 2]))
    lse = np.log(np.exp(x.numpy().astype(np.float64)).sum(1))
    per = lse - x.numpy()[np.arange(5), np.where(labels.numpy() < 0, 0, labels.numpy())]
    keep = labels.numpy() != -100
    np.testing.assert_allclose(nn.CrossEntropyLoss()(x, labels).item(), per[keep].mean(), rtol=1e-5)
    np.testing.assert_allclose(nn.CrossEntropyLoss(ignore_index=1)(x, gn.tensor(np.array([0, 2, 1, 1, 2]))).item(),
                               per[[0, 1, 4]].mean(), rtol=1e-5)
    y01 = gn.tensor((rng.random((5, 3)) > 0.5).astype(np.float32))
    a, y = x.numpy().astype(np.float64), y01.numpy()
    bce = np.log1p(np.exp(-np.abs(a))) + np.maximum(a, 0) - a * y
    np.testing.assert_allclose(nn.BCEWithLogitsLoss()(x, y01).item(), bce.mean(), rtol=1e-5)
    pw = np.array([1.0, 2.0, 3.0], np.float32)
    bce_pw = (1 - y) * a + (1 + (pw - 1) * y) * (np.log1p(np.exp(-np.abs(a))) + np.maximum(-a, 0))
    np.testing.assert_allclose(nn.BCEWithLogitsLoss(pos_weight=pw, reduction="sum")(x, y01).item(), bce_pw.sum(),
                               rtol=1e-5)
    for cls in (nn.MSELoss, nn.L1Loss, nn.CrossEntropyLoss, nn.BCEWithLogitsLoss):
        with pytest.raises(ValueError, match="reduction must be one of"):
            cls(reduction="avg")
    with pytest.raises(ValueError, match="does not\\s+broadcast|differ"):
        nn.MSELoss()(x, gn.tensor(np.zeros((5, 1), np.float32)))


@requires_torch
def test_new_loss_modules_match_torch_modules_and_their_state():
    """BCELoss, HuberLoss, SmoothL1Loss and the weighted BCE losses as torch's modules: the same
    values, reprs, and state_dict keys (weight and pos_weight are buffers)."""
    import torch

    rng = np.random.default_rng(2)
    p = rng.uniform(0.05, 0.95, (5, 3)).astype(np.float32)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    y = rng.uniform(0, 1, (5, 3)).astype(np.float32)
    w = np.array([0.5, 1.0, 2.0], np.float32)
    pw = np.array([1.0, 2.0, 3.0], np.float32)
    pairs = [
        (nn.BCELoss(weight=w), torch.nn.BCELoss(weight=torch.tensor(w)), p),
        (nn.BCELoss(reduction="sum"), torch.nn.BCELoss(reduction="sum"), p),
        (nn.HuberLoss(delta=0.5), torch.nn.HuberLoss(delta=0.5), x),
        (nn.SmoothL1Loss(beta=0.25, reduction="none"), torch.nn.SmoothL1Loss(beta=0.25, reduction="none"), x),
        (nn.BCEWithLogitsLoss(torch.tensor(w), pos_weight=torch.tensor(pw)),
         torch.nn.BCEWithLogitsLoss(torch.tensor(w), pos_weight=torch.tensor(pw)), x),
    ]
    for ours, theirs, inp in pairs:
        np.testing.assert_allclose(ours(gn.tensor(inp), gn.tensor(y)).numpy(),
                                   theirs(torch.tensor(inp), torch.tensor(y)).numpy(), rtol=1e-5, atol=1e-6)
        assert list(ours.state_dict()) == list(theirs.state_dict()), type(ours).__name__
        assert repr(ours) == repr(theirs)
    ours = nn.BCEWithLogitsLoss(pos_weight=pw)
    ours.load_state_dict(torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pw * 2)).state_dict())
    np.testing.assert_array_equal(ours.pos_weight.numpy(), pw * 2)


def test_new_loss_modules_refuse_bad_options():
    x = gn.tensor(np.full((2, 3), 0.5, np.float32))
    with pytest.raises(ValueError, match="HuberLoss: delta must be > 0, got 0"):
        nn.HuberLoss(delta=0)
    with pytest.raises(ValueError, match="SmoothL1Loss: beta must be >= 0, got -1"):
        nn.SmoothL1Loss(beta=-1)
    with pytest.raises(ValueError, match="binary_cross_entropy: all elements of input should be between 0 and 1"):
        nn.BCELoss()(gn.tensor(np.array([0.5, 1.5], np.float32)), gn.tensor(np.zeros(2, np.float32)))
    with pytest.raises(ValueError, match=r"mse_loss: weight of shape \(3,\) must have the input's shape \(2, 3\)"):
        gn.nn.functional.mse_loss(x, x, weight=np.ones(3, np.float32))
    with pytest.raises(TypeError, match="first argument is weight"):
        nn.BCEWithLogitsLoss("sum")
    with pytest.warns(DeprecationWarning, match="size_average and reduce are deprecated"):
        assert nn.MSELoss(size_average=False).reduction == "sum"
    with pytest.warns(DeprecationWarning):
        assert nn.L1Loss(reduce=False).reduction == "none"


# ----------------------------------------------------------------------------- Perceptron

X_BOOL = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)


@pytest.mark.parametrize("name,y", [("AND", [0, 0, 0, 1]), ("OR", [0, 1, 1, 1])])
def test_perceptron_learns_linearly_separable_gates(name, y):
    p = nn.Perceptron(2)
    errors = p.fit(X_BOOL, np.array(y), epochs=50, lr=1.0, seed=0)
    assert errors[-1] == 0 and len(errors) < 50, errors
    np.testing.assert_array_equal(p.predict(X_BOOL), y)
    assert p.score(X_BOOL, y) == 1.0
    out = p(gn.tensor(X_BOOL))
    assert isinstance(out, gn.Tensor) and out.shape == (4,)
    np.testing.assert_array_equal(out.numpy(), y)
    assert list(p.state_dict()) == ["weight", "bias"] and p.weight.shape == (1, 2)


def test_perceptron_cannot_learn_xor():
    y = np.array([0, 1, 1, 0])
    p = nn.Perceptron(2)
    errors = p.fit(X_BOOL, y, epochs=100, seed=0)
    assert len(errors) == 100 and min(errors) > 0
    assert p.score(X_BOOL, y) <= 0.75


def test_perceptron_rule_and_errors():
    p = nn.Perceptron(3)
    # one sample, one mistake: w += lr (y - yhat) x, b += lr (y - yhat)
    hist = p.fit(np.array([[1.0, 2.0, -1.0]]), np.array([1]), epochs=1, lr=0.5, shuffle=False)
    assert hist == [1]
    np.testing.assert_allclose(p.weight.numpy(), [[0.5, 1.0, -0.5]])
    np.testing.assert_allclose(p.bias.numpy(), [0.5])
    gn.manual_seed(4)
    a = nn.Perceptron(2).fit(X_BOOL, [0, 1, 1, 0], epochs=5, stop_when_converged=False)
    gn.manual_seed(4)
    b = nn.Perceptron(2).fit(X_BOOL, [0, 1, 1, 0], epochs=5, stop_when_converged=False)
    assert a == b and len(a) == 5
    with pytest.raises(ValueError, match="0/1 labels"):
        p.fit(np.ones((2, 3)), np.array([0, 2]))
    with pytest.raises(ValueError, match=r"\(n_samples, 3\), got \(2, 2\)"):
        p.predict(np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"y must have shape \(2,\)"):
        p.fit(np.ones((2, 3)), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="Perceptron"):
        p(gn.tensor(np.ones((2, 2), np.float32)))


def test_nn_namespace():
    import gpunn.nn.functional as F
    assert F is gn.functional and nn.functional is gn.functional
    assert nn.Parameter is gn.Parameter and nn.init.kaiming_uniform_ is nn.init.he_uniform_
    for name in nn.__all__:
        assert hasattr(nn, name), name


def test_dense_nodes_carry_the_layer_name_path_or_class():
    x = gn.tensor(np.ones((2, 3), np.float32), requires_grad=True)
    root = nn.Dense(3, 2, activation="tanh")
    assert root._layer_name == "Dense" and root(x).grad_fn.layer == "Dense"
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2)))
    assert model(x).grad_fn.layer == "2.0"
    assert [m._layer_name for m in model.modules()] == ["Sequential", "0", "1", "2", "2.0"]
