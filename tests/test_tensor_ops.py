"""PyTorch's tensor surface: the ops added for users coming from PyTorch (clamp, where, maximum,
minimum, sign, sin, cos, std, var, cat, stack, squeeze, unsqueeze), in-place operators and the
version counter, tensor creation and dtypes, dir(gn). Ops go through the harness (forward vs NumPy,
backward vs float64 central differences, every backend); parity with PyTorch is in
test_tensor_ops_torch_parity.py."""
from __future__ import annotations

import numpy as np
import pytest

import gpunn as gn
from harness import FunctionTestCase, parameterize, product


def away_from(rng, shape, points, gap=0.05):
    """Normal values nudged at least `gap` away from each of `points` (kinks of the op under test)."""
    x = rng.standard_normal(shape)
    for p in points:
        near = np.abs(x - p) < gap
        x = np.where(near, p + np.where(x >= p, gap, -gap) * 2, x)
    return x


# --------------------------------------------------------------------------------------- elementwise

UNARY = {
    "sin": (lambda t: t.sin(), np.sin),
    "cos": (lambda t: gn.cos(t), np.cos),
    "sign": (lambda t: t.sign() * t, lambda x: np.sign(x) * x),  # sign's gradient is 0: pass it through a product
    "exp_fn": (lambda t: gn.exp(t), np.exp),
    "abs_fn": (lambda t: gn.abs(t), np.abs),
}


@parameterize(*product(op=list(UNARY)))
class TestUnaryOps(FunctionTestCase):
    def inputs(self):
        return (away_from(self.rng, (self.batch, 2, 3), [0.0]),)

    def forward(self, x):
        return UNARY[self.op][0](x)

    def reference(self, x):
        return UNARY[self.op][1](x)


@parameterize(*product(bounds=[(-0.5, 0.7), (None, 0.3), (-0.2, None)], via=["method", "function"]))
class TestClamp(FunctionTestCase):
    def inputs(self):
        return (away_from(self.rng, (self.batch, 5), [b for b in self.bounds if b is not None]),)

    def forward(self, x):
        lo, hi = self.bounds
        return x.clamp(lo, hi) if self.via == "method" else gn.clamp(x, min=lo, max=hi)

    def reference(self, x):
        return np.clip(x, *self.bounds)


@parameterize(*product(shapes=[(("B", 4), ("B", 4), ("B", 4)), (("B", 4), ("B", 4), (4,)), (("B", 1), (1, 4), ("B", 4))]))
class TestWhere(FunctionTestCase):
    def inputs(self):
        sc, sa, sb = ([self.batch if s == "B" else s for s in shape] for shape in self.shapes)
        return self.rng.standard_normal(sa), self.rng.standard_normal(sb), self.rng.random(sc) > 0.5

    def forward(self, a, b, cond):
        return gn.where(cond, a, b)

    def reference(self, a, b, cond):
        return np.where(cond, a, b)


class TestWhereScalarOperand(FunctionTestCase):
    def inputs(self):
        x = self.rng.standard_normal((self.batch, 4))
        return x, x > 0

    def forward(self, x, cond):
        return gn.where(cond, x, 0.0) + gn.where(cond, 1.5, x)

    def reference(self, x, cond):
        return np.where(cond, x, 0.0) + np.where(cond, 1.5, x)


@parameterize(*product(op=["maximum", "minimum"], shapes=[(("B", 3), ("B", 3)), (("B", 3), (3,))]))
class TestMaximumMinimum(FunctionTestCase):
    def inputs(self):
        sa, sb = ([self.batch if s == "B" else s for s in shape] for shape in self.shapes)
        return self.rng.standard_normal(sa), self.rng.standard_normal(sb)  # no ties: tested on their own

    def forward(self, a, b):
        return getattr(gn, self.op)(a, b) if self.op == "maximum" else a.minimum(b)

    def reference(self, a, b):
        return getattr(np, self.op)(a, b)


def test_maximum_minimum_share_the_gradient_on_ties():
    a = gn.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = gn.tensor([1.0, 5.0, 0.0], requires_grad=True)
    gn.maximum(a, b).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [0.5, 0.0, 1.0])
    np.testing.assert_array_equal(b.grad.numpy(), [0.5, 1.0, 0.0])


def test_clamp_passes_the_gradient_at_the_bounds():
    x = gn.tensor([-1.0, 0.0, 0.5, 1.0, 2.0], requires_grad=True)
    x.clamp(0.0, 1.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 1, 1, 1, 0])


