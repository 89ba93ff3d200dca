"""Fused optimizer updates over flat parameter buffers (PyTorch's formulas, t counts from 1).

Every function updates its arrays IN PLACE and returns None. Arrays are 1-D, C-contiguous, one
float dtype; the optimizer passes ALL parameters of a group at once (one flat buffer), so a step
is one kernel call however many tensors the model has.

SGD:      g = (maximize ? -grad : grad) + wd p
          buf = g on the first step, else mu buf + (1 - dampening) g      (when mu != 0)
          g = g + mu buf (nesterov) or buf;  p -= lr g
Adam:     g = +-grad (+ wd p unless decoupled);  AdamW (decoupled): p *= 1 - lr wd first
          m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  vmax = max(vmax, v) (amsgrad)
          p -= lr / (1 - b1^t) * m / (sqrt(v or vmax) / sqrt(1 - b2^t) + eps)
RMSprop:  g = +-grad + wd p;  s = alpha s + (1 - alpha) g^2
          centered: a = alpha a + (1 - alpha) g;  d = sqrt(s - a^2) + eps;  else d = sqrt(s) + eps
          momentum: buf = mu buf + g / d; p -= lr buf;  else p -= lr g / d
Adagrad:  g = +-grad + wd p;  sum += g^2;  p -= lr / (1 + (t - 1) lr_decay) * g / (sqrt(sum) + eps)

Everything here is made from the registry (gpunn/kernels/registry.py), for EVERY registered
optimizer `name`, from its one entry: the update (the family's precision policy: float64
arithmetic, rounded once per stored value), its option mapping `prepare`, its buffers' use
`state` and its `cost`. Per member:
  update_cpu(name)        `<name>_update_cpu`: single-pass Numba loops, one per option combination
  update_reference(name)  `<name>_update_ref` (the `Ops` reference): the same loops, on the host
                          for CuPy arrays (the independent check is the tests' float64 reference
                          and PyTorch)
  update_cost(name)       `<name>_update_cost` (the profiler's (flops, bytes); `COSTS` holds them)
each with the signature `(p, grad, *state, *prepare's parameters)`. The names `<name>_update_cpu`
etc. are module attributes (module __getattr__), also for members registered later.

A call is checked before any kernel runs (`split_call`): a Numba loop given arrays of different
sizes would read and write out of bounds. The grad is never written; a state buffer the options do
not use (the registry's `state` says which flag uses it) may be None and is never touched.
"""
from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Mapping

import numpy as np
from numba import njit

from gpunn.backend import get_array_module as _xp
from gpunn.kernels import registry


def member(name: str) -> registry.Optimizer:
    """The registered optimizer update `name`; ValueError listing the registered ones otherwise."""
    try:
        return registry.OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer update {name!r}; registered: {', '.join(registry.OPTIMIZERS)}") from None


# ----------------------------------------------------------------------------- calls

def _arrays_and_options(m, args, kwargs):
    """A call's (p, grad, *state) and the rest, the arrays given by position or by name."""
    n = len(m.arrays)
    if len(args) < n:
        kwargs = dict(kwargs)
        missing = [a for a in m.arrays[len(args):] if a not in kwargs]
        if missing:
            raise TypeError(f"{m.name}_update() missing array argument(s): {', '.join(missing)}")
        args = (*args, *(kwargs.pop(a) for a in m.arrays[len(args):]))
    return args[:n], args[n:], kwargs


def split_call(m, args, kwargs):
    """Check a call of `<name>_update` and say which kernel variant it needs: (flags, arrays with
    None for a buffer the options do not use, float64 scalars). Refuses a bad call before any
    kernel runs: 1-D C-contiguous float arrays of one size, dtype and array type, and every
    buffer the options use present."""
    arrays, options, kwargs = _arrays_and_options(m, args, kwargs)
    flags, scalars = m.prepare(*options, **kwargs)
    p = arrays[0]
    n, t, dt = p.shape, type(p), p.dtype
    if p.ndim != 1 or dt.kind != "f":
        raise ValueError(f"{m.name}_update: params must be a 1-D float array, got shape {p.shape} dtype {dt}")
    if not p.flags.c_contiguous:
        raise ValueError(f"{m.name}_update: params must be C-contiguous")
    out = [p]
    for (name, flag), a in zip(_buffer_flags(m), arrays[1:]):
        used = flag is None or flags[flag]
        if a is None:
            if used:
                why = f"the options given turn on {flag}" if flag else f"{m.name} always uses it"
                raise ValueError(f"{m.name}_update: {name} is None, but {why}")
            out.append(None)
            continue
        if type(a) is not t or a.shape != n or (a.dtype is not dt and a.dtype != dt):
            raise ValueError(f"{m.name}_update: {name} must match params (1-D {t.__name__} of shape {n}, {dt}), "
                             f"got {type(a).__name__} of shape {getattr(a, 'shape', '?')}, "
                             f"{getattr(a, 'dtype', '?')}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{m.name}_update: {name} must be C-contiguous")
        out.append(a if used else None)
    return flags, out, scalars


@functools.lru_cache(maxsize=None)
def _buffer_flags(m):
    """(name, the flag that turns it on or None: always used) for each array after p; the grad is
    always used."""
    return tuple((name, None if name == "grad" else m.state.get(name)) for name in m.arrays[1:])


def _signature(m):
    """`(p, grad, *state, *prepare's parameters)`: the signature of every `<name>_update`."""
    P = inspect.Parameter
    opts = inspect.signature(m.prepare).parameters.values()
    return inspect.Signature([P(a, P.POSITIONAL_OR_KEYWORD) for a in m.arrays] + list(opts))


