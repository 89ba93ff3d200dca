"""Sequential: runs its modules in order, fusing each Linear with the activation that follows it.

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


class Sequential(Module):
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

    @staticmethod
    def _checked(m, where):
        if not isinstance(m, Module):
            raise TypeError(f"Sequential: entry {where!r} is a {type(m).__name__}, not a Module")
        return m

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
                plan.append((m, act, slope, m._path or t.__name__, None))
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

    # ------------------------------------------------------------------ container protocol
    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def _key(self, idx) -> str:
        n = len(self._modules)
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise TypeError(f"Sequential indices must be integers or slices, got {type(idx).__name__}")
        if not -n <= idx < n:
            raise IndexError(f"index {idx} is out of range for a Sequential of {n} modules")
        return list(self._modules)[idx % n]

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            # A view of these modules: they keep their paths in this model.
            out = Sequential()
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

    def _renumber(self) -> None:
        """Keys become "0".."n-1" again (PyTorch does this after a deletion or insertion)."""
        mods = list(self._modules.values())
        for k in list(self._modules):
            self._forget(k)
            self.__dict__.pop(k, None)
        for i, m in enumerate(mods):
            self.add_module(str(i), m)

    def append(self, module) -> "Sequential":
        self.add_module(str(len(self)), self._checked(module, len(self)))
        return self

    def extend(self, modules) -> "Sequential":
        for m in modules:
            self.append(m)
        return self

    def insert(self, index: int, module) -> "Sequential":
        self._checked(module, index)
        n = len(self._modules)
        if not -n <= index <= n:
            raise IndexError(f"index {index} is out of range for inserting into a Sequential of {n} modules")
        mods = list(self._modules.values())
        mods.insert(index, module)  # negative: before that position, as list.insert and PyTorch
        for k in list(self._modules):
            self._forget(k)
            self.__dict__.pop(k, None)
        for i, m in enumerate(mods):
            self.add_module(str(i), m)
        return self

    def pop(self, index: int = -1) -> Module:
        m = self[index]
        del self[index]
        return m