# --------------------------------------------------------------------------------------- std / var

@parameterize(*product(op=["std", "var"], dim=[None, -1, (0, 1)], keepdim=[False, True], correction=[None, 0]))
class TestStdVar(FunctionTestCase):
    batch_sizes = ()  # a fixed (4, 5) input: the correction needs more than one element per reduction

    def inputs(self):
        return (self.rng.standard_normal((4, 5)),)

    def forward(self, x):
        if self.correction is None:
            return getattr(x, self.op)(self.dim, self.keepdim)
        return getattr(gn, self.op)(x, dim=self.dim, keepdim=self.keepdim, correction=self.correction)

    def reference(self, x):
        ddof = 1 if self.correction is None else self.correction
        axis = self.dim if not isinstance(self.dim, list) else tuple(self.dim)
        return getattr(np, self.op)(x, axis=axis, keepdims=self.keepdim, ddof=ddof)


def test_std_unbiased_flag_and_errors():
    x = gn.tensor(np.arange(6.0).reshape(2, 3))
    np.testing.assert_allclose(x.std(unbiased=False).item(), np.arange(6.0).std(), rtol=1e-6)
    np.testing.assert_allclose(x.var(1, unbiased=True).numpy(), [1.0, 1.0], rtol=1e-6)
    with pytest.raises(TypeError, match="correction or unbiased"):
        x.var(correction=0, unbiased=True)
    with pytest.raises(TypeError, match="float tensor"):
        gn.tensor([1, 2, 3]).var()
    with pytest.raises(IndexError, match="but got 2"):
        x.std(2)


# --------------------------------------------------------------------------------------- joining, squeezing

@parameterize(*product(op=["cat", "stack"], dim=[0, 1, -1]))
class TestCatStack(FunctionTestCase):
    def inputs(self):
        return (self.rng.standard_normal((self.batch, 3)), self.rng.standard_normal((self.batch, 3)),
                self.rng.standard_normal((self.batch, 3)))

    def forward(self, a, b, c):
        return getattr(gn, self.op)([a, b * 2.0, c], dim=self.dim)

    def reference(self, a, b, c):
        return getattr(np, "concatenate" if self.op == "cat" else "stack")([a, b * 2.0, c], axis=self.dim)


class TestCatUnequalSizes(FunctionTestCase):
    def inputs(self):
        return self.rng.standard_normal((self.batch, 2)), self.rng.standard_normal((self.batch, 5))

    def forward(self, a, b):
        return gn.cat((a, b), 1)

    def reference(self, a, b):
        return np.concatenate([a, b], 1)


SQUEEZE_CASES = {  # name: (gpunn, numpy) on a (B, 1, 3, 1) input
    "squeeze_all": (lambda t: t.squeeze(), lambda x: x.reshape([n for n in x.shape if n != 1])),
    "squeeze_1": (lambda t: t.squeeze(1), lambda x: x.reshape(x.shape[0], 3, 1)),
    "squeeze_not_1": (lambda t: gn.squeeze(t, 2), lambda x: x),
    "squeeze_tuple": (lambda t: t.squeeze((1, -1)), lambda x: x.reshape(x.shape[0], 3)),
    "unsqueeze_0": (lambda t: t.unsqueeze(0), lambda x: x[None]),
    "unsqueeze_end": (lambda t: gn.unsqueeze(t, -1), lambda x: x[..., None]),
    "unsqueeze_mid": (lambda t: t.unsqueeze(2), lambda x: x[:, :, None]),
}


@parameterize(*product(case=list(SQUEEZE_CASES)))
class TestSqueezeUnsqueeze(FunctionTestCase):
    batch_sizes = (0,)  # batch 1 would squeeze the batch dimension too: correct, but another reference

    def inputs(self):
        return (self.rng.standard_normal((self.batch, 1, 3, 1)),)

    def forward(self, x):
        return SQUEEZE_CASES[self.case][0](x)

    def reference(self, x):
        return SQUEEZE_CASES[self.case][1](x)


