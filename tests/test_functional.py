"""The functional API's contract: what each function accepts and returns (reductions, ignore_index,
aliases), and that every bad input is refused with a Python exception that names what was expected
and what came, raised before any kernel runs."""
from __future__ import annotations

import math

import numpy as np
import pytest

import gpunn as gn
from gpunn import functional as F
from gpunn.kernels import ACTIVATIONS, CpuOps, Ops

# ------------------------------------------------------------------------------------- helpers


@pytest.fixture
def no_kernels(monkeypatch):
    """Make every kernel entry point fail the test: errors must come from the checks before them."""
    def trap(name):
        def kernel(*args, **kwargs):
            raise AssertionError(f"kernel {name} ran before the input was refused")
        return staticmethod(kernel)

    for cls in (Ops, CpuOps):
        for name in [n for n in dir(Ops) if not n.startswith("_") and n != "name"]:
            monkeypatch.setattr(cls, name, trap(name))


def t32(*shape, seed=0):
    return gn.tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def t64(*shape, seed=0):
    return gn.tensor(np.random.default_rng(seed).standard_normal(shape))


# ------------------------------------------------------------------------------------- semantics

def test_loss_reductions_relate_as_expected():
    x, y = t64(4, 3), t64(4, 3, seed=1)
    for fn in (F.mse_loss, F.l1_loss):
        none = fn(x, y, reduction="none")
        assert none.shape == (4, 3)
        np.testing.assert_allclose(fn(x, y, reduction="sum").item(), none.numpy().sum(), rtol=1e-12)
        np.testing.assert_allclose(fn(x, y).item(), none.numpy().mean(), rtol=1e-12)
    yb = gn.tensor(np.random.default_rng(2).uniform(0, 1, (4, 3)))
    none = F.binary_cross_entropy_with_logits(x, yb, reduction="none")
    np.testing.assert_allclose(F.bce_with_logits(x, yb).item(), none.numpy().mean(), rtol=1e-12)
    assert F.bce_with_logits is F.binary_cross_entropy_with_logits


def test_cross_entropy_mean_counts_only_non_ignored_targets():
    x = t64(5, 4)
    y = gn.tensor([0, -100, 3, -100, 1])
    rows = F.cross_entropy(x, y, reduction="none").numpy()
    assert rows.shape == (5,) and rows[1] == 0 and rows[3] == 0
    np.testing.assert_allclose(F.cross_entropy(x, y).item(), rows.sum() / 3, rtol=1e-12)
    np.testing.assert_allclose(F.cross_entropy(x, y, reduction="sum").item(), rows.sum(), rtol=1e-12)
    allign = F.cross_entropy(x, gn.tensor([-100] * 5))
    assert np.isnan(allign.item())  # as PyTorch: 0 / 0
    x.requires_grad_()
    F.cross_entropy(x, gn.tensor([-100] * 5)).backward()
    np.testing.assert_array_equal(x.grad.numpy(), 0)


def test_cross_entropy_ignore_index_none_ignores_nothing():
    x = t64(3, 4)
    y = gn.tensor([0, 1, 2])
    np.testing.assert_allclose(F.cross_entropy(x, y, ignore_index=None).item(), F.cross_entropy(x, y).item())
    with pytest.raises(ValueError, match="-100"):
        F.cross_entropy(x, gn.tensor([0, -100, 2]), ignore_index=None)


def test_cross_entropy_accepts_plain_label_arrays_and_lists():
    x = t32(3, 4)
    a = F.cross_entropy(x, gn.tensor([0, 1, 2])).item()
    assert F.cross_entropy(x, np.array([0, 1, 2], np.int32)).item() == pytest.approx(a, rel=1e-6)
    assert F.cross_entropy(x, [0, 1, 2]).item() == pytest.approx(a, rel=1e-6)


def test_empty_batches():
    x = gn.tensor(np.zeros((0, 4), np.float32), requires_grad=True)
    assert np.isnan(F.cross_entropy(x, gn.tensor(np.zeros(0, np.int64))).item())
    assert F.cross_entropy(x, gn.tensor(np.zeros(0, np.int64)), reduction="sum").item() == 0
    assert np.isnan(F.mse_loss(x, gn.tensor(np.zeros((0, 4), np.float32))).item())
    W = gn.tensor(np.ones((3, 4), np.float32), requires_grad=True)
    out = F.dense(x, W, activation="gelu")
    assert out.shape == (0, 3)
    out.sum().backward()
    assert x.grad.shape == (0, 4) and W.grad.shape == (3, 4) and not W.grad.numpy().any()


