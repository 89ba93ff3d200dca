"""Tensor, Function and the reverse-mode tape: the whole autodiff engine.

A `Tensor` wraps one NumPy or CuPy array. An op is a `Function` subclass with `forward` (arrays in,
one array out) and `backward` (the output's gradient in, one gradient per input out). Calling
`Function.apply(*tensors)` runs forward and, when grad mode is on and an input requires grad,
records the node on the output. `loss.backward()` walks the recorded graph once in reverse
topological order and accumulates into `.grad` of every leaf that requires it.
"""
from __future__ import annotations

import contextvars
import contextlib

import numpy as np

from gpunn.backend import Device, device as resolve_device, device_of

_grad_enabled = contextvars.ContextVar("gpunn_grad_enabled", default=True)


def is_grad_enabled() -> bool:
    return _grad_enabled.get()


@contextlib.contextmanager
def no_grad():
    """Context manager (and decorator via `no_grad()(fn)` style use) that records no graph."""
    token = _grad_enabled.set(False)
    try:
        yield
    finally:
        _grad_enabled.reset(token)


@contextlib.contextmanager
def enable_grad():
    token = _grad_enabled.set(True)
    try:
        yield
    finally:
        _grad_enabled.reset(token)


class Function:
    """One differentiable op. Subclasses implement `forward(*arrays, **params)` and `backward(grad)`.

    `backward` returns a tuple with one entry per input: an array shaped like that input, or None
    where the input needs no gradient (`self.needs_grad[i]` says which do).
    """

    inputs: tuple = ()
    needs_grad: tuple = ()

    @classmethod
    def apply(cls, *inputs: "Tensor", **params) -> "Tensor":
        fn = cls()
        out = fn.forward(*[t.data for t in inputs], **params)
        if isinstance(out, np.generic):  # NumPy reductions return scalars; keep 0-d arrays
            out = np.asarray(out)
        if _grad_enabled.get():
            needs = tuple(t.requires_grad for t in inputs)
            if True in needs:
                fn.inputs = inputs
                fn.needs_grad = needs
                res = Tensor(out, requires_grad=True)
                res._node = fn
                return res
        return Tensor(out)

    def forward(self, *arrays, **params):  # pragma: no cover - interface
        raise NotImplementedError

    def backward(self, grad):  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def name(self) -> str:
        return type(self).__name__


_NUMERIC_KINDS = "biuf"


