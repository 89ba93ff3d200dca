"""`Module`: the base class of every layer, after `torch.nn.Module` (same names, same state_dict keys).

A module registers the Parameters and Modules assigned to its attributes, in assignment order, so
`named_parameters()` and `state_dict()` produce PyTorch's keys ("0.weight", "encoder.fc1.bias").
Registered values also live in the instance `__dict__`, so reading `self.weight` on the hot path
is a plain attribute lookup (no `__getattr__` fallback).

Each module knows its path in the model (`_path`: "" for a root, "0", "encoder.fc1"), set when it
is registered as a child and propagated to its descendants; layers quote it in error messages.

`load_state_dict` accepts gpunn Tensors, NumPy/CuPy arrays, or anything with
`.detach().cpu().numpy()` (a torch tensor, without importing torch). It checks every key, shape and
dtype first and copies nothing unless all are valid; values are then copied IN PLACE into the
existing arrays (`p.data[...] = value`), because optimizers keep parameters as views into flat
buffers.
"""
from __future__ import annotations

from collections import OrderedDict, namedtuple

import numpy as np

from gpunn.autograd.tensor import Parameter, Tensor, no_grad
from gpunn.backend import device as resolve_device
from gpunn.backend import is_array, is_cupy_array

# Bumped whenever any module's structure changes (children or parameters registered, replaced or
# removed; a fusion-relevant attribute such as LeakyReLU.negative_slope reassigned). Sequential
# compares it with the version its fusion plan was built at: one integer compare per call.
_version = 0


def _bump() -> None:
    global _version
    _version += 1


class StateDictError(RuntimeError):
    """load_state_dict found missing, unexpected, mis-shaped or mistyped entries; nothing was copied."""


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _check_name(what: str, name) -> None:
    if not isinstance(name, str) or not name or "." in name:
        raise KeyError(f"{what} name must be a non-empty string without '.', got {name!r}")


def _addindent(text: str, spaces: int) -> str:
    lines = text.split("\n")
    if len(lines) == 1:
        return text
    return lines[0] + "\n" + "\n".join(" " * spaces + line for line in lines[1:])


def _as_array(value):
    """A state_dict value as a NumPy or CuPy array, without importing torch."""
    if isinstance(value, Tensor):
        return value.data
    if is_array(value):
        return value
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor (or look-alike)
        return np.asarray(value.detach().cpu().numpy())
    if isinstance(value, (list, tuple, int, float, np.generic)) and not isinstance(value, bool):
        return np.asarray(value)
    raise TypeError(f"got a {type(value).__name__}; expected a gpunn Tensor, a NumPy array or a torch tensor")


