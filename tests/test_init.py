"""gpunn.nn.init: gains, bounds and variances against the formulas (within 5% on 512x512)."""
import math

import numpy as np
import pytest

import gpunn as gn
from gpunn.nn import init


def _param(shape=(512, 512), dtype=np.float32):
    return gn.Parameter(np.zeros(shape, dtype))


def _close(actual, expected, rel=0.05):
    assert abs(actual - expected) <= rel * abs(expected), (actual, expected)


def test_calculate_gain():
    for lin in ("linear", "identity", "conv1d", "conv2d", "conv3d", "conv_transpose2d", "sigmoid"):
        assert init.calculate_gain(lin) == 1.0
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01 ** 2)))
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert init.calculate_gain("leaky_relu", 1) == pytest.approx(1.0)
    assert init.calculate_gain("leaky_relu", math.sqrt(5)) == pytest.approx(math.sqrt(1 / 3))
    assert init.calculate_gain("selu") == 0.75
    with pytest.raises(ValueError, match="Unsupported nonlinearity 'swish'.*relu"):
        init.calculate_gain("swish")
    with pytest.raises(ValueError, match="negative_slope"):
        init.calculate_gain("leaky_relu", True)


@pytest.mark.parametrize("shape", [(512, 512), (256, 512)])
def test_kaiming_uniform_and_normal(shape):
    fan_in, fan_out = shape[1], shape[0]
    for mode, fan in (("fan_in", fan_in), ("fan_out", fan_out)):
        for nl, a in (("relu", 0), ("leaky_relu", 0.1), ("tanh", 0)):
            gain = init.calculate_gain(nl, a)
            w = init.kaiming_uniform_(_param(shape), a=a, mode=mode, nonlinearity=nl)
            bound = gain * math.sqrt(3 / fan)
            v = w.numpy()
            assert np.abs(v).max() <= bound * (1 + 1e-6)
            _close(np.abs(v).max(), bound, 0.01)
            _close(v.var(), bound ** 2 / 3)
            assert abs(v.mean()) < 0.05 * bound
            w = init.kaiming_normal_(_param(shape), a=a, mode=mode, nonlinearity=nl)
            _close(w.numpy().std(), gain / math.sqrt(fan))
            assert abs(w.numpy().mean()) < 0.05 * gain / math.sqrt(fan)


def test_xavier_uniform_and_normal():
    shape = (256, 512)
    for gain in (1.0, init.calculate_gain("tanh")):
        a = gain * math.sqrt(6 / (256 + 512))
        v = init.xavier_uniform_(_param(shape), gain=gain).numpy()
        assert np.abs(v).max() <= a * (1 + 1e-6)
        _close(np.abs(v).max(), a, 0.01)
        _close(v.var(), a ** 2 / 3)
        v = init.xavier_normal_(_param(shape), gain=gain).numpy()
        _close(v.std(), gain * math.sqrt(2 / (256 + 512)))


def test_basic_fills():
    v = init.uniform_(_param(), -2.0, 3.0).numpy()
    assert v.min() >= -2.0 and v.max() < 3.0
    _close(v.mean(), 0.5)
    _close(v.var(), 25 / 12)
    v = init.normal_(_param(), mean=1.5, std=0.3).numpy()
    _close(v.mean(), 1.5)
    _close(v.std(), 0.3)
    assert (init.constant_(_param((3, 4)), 0.25).numpy() == 0.25).all()
    assert (init.zeros_(gn.Parameter(np.ones((3, 4), np.float32))).numpy() == 0).all()
    assert (init.ones_(_param((5,))).numpy() == 1).all()
    with pytest.raises(ValueError, match="a <= b"):
        init.uniform_(_param((2, 2)), 1.0, 0.0)
    with pytest.raises(ValueError, match="std"):
        init.normal_(_param((2, 2)), std=-1.0)


def test_in_place_no_graph_dtype_preserved():
    p = _param((64, 32), np.float64)
    data = p.data
    out = init.kaiming_uniform_(p)
    assert out is p and p.data is data and p.dtype == np.float64 and p.grad_fn is None and p.is_leaf
    assert p.numpy().any()
    p32 = _param((64, 32))
    init.xavier_normal_(p32)
    assert p32.dtype == np.float32
    raw = np.zeros((8, 4), np.float32)
    assert init.normal_(raw) is raw and raw.any()  # raw arrays are filled in place too
    with pytest.raises(TypeError, match="float tensor"):
        init.ones_(gn.tensor(np.zeros(3, np.int64)))


def test_generators_and_seed():
    a = init.kaiming_normal_(_param((32, 16)), generator=np.random.default_rng(3)).numpy()
    b = init.kaiming_normal_(_param((32, 16)), generator=np.random.default_rng(3)).numpy()
    np.testing.assert_array_equal(a, b)
    gn.manual_seed(11)
    c = init.xavier_uniform_(_param((32, 16))).numpy()
    gn.manual_seed(11)
    d = init.xavier_uniform_(_param((32, 16))).numpy()
    e = init.xavier_uniform_(_param((32, 16))).numpy()
    np.testing.assert_array_equal(c, d)
    assert not np.array_equal(d, e)


def test_fan_errors_and_aliases():
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init.kaiming_uniform_(_param((5,)))
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init.xavier_normal_(_param((5,)))
    with pytest.raises(ValueError, match="Mode 'fan_avg' not supported"):
        init.kaiming_normal_(_param((4, 4)), mode="fan_avg")
    # receptive field: (out, in, k) -> fan_in = in * k
    w = init.kaiming_uniform_(_param((64, 16, 8)), nonlinearity="relu").numpy()
    assert np.abs(w).max() <= math.sqrt(2) * math.sqrt(3 / (16 * 8)) * (1 + 1e-6)
    assert init.he_uniform_ is init.kaiming_uniform_ and init.he_normal_ is init.kaiming_normal_
    assert init.glorot_uniform_ is init.xavier_uniform_ and init.glorot_normal_ is init.xavier_normal_
    empty = _param((0, 3))
    assert init.kaiming_uniform_(empty) is empty


def test_linear_default_init_statistics():
    gn.manual_seed(0)
    lin = gn.nn.Linear(512, 512)
    bound = 1 / math.sqrt(512)
    for v in (lin.weight.numpy(), lin.bias.numpy()):
        assert np.abs(v).max() <= bound
    _close(np.abs(lin.weight.numpy()).max(), bound, 0.01)
    _close(lin.weight.numpy().var(), bound ** 2 / 3)
    lin.reset_parameters(generator=np.random.default_rng(1))
    w1 = lin.weight.numpy().copy()
    lin.reset_parameters(generator=np.random.default_rng(1))
    np.testing.assert_array_equal(lin.weight.numpy(), w1)