def test_dense_weight_and_bias_may_be_arrays_and_name_appears_in_errors():
    x = t32(2, 3)
    W = np.ones((4, 3), np.float32)
    assert F.dense(x, W, np.zeros(4, np.float32), activation=None).shape == (2, 4)
    with pytest.raises(ValueError, match="dense layer 'encoder.0'"):
        F.dense(t32(2, 5), W, name="encoder.0")


def test_linear_is_dense_without_activation():
    x, W, b = t64(3, 4), t64(2, 4, seed=1), t64(2, seed=2)
    np.testing.assert_allclose(F.linear(x, W, b).numpy(), x.numpy() @ W.numpy().T + b.numpy(), rtol=1e-13)


def test_softmax_and_log_softmax_match_float64_definitions():
    """Each against its definition written here with Python's math on every row (exp(x_j) / sum
    exp(x_k); x_j - log sum exp(x_k) with math.fsum), not against each other."""
    x = t64(4, 6) * 10.0
    rows = x.numpy().tolist()
    p_ref = np.array([[math.exp(v) / math.fsum(math.exp(u) for u in r) for v in r] for r in rows])
    lp_ref = np.array([[v - math.log(math.fsum(math.exp(u) for u in r)) for v in r] for r in rows])
    p = F.softmax(x, dim=1).numpy()
    np.testing.assert_allclose(p, p_ref, rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(F.log_softmax(x, dim=1).numpy(), lp_ref, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(F.softmax(x, dim=0).numpy().T,
                               [[math.exp(v) / math.fsum(math.exp(u) for u in c) for v in c]
                                for c in x.numpy().T.tolist()], rtol=1e-13, atol=1e-300)
    big = gn.tensor(np.array([[1e4, -1e4, 0.0]]))
    assert np.isfinite(F.log_softmax(big).numpy()).all()


# ------------------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "matmul"])
def test_arithmetic_refuses_mixed_float_dtypes(op, no_kernels):
    a, b = t32(2, 2), t64(2, 2)
    fn = {"add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b, "div": lambda: b / a,
          "matmul": lambda: a @ b}[op]
    with pytest.raises(TypeError) as info:
        fn()
    msg = str(info.value)
    assert op in msg and "float32" in msg and "float64" in msg and "dtypes differ" in msg


def test_arithmetic_refuses_mixed_raw_arrays_and_odd_operands():
    a = t32(2)
    with pytest.raises(TypeError, match="float32.*float64"):
        a + np.ones(2)
    with pytest.raises(TypeError, match="unsupported operand of type str"):
        a + "x"
    with pytest.raises(TypeError, match="unsupported operand of type list"):
        a * [1.0, 2.0]
    with pytest.raises(TypeError, match="unsupported operand of type complex"):
        a * 1j
    with pytest.raises(TypeError, match="exponent must be a real number"):
        a ** a


def test_matmul_shape_errors():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 3\) do not align \(3 != 2\)"):
        t32(2, 3) @ t32(2, 3)
    with pytest.raises(ValueError, match="at least one dimension"):
        gn.tensor(1.0) @ t32(1)


@pytest.mark.parametrize("which,dtypes", [("weight", ("float32", "float64", "float32")),
                                          ("bias", ("float32", "float32", "float64")),
                                          ("input", ("float64", "float32", "float32"))])
def test_dense_refuses_mixed_dtypes(which, dtypes, no_kernels):
    x, W, b = (gn.tensor(np.ones(s, d)) for s, d in zip([(2, 3), (4, 3), (4,)], dtypes))
    with pytest.raises(TypeError) as info:
        F.dense(x, W, b)
    msg = str(info.value)
    assert "dtypes differ" in msg and "input=" + dtypes[0] in msg and "weight=" + dtypes[1] in msg \
        and "bias=" + dtypes[2] in msg


def test_dense_shape_errors(no_kernels):
    W = t32(4, 3)
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, 3\) but got \(2, 5\)"):
        F.dense(t32(2, 5), W)
    with pytest.raises(ValueError, match=r"weight must be 2-D .* got shape \(12,\)"):
        F.dense(t32(2, 3), t32(12))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\), got \(3,\)"):
        F.dense(t32(2, 3), W, t32(3))
    with pytest.raises(ValueError, match="expects input"):
        F.dense(gn.tensor(1.0), W)


