"""Tensor, Function and the reverse-mode tape: the whole autodiff engine.

A `Tensor` wraps one NumPy or CuPy array. An op is a `Function` subclass with `forward` (arrays in,
one array out) and `backward` (the output's gradient in, one gradient per input out). Calling
`Function.apply(*tensors)` runs forward and, when grad mode is on and an input requires grad,
records the node on the output. `loss.backward()` walks the recorded graph once in reverse
topological order and accumulates into `.grad` of every leaf that requires it (into the leaf's
gradient sink where its owner registered one: gpunn/autograd/grad_sink.py).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import operator

import numpy as np

from gpunn.autograd import grad_sink as _sink
from gpunn.autograd.checks import check_same_device as _check_same_device, flush_checks
from gpunn.backend import Device, device as resolve_device, device_of, get_array_module, is_array, is_cupy_array
from gpunn.kernels import ops as _kops

_grad_enabled = contextvars.ContextVar("gpunn_grad_enabled", default=True)
# Callbacks queued (queue_callback) during the current backward pass; None outside one.
_end_callbacks = contextvars.ContextVar("gpunn_backward_end_callbacks", default=None)


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


_inference = contextvars.ContextVar("gpunn_inference_mode", default=False)


class inference_mode:
    """`with gn.inference_mode():`, `@gn.inference_mode()` or `@gn.inference_mode`: PyTorch's name
    for running without autograd. gpunn has no separate "inference tensors": inside, this is
    `no_grad` (no graph is recorded and results do not require grad), and `is_inference_mode_enabled()`
    says True. `inference_mode(False)` changes nothing, as in PyTorch."""

    def __new__(cls, mode=True):
        if isinstance(mode, bool):
            return super().__new__(cls)
        if callable(mode):  # used bare, as @gn.inference_mode
            return cls(True)(mode)
        raise TypeError(f"inference_mode expects a bool (or a function to decorate), got {type(mode).__name__}")

    def __init__(self, mode: bool = True):
        self.mode = mode
        self._tokens = []

    def __enter__(self):
        self._tokens.append((_grad_enabled.set(False), _inference.set(True)) if self.mode else None)

    def __exit__(self, *exc):
        tokens = self._tokens.pop()
        if tokens is not None:
            _grad_enabled.reset(tokens[0])
            _inference.reset(tokens[1])

    def __call__(self, fn):
        mode = self.mode

        @functools.wraps(fn)
        def run(*args, **kwargs):
            with inference_mode(mode):
                return fn(*args, **kwargs)
        return run


def is_inference_mode_enabled() -> bool:
    return _inference.get()


@contextlib.contextmanager
def enable_grad():
    token = _grad_enabled.set(True)
    try:
        yield
    finally:
        _grad_enabled.reset(token)


# Array glue of kernel-replayable nodes (see Function.kernel_replay) that is not a kernel: functions
# of their array arguments only, which gn.compile records and replays with the kernels. As
# (module, name), since the compiler swaps the module's attribute while it traces.
REPLAYED_CALLS: list = []


def replayed(fn=None, *, host_only: bool = False):
    """Mark fn (a module-level function that its node calls by its module name) as array glue that
    gn.compile's kernel-level replay repeats: its result depends on its arguments alone.
    `@replayed(host_only=True)`: fn does no device work (it queues a deferred check), so a CUDA-graph
    replay runs it again after each launch, on a snapshot of the step's device arrays."""

    def mark(f):
        REPLAYED_CALLS.append((f.__module__, f.__name__))
        f.host_only = host_only
        return f

    return mark if fn is None else mark(fn)