def test_joining_and_shape_errors_name_the_shapes():
    a, b = gn.ones(2, 3), gn.ones(2, 4)
    with pytest.raises(ValueError, match=r"except in dimension 0.*\(2, 3\).*\(2, 4\)"):
        gn.cat([a, b])
    assert gn.cat([a, b], 1).shape == (2, 7)
    with pytest.raises(ValueError, match=r"equal size.*\(2, 3\).*\(2, 4\)"):
        gn.stack([a, b])
    with pytest.raises(TypeError, match="dtypes differ"):
        gn.cat([a, gn.ones(2, 3, dtype=gn.float64)])
    with pytest.raises(TypeError, match="list or tuple"):
        gn.cat(a)
    with pytest.raises(ValueError, match="non-empty"):
        gn.stack([])
    with pytest.raises(TypeError, match="element 1"):
        gn.cat([a, np.ones((2, 3))])
    with pytest.raises(IndexError, match=r"\[-3, 2\], but got 3"):
        a.unsqueeze(3)
    with pytest.raises(IndexError, match="but got 2"):
        a.squeeze(2)
    with pytest.raises(ValueError, match="zero-dimensional"):
        gn.cat([gn.tensor(1.0), gn.tensor(2.0)])


def test_where_and_clamp_errors():
    x = gn.ones(2, 3)
    with pytest.raises(TypeError, match="condition must be a bool tensor"):
        gn.where(x, x, x)
    with pytest.raises(ValueError, match=r"\(2,\).*\(2, 3\).*do not broadcast"):
        gn.where(gn.tensor([True, False]), x, x)
    with pytest.raises(ValueError, match="at least one"):
        x.clamp()
    with pytest.raises(TypeError, match="gn.maximum"):
        x.clamp(min=gn.zeros(2, 3))
    with pytest.raises(ValueError, match="do not broadcast"):
        gn.maximum(x, gn.ones(4))
    with pytest.raises(TypeError, match="dtypes differ"):
        gn.minimum(x, gn.ones(2, 3, dtype=gn.float64))


def test_dtype_promotion_as_pytorch():
    i = gn.tensor([1, 4, 9])
    assert i.dtype == gn.int64
    assert i.sqrt().dtype == gn.float32 and i.exp().dtype == gn.float32
    assert i.abs().dtype == gn.int64 and i.sign().dtype == gn.int64
    assert i.clamp(2, 5).dtype == gn.int64 and i.clamp(0.5).dtype == gn.float32
    assert gn.cat([i, i]).dtype == gn.int64


def test_cpu_and_clone():
    x = gn.tensor([1.0, 2.0], requires_grad=True)
    assert x.cpu() is x  # already there, as PyTorch
    y = x.clone()
    assert y.data is not x.data and y.grad_fn is not None
    (y * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0])


# --------------------------------------------------------------------------------------- in-place operators

def test_manual_sgd_under_no_grad_updates_the_parameter_itself():
    """Regression: `with no_grad(): w -= lr * w.grad` made a new tensor and left the parameter untouched."""
    w = gn.nn.Parameter(gn.tensor([1.0, -2.0]))
    before = w.data
    (w * w).sum().backward()
    with gn.no_grad():
        w -= 0.25 * w.grad
    assert w.data is before  # the same array: optimizers' flat views and the model see the update
    np.testing.assert_allclose(w.numpy(), [0.5, -1.0])
    assert w.requires_grad and w.is_leaf and isinstance(w, gn.nn.Parameter)
    with gn.no_grad():
        w.grad.zero_()
    np.testing.assert_array_equal(w.grad.numpy(), [0.0, 0.0])


def test_inplace_operators_and_methods(backend):
    def t(values, dtype=np.float32):
        return gn.Tensor(backend.asarray(np.array(values, dtype=dtype)))

    x = t([1.0, 2.0, 3.0])
    arr = x.data
    x += 1.0
    x -= t([0.5, 0.5, 0.5])
    x *= 2.0
    x /= t([1.0, 2.0, 4.0])
    assert x.data is arr
    np.testing.assert_allclose(backend.to_numpy(x), [3.0, 2.5, 1.75])
    x.add_(t([1.0, 1.0, 1.0]), alpha=2.0).sub_(1.0).mul_(2.0).div_(2.0)
    np.testing.assert_allclose(backend.to_numpy(x), [4.0, 3.5, 2.75])
    x.sub_(t([1.0, 1.0, 1.0]), alpha=0.5)
    np.testing.assert_allclose(backend.to_numpy(x), [3.5, 3.0, 2.25])
    m = gn.Tensor(backend.asarray(np.ones((2, 3), np.float32)))
    m += t([1.0, 2.0, 3.0])  # broadcast into the tensor's shape
    np.testing.assert_array_equal(backend.to_numpy(m), [[2, 3, 4], [2, 3, 4]])
    m.copy_(np.arange(3, dtype=np.float64))  # copy_ casts and broadcasts, as PyTorch
    np.testing.assert_array_equal(backend.to_numpy(m), [[0, 1, 2], [0, 1, 2]])
    assert m.zero_() is m and not backend.to_numpy(m).any()
    m.fill_(2.5)
    assert (backend.to_numpy(m) == 2.5).all()
    k = t([1, 2], np.int64)
    k += 3
    k *= 2
    np.testing.assert_array_equal(backend.to_numpy(k), [8, 10])
    assert x._version == 9 and m._version == 4


