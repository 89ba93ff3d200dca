"""Autodiff: every primitive op through the harness (forward vs NumPy, backward vs float64 finite
differences, on every backend), and the Tensor API: grad modes, backward errors, accumulation.

Second derivatives (double backward) are not supported by gpunn's tape: backward runs on arrays,
not on Tensors, so there is nothing to differentiate twice; no test claims otherwise.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import gpunn as gn
from gpunn import functional as F
from gpunn.kernels import ACTIVATIONS
from harness import FunctionTestCase, parameterize, product
from references import np_activation

# --------------------------------------------------------------------------------------- references

def np_sigmoid(x):
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def np_log_softmax(x, axis=-1):
    m = x.max(axis=axis, keepdims=True) if x.size else x
    s = x - m
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def np_reduce(losses, reduction):
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.mean() if losses.size else np.float64("nan")


ACTIVATION_NAMES = list(ACTIVATIONS)  # every registered activation


def away_from_zero(rng, shape, lo=0.3):
    x = rng.uniform(lo, 2.0, shape)
    return x * rng.choice([-1.0, 1.0], shape)


# --------------------------------------------------------------------------------------- arithmetic

BINARY_SHAPES = [  # (a, b) with "B" the batch size
    (("B", 3), ("B", 3)),
    (("B", 3), (3,)),
    (("B", 1), (1, 4)),
    ((3,), ("B", 3)),
    (("B", 3), ()),
    (("B", 2, 3), (2, 1)),
]
BINARY_OPS = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
}


def _shape(spec, batch):
    return tuple(batch if s == "B" else s for s in spec)


@parameterize(*product(op=list(BINARY_OPS), shapes=BINARY_SHAPES))
class TestBinary(FunctionTestCase):
    def inputs(self):
        sa, sb = (_shape(s, self.batch) for s in self.shapes)
        a = self.rng.standard_normal(sa)
        b = away_from_zero(self.rng, sb) if self.op == "div" else self.rng.standard_normal(sb)
        return a, b

    def forward(self, a, b):
        return BINARY_OPS[self.op][0](a, b)

    def reference(self, a, b):
        return BINARY_OPS[self.op][1](a, b)


SCALAR_CASES = {
    "t+2": (lambda t: t + 2.0, lambda x: x + 2.0),
    "2+t": (lambda t: 2.0 + t, lambda x: 2.0 + x),
    "t-1.5": (lambda t: t - 1.5, lambda x: x - 1.5),
    "3-t": (lambda t: 3.0 - t, lambda x: 3.0 - x),
    "t*0.5": (lambda t: t * 0.5, lambda x: x * 0.5),
    "-2*t": (lambda t: -2 * t, lambda x: -2 * x),
    "t/4": (lambda t: t / 4.0, lambda x: x / 4.0),
    "2/t": (lambda t: 2.0 / t, lambda x: 2.0 / x),
    "neg": (lambda t: -t, lambda x: -x),
    "np.float32*t": (lambda t: np.float32(1.5) * t if t.dtype == np.float32 else 1.5 * t, lambda x: 1.5 * x),
}


@parameterize(*product(case=list(SCALAR_CASES)))
class TestScalarOperand(FunctionTestCase):
    def inputs(self):
        return (away_from_zero(self.rng, (self.batch, 3)),)

    def forward(self, x):
        return SCALAR_CASES[self.case][0](x)

    def reference(self, x):
        return SCALAR_CASES[self.case][1](x)


UNARY = {
    "exp": (lambda t: t.exp(), np.exp, "normal"),
    "log": (lambda t: t.log(), np.log, "positive"),
    "sqrt": (lambda t: t.sqrt(), np.sqrt, "positive"),
    "abs": (lambda t: t.abs(), np.abs, "nonzero"),
    "pow2": (lambda t: t ** 2, lambda x: x**2, "normal"),
    "pow3": (lambda t: t.pow(3), lambda x: x**3, "normal"),
    "pow0.5": (lambda t: t ** 0.5, np.sqrt, "positive"),
    "pow-1": (lambda t: t ** -1, lambda x: 1 / x, "nonzero"),
    "pow-1.5": (lambda t: t ** -1.5, lambda x: x**-1.5, "positive"),
    "pow0": (lambda t: t ** 0, lambda x: np.ones_like(x), "normal"),
    "pow1": (lambda t: t ** 1, lambda x: x, "normal"),
}


@parameterize(*product(op=list(UNARY)))
class TestUnary(FunctionTestCase):
    def inputs(self):
        kind = UNARY[self.op][2]
        shape = (self.batch, 2, 3)
        if kind == "positive":
            return (self.rng.uniform(0.3, 3.0, shape),)
        if kind == "nonzero":
            return (away_from_zero(self.rng, shape),)
        return (self.rng.standard_normal(shape),)

    def forward(self, x):
        return UNARY[self.op][0](x)

    def reference(self, x):
        return UNARY[self.op][1](x)


MATMUL_SHAPES = [
    ((4,), (4,)),
    (("B", 4), (4,)),
    ((4,), (4, "B")),
    (("B", 4), (4, 3)),
    (("B", 2, 4), (4, 3)),
    (("B", 2, 4), ("B", 4, 3)),
    ((2, 4), ("B", 4, 3)),
    (("B", 1, 2, 3), (2, 3, 2)),
    (("B", 2, 4), (4,)),
]


@parameterize(*product(shapes=MATMUL_SHAPES))
class TestMatmul(FunctionTestCase):
    fwd_tol = {np.float32: dict(rtol=1e-5, atol=2e-5)}

    def inputs(self):
        sa, sb = (_shape(s, self.batch) for s in self.shapes)
        return self.rng.standard_normal(sa), self.rng.standard_normal(sb)

    def forward(self, a, b):
        return a @ b

    def reference(self, a, b):
        return a @ b


def test_matmul_1d_1d_has_no_batch_and_is_scalar():
    a = gn.tensor(np.arange(3.0), dtype=np.float64, requires_grad=True)
    b = gn.tensor(np.ones(3), dtype=np.float64, requires_grad=True)
    out = a @ b
    assert out.shape == () and out.item() == 3.0
    out.backward()
    np.testing.assert_array_equal(a.grad.numpy(), np.ones(3))
    np.testing.assert_array_equal(b.grad.numpy(), np.arange(3.0))


# --------------------------------------------------------------------------------------- reductions

REDUCTION_AXES = [None, 0, 1, -1, (0, 2), (1, -1)]


@parameterize(*product(op=["sum", "mean", "amax", "amin"], axis=REDUCTION_AXES, keepdims=[False, True]))
class TestReduction(FunctionTestCase):
    def __init_subclass__(cls, **kw):
        if "op" in cls.__dict__:
            # amax over an empty axis has no value (an error, tested below); mean over it is NaN
            reduces_batch = cls.axis is None or 0 in np.atleast_1d(cls.axis)
            cls.batch_sizes = (1,) if cls.op in ("amax", "amin") and reduces_batch else (1, 0)
        super().__init_subclass__(**kw)

    def inputs(self):
        # distinct values: max has no ties (the tie rule is tested on its own)
        n = self.batch * 3 * 4
        return (self.rng.permutation(n).reshape(self.batch, 3, 4) / 7.0 + self.rng.uniform(0, 0.01),)

    def forward(self, x):
        if self.op in ("amax", "amin"):
            return getattr(x, self.op)(self.axis, self.keepdims)
        return getattr(x, self.op)(axis=self.axis, keepdims=self.keepdims)

    def reference(self, x):
        return getattr(np, self.op)(x, axis=self.axis, keepdims=self.keepdims)


@parameterize(*product(op=["sum", "mean", "amax"], dim=[1, (0, 1)], keepdim=[False, True]))
class TestReductionTorchNames(FunctionTestCase):
    batch_sizes = (1,)

    def inputs(self):
        return (self.rng.permutation(self.batch * 5).reshape(self.batch, 5) / 3.0,)

    def forward(self, x):
        return getattr(x, self.op)(dim=self.dim, keepdim=self.keepdim)

    def reference(self, x):
        return getattr(np, self.op)(x, axis=self.dim, keepdims=self.keepdim)


@parameterize(*product(op=["max", "min"], dim=[0, 1, -1], keepdim=[False, True]))
class TestMaxMinDim(FunctionTestCase):
    """x.max(dim) / x.min(dim): the values of the (values, indices) pair, with gradients to the chosen index."""

    batch_sizes = (1,)

    def inputs(self):
        return (self.rng.permutation(self.batch * 5 * 2).reshape(self.batch, 5, 2) / 3.0,)

    def forward(self, x):
        out = getattr(x, self.op)(self.dim, keepdim=self.keepdim)
        return out.values

    def reference(self, x):
        return getattr(np, "a" + self.op)(x, axis=self.dim, keepdims=self.keepdim)


@parameterize(*product(op=["max", "min"]))
class TestMaxMinAll(FunctionTestCase):
    batch_sizes = (1,)

    def inputs(self):
        return (self.rng.permutation(self.batch * 4).reshape(self.batch, 4) / 3.0,)

    def forward(self, x):
        return getattr(x, self.op)()

    def reference(self, x):
        return getattr(np, "a" + self.op)(x)


def test_max_shares_the_gradient_among_ties():
    x = gn.tensor(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]), requires_grad=True, dtype=np.float64)
    x.amax(1).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    x.grad = None
    x.max().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0, 0.5, 0.5], [0, 0, 0]])


def test_max_dim_returns_values_and_indices_as_pytorch():
    """Regression: `_, pred = out.max(1)` unpacked the values (with a batch of 2 that silently gave
    two values instead of the predicted classes)."""
    x = gn.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]])
    _, pred = x.max(1)
    assert pred.dtype == np.int64
    np.testing.assert_array_equal(pred.numpy(), [1, 0])
    for out in (x.max(dim=1), x.max(axis=1), x.max(1, True)):
        assert type(out).__name__ == "max" and out._fields == ("values", "indices")
    np.testing.assert_array_equal(x.max(dim=1).values.numpy(), [5.0, 7.0])
    kept = x.max(1, keepdim=True)
    assert kept.values.shape == (2, 1) and kept.indices.shape == (2, 1)
    low = x.min(dim=0)
    np.testing.assert_array_equal(low.values.numpy(), [1.0, 0.0, 2.0])
    np.testing.assert_array_equal(low.indices.numpy(), [0, 1, 0])
    assert x.max().shape == () and x.max().item() == 7.0 and x.min().item() == 0.0
    np.testing.assert_array_equal(x.max(gn.tensor([[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]])).numpy(),
                                  [[2.0, 5.0, 2.0], [7.0, 2.0, 3.0]])


def test_argmax_argmin_dim_keepdim_and_flattened():
    x = gn.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]])
    np.testing.assert_array_equal(x.argmax(dim=1).numpy(), [1, 0])
    np.testing.assert_array_equal(x.argmax(1, keepdim=True).numpy(), [[1], [0]])
    np.testing.assert_array_equal(x.argmin(dim=0).numpy(), [0, 1, 0])
    assert x.argmax().item() == 3 and x.argmin().item() == 4 and x.argmax().dtype == np.int64
    assert x.argmax(keepdim=True).shape == (1, 1)


def test_max_dim_gradient_goes_to_the_chosen_index_only():
    x = gn.tensor(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]), requires_grad=True, dtype=np.float64)
    x.max(dim=1).values.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 1, 0], [1, 0, 0]])


def test_max_min_bad_dims():
    x = gn.tensor(np.zeros((2, 3)))
    with pytest.raises(IndexError, match=r"range of \[-2, 1\], but got 2"):
        x.max(2)
    with pytest.raises(IndexError, match="size 0"):
        gn.tensor(np.zeros((0, 3))).min(0)
    with pytest.raises(TypeError, match="dim must be an int"):
        x.max((0, 1))
    with pytest.raises(TypeError, match="keepdim=True needs a dim"):
        x.max(keepdim=True)
    with pytest.raises(TypeError, match="both dim"):
        x.argmax(0, axis=0)


def test_reduction_errors():
    x = gn.tensor(np.zeros((0, 3)), requires_grad=True)
    with pytest.raises(ValueError, match="size 0"):
        x.amax(0)
    with pytest.raises(ValueError, match="size 0"):
        x.max()
    assert x.amax(1).shape == (0,)  # nothing is reduced over an empty axis
    with pytest.raises(ValueError, match="out of range"):
        gn.tensor([[1.0]]).sum(axis=2)
    with pytest.raises(ValueError, match="twice"):
        gn.tensor([[1.0]]).sum(axis=(1, -1))
    with pytest.raises(TypeError, match="both axis"):
        gn.tensor([[1.0]]).sum(axis=0, dim=0)
    with pytest.raises(TypeError, match="int"):
        gn.tensor([[1.0]]).sum(axis="rows")


def test_reductions_of_a_0d_tensor_accept_axis_0_and_minus_1():
    t = gn.tensor(2.5, requires_grad=True)
    for axis in (0, -1, None):
        for op in ("sum", "mean", "amax"):
            out = getattr(t, op)(axis) if op == "amax" else getattr(t, op)(axis=axis)
            assert out.shape == () and out.item() == 2.5
        if axis is not None:
            assert t.max(axis).values.item() == 2.5 and t.max(axis).indices.item() == 0
    t.sum(dim=0).backward()
    assert t.grad.item() == 1.0


def test_mean_of_nothing_is_nan_without_warning():
    import warnings

    x = gn.tensor(np.zeros((0, 3), np.float32), requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            m = x.mean()
            assert np.isnan(m.item())
            m.backward()
            m0 = x.mean(axis=0)
            assert m0.shape == (3,) and np.isnan(m0.numpy()).all()
    assert x.grad.shape == (0, 3)


def test_reductions_accept_numpy_integer_axes():
    x = gn.tensor(np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(x.sum(axis=np.int64(1)).numpy(), [3.0, 12.0])


# --------------------------------------------------------------------------------------- shape ops

class TestReshape(FunctionTestCase):
    def inputs(self):
        return (self.rng.standard_normal((self.batch, 2, 3)),)

    def forward(self, x):
        return x.reshape(-1, 3).reshape(x.shape[0], 6)

    def reference(self, x):
        return x.reshape(x.shape[0], 6)


class TestFlattenView(FunctionTestCase):
    def inputs(self):
        return (self.rng.standard_normal((self.batch, 2, 3)),)

    def forward(self, x):
        return x.flatten(1) * 2.0 + x.view(x.shape[0], 6)

    def reference(self, x):
        return 3.0 * x.reshape(x.shape[0], 6)


@parameterize(*product(axes=[(1, 0, 2), (2, 0, 1), (-1, 0, 1), (0, -1, -2)]))
class TestPermute(FunctionTestCase):
    def inputs(self):
        return (self.rng.standard_normal((self.batch, 2, 3)),)

    def forward(self, x):
        return x.permute(*self.axes)

    def reference(self, x):
        return x.transpose(self.axes)


@parameterize(*product(shape=[("B", 3), ("B", 2, 3)], dims=[(0, 1), (1, 0), (-1, 0), (1, -1), (0, 0)]))
class TestTransposeSwapsTwoDims(FunctionTestCase):
    """transpose(d0, d1) swaps any two dimensions (regression: on 2-D, transpose(0, 1) returned x unchanged)."""

    def inputs(self):
        return (self.rng.standard_normal(_shape(self.shape, self.batch)),)

    def forward(self, x):
        return x.transpose(*self.dims)

    def reference(self, x):
        return np.swapaxes(x, *self.dims)


def test_transpose_of_a_2d_tensor_is_its_transpose():
    x = gn.tensor(np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(x.transpose(0, 1).numpy(), np.arange(6.0).reshape(2, 3).T)
    np.testing.assert_array_equal(gn.transpose(x, 1, 0).numpy(), x.t().numpy())
    with pytest.raises(IndexError, match="but got 2"):
        x.transpose(0, 2)
    with pytest.raises(TypeError):
        x.transpose(0)


class TestTransposeT(FunctionTestCase):
    def inputs(self):
        return (self.rng.standard_normal((self.batch, 3)),)

    def forward(self, x):
        return x.T * x.T

    def reference(self, x):
        return (x * x).T


def test_permute_rejects_non_permutations():
    x = gn.tensor(np.zeros((2, 3, 4)))
    for axes in [(0, 1), (0, 0, 1), (0, 1, 3), (0, 1, -4)]:
        with pytest.raises(ValueError, match="permutation"):
            x.permute(*axes)


GETITEM_CASES = {  # name: (index, batch sizes it is valid for)
    "int": (1, ()),
    "neg_int": (-1, (1,)),
    "slice": (slice(1, None), (1, 0)),
    "step": ((slice(None, None, -1), slice(None, None, 2)), (1, 0)),
    "ellipsis": ((Ellipsis, 1), (1, 0)),
    "newaxis": ((None, slice(None), 0), (1, 0)),
    "int_and_slice": ((0, slice(0, 2)), (1,)),
    "repeated_list": ([0, 0, 2, 0], ()),
    "repeated_array_cols": ((slice(None), np.array([1, 1, 3, 0, 1])), (1, 0)),
    "array_pairs": ((np.array([0, 2, 0]), np.array([1, 1, 1])), ()),
    "bool_mask_rows": (np.array([True, False, True]), ()),
}


@parameterize(*product(case=list(GETITEM_CASES)))
class TestGetItem(FunctionTestCase):
    def __init_subclass__(cls, **kw):
        if "case" in cls.__dict__:
            cls.batch_sizes = GETITEM_CASES[cls.case][1]
        super().__init_subclass__(**kw)

    def inputs(self):
        return (self.rng.standard_normal((self.batch, 4)),)

    def forward(self, x):
        return x[GETITEM_CASES[self.case][0]]

    def reference(self, x):
        return x[GETITEM_CASES[self.case][0]]


def test_getitem_repeated_indices_accumulate_gradients():
    x = gn.tensor(np.arange(4.0), dtype=np.float64, requires_grad=True)
    x[[0, 0, 3, 0]].sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 0.0, 0.0, 1.0])


def test_getitem_with_tensor_indices():
    x = gn.tensor(np.arange(6.0).reshape(2, 3), dtype=np.float64, requires_grad=True)
    idx = gn.tensor([2, 2])
    out = x[gn.tensor([1, 0]), idx]
    np.testing.assert_array_equal(out.numpy(), [5.0, 2.0])
    out.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 0, 1], [0, 0, 1]])


@parameterize(*product(dim=[0, 1, -1]))
class TestGather(FunctionTestCase):
    batch_sizes = (1,)

    def inputs(self):
        x = self.rng.standard_normal((self.batch, 4))
        if self.dim == 0:
            index = self.rng.integers(0, self.batch, (5, 4))  # repeats rows
        else:
            index = np.tile(np.array([[0, 3, 3, 1, 3]]), (self.batch, 1))  # repeats columns
        return x, index

    def forward(self, x, index):
        return F.gather(x, self.dim, index)

    def reference(self, x, index):
        return np.take_along_axis(x, index, axis=self.dim)


# --------------------------------------------------------------------------------------- activations

@parameterize(*product(name=ACTIVATION_NAMES, shape=[("B", 5), ("B", 2, 3), ()]))
class TestActivation(FunctionTestCase):
    def __init_subclass__(cls, **kw):
        if cls.__dict__.get("shape") == ():
            cls.batch_sizes = ()
        super().__init_subclass__(**kw)

    def inputs(self):
        x = self.rng.standard_normal(_shape(self.shape, self.batch)) * 2
        return (np.where(np.abs(x) < 1e-3, 0.5, x),)  # no kinks inside the finite-difference step

    def forward(self, x):
        if self.name == "identity":  # no activation node for identity: through dense
            return F.linear(x.reshape(-1, 1), gn.Tensor(np.ones((1, 1), x.dtype))).reshape(x.shape)
        fn = getattr(F, self.name, None)  # F.relu, F.gelu, ...: the named function where one exists
        return fn(x) if fn is not None else F.activation(x, self.name)

    def reference(self, x):
        return np_activation(self.name, x)


@parameterize(*product(slope=[0.0, 0.2, 1.5, -0.5]))
class TestLeakyReluSlope(FunctionTestCase):
    def inputs(self):
        return (away_from_zero(self.rng, (self.batch, 5)),)

    def forward(self, x):
        return F.leaky_relu(x, negative_slope=self.slope)

    def reference(self, x):
        return np.where(x > 0, x, self.slope * x)


@parameterize(*product(method=["relu", "sigmoid", "tanh"]))
class TestTensorActivationMethods(FunctionTestCase):
    def inputs(self):
        return (away_from_zero(self.rng, (self.batch, 4)),)

    def forward(self, x):
        return getattr(x, self.method)()

    def reference(self, x):
        return np_activation(self.method, x)


@parameterize(*product(op=["softmax", "log_softmax"], dim=[-1, 0, 1], via=["functional", "method"]))
class TestSoftmax(FunctionTestCase):
    def __init_subclass__(cls, **kw):
        if cls.__dict__.get("dim") == 0:
            cls.batch_sizes = (1,)  # softmax over an empty axis: nothing to normalise
        super().__init_subclass__(**kw)

    def inputs(self):
        return (self.rng.standard_normal((self.batch, 4)) * 3,)

    def forward(self, x):
        if self.via == "functional":
            return getattr(F, self.op)(x, dim=self.dim)
        return getattr(x, self.op)(dim=self.dim)

    def reference(self, x):
        lp = np_log_softmax(x, axis=self.dim)
        return np.exp(lp) if self.op == "softmax" else lp


# --------------------------------------------------------------------------------------- dense

@parameterize(*product(activation=ACTIVATION_NAMES, bias=[True, False], lead=[("B",), ("B", 2)]))
class TestDense(FunctionTestCase):
    def inputs(self):
        x = self.rng.standard_normal(_shape(self.lead, self.batch) + (4,))
        W = self.rng.standard_normal((3, 4)) * 0.7
        b = self.rng.standard_normal(3) * 0.5
        return (x, W, b) if self.bias else (x, W)

    def forward(self, x, W, b=None):
        return F.dense(x, W, b, activation=self.activation)

    def reference(self, x, W, b=None):
        z = x @ W.T + (0 if b is None else b)
        return np_activation(self.activation, z)


@parameterize(*product(slope=[0.1, -0.3]))
class TestDenseLeakySlope(FunctionTestCase):
    def inputs(self):
        return self.rng.standard_normal((self.batch, 3)), self.rng.standard_normal((4, 3)), self.rng.standard_normal(4)

    def forward(self, x, W, b):
        return F.dense(x, W, b, activation="leaky_relu", negative_slope=self.slope)

    def reference(self, x, W, b):
        return np_activation("leaky_relu", x @ W.T + b, self.slope)


@parameterize(*product(grad_of=["x", "W", "b", "Wb"]))
class TestDenseFrozenInputs(FunctionTestCase):
    """Only some inputs require grad: the node asks the kernel for those gradients only."""

    def __init_subclass__(cls, **kw):
        g = cls.__dict__.get("grad_of")
        if g is not None:
            cls.no_grad_inputs = tuple(i for i, n in enumerate("xWb") if n not in g)
        super().__init_subclass__(**kw)

    def inputs(self):
        return self.rng.standard_normal((self.batch, 3)), self.rng.standard_normal((4, 3)), self.rng.standard_normal(4)

    def forward(self, x, W, b):
        return F.dense(x, W, b, activation="gelu")

    def reference(self, x, W, b):
        return np_activation("gelu", x @ W.T + b)


class TestDenseOneDimInput(FunctionTestCase):
    batch_sizes = ()

    def inputs(self):
        return self.rng.standard_normal(4), self.rng.standard_normal((3, 4)), self.rng.standard_normal(3)

    def forward(self, x, W, b):
        return F.dense(x, W, b, activation="tanh")

    def reference(self, x, W, b):
        return np.tanh(W @ x + b)


class TestLinear(FunctionTestCase):
    def inputs(self):
        return self.rng.standard_normal((self.batch, 4)), self.rng.standard_normal((2, 4)), self.rng.standard_normal(2)

    def forward(self, x, W, b):
        return F.linear(x, W, b)

    def reference(self, x, W, b):
        return x @ W.T + b


class TestTwoLayerChain(FunctionTestCase):
    """A small graph: dense -> dense -> cross-entropy, with a weight used twice (gradients add up)."""

    batch_sizes = (1,)

    def inputs(self):
        rng = self.rng
        return (rng.standard_normal((self.batch, 3)), rng.standard_normal((3, 3)), rng.standard_normal(3),
                rng.integers(0, 3, self.batch))

    def forward(self, x, W, b, y):
        h = F.dense(x, W, b, activation="tanh")
        return F.cross_entropy(F.dense(h, W, None, activation=None), y)

    def reference(self, x, W, b, y):
        h = np.tanh(x @ W.T + b)
        lp = np_log_softmax(h @ W.T)
        return -lp[np.arange(len(y)), y].mean()


# --------------------------------------------------------------------------------------- losses

REDUCTIONS = ["mean", "sum", "none"]


@parameterize(*product(reduction=REDUCTIONS, ignore=[False, True], label_dtype=[np.int64, np.int32]))
class TestCrossEntropy(FunctionTestCase):
    batch = 4

    def inputs(self):
        x = self.rng.standard_normal((self.batch, 5)) * 2
        y = self.rng.integers(0, 5, self.batch).astype(self.label_dtype)
        if self.ignore and self.batch > 1:
            y[1] = -100
        return x, y

    def forward(self, x, y):
        return F.cross_entropy(x, y, reduction=self.reduction)

    def reference(self, x, y):
        valid = y != -100
        lp = np_log_softmax(x) if x.size else x
        losses = np.where(valid, -lp[np.arange(len(y)), np.where(valid, y, 0)], 0.0) if len(y) else np.zeros(0)
        if self.reduction == "mean":
            return losses.sum() / valid.sum() if valid.sum() else np.float64("nan")
        return np_reduce(losses, self.reduction)


class TestCrossEntropyCustomIgnoreIndex(FunctionTestCase):
    batch = 5
    batch_sizes = (1,)

    def inputs(self):
        y = self.rng.integers(0, 4, self.batch)
        y[:2] = 2
        return self.rng.standard_normal((self.batch, 4)), y

    def forward(self, x, y):
        return F.cross_entropy(x, y, ignore_index=2)

    def reference(self, x, y):
        lp = np_log_softmax(x)
        valid = y != 2
        return -lp[np.arange(len(y))[valid], y[valid]].sum() / valid.sum() if valid.sum() else np.float64("nan")


@parameterize(*product(reduction=REDUCTIONS, pos_weight=[None, "vector", "scalar"]))
class TestBCEWithLogits(FunctionTestCase):
    def inputs(self):
        x = self.rng.standard_normal((self.batch, 3)) * 3
        y = self.rng.uniform(0, 1, (self.batch, 3))  # soft targets: the target gradient is exercised
        return x, y

    @property
    def pw(self):
        return {None: None, "vector": np.array([0.5, 2.0, 3.0]), "scalar": np.array(1.7)}[self.pos_weight]

    def forward(self, x, y):
        pw = self.pw
        if pw is not None:
            pw = gn.Tensor(pw.astype(x.dtype))
        return F.binary_cross_entropy_with_logits(x, y, reduction=self.reduction, pos_weight=pw)

    def reference(self, x, y):
        mv = np.maximum(-x, 0)
        log_term = np.log(np.exp(-mv) + np.exp(-x - mv)) + mv
        w = 1.0 if self.pw is None else 1 + (self.pw - 1) * y
        return np_reduce((1 - y) * x + w * log_term, self.reduction)


_POINTWISE = {  # name -> (gpunn call with options, float64 reference of d = x - y)
    "mse": (lambda x, y, **kw: F.mse_loss(x, y, **kw), lambda d: d * d),
    "l1": (lambda x, y, **kw: F.l1_loss(x, y, **kw), np.abs),
    "huber": (lambda x, y, **kw: F.huber_loss(x, y, delta=0.8, **kw),
              lambda d: np.where(np.abs(d) < 0.8, 0.5 * d * d, 0.8 * (np.abs(d) - 0.4))),
    "smooth_l1": (lambda x, y, **kw: F.smooth_l1_loss(x, y, beta=0.8, **kw),
                  lambda d: np.where(np.abs(d) < 0.8, 0.5 * d * d / 0.8, np.abs(d) - 0.4)),
}


@parameterize(*[p for p in product(loss=list(_POINTWISE), reduction=REDUCTIONS, shape=[("B", 3), ("B",), ("B", 2, 2)],
                                    weighted=[False, True]) if not (p["weighted"] and p["loss"] == "smooth_l1")])
class TestPointwiseLoss(FunctionTestCase):
    """d = x - y with |d| >= 0.3 (away from L1's kink; Huber and smooth L1 are C1 at |d| = 0.8);
    with a weight, torch's "mean" divides by the sum of the weights for mse and l1 and by the
    number of elements for huber (smooth_l1 takes no weight)."""

    def inputs(self):
        shape = _shape(self.shape, self.batch)
        x = self.rng.standard_normal(shape) * 1.5
        y = x + away_from_zero(self.rng, shape)
        self.w = self.rng.uniform(0.5, 2.0, shape) if self.weighted else None
        return x, y

    def forward(self, x, y):
        kw = {} if self.w is None else {"weight": self.w.astype(x.dtype)}
        return _POINTWISE[self.loss][0](x, y, reduction=self.reduction, **kw)

    def reference(self, x, y):
        per = _POINTWISE[self.loss][1](x - y)
        if self.w is None:
            return np_reduce(per, self.reduction)
        per = per * self.w
        if self.reduction == "mean" and self.loss in ("mse", "l1"):
            return per.sum() / self.w.sum() if per.size else np.float64("nan")
        return np_reduce(per, self.reduction)


@parameterize(*product(reduction=REDUCTIONS, weighted=[False, True]))
class TestBinaryCrossEntropy(FunctionTestCase):
    def inputs(self):
        x = self.rng.uniform(0.05, 0.95, (self.batch, 3))
        y = self.rng.uniform(0, 1, (self.batch, 3))  # soft targets: the target gradient is exercised
        return x, y

    def forward(self, x, y):
        w = gn.tensor(np.array([0.5, 1.0, 2.0], x.dtype)) if self.weighted else None
        return F.binary_cross_entropy(x, y, weight=w, reduction=self.reduction)

    def reference(self, x, y):
        w = np.array([0.5, 1.0, 2.0]) if self.weighted else 1.0
        return np_reduce(-w * (y * np.log(x) + (1 - y) * np.log(1 - x)), self.reduction)


class TestLossTargetWithoutGrad(FunctionTestCase):
    no_grad_inputs = (1,)

    def inputs(self):
        x = self.rng.standard_normal((self.batch, 3))
        return x, x + 1.0

    def forward(self, x, y):
        return F.mse_loss(x, y) + F.l1_loss(x, y) + F.binary_cross_entropy_with_logits(x, y * 0 + 0.25)

    def reference(self, x, y):
        bce = np.mean((1 - 0.25) * x + np.log1p(np.exp(-x)))
        return np.mean((x - y) ** 2) + np.mean(np.abs(x - y)) + (bce if x.size else np.nan)


def test_l1_gradient_is_zero_where_input_equals_target():
    x = gn.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = gn.tensor([1.0, 0.0, 3.0], requires_grad=True)
    F.l1_loss(x, y, reduction="sum").backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(y.grad.numpy(), [0.0, -1.0, 0.0])


# --------------------------------------------------------------------------------------- the tape

def test_grads_accumulate_across_two_backward_calls():
    x = gn.tensor([1.0, -2.0, 3.0], requires_grad=True)
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, -4.0, 6.0])
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [5.0, -1.0, 9.0])
    loss = (x * x).sum()  # the same graph twice: its gradient is added twice
    loss.backward()
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), [9.0, -9.0, 21.0])


def test_a_tensor_used_many_times_sums_its_gradients():
    x = gn.tensor([2.0], requires_grad=True, dtype=np.float64)
    y = x * x * x + x / x - x  # 3x^2 + 0 - 1
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [11.0])


def test_diamond_graph_visits_each_node_once():
    x = gn.tensor([1.5], requires_grad=True, dtype=np.float64)
    a = x * 2.0
    b = a.exp()
    c = a * 3.0
    (b + c).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2 * np.exp(3.0) + 6.0])


def test_deep_chain_does_not_recurse():
    x = gn.tensor([1.0], requires_grad=True, dtype=np.float64)
    y = x
    for _ in range(5000):
        y = y + 0.0
    y.sum().backward()
    assert x.grad.item() == 1.0


def test_no_grad_records_nothing_and_restores():
    x = gn.tensor([1.0, 2.0], requires_grad=True)
    assert gn.is_grad_enabled()
    with gn.no_grad():
        assert not gn.is_grad_enabled()
        y = x * 2.0
        with gn.enable_grad():
            z = x * 2.0
    assert gn.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None
    assert z.requires_grad and z.grad_fn is not None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_no_grad_restores_after_an_exception():
    with pytest.raises(KeyError):
        with gn.no_grad():
            raise KeyError("x")
    assert gn.is_grad_enabled()


def test_leaf_and_graph_attributes():
    x = gn.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2.0
    assert x.is_leaf and x.grad_fn is None
    assert not y.is_leaf and y.grad_fn.name == "Mul"
    d = y.detach()
    assert d.is_leaf and not d.requires_grad and d.data is y.data


def test_backward_errors():
    x = gn.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2.0
    with pytest.raises(RuntimeError, match="scalar output.*\\(2,\\)"):
        y.backward()
    with pytest.raises(ValueError, match="shape \\(3,\\).*\\(2,\\)"):
        y.backward(np.ones(3, np.float32))
    with pytest.raises(TypeError, match="dtype float64 does not match tensor dtype float32"):
        y.backward(np.ones(2))
    with pytest.raises(TypeError, match="gradient must be a Tensor or an array"):
        y.backward([1.0, 1.0])
    with pytest.raises(RuntimeError, match="does not require grad"):
        gn.tensor([1.0]).backward()
    y.backward(gn.tensor([1.0, 0.5]))  # a Tensor gradient of the right shape and dtype
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 1.0])


def test_requires_grad_only_for_floats():
    with pytest.raises(TypeError, match="only float tensors can require grad, got dtype int64"):
        gn.tensor([1, 2], requires_grad=True)
    with pytest.raises(TypeError, match="only float"):
        gn.tensor([1, 2]).requires_grad_()
    assert gn.tensor([1.0]).requires_grad_().requires_grad


def test_cast_and_clone_are_differentiable():
    x = gn.tensor([1.0, 2.0], requires_grad=True)
    y = x.double() * 3.0
    assert y.dtype == np.float64
    c = x.clone()
    assert c.data is not x.data
    (y.sum().float() + c.sum()).backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad.numpy(), [4.0, 4.0])


def test_second_derivatives_are_not_supported():
    """Documented limitation: gradients are arrays without a graph, so there is no double backward."""
    x = gn.tensor([1.0], requires_grad=True)
    (x * x).sum().backward()
    assert x.grad.grad_fn is None and not x.grad.requires_grad


# --------------------------------------------------------------------------------------- the Tensor API

def test_tensor_basic_api():
    t = gn.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert t.shape == (2, 3) and t.size() == (2, 3) and t.size(1) == 3
    assert t.ndim == 2 and t.dim() == 2 and t.numel() == 6 and len(t) == 2
    assert t.dtype == np.float32
    assert t.device == gn.device("cpu") and t.device == "cpu" and str(t.device) == "cpu"
    assert isinstance(t.numpy(), np.ndarray) and t.numpy() is t.data
    assert t.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert t[1, 2].item() == 6.0 and isinstance(t[1, 2].item(), float)
    assert float(t[0, 0]) == 1.0 and int(t[1, 1]) == 5
    with pytest.raises(ValueError, match="one element.*\\(2, 3\\)"):
        t.item()
    with pytest.raises(TypeError, match="len\\(\\) of a 0-d"):
        len(gn.tensor(1.0))
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(t)
    assert bool(gn.tensor([1.0])) and not bool(gn.tensor(0.0))


def test_tensor_factory_dtypes():
    assert gn.tensor([1.0, 2.0]).dtype == np.float32  # Python floats: PyTorch's default dtype
    assert gn.tensor([1, 2]).dtype == np.int64
    assert gn.tensor([True, False]).dtype == np.bool_
    assert gn.tensor(np.zeros(2, np.float64)).dtype == np.float64  # NumPy arrays keep theirs
    assert gn.tensor(np.float64(1.0)).dtype == np.float64 and gn.tensor(np.float64(1.0)).shape == ()
    assert gn.tensor(1.0).dtype == np.float32 and gn.tensor(3).dtype == np.int64
    assert gn.tensor([1, 2], dtype=np.float64).dtype == np.float64
    a = np.ones(3, np.float32)
    t = gn.tensor(a)
    a[0] = 5
    assert t.data[0] == 1.0  # a copy
    assert gn.tensor(t).data is not t.data


def test_comparisons_return_bool_tensors():
    a = gn.tensor([1.0, 2.0, 3.0])
    b = gn.tensor([3.0, 2.0, 1.0])
    for res, want in [(a == b, [0, 1, 0]), (a != b, [1, 0, 1]), (a < b, [1, 0, 0]), (a <= b, [1, 1, 0]),
                      (a > b, [0, 0, 1]), (a >= b, [0, 1, 1]), (a > 1.5, [0, 1, 1]), (a == 2.0, [0, 1, 0])]:
        assert isinstance(res, gn.Tensor) and res.dtype == np.bool_
        np.testing.assert_array_equal(res.numpy(), np.array(want, bool))
    assert not (a > b).requires_grad
    assert hash(a) != hash(b)  # tensors stay hashable (by identity)


def test_repr():
    r = repr(gn.tensor([1.0, 2.5]))
    assert r.startswith("tensor(") and "1." in r and "2.5" in r and "dtype" not in r
    assert "dtype=float64" in repr(gn.tensor(np.zeros(2)))
    assert "requires_grad=True" in repr(gn.tensor([1.0], requires_grad=True))
    assert "grad_fn=<Mul>" in repr(gn.tensor([1.0], requires_grad=True) * 2.0)
    assert repr(gn.Parameter(np.zeros(1, np.float32))).startswith("Parameter containing:")
    assert "..." in repr(gn.tensor(np.zeros(1000, np.float32)))  # long tensors are summarised


def test_ndarray_on_the_left_defers_to_tensor():
    t = gn.tensor([1.0, 2.0], requires_grad=True)
    out = np.array([3.0, 4.0], np.float32) * t
    assert isinstance(out, gn.Tensor) and out.requires_grad
    out.sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), [3.0, 4.0])


def test_integer_tensor_with_fractional_scalars_becomes_float():
    t = gn.tensor([1, 2, 3])
    for out in (t * 0.5, 0.5 * t, t * np.float32(0.5), t + np.float64(0.5), t / 2):
        assert out.dtype == np.float32, out
    np.testing.assert_array_equal((t * np.float32(0.5)).numpy(), [0.5, 1.0, 1.5])
    assert (t * 2).dtype == np.int64 and (t * 2).tolist() == [2, 4, 6]


def test_zero_and_in_place_data():
    t = gn.tensor([1.0, 2.0])
    assert t.zero_() is t and t.tolist() == [0.0, 0.0]


def test_to_and_type():
    t = gn.tensor([1.0, 2.0])
    assert t.to("cpu") is t
    assert t.to("float64").dtype == np.float64 and t.to(np.float64).dtype == np.float64
    assert t.float() is t
    assert t.double().float().dtype == np.float32


def test_numpy_functions_accept_tensors():
    t = gn.tensor([1.0, 2.0])
    a = np.asarray(t)
    assert a.dtype == np.float32 and a.tolist() == [1.0, 2.0]
    assert np.asarray(t, dtype=np.float64).dtype == np.float64
    np.testing.assert_allclose(t, [1.0, 2.0])
    out = np.float32(2.0) * t  # NumPy scalars and arrays on the left still defer to Tensor
    assert isinstance(out, gn.Tensor) and out.tolist() == [2.0, 4.0]
    assert isinstance(np.ones(2, np.float32) + t, gn.Tensor)


def test_no_grad_as_a_decorator():
    @gn.no_grad()
    def f(x):
        return x * 2.0

    y = f(gn.tensor([1.0], requires_grad=True))
    assert not y.requires_grad and gn.is_grad_enabled()


def test_inference_mode_as_context_manager_and_decorator():
    x = gn.tensor([1.0, 2.0], requires_grad=True)
    with gn.inference_mode():
        assert not gn.is_grad_enabled() and gn.is_inference_mode_enabled()
        y = x * 2.0
        made = gn.ones(2)
    assert gn.is_grad_enabled() and not gn.is_inference_mode_enabled()
    assert not y.requires_grad and y.grad_fn is None and not made.requires_grad

    @gn.inference_mode()
    def f(t):
        assert gn.is_inference_mode_enabled()
        return t * 3.0

    @gn.inference_mode
    def g(t):
        return t * 3.0

    assert not f(x).requires_grad and not g(x).requires_grad and g.__name__ == "g"
    with gn.inference_mode(False):  # mode=False changes nothing, as in PyTorch
        assert gn.is_grad_enabled() and (x * 2.0).requires_grad
    with pytest.raises(KeyError):
        with gn.inference_mode():
            raise KeyError("x")
    assert gn.is_grad_enabled() and not gn.is_inference_mode_enabled()
    mode = gn.inference_mode()
    with mode:
        with mode:  # one object re-entered (a decorator's object runs again inside itself)
            pass
        assert not gn.is_grad_enabled()
    assert gn.is_grad_enabled()
    with pytest.raises(TypeError, match="expects a bool"):
        gn.inference_mode("yes")


# --------------------------------------------------------------------------------------- gradcheck itself

class _WrongSquare(gn.autograd.Function):
    def forward(self, a):
        self.a = a
        return a * a

    def backward(self, g):
        return (g * self.a * 2.01,)  # 0.5% off


def test_gradcheck_catches_a_wrong_gradient_and_names_the_element():
    x = gn.tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    with pytest.raises(gn.GradcheckError, match=r"input 0 \(shape \(3,\)\) element \(0,\): analytic .* vs numeric"):
        gn.gradcheck(lambda t: _WrongSquare.apply(t), [x])
    assert gn.gradcheck(lambda t: _WrongSquare.apply(t), [x], raise_exception=False) is False
    assert gn.gradcheck(lambda t: t * t, [x])
    np.testing.assert_array_equal(x.data, [1.0, 2.0, 3.0])  # perturbations are undone exactly


def test_gradcheck_refuses_float32_and_handles_noncontiguous_and_0d_inputs():
    with pytest.raises(TypeError, match="float32; finite differences need float64"):
        gn.gradcheck(lambda t: t * t, [gn.tensor([1.0], requires_grad=True)])
    base = np.random.default_rng(0).standard_normal((4, 3))
    view = gn.Tensor(base.T, requires_grad=True)  # Fortran-ordered view: perturbed in place all the same
    assert gn.gradcheck(lambda t: (t * t).sum(axis=0), [view])
    np.testing.assert_array_equal(base.T, view.data)
    scalar = gn.Tensor(np.array(0.7), requires_grad=True)
    assert gn.gradcheck(lambda t: t.exp() * t, [scalar])
    frozen = gn.tensor(np.ones(2))  # inputs that do not require grad are held fixed
    assert gn.gradcheck(lambda a, b: a * b, [gn.tensor(np.ones(2), requires_grad=True), frozen])


# ------------------------------------------------------------------ deferred device checks

def test_deferred_checks_raise_at_the_next_read():
    from gpunn.autograd import checks

    checks.flush_checks()
    checks.defer_check(np.array(False), lambda: AssertionError("a passing check must not raise"))
    checks.defer_check(np.array(True), lambda: ValueError("first failure"))
    checks.defer_check(np.array(True), lambda: ValueError("second failure"))
    assert checks.pending_checks() == 3
    with pytest.raises(ValueError, match="first failure"):
        checks.flush_checks()
    assert checks.pending_checks() == 0
    checks.flush_checks()  # nothing left: no error


def test_deferred_checks_flush_when_the_queue_is_full():
    from gpunn.autograd import checks

    checks.flush_checks()
    for _ in range(checks.MAX_PENDING - 1):
        checks.defer_check(np.array(False), lambda: AssertionError("unreachable"))
    assert checks.pending_checks() == checks.MAX_PENDING - 1
    with pytest.raises(ValueError, match="queue full"):
        checks.defer_check(np.array(True), lambda: ValueError("queue full"))
    assert checks.pending_checks() == 0


# ------------------------------------------------------------------ gradients written in place

def _grads_after_backward(model, x, y, with_optimizer, passes=1):
    if with_optimizer:
        opt = gn.optim.SGD(model.parameters(), lr=0.1)
        opt.zero_grad()
    for _ in range(passes):
        gn.nn.CrossEntropyLoss()(model(x), y).backward()
    return [p.grad.numpy().copy() for p in model.parameters()]


def _twin_models(shared: bool):
    """Two identical models; `shared` applies one Dense layer twice (its weight gets two gradients)."""
    out = []
    for _ in range(2):
        gn.manual_seed(3)
        if shared:
            mid = gn.nn.Dense(6, 6, activation="tanh")
            out.append(gn.nn.Sequential(gn.nn.Dense(4, 6, activation="relu"), mid, mid, gn.nn.Linear(6, 3)))
        else:
            out.append(gn.nn.Sequential(gn.nn.Dense(4, 6, activation="relu"), gn.nn.Linear(6, 3)))
    return out


@pytest.mark.parametrize("shared", [False, True], ids=["plain", "shared-weight"])
@pytest.mark.parametrize("passes", [1, 2])
def test_dense_gradients_written_into_the_optimizer_buffer_equal_copied_ones(shared, passes):
    rng = np.random.default_rng(0)
    x = gn.tensor(rng.standard_normal((7, 4)).astype(np.float32))
    y = gn.tensor(rng.integers(0, 3, 7))
    with_buffer, without = _twin_models(shared)
    got = _grads_after_backward(with_buffer, x, y, True, passes)
    want = _grads_after_backward(without, x, y, False, passes)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)  # bit for bit: the same arithmetic, minus one copy
    for p in with_buffer.parameters():
        assert p.grad.data is gn.autograd.grad_sink_of(p)  # the optimizer's flat buffer holds them: no copy


# ------------------------------------------------------------------ gradient sinks (gpunn/autograd/grad_sink.py)

def test_grad_sink_receives_the_first_gradient_and_later_ones_accumulate_there():
    p = gn.Parameter(np.ones(3, np.float32))
    sink = np.full(3, 99.0, np.float32)
    gn.autograd.register_grad_sink(p, sink)
    (p * 2.0).sum().backward()
    assert p.grad.data is sink
    np.testing.assert_array_equal(sink, [2.0, 2.0, 2.0])
    (p * 1.0).sum().backward()  # no zero_grad: added to the first
    assert p.grad.data is sink
    np.testing.assert_array_equal(sink, [3.0, 3.0, 3.0])


def _spy_dense_backward(monkeypatch):
    """Records the dW_out/db_out each dense backward kernel call is handed, and what it returns."""
    ops_cls = type(gn.kernels.ops_for(np.zeros(1, np.float32)))
    real = ops_cls.dense_backward
    calls = []

    def spy(*args, **kw):
        out = real(*args, **kw)
        calls.append((kw.get("dW_out"), kw.get("db_out"), out[1], out[2]))
        return out

    monkeypatch.setattr(ops_cls, "dense_backward", staticmethod(spy))
    return calls


def _dense_twins():
    gn.manual_seed(5)
    a = gn.nn.Dense(4, 3, activation="tanh")
    gn.manual_seed(5)
    return a, gn.nn.Dense(4, 3, activation="tanh")


def test_dense_backward_writes_dw_and_db_into_the_sinks_with_no_copy(monkeypatch):
    x = gn.tensor(np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32))
    layer, plain = _dense_twins()
    sinks = [np.full(p.shape, np.nan, np.float32) for p in layer.parameters()]
    for p, s in zip(layer.parameters(), sinks):
        gn.autograd.register_grad_sink(p, s)
    calls = _spy_dense_backward(monkeypatch)
    layer(x).sum().backward()
    (dW_out, db_out, dW, db), = calls
    assert dW_out is sinks[0] and db_out is sinks[1]  # the kernel was handed the sinks ...
    assert dW is sinks[0] and db is sinks[1]  # ... wrote there, and the leaves keep those arrays
    assert [p.grad.data for p in layer.parameters()] == sinks
    plain(x).sum().backward()
    for p, q in zip(layer.parameters(), plain.parameters()):
        np.testing.assert_array_equal(p.grad.numpy(), q.grad.numpy())
    # a second backward without zero_grad: the kernel gets no sink (it holds .grad) and the sum lands there
    calls.clear()
    layer(x).sum().backward()
    (dW_out, db_out, dW, db), = calls
    plain(x).sum().backward()
    assert dW_out is None and db_out is None and dW is not sinks[0]
    assert [p.grad.data for p in layer.parameters()] == sinks
    for p, q in zip(layer.parameters(), plain.parameters()):
        np.testing.assert_array_equal(p.grad.numpy(), q.grad.numpy())


def test_without_a_sink_each_leaf_gets_its_own_gradient_array(monkeypatch):
    p = gn.Parameter(np.ones(3, np.float32))
    q = gn.Parameter(np.ones(3, np.float32))
    assert gn.autograd.grad_sink_of(p) is None
    (p + q).sum().backward()  # Add's backward hands the same array to both inputs
    assert not np.shares_memory(p.grad.data, q.grad.data)
    np.testing.assert_array_equal(p.grad.numpy(), [1.0, 1.0, 1.0])
    layer, _ = _dense_twins()
    calls = _spy_dense_backward(monkeypatch)
    layer(gn.tensor(np.ones((2, 4), np.float32))).sum().backward()
    assert calls[0][:2] == (None, None)


def test_a_sink_that_no_longer_fits_is_ignored_and_none_removes_it():
    p = gn.Parameter(np.ones(3, np.float32))
    sink = np.zeros(3, np.float32)
    gn.autograd.register_grad_sink(p, sink)
    p.data = np.ones(3, np.float64)  # rebound to another dtype: the float32 sink cannot hold its gradient
    (p * 2.0).sum().backward()
    assert p.grad.data is not sink and p.grad.dtype == np.float64
    np.testing.assert_array_equal(sink, [0.0, 0.0, 0.0])
    p.data = np.ones(3, np.float32)
    p.grad = None
    gn.autograd.register_grad_sink(p, None)
    (p * 2.0).sum().backward()
    assert gn.autograd.grad_sink_of(p) is None and not np.shares_memory(p.grad.data, sink)
    with pytest.raises(TypeError, match="gradient sink must be a NumPy or CuPy array or None, got list"):
        gn.autograd.register_grad_sink(p, [0.0, 0.0, 0.0])


def test_flatten_checks_its_dims_as_torch_does():
    x = gn.tensor(np.zeros((2, 3, 4), np.float32))
    assert x.flatten().shape == (24,) and x.flatten(-2).shape == (2, 12) and x.flatten(0, 1).shape == (6, 4)
    assert gn.tensor(np.float32(1)).flatten().shape == (1,)
    with pytest.raises(IndexError, match=r"flatten: dims \(3, -1\) out of range for shape \(2, 3, 4\)"):
        x.flatten(3)  # a wrap-around would have flattened dim 0
    with pytest.raises(IndexError, match="out of range"):
        x.flatten(0, -4)
    with pytest.raises(ValueError, match="start_dim 2 comes after end_dim 1"):
        x.flatten(2, 1)