class Module:
    """Base class for layers and models. Subclasses call `super().__init__()` and define `forward`."""

    _fusion_attrs: tuple = ()  # attribute names whose reassignment invalidates Sequential plans

    def __init__(self) -> None:
        d = self.__dict__
        d["_parameters"] = OrderedDict()
        d["_buffers"] = OrderedDict()
        d["_non_persistent"] = set()
        d["_modules"] = OrderedDict()
        d["_path"] = ""
        d["training"] = True

    # ------------------------------------------------------------------ registration
    def __setattr__(self, name: str, value) -> None:
        d = self.__dict__
        if "_parameters" not in d:
            raise AttributeError(f"cannot assign {name!r} before Module.__init__() call "
                                 f"(call super().__init__() first in {type(self).__name__}.__init__)")
        if isinstance(value, Parameter):
            self._register("_parameters", name, value)
        elif isinstance(value, Module):
            self._register("_modules", name, value)
        elif name in d["_parameters"] or name in d["_modules"]:
            kind, what, expected = (("_parameters", "parameter", "gpunn.nn.Parameter") if name in d["_parameters"]
                                    else ("_modules", "child module", "Module"))
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as {what} {name!r} of "
                                f"{type(self).__name__} ({expected} or None expected)")
            self._register(kind, name, None)
        elif name in d["_buffers"]:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign {type(value).__name__} as buffer {name!r} (Tensor or None expected)")
            d["_buffers"][name] = value
            d[name] = value
        else:
            object.__setattr__(self, name, value)  # respects properties defined by subclasses
            if name in self._fusion_attrs:
                _bump()

    def __delattr__(self, name: str) -> None:
        if self._forget(name):
            self.__dict__.pop(name, None)
            _bump()
        else:
            object.__delattr__(self, name)

    def _forget(self, name: str) -> bool:
        """Remove `name` from every registry; True if it was registered."""
        d = self.__dict__
        found = False
        for reg in (d["_parameters"], d["_modules"], d["_buffers"]):
            if name in reg:
                del reg[name]
                found = True
        d["_non_persistent"].discard(name)
        return found

    def _register(self, kind: str, name: str, value) -> None:
        """`value` (or None) as parameter (kind "_parameters") or child module ("_modules") `name`;
        replacing one keeps its place in the registration order, a name registered as something
        else is forgotten there. Structure changed: Sequential's fusion plans are rebuilt."""
        d = self.__dict__
        if name not in d[kind]:
            self._forget(name)
        d[kind][name] = value
        d[name] = value
        if value is not None and kind == "_modules":
            value._set_path(_join(self._path, name))
        _bump()

    def _set_path(self, path: str) -> None:
        self.__dict__["_path"] = path
        for name, child in self._modules.items():
            if child is not None:
                child._set_path(_join(path, name))

    @property
    def _layer_name(self) -> str:
        """The name its ops carry (the profiler's layer label, in error messages): its path in the
        model, or its class name for a root."""
        return self._path or type(self).__name__

    def register_parameter(self, name: str, param) -> None:
        _check_name("parameter", name)
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot register {type(param).__name__} as parameter {name!r} "
                            "(gpunn.nn.Parameter or None expected)")
        self._register("_parameters", name, param)

    def add_module(self, name: str, module) -> None:
        _check_name("module", name)
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        self._register("_modules", name, module)

    register_module = add_module

    def register_buffer(self, name: str, tensor, persistent: bool = True) -> None:
        """A non-trainable tensor that is part of the state (saved by state_dict when persistent)."""
        _check_name("buffer", name)
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"cannot register {type(tensor).__name__} as buffer {name!r} (Tensor or None expected)")
        self._forget(name)
        self._buffers[name] = tensor
        self.__dict__[name] = tensor
        if not persistent:
            self._non_persistent.add(name)

    # ------------------------------------------------------------------ calling
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward() method")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------------ traversal
    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True):
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(memo, _join(prefix, name), remove_duplicate)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        seen = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self):
        for _, child in self.named_children():
            yield child

    def _named_members(self, registry: str, prefix: str, recurse: bool, remove_duplicate: bool = True):
        seen = set()
        mods = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]
        for mod_prefix, mod in mods:
            for name, value in getattr(mod, registry).items():
                if value is None or (remove_duplicate and id(value) in seen):
                    continue
                seen.add(id(value))
                yield _join(mod_prefix, name), value

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """(name, Parameter) pairs with PyTorch's dotted names; shared parameters once."""
        yield from self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True):
        if recurse:
            return iter(self._parameter_list())
        return (p for _, p in self.named_parameters(recurse=False))

    def _parameter_list(self) -> list:
        """All parameters (deduplicated, in named_parameters order), cached until the structure changes."""
        cache = self.__dict__.get("_param_cache")
        if cache is not None and cache[0] == _version:
            return cache[1]
        params = [p for _, p in self.named_parameters()]
        self.__dict__["_param_cache"] = (_version, params)
        return params

    def named_buffers(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        yield from self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def get_submodule(self, target: str) -> "Module":
        mod = self
        for part in target.split(".") if target else []:
            child = mod._modules.get(part)
            if child is None:
                raise AttributeError(f"{type(mod).__name__} has no submodule {part!r} (looking up {target!r})")
            mod = child
        return mod

    def apply(self, fn) -> "Module":
        """Call fn on every submodule (children first), then on self, as PyTorch does."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # ------------------------------------------------------------------ modes and gradients
    def train(self, mode: bool = True) -> "Module":
        if not isinstance(mode, bool):
            raise ValueError(f"training mode is expected to be a bool, got {type(mode).__name__}")
        for m in self.modules():
            m.__dict__["training"] = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def _mode(self) -> bool:
        """self.training, read through this method by layers whose forward depends on it (Dropout,
        BatchNorm1d): gn.compile records these reads and traces again when such a mode changes."""
        return self.training

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget gradients: `p.grad = None` (default) or zero them in place."""
        if set_to_none:
            for p in self._parameter_list():
                p.grad = None
        else:
            for p in self._parameter_list():
                if p.grad is not None:
                    p.grad.data[...] = 0

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    # ------------------------------------------------------------------ devices and dtypes
    def to(self, target) -> "Module":
        """Move every parameter and buffer to a device ("cpu", "gpu", a Device) or cast to a float dtype.

        This rebinds `p.data` (the Parameter objects stay the same): call it before creating an
        optimizer, whose flat buffers would otherwise keep the old arrays.
        """
        is_dtype = isinstance(target, (np.dtype, type)) or (
            isinstance(target, str) and target in ("float32", "float64", "float16"))
        if is_dtype:
            dtype = np.dtype(target)
            if dtype.kind != "f":
                raise TypeError(f"Module.to only casts to float dtypes, got {dtype}")
            convert = (lambda a: a if a.dtype.kind != "f" or a.dtype == dtype else a.astype(dtype))
        else:
            dev = resolve_device(target)
            xp = dev.xp

            def convert(a):
                on_gpu = is_cupy_array(a)
                if dev.is_gpu:
                    if on_gpu and a.device.id == dev.index:
                        return a
                    with xp.cuda.Device(dev.index):
                        return xp.asarray(a)
                return a.get() if on_gpu else a

        with no_grad():
            for t in list(self.parameters()) + list(self.buffers()):
                new = convert(t.data)
                if new is not t.data:
                    t.data = new  # a gradient sink on the old device or dtype no longer fits: ignored
                    if t.grad is not None:
                        t.grad = Tensor(convert(t.grad.data))
        return self

    def cpu(self) -> "Module":
        return self.to("cpu")

    def cuda(self, index: int = 0) -> "Module":
        return self.to(f"gpu:{index}")

    def float(self) -> "Module":
        return self.to(np.float32)

    def double(self) -> "Module":
        return self.to(np.float64)

    # ------------------------------------------------------------------ state
    def state_dict(self, destination=None, prefix: str = "", keep_vars: bool = False) -> OrderedDict:
        """OrderedDict of name -> Tensor (sharing memory with the parameters), PyTorch's keys."""
        out = OrderedDict() if destination is None else destination
        for mod_prefix, mod in self.named_modules(prefix=prefix.rstrip("."), remove_duplicate=False):
            for name, p in mod._parameters.items():
                if p is not None:
                    out[_join(mod_prefix, name)] = p if keep_vars else Tensor(p.data)
            for name, b in mod._buffers.items():
                if b is not None and name not in mod._non_persistent:
                    out[_join(mod_prefix, name)] = b if keep_vars else Tensor(b.data)
        return out

    def _state_targets(self) -> "OrderedDict[str, Tensor]":
        return self.state_dict(keep_vars=True)

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy values into the existing parameters and buffers, in place.

        Every entry is checked before anything is copied. Errors (raised together, as one
        StateDictError naming each key): missing keys and unexpected keys (when strict), shape
        mismatches (always), values that are not float arrays or cannot be read. Floating values of
        another precision are cast to the parameter's dtype, as PyTorch's copy_ does.
        Returns (missing_keys, unexpected_keys).
        """
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"load_state_dict expects a mapping of name -> tensor, got {type(state_dict).__name__}")
        targets = self._state_targets()
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict.keys() if k not in targets]
        problems = []
        ready = []
        for key, target in targets.items():
            if key not in state_dict:
                continue
            try:
                value = _as_array(state_dict[key])
            except Exception as err:  # noqa: BLE001 - reported with its key below
                problems.append(f"{key!r}: cannot read the value ({err})")
                continue
            if tuple(value.shape) != tuple(target.shape):
                problems.append(f"size mismatch for {key!r}: expected shape {tuple(target.shape)}, "
                                f"got shape {tuple(value.shape)}")
                continue
            if value.dtype.kind != "f" and target.dtype.kind == "f":
                problems.append(f"dtype mismatch for {key!r}: expected a float array ({target.dtype}), "
                                f"got dtype {value.dtype}")
                continue
            ready.append((target, value))
        lines = []
        if strict and missing:
            lines.append("Missing key(s) in state_dict: " + ", ".join(repr(k) for k in missing) + ".")
        if strict and unexpected:
            lines.append("Unexpected key(s) in state_dict: " + ", ".join(repr(k) for k in unexpected) + ".")
        lines.extend(problems)
        if lines:
            raise StateDictError(f"Error(s) in loading state_dict for {type(self).__name__} "
                                 "(nothing was copied):\n\t" + "\n\t".join(lines))
        with no_grad():
            for target, value in ready:
                data = target.data
                if is_cupy_array(data):
                    if not is_cupy_array(value) or value.device.id != data.device.id:
                        cupy = __import__("cupy")
                        with cupy.cuda.Device(data.device.id):
                            value = cupy.asarray(value)
                elif is_cupy_array(value):
                    value = value.get()
                data[...] = value
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------------ repr
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({name}): " + _addindent(repr(child), 2) for name, child in self._modules.items()]
        lines = extra_lines + child_lines
        body = ""
        if lines:
            if len(extra_lines) == 1 and not child_lines:
                body = extra_lines[0]
            else:
                body = "\n  " + "\n  ".join(lines) + "\n"
        return f"{type(self).__name__}({body})"