def test_inplace_on_a_leaf_that_requires_grad_raises_outside_no_grad():
    w = gn.tensor([1.0, 2.0], requires_grad=True)
    for op in (lambda: w.__iadd__(1.0), lambda: w.mul_(2.0), lambda: w.zero_(), lambda: w.copy_(np.zeros(2))):
        with pytest.raises(RuntimeError, match="leaf Variable that requires grad.*in-place"):
            op()
    np.testing.assert_array_equal(w.numpy(), [1.0, 2.0])
    h = w * 2.0
    with pytest.raises(RuntimeError, match="does not record in-place"):
        h += 1.0
    plain = gn.tensor([0.0, 0.0])
    with pytest.raises(RuntimeError, match="does not record in-place"):
        plain += w


def test_inplace_bad_operands():
    x = gn.ones(2, 3)
    with pytest.raises(ValueError, match=r"shape \(4,\) does not broadcast to this tensor's shape \(2, 3\)"):
        x += gn.ones(4)
    with pytest.raises(ValueError, match=r"\(2, 3, 1\)"):
        gn.ones(3).copy_(np.ones((2, 3, 1)))
    with pytest.raises(TypeError, match="dtypes differ"):
        x += gn.ones(2, 3, dtype=gn.float64)
    i = gn.tensor([1, 2])
    with pytest.raises(TypeError, match="can't be cast"):
        i += 0.5
    with pytest.raises(TypeError, match="in place"):
        i /= 2
    with pytest.raises(TypeError, match="Tensor or a number"):
        x += "1"
    np.testing.assert_array_equal(x.numpy(), np.ones((2, 3)))  # nothing was written by a refused op


def test_backward_refuses_a_saved_tensor_changed_in_place():
    w = gn.tensor([1.0, 2.0], requires_grad=True)
    x = gn.tensor([3.0, 4.0])
    loss = (w * x).sum()  # Mul saved x
    x += 1.0
    with pytest.raises(RuntimeError, match=r"modified by an inplace operation.*input 1 of Mul, is at version 1; "
                                           r"expected version 0"):
        loss.backward()
    assert w.grad is None
    e = w.exp()  # Exp saved its output
    with gn.no_grad():
        e *= 2.0
    with pytest.raises(RuntimeError, match="output 0 of Exp, is at version 1"):
        e.sum().backward()
    loss = (w * x).sum()
    with gn.no_grad():
        w -= 0.5  # a parameter updated between forward and backward
    with pytest.raises(RuntimeError, match="input 0 of Mul"):
        loss.backward()


def test_inplace_on_tensors_no_backward_reads_is_allowed():
    w = gn.tensor([1.0, 2.0], requires_grad=True)
    x = gn.tensor([3.0, 4.0])
    s = (w + x).sum()  # Add saves nothing
    x += 10.0
    s.backward()
    np.testing.assert_array_equal(w.grad.numpy(), [1.0, 1.0])


# --------------------------------------------------------------------------------------- creation