class Function:
    """One differentiable op. Subclasses implement `forward(*arrays, **params)` and `backward(grad)`.

    `backward` returns a tuple with one entry per input: an array shaped like that input, or None
    where the input needs no gradient (`self.needs_grad[i]` says which do).

    `phase` and `layer` label the node for the profiler: forward ("loss" for loss nodes) and the
    layer's path in its model where one is known (a dense node takes it from its `layer` argument).
    """

    inputs: tuple = ()
    needs_grad: tuple = ()
    phase = "forward"
    layer = None
    # What backward reads, for the in-place check (Tensor._version): a class that reads none of its
    # inputs, or not its output, says so; by default every input and the output count as saved.
    saves_inputs = True
    saves_output = True
    _saved_versions: tuple = ()
    # gn.compile may replay this node's kernels without the node (gpunn/compiler.py) only if its
    # forward and backward do all their array work through `ops_for(...)` kernels (views and shape
    # logic aside), read no array value into a Python number that a kernel then takes, and write
    # no array outside a kernel. A class that keeps that promise says so.
    kernel_replay = False

    @classmethod
    def apply(cls, *inputs: "Tensor", **params) -> "Tensor":
        fn = cls()
        rec = _kops._recorder
        if rec is None:
            out = fn.forward(*[t.data for t in inputs], **params)
        else:  # a profiler is active: it runs forward inside this node's span
            out = rec.node_forward(fn, [t.data for t in inputs], params)
        if isinstance(out, np.generic):  # NumPy reductions return scalars; keep 0-d arrays
            out = np.asarray(out)
        if _grad_enabled.get():
            needs = tuple(t.requires_grad for t in inputs)
            if True in needs:
                fn.inputs = inputs
                fn.needs_grad = needs
                if cls.saves_inputs:
                    fn._saved_versions = tuple(t._version for t in inputs)
                res = Tensor(out, requires_grad=True)
                res._node = fn
                return res
        return Tensor(out)

    def grad_sink(self, i: int):
        """The array that input i's gradient may be written into directly, or None (see
        gpunn/autograd/grad_sink.py). A backward that writes there returns that very array."""
        return _sink.claim(self.inputs[i])

    def forward(self, *arrays, **params):  # pragma: no cover - interface
        raise NotImplementedError

    def backward(self, grad):  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def name(self) -> str:
        return type(self).__name__


_NUMERIC_KINDS = "biuf"



def _binary(name: str):
    """The (a op b, b op a) operator methods of Tensor, calling functions.<name>."""
    def forward(self, other):
        return getattr(_F, name)(self, other)

    def reflected(self, other):
        return getattr(_F, name)(other, self)

    forward.__name__, reflected.__name__ = f"__{name}__", f"__r{name}__"
    return forward, reflected


def _unary(name: str):
    """The Tensor method x.<name>() (exp, log, sqrt, sin, cos, abs, sign): functions.unary."""
    def method(self):
        return _F.unary(name, self)

    method.__name__ = name
    method.__doc__ = f"torch.{name}, elementwise, with its gradient (integer input computed in float32 where " \
                     "the result is fractional)."
    return method


def _comparison(op):
    def compare(self, other):
        return self._compare(other, op)

    compare.__name__ = f"__{op.__name__}__"
    return compare