def named(m, run, name: str, doc: str, module: str = __name__):
    """`run` as registry member m's function `name`, with the signature of its calls."""
    run.__name__ = run.__qualname__ = name
    run.__module__ = module
    run.__signature__ = _signature(m)
    run.__doc__ = doc
    return run


def per_member(make):
    """`make(member)` -> function, as a by-name accessor that makes each member's function once
    (members compare by identity: one registered again under an old name gets new functions)."""
    made = {}

    @functools.wraps(make)
    def get(name: str):
        m = member(name)
        f = made.get(m)
        if f is None:
            f = made[m] = make(m)
        return f

    return get


# ----------------------------------------------------------------------------- CPU (Numba)

_CPU_KERNELS: dict = {}


def _cpu_kernel(m, flags: tuple):
    k = _CPU_KERNELS.get((m, flags))
    if k is None:
        if not m.valid(dict(flags)):
            raise ValueError(f"{m.name}: flag combination {dict(flags)} is not valid (registry `valid`)")
        bound = {**dict(flags), "sqrt": math.sqrt, "f64": float}
        update = njit(inline="always", error_model="numpy")(registry.rebind(m.update, bound))
        loop = registry.update_loop(m, "cpu", update, {})
        # error_model numpy: IEEE inf/nan on x/0 (as NumPy, torch), and the loop vectorises
        k = _CPU_KERNELS[(m, flags)] = njit(cache=True, error_model="numpy")(
            registry.specialise(loop, {"update": update}, m.name))
    return k


_BY_FLAG_VALUES: dict = {}


def _cpu_kernel_for(m, flags: dict):
    """_cpu_kernel for `prepare`'s flags dict, looked up by its items in prepare's own key order
    (no sort on every step)."""
    key = (m, *flags.items())
    k = _BY_FLAG_VALUES.get(key)
    if k is None:
        k = _BY_FLAG_VALUES[key] = _cpu_kernel(m, tuple(sorted(flags.items())))
    return k


def cpu_kernel(name: str, **flags):
    """The CPU loop of registry optimizer `name` for one combination of its option flags (compiled
    on first use per dtype, cached on disk)."""
    return _cpu_kernel(member(name), tuple(sorted(flags.items())))


@per_member
def update_cpu(m):
    """`<name>_update_cpu`: the CPU kernel of registry optimizer `m` behind its checked call."""

    def run(*args, **kwargs):
        flags, arrays, scalars = split_call(m, args, kwargs)
        p = arrays[0]
        # an unused buffer is never indexed (its flag is off); p stands in so the types agree
        _cpu_kernel_for(m, flags)(*[p if a is None else a for a in arrays], *map(float, scalars))

    return named(m, run, f"{m.name}_update_cpu", f"{m.name}'s update, CPU kernel (Numba).")


@per_member
def update_reference(m):
    """`<name>_update_ref`, the `Ops` reference: NumPy arrays run the CPU kernel; other arrays (CuPy,
    reached only when the GPU kernels cannot run) are updated on the host and copied back."""
    cpu_update = update_cpu(m.name)

    def run(*args, **kwargs):
        p = args[0] if args else kwargs.get("p")
        if isinstance(p, np.ndarray):
            return cpu_update(*args, **kwargs)
        xp = _xp(p)
        values = (*args, *kwargs.values())
        host = {id(a): xp.asnumpy(a) for a in values if hasattr(a, "shape")}
        cpu_update(*(host.get(id(a), a) for a in args), **{k: host.get(id(a), a) for k, a in kwargs.items()})
        for a in values:
            if id(a) in host:
                a[...] = xp.asarray(host[id(a)])

    return named(m, run, f"{m.name}_update_ref", f"{m.name}'s update, the reference (CPU kernel on the host).")


# ----------------------------------------------------------------------------- cost model
# (flops, bytes) of one call from the sizes alone, for the profiler: the registry's cost(flags)
# gives FLOPs and arrays moved per element (every buffer the options use is read once and every
# buffer the update changes is written once; grad is only read).

@per_member
def update_cost(m):
    """`<name>_update_cost(*call)` -> (flops, bytes)."""

    def cost(*args, **kwargs):
        arrays, options, kw = _arrays_and_options(m, args, kwargs)
        flops, moved = m.cost(m.prepare(*options, **kw)[0])
        p = arrays[0]
        return int(flops) * p.size, int(moved) * p.size * p.dtype.itemsize

    return named(m, cost, f"{m.name}_update_cost",
                 f"(flops, bytes) of a {m.name}_update call: {m.cost.__doc__ or ''}".strip())


class _Costs(Mapping):
    """`<name>_update` -> its cost function, for every registered optimizer update (live: members
    registered later appear, unregistered ones go)."""

    def __getitem__(self, key):
        if isinstance(key, str) and key.endswith("_update") and key[:-7] in registry.OPTIMIZERS:
            return update_cost(key[:-7])
        raise KeyError(key)

    def __iter__(self):
        return (f"{n}_update" for n in list(registry.OPTIMIZERS))

    def __len__(self):
        return len(registry.OPTIMIZERS)


COSTS = _Costs()

_ATTRS = {"_update_cpu": update_cpu, "_update_ref": update_reference, "_update_cost": update_cost}


def __getattr__(attr):
    """`<name>_update_cpu`, `<name>_update_ref`, `<name>_update_cost` of every registered optimizer."""
    for suffix, get in _ATTRS.items():
        if attr.endswith(suffix) and attr[:-len(suffix)] in registry.OPTIMIZERS:
            return get(attr[:-len(suffix)])
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
