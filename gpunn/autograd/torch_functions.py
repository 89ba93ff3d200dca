"""PyTorch's free functions over tensors (gn.exp(x), gn.cat([...]), gn.max(x, 1), ...): each is the
Tensor method of the same name or the op in autograd.functions, so every formula lives in one place."""
from __future__ import annotations

from gpunn.autograd import functions as _F
from gpunn.autograd.tensor import Tensor

cat = concat = concatenate = _F.cat
stack = _F.stack
where = _F.where
clamp = clip = _F.clamp
maximum = _F.maximum
minimum = _F.minimum
squeeze = _F.squeeze
unsqueeze = _F.unsqueeze
permute = _F.permute
transpose = _F.transpose
std = _F.std
var = _F.var
matmul = _F.matmul


def _method(name):
    def fn(input, *args, **kwargs):
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}: expected a Tensor, got {type(input).__name__}")
        return getattr(input, name)(*args, **kwargs)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"gn.{name}(input, ...) is input.{name}(...) (see Tensor.{name})."
    return fn


_METHODS = ("exp", "log", "sqrt", "sin", "cos", "abs", "sign", "sum", "mean", "max", "min", "amax", "amin",
            "argmax", "argmin", "flatten", "reshape", "clone", "t")
for _name in _METHODS:
    globals()[_name] = _method(_name)

__all__ = ["cat", "concat", "concatenate", "stack", "where", "clamp", "clip", "maximum", "minimum", "squeeze",
           "unsqueeze", "permute", "transpose", "std", "var", "matmul", *_METHODS]