def test_dense_refuses_integer_and_half_inputs(no_kernels):
    with pytest.raises(TypeError, match="float32 or float64.*int64"):
        F.dense(gn.tensor([[1, 2, 3]]), gn.tensor(np.ones((2, 3), np.int64)))
    h = np.ones((2, 3), np.float16)
    with pytest.raises(TypeError, match="float32 or float64.*float16"):
        F.dense(gn.tensor(h), gn.tensor(np.ones((2, 3), np.float16)))


def test_unknown_activation_lists_the_valid_ones(no_kernels):
    with pytest.raises(ValueError) as info:
        F.dense(t32(2, 3), t32(4, 3), activation="swish")
    msg = str(info.value)
    assert "'swish'" in msg
    for name in ACTIVATIONS:
        assert name in msg
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh', got 'erf'"):
        F.gelu(t32(2), approximate="erf")


@pytest.mark.parametrize("fn", [F.relu, F.leaky_relu, F.gelu, F.sigmoid, F.tanh, F.softmax, F.log_softmax])
def test_activations_refuse_non_float_inputs(fn, no_kernels):
    with pytest.raises(TypeError, match="float32 or float64.*int64"):
        fn(gn.tensor([1, 2]))
    with pytest.raises(TypeError, match="float16"):
        fn(gn.tensor(np.ones(2, np.float16)))


def test_activation_of_a_non_tensor():
    with pytest.raises(TypeError, match="Tensor"):
        F.relu([1.0, 2.0])
    # raw float arrays are accepted by the array-taking functions
    np.testing.assert_allclose(F.softmax(np.zeros((1, 2), np.float32)).numpy(), [[0.5, 0.5]])


@pytest.mark.parametrize("fn", [F.mse_loss, F.l1_loss, F.binary_cross_entropy_with_logits])
@pytest.mark.parametrize("target_shape", [(4, 1), (4,), (1, 3), (3, 4)])
def test_pointwise_losses_never_broadcast(fn, target_shape, no_kernels):
    with pytest.raises(ValueError) as info:
        fn(t32(4, 3), t32(*target_shape))
    msg = str(info.value)
    assert "(4, 3)" in msg and str(target_shape) in msg and "broadcast" in msg


@pytest.mark.parametrize("fn", [F.mse_loss, F.l1_loss, F.binary_cross_entropy_with_logits])
def test_pointwise_losses_refuse_mixed_dtypes(fn, no_kernels):
    with pytest.raises(TypeError, match="input=float32, target=float64"):
        fn(t32(2, 3), t64(2, 3))
    with pytest.raises(TypeError, match="input=float32, target=int64"):
        fn(t32(2), gn.tensor([0, 1]))


@pytest.mark.parametrize("fn", [F.mse_loss, F.l1_loss, F.binary_cross_entropy_with_logits, F.cross_entropy])
def test_bad_reduction(fn, no_kernels):
    target = gn.tensor([0, 1]) if fn is F.cross_entropy else t32(2, 3)
    with pytest.raises(ValueError) as info:
        fn(t32(2, 3), target, reduction="avg")
    msg = str(info.value)
    assert "'avg'" in msg and "'mean'" in msg and "'sum'" in msg and "'none'" in msg


@pytest.mark.parametrize("labels,error,pattern", [
    (np.array([0.0, 1.0, 2.0]), TypeError, "integer class labels, got dtype float64"),
    (np.array([0.0, 1.0, 2.0], np.float32), TypeError, "integer class labels, got dtype float32"),
    (np.array([True, False, True]), TypeError, "integer class labels, got dtype bool"),
    ([[0], [1], [2]], ValueError, r"target must have shape \(3,\) to match input of 3 rows, got \(3, 1\)"),
    ([0, 1], ValueError, r"shape \(3,\) .* got \(2,\)"),
])
def test_cross_entropy_label_errors(labels, error, pattern, no_kernels):
    with pytest.raises(error, match=pattern):
        F.cross_entropy(t32(3, 4), labels if isinstance(labels, np.ndarray) else gn.tensor(labels))


