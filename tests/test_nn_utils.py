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


# ----------------------------------------------------------------------------- gradient clipping

from gpunn.nn.utils import clip_grad_norm_, clip_grad_value_  # noqa: E402
from torch_util import requires_torch, torch  # noqa: E402


def _grads_after_backward(model, scale=10.0, seed=0):
    x = gn.tensor(np.random.default_rng(seed).standard_normal((5, 3)).astype(np.float32))
    (model(x) * scale).sum().backward()
    return [None if p.grad is None else p.grad.numpy().copy() for p in model.parameters()]


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf"), "inf"])
def test_clip_grad_norm_scales_all_gradients_by_one_factor(norm_type):
    m = _model()
    before = _grads_after_backward(m)
    flat = np.concatenate([g.ravel().astype(np.float64) for g in before])
    p = float(norm_type)
    expected = np.abs(flat).max() if p == np.inf else (np.abs(flat) ** p).sum() ** (1 / p)
    total = clip_grad_norm_(m.parameters(), 0.5, norm_type=norm_type)
    assert isinstance(total, gn.Tensor) and total.shape == () and total.dtype == np.float32
    np.testing.assert_allclose(total.item(), expected, rtol=1e-5)
    coef = 0.5 / (expected + 1e-6)
    for g, p_ in zip(before, m.parameters()):
        np.testing.assert_allclose(p_.grad.numpy(), g * coef, rtol=1e-5, atol=1e-7)


@requires_torch
def test_clip_grad_norm_order_0_counts_parameters_as_torch():
    """norm_type=0: torch's norm of the per-parameter norms counts the parameters with a non-zero
    gradient (not the elements), also when the gradients tile an optimizer's flat buffer."""
    m = _model()
    gn.optim.SGD(m.parameters(), lr=0.1)  # the gradients become views of one flat buffer
    before = _grads_after_backward(m)
    tm = [torch.tensor(g, requires_grad=True) for g in before]
    for t, g in zip(tm, before):
        t.grad = torch.tensor(g)
    want = torch.nn.utils.clip_grad_norm_(tm, 0.5, norm_type=0)
    got = clip_grad_norm_(m.parameters(), 0.5, norm_type=0)
    assert got.item() == want.item() == len(before)
    for t, p_ in zip(tm, m.parameters()):
        np.testing.assert_allclose(p_.grad.numpy(), t.grad.numpy(), rtol=1e-6)


def test_clip_grad_norm_leaves_small_gradients_and_skips_missing_ones():
    m = _model()
    m[2].bias.requires_grad_(False)
    before = _grads_after_backward(m, scale=1e-3)
    total = clip_grad_norm_(m.parameters(), 100.0)
    for g, p_ in zip([b for b in before if b is not None], [p for p in m.parameters() if p.grad is not None]):
        np.testing.assert_array_equal(p_.grad.numpy(), g)  # factor clamped to 1
    assert total.item() > 0 and m[2].bias.grad is None
    assert clip_grad_norm_([gn.nn.Parameter(np.zeros(2, np.float32))], 1.0).item() == 0.0  # no gradients: 0


def test_clip_grad_norm_nonfinite_and_bad_arguments():
    m = _model()
    _grads_after_backward(m)
    m[0].weight.grad.data[0, 0] = np.inf
    with pytest.raises(RuntimeError, match="The total norm of order 2.0 for gradients from `parameters` is non-finite"):
        clip_grad_norm_(m.parameters(), 1.0, error_if_nonfinite=True)
    with np.errstate(invalid="ignore"):  # as PyTorch: scaled by the non-finite norm (inf * 0 gives NaN)
        assert np.isinf(clip_grad_norm_(m.parameters(), 1.0).item())
    with pytest.raises(TypeError, match="clip_grad_norm_: max_norm must be a number"):
        clip_grad_norm_(m.parameters(), "1")
    with pytest.raises(TypeError, match="item 0 is a ndarray"):
        clip_grad_value_([np.zeros(2)], 1.0)


def test_clip_grad_value_clamps_in_place():
    m = _model()
    before = _grads_after_backward(m)
    arrays = [p.grad.data for p in m.parameters()]
    assert clip_grad_value_(m.parameters(), 0.25, foreach=True) is None
    for g, p_, a in zip(before, m.parameters(), arrays):
        np.testing.assert_array_equal(p_.grad.numpy(), np.clip(g, -0.25, 0.25))
        assert p_.grad.data is a


@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
def test_clipping_reaches_the_optimizers_flat_gradient_buffer(opt_name):
    """The optimizers keep .grad as views of one flat buffer per group: the step must see the clipped
    values. Compared with stepping on gradients clipped by hand outside any optimizer."""
    m, ref = _model(), _model()
    opt = getattr(gn.optim, opt_name)(m.parameters(), lr=0.1)
    _grads_after_backward(m)
    assert gn.autograd.grad_sink_of(m[0].weight) is m[0].weight.grad.data  # the gradient lives in the buffer
    from gpunn.nn.utils import _one_buffer

    grads = [p.grad for p in m.parameters()]
    assert _one_buffer(grads) is grads[0].data.base  # every gradient of the group: one pass over the buffer
    assert _one_buffer(grads[1:]) is None  # a subset: per parameter, the others untouched
    clip_grad_norm_(m.parameters(), 0.5)
    clip_grad_value_(m.parameters(), 0.05)
    opt.step()
    grads = _grads_after_backward(ref)
    flat = np.concatenate([g.ravel() for g in grads]).astype(np.float64)
    coef = min(1.0, 0.5 / (np.sqrt((flat ** 2).sum()) + 1e-6))
    ref_opt = getattr(gn.optim, opt_name)(ref.parameters(), lr=0.1)
    for p, g in zip(ref.parameters(), grads):
        p.grad = gn.Tensor(np.clip((g * coef).astype(np.float32), -0.05, 0.05))
    ref_opt.step()
    for a, b in zip(m.parameters(), ref.parameters()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


@requires_torch
@pytest.mark.parametrize("opt_name", ["SGD", "Adam"])
@pytest.mark.parametrize("norm_type", [2.0, float("inf")])
def test_clip_then_step_matches_torch(opt_name, norm_type):
    m = _model()
    tm = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    tm.load_state_dict({k: torch.from_numpy(v.numpy().copy()) for k, v in m.state_dict().items()})
    opt = getattr(gn.optim, opt_name)(m.parameters(), lr=0.1)
    topt = getattr(torch.optim, opt_name)(tm.parameters(), lr=0.1)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal((5, 3)).astype(np.float32)
        opt.zero_grad()
        topt.zero_grad()
        (m(gn.tensor(x)) * 10).sum().backward()
        (tm(torch.from_numpy(x)) * 10).sum().backward()
        total = clip_grad_norm_(m.parameters(), 0.5, norm_type=norm_type)
        ttotal = torch.nn.utils.clip_grad_norm_(tm.parameters(), 0.5, norm_type=norm_type)
        np.testing.assert_allclose(total.item(), ttotal.item(), rtol=1.3e-6, atol=1e-5)
        clip_grad_value_(m.parameters(), 0.02)
        torch.nn.utils.clip_grad_value_(tm.parameters(), 0.02)
        opt.step()
        topt.step()
    for (k, a), b in zip(m.state_dict().items(), tm.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1.3e-6, atol=1e-5, err_msg=k)