def test_creation_defaults_follow_pytorch():
    assert gn.arange(1, 2, 0.25).dtype == gn.float32
    np.testing.assert_array_equal(gn.arange(1, 2, 0.25).numpy(), [1.0, 1.25, 1.5, 1.75])
    assert gn.arange(5).dtype == gn.int64 and gn.arange(5).tolist() == [0, 1, 2, 3, 4]
    assert gn.arange(5, 0, -2).tolist() == [5, 3, 1]
    assert gn.linspace(0, 1, 5).dtype == gn.float32 and gn.linspace(0, 1, 5).tolist() == [0, 0.25, 0.5, 0.75, 1]
    assert gn.full((2,), 3).dtype == gn.int64 and gn.full((2,), 3.0).dtype == gn.float32
    assert gn.full((2,), True).dtype == gn.bool
    for fn in (gn.zeros, gn.ones, gn.empty, gn.rand, gn.randn):
        t = fn(2, 3)
        assert t.shape == (2, 3) and t.dtype == gn.float32 and not t.requires_grad
        assert fn((2, 3)).shape == (2, 3) and fn([4]).shape == (4,)
    assert gn.zeros(2, dtype=gn.int64).dtype == np.int64 and gn.ones(2, dtype=gn.float64).dtype == np.float64
    np.testing.assert_array_equal(gn.eye(2, 3).numpy(), np.eye(2, 3))
    assert gn.eye(3, dtype=gn.int64).dtype == gn.int64
    x = gn.arange(6).reshape(2, 3)
    assert gn.zeros_like(x).dtype == gn.int64 and gn.ones_like(x, dtype=gn.float32).dtype == gn.float32
    assert gn.full_like(x, 7).tolist() == [[7, 7, 7], [7, 7, 7]]
    assert gn.randn_like(gn.zeros(3, dtype=gn.float64)).dtype == gn.float64 and gn.rand_like(gn.zeros(2)).shape == (2,)
    p = gn.zeros(3, requires_grad=True)
    assert p.requires_grad and p.is_leaf
    assert (gn.float, gn.double, gn.long, gn.int, gn.half) == (gn.float32, gn.float64, gn.int64, gn.int32, gn.float16)


def test_random_creation_is_seeded():
    gn.manual_seed(3)
    a, b = gn.rand(4), gn.randn(2, 2)
    gn.manual_seed(3)
    np.testing.assert_array_equal(gn.rand(4).numpy(), a.numpy())
    np.testing.assert_array_equal(gn.randn(2, 2).numpy(), b.numpy())
    assert ((a.numpy() >= 0) & (a.numpy() < 1)).all()
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(gn.randn(3, generator=g1).numpy(), gn.randn(3, generator=g2).numpy())


def test_from_numpy_shares_memory_and_as_tensor_copies_only_when_needed():
    a = np.arange(3.0)
    t = gn.from_numpy(a)
    a[0] = 9.0
    assert t.dtype == gn.float64 and t[0].item() == 9.0
    assert gn.as_tensor(a).data is a
    assert gn.as_tensor(t) is t
    c = gn.as_tensor(a, dtype=gn.float32)
    assert c.dtype == gn.float32 and c.data is not a
    assert gn.as_tensor([1, 2]).dtype == gn.int64 and gn.as_tensor([1.0]).dtype == gn.float32


def test_creation_bad_input():
    with pytest.raises(ValueError, match="negative dimension -1"):
        gn.zeros(2, -1)
    with pytest.raises(TypeError, match="sizes must be ints"):
        gn.ones(2.5)
    with pytest.raises(TypeError, match="dtype must be numeric"):
        gn.zeros(2, dtype=np.str_)
    with pytest.raises(TypeError, match="float dtype"):
        gn.randn(2, dtype=gn.int64)
    with pytest.raises(TypeError, match="only float tensors can require grad"):
        gn.arange(3, requires_grad=True)
    with pytest.raises(ValueError, match="step must be nonzero"):
        gn.arange(0, 3, 0)
    with pytest.raises(ValueError, match="inconsistent with step sign"):
        gn.arange(0, 3, -1)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        gn.from_numpy([1, 2])
    with pytest.raises(TypeError, match="fill_value must be a number"):
        gn.full((2,), "a")
    with pytest.raises(ValueError, match="steps must be a non-negative int"):
        gn.linspace(0, 1, -1)


def test_creation_on_a_device(backend):
    if backend.device == "cpu":
        assert gn.zeros(2, device="cpu").device == "cpu"
        return
    for t in (gn.zeros(2, device="gpu"), gn.randn(2, device="gpu"), gn.arange(3, device="gpu"),
              gn.eye(2, device="gpu"), gn.full((2,), 1.0, device="gpu")):
        assert t.device.is_gpu
    assert gn.zeros_like(gn.ones(2, device="gpu")).device.is_gpu


def test_dir_lists_the_lazy_submodules_before_first_use():
    names = dir(gn)
    for n in ("nn", "optim", "save", "load", "functional", "tensor", "zeros", "cat", "float32"):
        assert n in names, n