class Tensor:
    """An n-dimensional array with an optional gradient. `data` is a NumPy or CuPy array."""

    __slots__ = ("data", "requires_grad", "grad", "_node", "_grad_sink", "_version", "_post_hooks",
                 "__weakref__")
    __array_priority__ = 1000  # so ndarray OP Tensor defers to Tensor's reflected operators

    def __init__(self, data, requires_grad: bool = False):
        self.data = data
        self.requires_grad = requires_grad
        self.grad = None
        self._node = None
        self._grad_sink = None  # see gpunn/autograd/grad_sink.py
        self._version = 0  # bumped by every in-place write; checked at backward (check_saved_versions)
        self._post_hooks = None

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
        """All dimensions reversed."""
        return self.permute(*range(self.ndim - 1, -1, -1))

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
        flush_checks()  # the host waits for the GPU here anyway: run the deferred checks first
        return self.data.get()

    def __array__(self, dtype=None, copy=None):
        """np.asarray(tensor): the values on the host (so NumPy functions accept tensors)."""
        a = self.numpy()
        if dtype is not None and a.dtype != dtype:
            return a.astype(dtype)
        return a.copy() if copy else a

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        if type(self.data) is not np.ndarray:
            flush_checks()
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
        """Add g into .grad; the first gradient goes to the leaf's sink, else to a private copy."""
        if isinstance(g, np.generic):  # NumPy reductions of 0-d arrays give scalars
            g = np.asarray(g)
        if self.grad is None:
            kept = _sink.receive(self, g)
            self.grad = Tensor(g.copy() if kept is None else kept)
        else:
            self.grad.data += g

    def register_post_accumulate_grad_hook(self, hook) -> "_HookHandle":
        """Call `hook(self)` on this leaf each time a backward pass has finished accumulating its
        .grad (PyTorch's name). Returns a handle whose `remove()` unregisters the hook."""
        if self._node is not None:
            raise RuntimeError("post accumulate grad hooks cannot be registered on non-leaf tensors")
        if not callable(hook):
            raise TypeError(f"hook must be callable, got {type(hook).__name__}")
        if self._post_hooks is None:
            self._post_hooks = []
        self._post_hooks.append(hook)
        return _HookHandle(self._post_hooks, hook)

    def backward(self, gradient=None) -> None:
        """Reverse-mode pass from this tensor; fills `.grad` of every leaf that requires grad."""
        if not self.requires_grad:
            raise RuntimeError("backward() called on a tensor that does not require grad "
                               "(no input of the computation requires grad, or it ran under no_grad)")
        if gradient is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a scalar output, got shape {self.shape}")
            g = _unit_seed(self.data)
        else:
            g = _check_gradient(self, gradient)

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
        rec = _kops._recorder
        if rec is None:
            _run_backward(order, grads, None)
        else:  # a profiler is active: the walk is its "backward" phase
            with rec.phase("backward"):
                _run_backward(order, grads, rec)

    # ------------------------------------------------------------------ operators
    __add__, __radd__ = _binary("add")
    __sub__, __rsub__ = _binary("sub")
    __mul__, __rmul__ = _binary("mul")
    __truediv__, __rtruediv__ = _binary("div")
    __matmul__, __rmatmul__ = _binary("matmul")

    def __neg__(self):
        return _F.Neg.apply(self)

    def __pow__(self, exponent):
        return _F.pow(self, exponent)

    def __getitem__(self, index):
        return _F.getitem(self, index)

    def _compare(self, other, op):
        o = other.data if isinstance(other, Tensor) else other
        return Tensor(op(self.data, o))

    # elementwise comparisons, as in PyTorch: bool tensors, no gradient
    __eq__, __ne__, __lt__, __le__, __gt__, __ge__ = map(
        _comparison, (operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge))

    __hash__ = object.__hash__

    def __bool__(self):
        if self.data.size != 1:
            raise RuntimeError(f"the truth value of a tensor with {self.data.size} elements is ambiguous")
        if type(self.data) is not np.ndarray:
            flush_checks()
        return bool(self.data.reshape(()))

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    # ------------------------------------------------------------------ methods (see functional)
    # Reductions take NumPy's names (axis, keepdims) and PyTorch's (dim, keepdim) alike.
    def sum(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        """Sum over `axis`/`dim` (an int, a tuple, or None for all axes)."""
        if dim is not None or keepdim is not None:
            axis, keepdims = _axis_args("sum", axis, keepdims, dim, keepdim)
        return _F.Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        """Mean over `axis`/`dim` (an int, a tuple, or None for all axes); NaN over zero elements."""
        if dim is not None or keepdim is not None:
            axis, keepdims = _axis_args("mean", axis, keepdims, dim, keepdim)
        return _F.Mean.apply(self, axis=axis, keepdims=keepdims)

    def max(self, dim=None, keepdim=None, *, axis=None, keepdims=None):
        """torch.max: `x.max()` the largest value (ties share the gradient); `x.max(dim)` a
        (values, indices) named tuple (`_, pred = out.max(1)`); `x.max(other)` the elementwise maximum."""
        if isinstance(dim, Tensor):
            return _F.maximum(self, dim)
        dim, keepdim = _dim_args("max", dim, keepdim, axis, keepdims)
        return _F.max_min("max", self, dim, keepdim)

    def min(self, dim=None, keepdim=None, *, axis=None, keepdims=None):
        """torch.min: as max, for the smallest values."""
        if isinstance(dim, Tensor):
            return _F.minimum(self, dim)
        dim, keepdim = _dim_args("min", dim, keepdim, axis, keepdims)
        return _F.max_min("min", self, dim, keepdim)

    def amax(self, dim=None, keepdim=False):
        """torch.amax: the largest values over `dim` (values only; the gradient is shared among ties)."""
        return _F.Max.apply(self, axis=dim, keepdims=keepdim)

    def amin(self, dim=None, keepdim=False):
        """torch.amin: the smallest values over `dim` (values only; the gradient is shared among ties)."""
        return -_F.Max.apply(-self, axis=dim, keepdims=keepdim)

    def argmax(self, dim=None, keepdim=None, *, axis=None, keepdims=None):
        """int64 indices of the largest values over dim (into the flattened tensor when dim is None)."""
        dim, keepdim = _dim_args("argmax", dim, keepdim, axis, keepdims)
        return _F.arg_max_min("argmax", self, dim, keepdim)

    def argmin(self, dim=None, keepdim=None, *, axis=None, keepdims=None):
        """int64 indices of the smallest values over dim (into the flattened tensor when dim is None)."""
        dim, keepdim = _dim_args("argmin", dim, keepdim, axis, keepdims)
        return _F.arg_max_min("argmin", self, dim, keepdim)

    def std(self, dim=None, keepdim=False, *, correction=None, unbiased=None):
        return _F.std(self, dim, keepdim, correction=correction, unbiased=unbiased)

    def var(self, dim=None, keepdim=False, *, correction=None, unbiased=None):
        return _F.var(self, dim, keepdim, correction=correction, unbiased=unbiased)

    exp, log, sqrt, sin, cos, abs, sign = map(_unary, ("exp", "log", "sqrt", "sin", "cos", "abs", "sign"))

    def clamp(self, min=None, max=None):
        return _F.clamp(self, min, max)

    clip = clamp

    def maximum(self, other):
        return _F.maximum(self, other)

    def minimum(self, other):
        return _F.minimum(self, other)

    def pow(self, exponent):
        return _F.pow(self, exponent)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _F.Reshape.apply(self, shape=shape)

    view = reshape

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        """Merge dims start_dim..end_dim into one (works for empty tensors, unlike reshape(..., -1));
        a 0-d tensor becomes shape (1,). IndexError for a dim out of range, as in PyTorch."""
        shape = self.shape
        nd = len(shape)
        if nd == 0:
            return self.reshape(1)
        s = start_dim + nd if start_dim < 0 else start_dim
        e = end_dim + nd if end_dim < 0 else end_dim
        if not (0 <= s < nd and 0 <= e < nd):
            raise IndexError(f"flatten: dims ({start_dim}, {end_dim}) out of range for shape {shape}")
        if s > e:
            raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} for shape {shape}")
        n = 1
        for d in shape[s:e + 1]:
            n *= d
        return self.reshape(*shape[:s], n, *shape[e + 1:])

    def squeeze(self, dim=None):
        return _F.squeeze(self, dim)

    def unsqueeze(self, dim: int):
        return _F.unsqueeze(self, dim)

    def transpose(self, dim0: int, dim1: int):
        """Swap dimensions dim0 and dim1 (torch.transpose); `permute` reorders all of them."""
        return _F.transpose(self, dim0, dim1)

    def t(self):
        """The transpose of a tensor with at most 2 dimensions."""
        if self.ndim > 2:
            raise ValueError(f"t() expects a tensor with <= 2 dimensions, got shape {tuple(self.shape)}; "
                             "use transpose(dim0, dim1) or permute")
        return self.transpose(0, -1) if self.ndim == 2 else self.reshape(self.shape)

    def permute(self, *dims):
        return _F.permute(self, *dims)

    def cpu(self) -> "Tensor":
        return self.to("cpu")

    # ------------------------------------------------------------------ in-place operators
    # They write into this tensor's own array (parameters and their optimizer views stay the same
    # arrays) and bump its version, so a backward that saved the old values refuses to run.
    def __iadd__(self, other):
        return self._inplace("add_", "add", other)

    def __isub__(self, other):
        return self._inplace("sub_", "subtract", other)

    def __imul__(self, other):
        return self._inplace("mul_", "multiply", other)

    def __itruediv__(self, other):
        return self._inplace("div_", "true_divide", other)

    def add_(self, other, *, alpha=1):
        return self._inplace("add_", "add", other, alpha)

    def sub_(self, other, *, alpha=1):
        return self._inplace("sub_", "subtract", other, alpha)

    def mul_(self, other):
        return self._inplace("mul_", "multiply", other)

    def div_(self, other):
        return self._inplace("div_", "true_divide", other)

    def zero_(self) -> "Tensor":
        return self.fill_(0)

    def fill_(self, value) -> "Tensor":
        self._check_writable("fill_", value)
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise ValueError(f"fill_: the value must be a number or a 1-element tensor, got shape {value.shape}")
            value = value.item()
        self.data[...] = value
        self._version += 1
        return self

    def copy_(self, src) -> "Tensor":
        """Copy src's values into this tensor (broadcast to its shape, cast to its dtype, moved to its device)."""
        self._check_writable("copy_", src)
        a = src.data if isinstance(src, Tensor) else src
        if isinstance(a, (list, tuple, int, float, bool, np.generic)):
            a = np.asarray(a)
        if not hasattr(a, "shape"):
            raise TypeError(f"copy_: src must be a Tensor or an array, got {type(src).__name__}")
        if (type(a) is np.ndarray) != (type(self.data) is np.ndarray):  # across devices, as PyTorch allows
            a = a.get() if type(self.data) is np.ndarray else self.device.xp.asarray(a)
        _check_inplace_shape("copy_", self.shape, a.shape)
        self.data[...] = a
        self._version += 1
        return self

    def _check_writable(self, op, other) -> None:
        """PyTorch's rule for in-place writes while grad mode is on: never on a leaf that requires grad.
        gpunn also refuses in-place ops inside a recorded graph (its tape has no rebasing): say so."""
        if not _grad_enabled.get():
            return
        if self.requires_grad and self._node is None:
            raise RuntimeError(f"{op}: a leaf Variable that requires grad is being used in an in-place operation; "
                               "update parameters inside `with gn.no_grad():` (as in PyTorch)")
        if self.requires_grad or (isinstance(other, Tensor) and other.requires_grad):
            raise RuntimeError(f"{op}: gpunn does not record in-place operations in the autograd graph (the "
                               "tensor or the operand requires grad); write it out of place, e.g. x = x + y, "
                               "or run it inside `with gn.no_grad():`")

    def _inplace(self, op, ufunc, other, alpha=1):
        self._check_writable(op, other)
        xp = get_array_module(self.data)
        kind = self.dtype.kind
        if isinstance(other, Tensor) or is_array(other):
            o = other.data if isinstance(other, Tensor) else other
            _check_same_device(op, self.data, o)
            if o.dtype != self.dtype:
                raise TypeError(f"{op}: dtypes differ (self={self.dtype}, other={o.dtype}); gpunn never mixes "
                                "them silently: convert the operand with .type(...) first")
            _check_inplace_shape(op, self.shape, o.shape)
        elif isinstance(other, (bool, np.bool_)) or not isinstance(other, (int, float, np.integer, np.floating)):
            raise TypeError(f"{op}: the operand must be a Tensor or a number, got {type(other).__name__}")
        else:
            if kind != "f" and isinstance(other, (float, np.floating)):
                raise TypeError(f"{op}: result type float can't be cast to the {self.dtype} of this tensor")
            o = xp.asarray(other, dtype=self.dtype)
        if kind != "f" and ufunc == "true_divide":
            raise TypeError(f"{op}: true division of a {self.dtype} tensor gives floats; it can't be done in place")
        if alpha != 1:
            o = o * self.dtype.type(alpha)
        getattr(xp, ufunc)(self.data, o, out=self.data)
        self._version += 1
        return self

    def relu(self):
        return _F.activation(self, "relu")

    def sigmoid(self):
        return _F.activation(self, "sigmoid")

    def tanh(self):
        return _F.activation(self, "tanh")

    def softmax(self, axis=-1, *, dim=None):
        return _F.Softmax.apply(self, axis=axis if dim is None else dim)

    def log_softmax(self, axis=-1, *, dim=None):
        return _F.LogSoftmax.apply(self, axis=axis if dim is None else dim)


