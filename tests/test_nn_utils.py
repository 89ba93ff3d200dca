"""gn.nn.utils: parameters_to_vector / vector_to_parameters (torch.nn.utils' names)."""
import numpy as np
import pytest

import gpunn as gn
from gpunn.nn.utils import parameters_to_vector, vector_to_parameters


def _model(dtype=np.float32):
    gn.manual_seed(0)
    return gn.nn.Sequential(gn.nn.Linear(3, 4, dtype=dtype), gn.nn.ReLU(), gn.nn.Linear(4, 2, dtype=dtype))


def test_parameters_to_vector_concatenates_in_order_as_a_copy():
    m = _model()
    v = parameters_to_vector(m.parameters())
    expected = np.concatenate([np.asarray(p).ravel() for p in m.parameters()])
    assert isinstance(v, gn.Tensor) and v.shape == (26,) and v.dtype == np.float32
    np.testing.assert_array_equal(v.numpy(), expected)
    v.data[...] = 0  # a copy: the parameters do not change
    np.testing.assert_array_equal(np.concatenate([np.asarray(p).ravel() for p in m.parameters()]), expected)


def test_vector_to_parameters_roundtrip_in_place_keeps_the_optimizer_views():
    m = _model()
    opt = gn.optim.SGD(m.parameters(), lr=0.1)
    arrays = [p.data for p in m.parameters()]
    new = np.arange(26, dtype=np.float64) / 10  # float64 values are cast to the parameters' float32
    vector_to_parameters(new, m.parameters())
    assert all(p.data is a for p, a in zip(m.parameters(), arrays))  # written in place, not rebound
    np.testing.assert_allclose(parameters_to_vector(m.parameters()).numpy(), new, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(m[0].weight), new[:12].reshape(4, 3), rtol=1e-6)
    # the optimizer still steps the same memory
    loss = m(gn.tensor(np.ones((2, 3), np.float32))).sum()
    loss.backward()
    opt.step()
    assert not np.allclose(parameters_to_vector(m.parameters()).numpy(), new)
    vector_to_parameters(parameters_to_vector(m.parameters()), m.parameters())  # a Tensor works too


def test_vector_to_parameters_checks_size_and_shape():
    m = _model()
    with pytest.raises(ValueError, match="has 25 elements but the parameters hold 26"):
        vector_to_parameters(np.zeros(25), m.parameters())
    with pytest.raises(ValueError, match="must be 1-D"):
        vector_to_parameters(np.zeros((2, 13)), m.parameters())
    with pytest.raises(TypeError, match="Tensor or an array"):
        vector_to_parameters([0.0] * 26, m.parameters())
    with pytest.raises(TypeError, match="item 0 is a ndarray"):
        parameters_to_vector([np.zeros(3)])
    with pytest.raises(ValueError, match="no parameters"):
        parameters_to_vector([])


def test_parameters_to_vector_refuses_mixed_dtypes():
    a = gn.nn.Parameter(np.zeros(2, np.float32))
    b = gn.nn.Parameter(np.zeros(2, np.float64))
    with pytest.raises(TypeError, match="several dtypes"):
        parameters_to_vector([a, b])


def test_utils_is_reachable_from_gn_nn():
    assert gn.nn.utils.parameters_to_vector is parameters_to_vector
    assert gn.nn.utils.vector_to_parameters is vector_to_parameters
