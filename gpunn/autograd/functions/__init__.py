"""All differentiable ops, one Function per op family, plus the operand handling that
Tensor's operators share (numbers become 0-d arrays of the tensor's dtype; tensors must agree
in dtype and device)."""
from __future__ import annotations

import numbers

import numpy as np

from gpunn.autograd.checks import check_float, check_same_device, check_same_dtype, scalar_like
from gpunn.autograd.functions.activation import Activation, LogSoftmax, Softmax
from gpunn.autograd.functions.arithmetic import (Abs, Add, Cast, Clone, Div, Exp, Log, MatMul, Mul, Neg,
                                                 Pow, Sqrt, Sub)
from gpunn.autograd.functions.dense import Dense
from gpunn.autograd.functions.loss import BCEWithLogits, CrossEntropy, L1, MSE
from gpunn.autograd.functions.reduction import Max, Mean, Sum
from gpunn.autograd.functions.shape import Gather, GetItem, Reshape, Transpose
from gpunn.autograd.tensor import Tensor
from gpunn.backend import is_array
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


__all__ = [n for n in dir() if not n.startswith("_")]