def _check_inplace_shape(op, shape, other_shape) -> None:
    try:
        ok = np.broadcast_shapes(other_shape, shape) == tuple(shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{op}: an operand of shape {tuple(other_shape)} does not broadcast to this tensor's "
                         f"shape {tuple(shape)} (an in-place result keeps the tensor's shape)")


_seeds: dict = {}


def _unit_seed(a):
    """The 1 that `backward()` starts from on a one-element output: one cached array per (array
    type, device, dtype, shape), so a GPU training step spends no fill launch on it. Safe to share
    because a backward never writes into the gradient it is given (the tape already hands one
    gradient to several inputs, e.g. in Add); the NumPy seed is read-only, so a write would fail."""
    key = (type(a), device_of(a), a.dtype, a.shape)
    g = _seeds.get(key)
    if g is None:
        xp = get_array_module(a)
        g = xp.ones_like(a)
        if xp is np:
            g.flags.writeable = False
        _seeds[key] = g
    return g


def _run_backward(order, grads, rec) -> None:
    """The reverse walk of `Tensor.backward`: each node's backward in reverse topological order,
    gradients summed per input, leaves accumulating theirs. `rec` is the active profiler or None."""
    token = _sink.begin_pass()
    queued = []
    token_cb = _end_callbacks.set(queued)
    try:
        _walk_backward(order, grads, rec)
    finally:
        _sink.end_pass(token)
        _end_callbacks.reset(token_cb)
    for fn in queued:
        fn()