class Tensor:
    """An n-dimensional array with an optional gradient. `data` is a NumPy or CuPy array."""

    __slots__ = ("data", "requires_grad", "grad", "_node", "_grad_buffer", "__weakref__")
    __array_priority__ = 1000  # so ndarray OP Tensor defers to Tensor's reflected operators

    def __init__(self, data, requires_grad: bool = False):
        self.data = data
        self.requires_grad = requires_grad
        self.grad = None
        self._node = None
        self._grad_buffer = None

    # ------------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def device(self) -> Device:
        return device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    @property
    def grad_fn(self):
        return self._node

    @property
    def T(self) -> "Tensor":
        return self.transpose()

    def numel(self) -> int:
        return int(self.data.size)

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return self.data.ndim

    def __len__(self) -> int:
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.data.shape[0]

    def __repr__(self) -> str:
        body = np.array2string(self.numpy(), separator=", ", precision=4, threshold=20)
        extra = []
        if self.device.is_gpu:
            extra.append(f"device='{self.device}'")
        if self.dtype != np.float32 and self.dtype.kind == "f":
            extra.append(f"dtype={self.dtype}")
        if self._node is not None:
            extra.append(f"grad_fn=<{self._node.name}>")
        elif self.requires_grad:
            extra.append("requires_grad=True")
        return f"tensor({body}{', ' if extra else ''}{', '.join(extra)})"

    # ------------------------------------------------------------------ conversion
    def numpy(self) -> np.ndarray:
        """The values as a NumPy array (shares memory on the CPU; a host copy from the GPU)."""
        if type(self.data) is np.ndarray:
            return self.data
        return self.data.get()

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def detach(self) -> "Tensor":
        return Tensor(self.data)

    def clone(self) -> "Tensor":
        return _F.Clone.apply(self)

    def to(self, target) -> "Tensor":
        """A copy on another device (`"cpu"`, `"gpu"`, a Device), or cast to a float dtype."""
        if isinstance(target, (np.dtype, type)) or (isinstance(target, str) and target in ("float32", "float64")):
            return self.type(target)
        dev = resolve_device(target)
        if dev == self.device:
            return self
        data = dev.xp.asarray(self.data) if dev.is_gpu else self.data.get()
        out = Tensor(data, requires_grad=self.requires_grad and self.is_leaf)
        return out

    def type(self, dtype) -> "Tensor":
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self
        return _F.Cast.apply(self, dtype=dtype)

    def float(self) -> "Tensor":
        return self.type(np.float32)

    def double(self) -> "Tensor":
        return self.type(np.float64)

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        if flag and self.dtype.kind != "f":
            raise TypeError(f"only float tensors can require grad, got dtype {self.dtype}")
        self.requires_grad = flag
        return self

    # ------------------------------------------------------------------ autodiff
    def _accumulate_grad(self, g) -> None:
        """Add g into .grad. A leaf with a grad buffer (set by an optimizer) receives it in place."""
        if self.grad is None:
            buf = self._grad_buffer
            if buf is not None and buf.shape == g.shape:
                buf[...] = g
                self.grad = Tensor(buf)
            else:
                self.grad = Tensor(g.copy())
        else:
            self.grad.data += g

    def backward(self, gradient=None) -> None:
        """Reverse-mode pass from this tensor; fills `.grad` of every leaf that requires grad."""
        if not self.requires_grad:
            raise RuntimeError("backward() called on a tensor that does not require grad "
                               "(no input of the computation requires grad, or it ran under no_grad)")
        if gradient is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a scalar output, got shape {self.shape}")
            xp = np if type(self.data) is np.ndarray else self.device.xp
            g = xp.ones_like(self.data)
        else:
            g = gradient.data if isinstance(gradient, Tensor) else gradient
            if g.shape != self.shape:
                raise ValueError(f"backward() gradient shape {g.shape} does not match tensor shape {self.shape}")

        order = []
        seen = set()
        stack = [(self, False)]
        while stack:
            t, expanded = stack.pop()
            if expanded:
                order.append(t)
                continue
            if id(t) in seen:
                continue
            seen.add(id(t))
            stack.append((t, True))
            node = t._node
            if node is not None:
                for inp in node.inputs:
                    if inp.requires_grad and id(inp) not in seen:
                        stack.append((inp, False))

        grads = {id(self): g}
        for t in reversed(order):
            g = grads.pop(id(t), None)
            if g is None:
                continue
            node = t._node
            if node is None:
                t._accumulate_grad(g)
                continue
            in_grads = node.backward(g)
            for inp, ig, need in zip(node.inputs, in_grads, node.needs_grad):
                if ig is None or not need:
                    continue
                k = id(inp)
                prev = grads.get(k)
                grads[k] = ig if prev is None else prev + ig

    def zero_(self) -> "Tensor":
        self.data[...] = 0
        return self

    # ------------------------------------------------------------------ operators
    def __add__(self, other):
        return _F.add(self, other)

    def __radd__(self, other):
        return _F.add(other, self)

    def __sub__(self, other):
        return _F.sub(self, other)

    def __rsub__(self, other):
        return _F.sub(other, self)

    def __mul__(self, other):
        return _F.mul(self, other)

    def __rmul__(self, other):
        return _F.mul(other, self)

    def __truediv__(self, other):
        return _F.div(self, other)

    def __rtruediv__(self, other):
        return _F.div(other, self)

    def __neg__(self):
        return _F.Neg.apply(self)

    def __pow__(self, exponent):
        return _F.pow(self, exponent)

    def __matmul__(self, other):
        return _F.matmul(self, other)

    def __rmatmul__(self, other):
        return _F.matmul(other, self)

    def __getitem__(self, index):
        return _F.getitem(self, index)

    def _compare(self, other, op):
        o = other.data if isinstance(other, Tensor) else other
        return Tensor(op(self.data, o))

    def __eq__(self, other):  # elementwise, as in PyTorch
        return self._compare(other, lambda a, b: a == b)

    def __ne__(self, other):
        return self._compare(other, lambda a, b: a != b)

    def __lt__(self, other):
        return self._compare(other, lambda a, b: a < b)

    def __le__(self, other):
        return self._compare(other, lambda a, b: a <= b)

    def __gt__(self, other):
        return self._compare(other, lambda a, b: a > b)

    def __ge__(self, other):
        return self._compare(other, lambda a, b: a >= b)

    __hash__ = object.__hash__

    def __bool__(self):
        if self.data.size != 1:
            raise RuntimeError(f"the truth value of a tensor with {self.data.size} elements is ambiguous")
        return bool(self.data.reshape(()))

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    # ------------------------------------------------------------------ methods (see functional)
    def sum(self, axis=None, keepdims=False):
        return _F.Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return _F.Mean.apply(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return _F.Max.apply(self, axis=axis, keepdims=keepdims)

    def argmax(self, axis=None):
        return Tensor(self.data.argmax(axis=axis))

    def exp(self):
        return _F.Exp.apply(self)

    def log(self):
        return _F.Log.apply(self)

    def sqrt(self):
        return _F.Sqrt.apply(self)

    def abs(self):
        return _F.Abs.apply(self)

    def pow(self, exponent):
        return _F.pow(self, exponent)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _F.Reshape.apply(self, shape=shape)

    view = reshape

    def flatten(self, start_dim: int = 0):
        return self.reshape(*self.shape[:start_dim], -1)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _F.Transpose.apply(self, axes=axes or None)

    def permute(self, *axes):
        return self.transpose(*axes)

    def relu(self):
        return _F.activation(self, "relu")

    def sigmoid(self):
        return _F.activation(self, "sigmoid")

    def tanh(self):
        return _F.activation(self, "tanh")

    def softmax(self, axis=-1):
        return _F.Softmax.apply(self, axis=axis)

    def log_softmax(self, axis=-1):
        return _F.LogSoftmax.apply(self, axis=axis)


class Parameter(Tensor):
    """A leaf tensor that a Module registers as trainable (requires_grad=True)."""

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True):
        if isinstance(data, Tensor):
            data = data.data
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


