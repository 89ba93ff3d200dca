"""All differentiable ops, one Function per op family, plus the operand handling that
Tensor's operators share (numbers become 0-d arrays of the tensor's dtype; tensors must agree
in dtype and device)."""
from __future__ import annotations

import collections
import numbers
import operator

import numpy as np

from gpunn.autograd.checks import check_float, check_same_device, check_same_dtype, scalar_like
from gpunn.autograd.functions.activation import Activation, LogSoftmax, Softmax
from gpunn.autograd.functions.arithmetic import (Abs, Add, Cast, Clamp, Clone, Cos, Div, Exp, Log, MatMul,
                                                 Maximum, Mul, Neg, Pow, Sign, Sin, Sqrt, Sub, Where)
from gpunn.autograd.functions.dense import Dense
from gpunn.autograd.functions.loss import NLL, CrossEntropy, ElementwiseLoss
from gpunn.autograd.functions.normalization import BatchNorm, Dropout, LayerNorm
from gpunn.autograd.functions.reduction import Max, Mean, Sum
from gpunn.autograd.functions.shape import Cat, Gather, GetItem, Reshape, Transpose
from gpunn.autograd.tensor import Tensor
from gpunn.backend import get_array_module, is_array
from gpunn.kernels import activation_code


def _operands(op: str, a, b):
    ta, tb = isinstance(a, Tensor), isinstance(b, Tensor)
    if ta and tb:
        check_same_device(op, a.data, b.data)
        check_same_dtype(op, a.data, b.data)
        return a, b
    if ta:
        if isinstance(b, (float, np.floating)) and a.dtype.kind != "f":
            a = a.float()  # int tensor with a fractional number: compute in float32, as PyTorch does
        return a, _const(b, a.data, op)
    if not tb:
        raise TypeError(f"{op}: expected at least one Tensor operand, got {type(a).__name__} and {type(b).__name__}")
    if isinstance(a, (float, np.floating)) and b.dtype.kind != "f":
        b = b.float()
    return _const(a, b.data, op), b


def _const(x, like, op):
    if is_array(x):
        # raw arrays are accepted only when they already agree; no silent casts
        check_same_device(op, like, x)
        check_same_dtype(op, like, x)
        return Tensor(x)
    try:
        return Tensor(scalar_like(x, like))
    except TypeError:
        raise TypeError(f"{op}: unsupported operand of type {type(x).__name__}") from None


def add(a, b):
    return Add.apply(*_operands("add", a, b))


def sub(a, b):
    return Sub.apply(*_operands("sub", a, b))


def mul(a, b):
    return Mul.apply(*_operands("mul", a, b))


def div(a, b):
    a, b = _operands("div", a, b)
    if a.dtype.kind != "f":  # true division of integers gives floats (float32, PyTorch's default)
        a, b = a.float(), b.float()
    return Div.apply(a, b)


def pow(a, exponent):
    if isinstance(exponent, (bool, np.bool_)) or not isinstance(exponent, numbers.Real):
        raise TypeError(f"pow: the exponent must be a real number (not a tensor), got {type(exponent).__name__}")
    exponent = int(exponent) if isinstance(exponent, numbers.Integral) else float(exponent)
    if a.dtype.kind != "f":
        a = a.float()
    return Pow.apply(a, exponent=exponent)


def matmul(a, b):
    a, b = _operands("matmul", a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: both operands need at least one dimension")
    ka = a.shape[-1]
    kb = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if ka != kb:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align ({ka} != {kb})")
    return MatMul.apply(a, b)


def getitem(a, index):
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return GetItem.apply(a, index=index)


def activation(x, name, negative_slope: float = 0.01):
    code = activation_code(name)
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: input must be a Tensor, got {type(x).__name__}")
    check_float(name, x.data)
    return Activation.apply(x, code=code, negative_slope=negative_slope)


# ----------------------------------------------------------------------------- PyTorch's tensor ops

def _need_tensor(op, x):
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(x).__name__}")
    return x


def dim_index(op, x, dim, extra: int = 0) -> int:
    """dim as an int in [0, ndim + extra) (negatives count from the end; a 0-d tensor takes 0 and -1)."""
    n = max(x.ndim + extra, 1)
    try:
        if isinstance(dim, (bool, np.bool_)):
            raise TypeError
        d = operator.index(dim)
    except TypeError:
        raise TypeError(f"{op}: dim must be an int, got {dim!r}") from None
    if not -n <= d < n:
        raise IndexError(f"{op}: dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {d}) "
                         f"for a tensor of shape {tuple(x.shape)}")
    return d % n


_FLOAT_RESULT = {"exp": Exp, "log": Log, "sqrt": Sqrt, "sin": Sin, "cos": Cos}
_SAME_DTYPE = {"abs": Abs, "sign": Sign}