def queue_callback(fn) -> None:
    """Run `fn()` once the current backward pass has walked the whole graph (after every leaf's
    post-accumulate hooks). Only valid inside a backward pass, i.e. from a hook."""
    queued = _end_callbacks.get()
    if queued is None:
        raise RuntimeError("queue_callback() is only valid during a backward pass (call it from a hook)")
    queued.append(fn)


class _HookHandle:
    """What `register_post_accumulate_grad_hook` returns: `remove()` unregisters the hook."""

    __slots__ = ("_hooks", "_hook")

    def __init__(self, hooks, hook):
        self._hooks, self._hook = hooks, hook

    def remove(self) -> None:
        if self._hook in self._hooks:
            self._hooks.remove(self._hook)


def _walk_backward(order, grads, rec) -> None:
    for t in reversed(order):
        g = grads.pop(id(t), None)
        if g is None:
            continue
        node = t._node
        if node is None:
            if rec is None:
                t._accumulate_grad(g)
            else:
                rec.accumulate_grad(t, g)
            if t._post_hooks:  # a leaf appears once in the walk: its .grad is final here
                for hook in tuple(t._post_hooks):
                    hook(t)
            continue
        check_saved_versions(node, t)
        in_grads = node.backward(g) if rec is None else rec.node_backward(node, g)
        for inp, ig, need in zip(node.inputs, in_grads, node.needs_grad):
            if ig is None or not need:
                continue
            if type(ig) is not np.ndarray and isinstance(ig, np.generic):
                ig = np.asarray(ig)  # NumPy turns 0-d results into scalars; keep arrays on the tape
            k = id(inp)
            prev = grads.get(k)
            grads[k] = ig if prev is None else prev + ig