_DEFAULT_FLOAT = np.float32


def tensor(data, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """A new tensor holding a copy of `data` (list, scalar, NumPy/CuPy array or Tensor).

    Python floats become float32 (PyTorch's default); NumPy arrays keep their dtype unless `dtype`
    is given. Strings, objects and other non-numeric data are refused.
    """
    if isinstance(data, Tensor):
        data = data.data
    dev = resolve_device(device) if device is not None else None
    if type(data).__module__.startswith("cupy"):
        arr = data.copy() if dtype is None else data.astype(dtype)
        if dev is not None and not dev.is_gpu:
            arr = arr.get()
    else:
        if isinstance(data, np.ndarray):
            arr = np.array(data, dtype=dtype, copy=True)
        else:
            try:
                arr = np.array(data, dtype=dtype)
            except (ValueError, TypeError) as err:
                raise TypeError(f"gn.tensor cannot make a numeric array from {type(data).__name__}: {err}") from None
            if dtype is None and arr.dtype == np.float64:
                arr = arr.astype(_DEFAULT_FLOAT)
        if dev is not None and dev.is_gpu:
            arr = dev.xp.asarray(arr)
    if arr.dtype.kind not in _NUMERIC_KINDS:
        raise TypeError(f"gn.tensor needs numeric data (bool, int or float), got dtype {arr.dtype}")
    if requires_grad and arr.dtype.kind != "f":
        raise TypeError(f"only float tensors can require grad, got dtype {arr.dtype}")
    return Tensor(arr, requires_grad=requires_grad)


from gpunn.autograd import functions as _F  # noqa: E402  (ops need Tensor and Function defined above)