def unary(op: str, x):
    """exp, log, sqrt, sin, cos (integer input computed in float32, as PyTorch), abs, sign."""
    x = _need_tensor(op, x)
    if op in _FLOAT_RESULT:
        if x.dtype.kind != "f":
            x = x.float()
        return _FLOAT_RESULT[op].apply(x)
    if op == "abs" and x.dtype == np.bool_:
        raise TypeError("abs: not defined for a bool tensor")
    return _SAME_DTYPE[op].apply(x)


def clamp(x, min=None, max=None):
    """min(max(x, min), max) with numbers as bounds; the gradient passes where min <= x <= max."""
    x = _need_tensor("clamp", x)
    if min is None and max is None:
        raise ValueError("clamp: at least one of 'min' or 'max' must not be None")
    for name, v in (("min", min), ("max", max)):
        if v is not None and (isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real)):
            raise TypeError(f"clamp: {name} must be a number, got {type(v).__name__} "
                            "(for tensor bounds use gn.maximum / gn.minimum)")
    if x.dtype.kind != "f" and any(isinstance(v, (float, np.floating)) for v in (min, max)):
        x = x.float()
    kind = x.dtype.type
    return Clamp.apply(x, lo=None if min is None else kind(min), hi=None if max is None else kind(max))


def _broadcast_shape(op, *shapes):
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(f"{op}: shapes {', '.join(str(tuple(s)) for s in shapes)} do not broadcast together") from None


def where(condition, input, other):
    """input where condition else other (condition a bool tensor; numbers take the tensor's dtype)."""
    c = condition.data if isinstance(condition, Tensor) else condition
    if not hasattr(c, "dtype") or c.dtype != np.bool_:
        raise TypeError(f"where: condition must be a bool tensor, got "
                        f"{getattr(c, 'dtype', type(c).__name__)} (compare first, e.g. x > 0)")
    if not isinstance(input, Tensor) and not isinstance(other, Tensor):
        input = Tensor(get_array_module(c).asarray(input, dtype=np.float32 if isinstance(input, float) else None))
    a, b = _operands("where", input, other)
    check_same_device("where", c, a.data)
    _broadcast_shape("where", c.shape, a.shape, b.shape)
    return Where.apply(a, b, cond=c)


def maximum(a, b):
    """Elementwise maximum; on ties the gradient is shared equally (as PyTorch)."""
    a, b = _operands("maximum", a, b)
    _broadcast_shape("maximum", a.shape, b.shape)
    return Maximum.apply(a, b)


def minimum(a, b):
    """Elementwise minimum; on ties the gradient is shared equally (as PyTorch)."""
    a, b = _operands("minimum", a, b)
    _broadcast_shape("minimum", a.shape, b.shape)
    return Maximum.apply(a, b, take_min=True)


def _sequence_of_tensors(op, tensors):
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{op}: expected a list or tuple of Tensors, got {type(tensors).__name__}")
    if not tensors:
        raise ValueError(f"{op}: expected a non-empty list of Tensors")
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: element {i} is a {type(t).__name__}, not a Tensor")
    check_same_device(op, *[t.data for t in tensors])
    check_same_dtype(op, *[t.data for t in tensors], names=[f"tensors[{i}]" for i in range(len(tensors))])
    return list(tensors)


def cat(tensors, dim: int = 0):
    """Concatenate along dim: the tensors' shapes must agree except in dim."""
    ts = _sequence_of_tensors("cat", tensors)
    t0 = ts[0]
    d = dim_index("cat", t0, dim)
    if t0.ndim == 0:
        raise ValueError("cat: zero-dimensional tensors cannot be concatenated (use gn.stack)")
    for i, t in enumerate(ts[1:], 1):
        if t.ndim != t0.ndim or any(a != b for k, (a, b) in enumerate(zip(t.shape, t0.shape)) if k != d):
            raise ValueError(f"cat: sizes of tensors must match except in dimension {d}: tensors[0] has shape "
                             f"{tuple(t0.shape)}, tensors[{i}] has shape {tuple(t.shape)}")
    return Cat.apply(*ts, axis=d)


def stack(tensors, dim: int = 0):
    """Join equally shaped tensors along a new dimension dim."""
    ts = _sequence_of_tensors("stack", tensors)
    for i, t in enumerate(ts[1:], 1):
        if t.shape != ts[0].shape:
            raise ValueError(f"stack: expects each tensor to be equal size, but got {tuple(ts[0].shape)} at "
                             f"entry 0 and {tuple(t.shape)} at entry {i}")
    d = dim_index("stack", ts[0], dim, extra=1)
    return Cat.apply(*[unsqueeze(t, d) for t in ts], axis=d)


def unsqueeze(x, dim: int):
    """A new dimension of size 1 at dim (in [-ndim-1, ndim])."""
    x = _need_tensor("unsqueeze", x)
    d = dim_index("unsqueeze", x, dim, extra=1)
    return Reshape.apply(x, shape=x.shape[:d] + (1,) + x.shape[d:])