def check_saved_versions(node: Function, out: Tensor) -> None:
    """Refuse to run a node's backward on values changed in place since its forward (PyTorch's
    version-counter check): the gradient would be computed from the new values, silently wrong."""
    for i, (inp, v) in enumerate(zip(node.inputs, node._saved_versions)):
        if inp._version != v:
            raise _modified_error(inp, f"input {i}", node, inp._version, v)
    if out._version and node.saves_output:
        raise _modified_error(out, "output 0", node, out._version, 0)


def _modified_error(t, which, node, now, expected):
    return RuntimeError(
        f"one of the variables needed for gradient computation has been modified by an inplace operation: "
        f"[{t.dtype} tensor of shape {tuple(t.shape)}], which is {which} of {node.name}, is at version {now}; "
        f"expected version {expected} instead. Change the in-place operation (x += y, x.add_(y), ...) to an "
        f"out-of-place one (x = x + y), or run backward before changing the tensor.")


def _alias(op, name, value, alias, alias_value, unset=None, same_ok=False):
    """`value` (its default: `unset`), or `alias_value` when the caller used the other spelling;
    TypeError when both are given (unless `same_ok` and they agree as bools)."""
    if alias_value is None:
        return value
    if value is not unset and not (same_ok and bool(value) == bool(alias_value)):
        raise TypeError(f"{op}() got both {name}={value!r} and {alias}={alias_value!r}; pass one of them")
    return alias_value


