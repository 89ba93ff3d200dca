"""Containers: Sequential runs its modules in order, fusing each Linear with the activation that
follows it; ModuleList and ModuleDict only hold modules (registered, so their parameters are found).

The fusion plan is computed once and cached: a Linear (or an identity Dense) immediately
followed by ReLU, LeakyReLU, GELU, Sigmoid or Tanh becomes ONE `functional.dense` call with the
activation fused into its epilogue (and one graph node, one backward kernel); the activation
module is skipped. Identity modules are dropped. Anything else (including subclasses of these
layers, which may override forward) runs as itself. The plan is rebuilt when any module's
structure changes (`gpunn.nn.module._version`), so the per-call cost is one integer compare plus
one tuple unpack per step. Fused and module-by-module execution give the same numbers.
"""
from __future__ import annotations

from collections import OrderedDict

from gpunn import functional
from gpunn.kernels import activation_code
from gpunn.kernels.activations import IDENTITY
from gpunn.nn import module as _module
from gpunn.nn.activation import Identity, fusable_types
from gpunn.nn.linear import Dense, Linear
from gpunn.nn.module import Module

_DENSE_TYPES = (Linear, Dense)


class _ModuleSequence(Module):
    """The list protocol that Sequential and ModuleList share: modules under the keys "0", "1", ..."""

    def _checked(self, m, where):
        if not isinstance(m, Module):
            raise TypeError(f"{type(self).__name__}: entry {where!r} is a {type(m).__name__}, not a Module")
        return m

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def _key(self, idx) -> str:
        n = len(self._modules)
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise TypeError(f"{type(self).__name__} indices must be integers or slices, got {type(idx).__name__}")
        if not -n <= idx < n:
            raise IndexError(f"index {idx} is out of range for a {type(self).__name__} of {n} modules")
        return list(self._modules)[idx % n]

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            # A view of these modules: they keep their paths in this model.
            out = type(self)()
            items = list(self._modules.items())[idx]
            out._modules.update(items)
            out.__dict__.update(items)
            return out
        return self._modules[self._key(idx)]

    def __setitem__(self, idx, module) -> None:
        setattr(self, self._key(idx), self._checked(module, idx))

    def __delitem__(self, idx) -> None:
        keys = list(self._modules)[idx] if isinstance(idx, slice) else [self._key(idx)]
        for k in keys:
            delattr(self, k)
        self._renumber()

    def _renumber(self, mods=None) -> None:
        """Keys become "0".."n-1" again (PyTorch does this after a deletion or insertion)."""
        mods = list(self._modules.values()) if mods is None else mods
        for k in list(self._modules):
            self._forget(k)
            self.__dict__.pop(k, None)
        for i, m in enumerate(mods):
            self.add_module(str(i), m)

    def append(self, module) -> "_ModuleSequence":
        self.add_module(str(len(self)), self._checked(module, len(self)))
        return self

    def extend(self, modules) -> "_ModuleSequence":
        for m in modules:
            self.append(m)
        return self

    def insert(self, index: int, module) -> "_ModuleSequence":
        self._checked(module, index)
        n = len(self._modules)
        if not -n <= index <= n:
            raise IndexError(f"index {index} is out of range for inserting into a {type(self).__name__} of {n} modules")
        mods = list(self._modules.values())
        mods.insert(index, module)  # negative: before that position, as list.insert and PyTorch
        self._renumber(mods)
        return self

    def pop(self, index: int = -1) -> Module:
        m = self[index]
        del self[index]
        return m


class Sequential(_ModuleSequence):
    """A chain of modules: `Sequential(m0, m1, ...)` (keys "0", "1", ...) or `Sequential(OrderedDict)`."""

    def __init__(self, *args):
        super().__init__()
        self.__dict__["_plan"] = None
        self.__dict__["_plan_version"] = -1
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for name, m in args[0].items():
                self.add_module(name, self._checked(m, name))
        else:
            for i, m in enumerate(args):
                self.add_module(str(i), self._checked(m, i))

    # ------------------------------------------------------------------ fusion plan
    def _build_plan(self) -> list:
        """One step per call: (dense_module, activation, slope, name, None) or (None,)*4 + (module,)."""
        mods = [m for m in self._modules.values() if m is not None]
        plan = []
        i = 0
        while i < len(mods):
            m = mods[i]
            t = type(m)
            if t in _DENSE_TYPES:
                act, slope = (m.activation, m.negative_slope) if t is Dense else (None, 0.01)
                nxt = mods[i + 1] if i + 1 < len(mods) else None
                if activation_code(act) == IDENTITY and type(nxt) in fusable_types() \
                        and nxt._fused is not None:
                    act, slope = nxt._fused
                    i += 1
                plan.append((m, act, slope, m._layer_name, None))
            elif t is not Identity:
                plan.append((None, None, None, None, m))
            i += 1
        d = self.__dict__
        d["_plan"] = plan
        d["_plan_version"] = _module._version
        return plan

    def fusion_plan(self) -> list:
        """A readable plan: e.g. ["dense(0, relu)", "dense(2, identity)", "Softmax"]."""
        if self._plan_version != _module._version:
            self._build_plan()
        return [f"dense({name}, {act or 'identity'})" if mod is None else type(mod).__name__
                for _, act, _, name, mod in self._plan]

    def forward(self, x):
        plan = self._plan if self._plan_version == _module._version else self._build_plan()
        for lin, act, slope, name, mod in plan:
            if mod is not None:
                x = mod(x)
                continue
            x = functional.dense(x, lin.weight, lin.bias, act, slope, name)
        return x


class ModuleList(_ModuleSequence):
    """A list of modules (torch.nn.ModuleList): indexing, len, iteration, append/extend/insert/pop;
    parameters registered under "0.weight", "1.weight", ... It has no forward: call the modules."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def __iadd__(self, modules) -> "ModuleList":
        return self.extend(modules)


class ModuleDict(Module):
    """A dict of modules (torch.nn.ModuleDict) in insertion order; keys are the state_dict prefixes.
    It has no forward: call the modules."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def _checked_key(self, key):
        if not isinstance(key, str):
            raise TypeError(f"ModuleDict keys must be strings, got {type(key).__name__}")
        if hasattr(type(self), key):  # as PyTorch: a key may not hide a method ("keys", "train", ...)
            raise KeyError(f"ModuleDict: key {key!r} is the name of a ModuleDict attribute; choose another")
        return key

    def __getitem__(self, key: str) -> Module:
        if key not in self._modules:
            raise KeyError(f"ModuleDict has no module {key!r}; keys: {list(self._modules)}")
        return self._modules[key]

    def __setitem__(self, key: str, module) -> None:
        if not isinstance(module, Module):
            raise TypeError(f"ModuleDict: value for {key!r} is a {type(module).__name__}, not a Module")
        self.add_module(self._checked_key(key), module)

    def __delitem__(self, key: str) -> None:
        self[key]  # KeyError naming the keys when absent
        delattr(self, key)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def __contains__(self, key) -> bool:
        return key in self._modules

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()

    def pop(self, key: str) -> Module:
        m = self[key]
        del self[key]
        return m

    def clear(self) -> None:
        for k in list(self._modules):
            del self[k]

    def update(self, modules) -> None:
        """From a mapping or an iterable of (key, module) pairs."""
        pairs = modules.items() if hasattr(modules, "items") else modules
        for item in pairs:
            try:
                key, module = item
            except (TypeError, ValueError):
                raise TypeError(f"ModuleDict.update expects a mapping or (key, module) pairs, got {item!r}") from None
            self[key] = module