def squeeze(x, dim=None):
    """Remove dimensions of size 1 (all of them, or those in dim; a named dim of another size stays)."""
    x = _need_tensor("squeeze", x)
    if dim is None:
        dims = set(range(x.ndim))
    elif isinstance(dim, (tuple, list)):
        dims = {dim_index("squeeze", x, d) for d in dim}
    else:
        dims = {dim_index("squeeze", x, dim)}
    return Reshape.apply(x, shape=tuple(n for i, n in enumerate(x.shape) if not (i in dims and n == 1)))


def permute(x, *dims):
    """The dimensions reordered: output dimension i is input dimension dims[i]."""
    x = _need_tensor("permute", x)
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    return Transpose.apply(x, axes=dims)


def transpose(x, dim0: int, dim1: int):
    """x with dimensions dim0 and dim1 swapped (any two, as torch.transpose)."""
    x = _need_tensor("transpose", x)
    d0, d1 = dim_index("transpose", x, dim0), dim_index("transpose", x, dim1)
    if x.ndim < 2:
        return Reshape.apply(x, shape=x.shape)  # 0-d / 1-d: nothing to swap, still a new node
    axes = list(range(x.ndim))
    axes[d0], axes[d1] = axes[d1], axes[d0]
    return Transpose.apply(x, axes=tuple(axes))


def var(x, dim=None, keepdim: bool = False, *, correction=None, unbiased=None):
    """sum((x - mean)^2) / (N - correction) over dim; correction=1 by default (Bessel's, as PyTorch)."""
    x = _need_tensor("var", x)
    if correction is not None and unbiased is not None:
        raise TypeError("var: pass correction or unbiased, not both")
    corr = (1 if unbiased is None or unbiased else 0) if correction is None else correction
    if x.dtype.kind != "f":
        raise TypeError(f"var: needs a float tensor, got dtype {x.dtype}")
    dims = range(x.ndim) if dim is None else (dim if isinstance(dim, (tuple, list)) else (dim,))
    axes = [dim_index("var", x, d) for d in dims]
    n = 1
    for d in axes:
        n *= x.shape[d] if x.ndim else 1
    centred = x - x.mean(dim=dim, keepdim=True)
    return (centred * centred).sum(dim=dim, keepdim=keepdim) / float(max(n - corr, 0))


def std(x, dim=None, keepdim: bool = False, *, correction=None, unbiased=None):
    """sqrt(var(x, dim, keepdim, correction)): correction=1 by default, as PyTorch."""
    return var(x, dim, keepdim, correction=correction, unbiased=unbiased).sqrt()


values_indices = {name: collections.namedtuple(name, ["values", "indices"]) for name in ("max", "min")}


def max_min(op: str, x, dim=None, keepdim=False):
    """torch.max / torch.min: over everything, the value (ties share the gradient); over dim, a
    (values, indices) named tuple whose values pass the gradient to the chosen index only."""
    x = _need_tensor(op, x)
    if dim is None:
        if keepdim:
            raise TypeError(f"{op}(): keepdim=True needs a dim")
        return Max.apply(x) if op == "max" else -Max.apply(-x)
    d = dim_index(op, x, dim)
    if x.ndim and x.shape[d] == 0:
        raise IndexError(f"{op}(): dimension {d} of size 0 (tensor shape {tuple(x.shape)}) has no {op}imum")
    xp = get_array_module(x.data)
    if x.ndim == 0:
        idx = xp.zeros((), dtype=np.int64)
        return values_indices[op](Reshape.apply(x, shape=()), Tensor(idx))
    idx = (xp.argmax if op == "max" else xp.argmin)(x.data, axis=d, keepdims=True).astype(np.int64)
    values = Gather.apply(x, index=idx, axis=d)
    if not keepdim:
        values, idx = Reshape.apply(values, shape=values.shape[:d] + values.shape[d + 1:]), idx.squeeze(d)
    return values_indices[op](values, Tensor(idx))


def arg_max_min(op: str, x, dim=None, keepdim=False):
    """torch.argmax / argmin: int64 indices over dim (or into the flattened tensor when dim is None)."""
    x = _need_tensor(op, x)
    xp = get_array_module(x.data)
    f = xp.argmax if op == "argmax" else xp.argmin
    if dim is None:
        out = xp.asarray(f(x.data.reshape(-1))).astype(np.int64)
        return Tensor(out.reshape((1,) * x.ndim) if keepdim else out)
    d = dim_index(op, x, dim)
    if x.ndim == 0:
        return Tensor(xp.zeros((), dtype=np.int64))
    if x.shape[d] == 0:
        raise IndexError(f"{op}(): dimension {d} of size 0 (tensor shape {tuple(x.shape)}) has no {op[3:]}imum")
    return Tensor(f(x.data, axis=d, keepdims=bool(keepdim)).astype(np.int64))


__all__ = [n for n in dir() if not n.startswith("_")]