@pytest.mark.parametrize("kernels", ["fused", "reference"])
@pytest.mark.parametrize("labels,ignore_index,pattern", [
    ([0, 4, 1], -100, r"target\[1\] = 4 is out of range for 4 classes \(valid: 0..3 or ignore_index=-100\)$"),
    ([0, -1, 1], -100, r"target\[1\] = -1 is out of range"),
    ([-5, 0, 9], -100, r"target\[0\] = -5"),
    ([0, -100, 7], None, r"target\[1\] = -100 is out of range for 4 classes \(valid: 0..3\)$"),
    ([0, 2, -7], 2, r"target\[2\] = -7 .*\(valid: 0..3 or ignore_index=2\)"),
])
def test_cross_entropy_label_values_are_checked_by_the_kernel(labels, ignore_index, pattern, kernels):
    """Label values are checked by the forward kernel itself (no separate pass over the labels):
    on the CPU the error is raised at once, naming the first bad label and the valid range."""
    with gn.kernels.use_kernels(kernels), pytest.raises(ValueError, match=pattern):
        F.cross_entropy(t32(3, 4), gn.tensor(labels), ignore_index=ignore_index)


def test_cross_entropy_input_errors(no_kernels):
    with pytest.raises(ValueError, match=r"logits of shape \(batch, classes\), got \(4,\)"):
        F.cross_entropy(t32(4), gn.tensor([1]))
    with pytest.raises(TypeError, match="float32 or float64.*int64"):
        F.cross_entropy(gn.tensor([[1, 2]]), gn.tensor([0]))
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        F.cross_entropy(t32(2, 3), gn.tensor([0, 1]), ignore_index=1.5)


def test_pos_weight_errors(no_kernels):
    x, y = t32(4, 3), t32(4, 3, seed=1)
    with pytest.raises(ValueError, match=r"pos_weight of shape \(4,\) must broadcast to the input shape \(4, 3\)"):
        F.binary_cross_entropy_with_logits(x, y, pos_weight=np.ones(4))
    with pytest.raises(ValueError, match=r"pos_weight of shape \(4, 1, 3\)"):
        F.binary_cross_entropy_with_logits(x, y, pos_weight=np.ones((4, 1, 3)))
    with pytest.raises(TypeError, match="input=float32, pos_weight=float64"):
        F.binary_cross_entropy_with_logits(x, y, pos_weight=gn.tensor(np.ones(3)))


def test_gather_errors(no_kernels):
    with pytest.raises(TypeError, match="integer array, got dtype float64"):
        F.gather(t32(2, 3), 1, np.zeros((2, 1)))
    with pytest.raises(ValueError, match="index has 1 dims but input has 2"):
        F.gather(t32(2, 3), 1, np.zeros(2, np.int64))


@pytest.mark.parametrize("data,pattern", [
    ("abc", "numeric.*<U3"),
    (["a", "b"], "numeric.*<U1"),
    (np.array(["x"]), "numeric.*<U1"),
    (np.array([object()]), "numeric.*object"),
    ([object()], "numeric.*object"),
    ([[1.0, 2.0], [3.0]], "cannot make a numeric array from list"),
    ({"a": 1}, "numeric.*object"),
    (np.array([1 + 2j]), "numeric.*complex"),
])
def test_tensor_refuses_non_numeric_data(data, pattern):
    with pytest.raises(TypeError, match=pattern):
        gn.tensor(data)


def test_reshape_errors():
    with pytest.raises(ValueError, match=r"cannot reshape a tensor of shape \(2, 3\) \(6 elements\) to \(4, -1\)"):
        t32(2, 3).reshape(4, -1)


def test_softmax_dim_errors_and_0d():
    with pytest.raises(ValueError, match=r"dim must be an int in \[-2, 1\] for a tensor of shape \(1, 1\), got 3"):
        F.softmax(gn.tensor([[2.0]]), dim=3)
    with pytest.raises(ValueError, match="dim must be an int"):
        F.log_softmax(gn.tensor([[2.0]]), dim=(0, 1))
    x = gn.tensor(2.0, requires_grad=True)
    assert F.softmax(x, dim=0).item() == 1.0 and F.log_softmax(x).item() == 0.0
    F.softmax(x).backward()
    assert x.grad.item() == 0.0


def test_cross_entropy_needs_a_class(no_kernels):
    with pytest.raises(ValueError, match=r"\(2, 0\) has no classes"):
        F.cross_entropy(gn.tensor(np.zeros((2, 0), np.float32)), gn.tensor([-100, -100]))