def _dim_args(op, dim, keepdim, axis, keepdims):
    """PyTorch's (dim, keepdim) with NumPy's (axis, keepdims) accepted as aliases (PyTorch accepts axis too)."""
    return _alias(op, "dim", dim, "axis", axis), bool(_alias(op, "keepdim", keepdim, "keepdims", keepdims, same_ok=True))


def _axis_args(op, axis, keepdims, dim, keepdim):
    """Merge PyTorch's (dim, keepdim) into NumPy's (axis, keepdims); refuse both spellings at once."""
    return (_alias(op, "axis", axis, "dim", dim),
            bool(_alias(op, "keepdims", keepdims, "keepdim", keepdim, unset=False, same_ok=True)))


def _check_gradient(t: Tensor, gradient):
    """The array that `t.backward(gradient)` starts from: same shape, dtype and device as `t`."""
    if isinstance(gradient, Tensor):
        g = gradient.data
    elif is_array(gradient):
        g = gradient
    elif isinstance(gradient, np.generic):
        g = np.asarray(gradient)
    else:
        raise TypeError(f"backward() gradient must be a Tensor or an array shaped like the output {t.shape}, "
                        f"got {type(gradient).__name__}")
    if g.shape != t.shape:
        raise ValueError(f"backward() gradient shape {g.shape} does not match tensor shape {t.shape}")
    if g.dtype != t.dtype:
        raise TypeError(f"backward() gradient dtype {g.dtype} does not match tensor dtype {t.dtype}; "
                        "gpunn never mixes dtypes silently")
    if (type(g) is np.ndarray) != (type(t.data) is np.ndarray):
        raise RuntimeError(f"backward() gradient is on {device_of(g)} but the tensor is on {t.device}")
    return g


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
    if is_cupy_array(data):
        arr = data.copy() if dtype is None else data.astype(dtype)
        if dev is not None and not dev.is_gpu:
            arr = arr.get()
    else:
        if isinstance(data, (np.ndarray, np.generic)):  # NumPy data keeps its dtype (np.float64(1) too)
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
