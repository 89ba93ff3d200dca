"""`gn.compile(fn)`: trace a step once, then replay it without building an autograd graph.

fn is typically the PyTorch-style step::

    def step(x, y):
        opt.zero_grad(); loss = loss_fn(model(x), y); loss.backward(); opt.step(); return loss
    step = gn.compile(step)

How it works. The first call for an input signature (shape, dtype and array type of every tensor or
array argument, the value of every other argument, grad mode) runs fn eagerly while recording, in
order: every graph node's forward (`Function.apply`: its class, parameters, and where each input
comes from: an argument, an earlier node's output, or a tensor living outside fn such as a
parameter, read afresh at every replay), every `backward()` walk (its topological order),
and every `Optimizer.step()` / `zero_grad()` call. The second call traces again and the two
recordings must agree (the same nodes, parameters and outside tensors): only then is the signature
replayed, from the third call on. A replay runs the same node forwards on the new inputs, the same
backward walk (`_run_backward`, the engine's own code, so gradients land in the optimizer's flat
buffers exactly as in eager mode) and calls the optimizer's own `step()`/`zero_grad()`, so what the
optimizer reads (lr from `param_groups`, Adam's step count and bias corrections, a
`load_state_dict`) is read at replay time. It skips what eager mode spends its Python on: Tensor
objects, graph recording, the topological sort.

Bit-identical to eager: the same kernels run on the same buffers in the same order.

Kernel by kernel. When every node of the step is kernel-replayable (`Function.kernel_replay`: the
fused dense layer, standalone activations, LayerNorm, BatchNorm, Dropout, cross-entropy, NLL and
the elementwise losses; a node that does array work of its own, e.g. a Tensor operator, is not),
the replay goes one level down (`_KernelProgram`): the kernels those nodes called (`ops_for(...)`
methods, recorded while tracing, and the glue functions they mark `autograd.tensor.replayed`) with
their arguments bound once, the leaves' gradient accumulation and the optimizer calls; no Function
objects and no backward walk. A node's claim on a leaf's gradient sink is made again at replay
time, so whether a gradient is written into the sink or added to the one already there (no
zero_grad between two calls) is decided as in eager mode. Each argument of each kernel is resolved
from the two traces: the step's own arguments, an earlier call's result, a view of either (the same
layout on both traces), or an object that is the same on both (a parameter, a buffer, a gradient
sink, a cached constant), bound as it is; anything else (an array made outside the recorded calls)
keeps the step node by node. Without a profiler the program runs as one generated straight-line
Python function, its constants bound as globals (gpunn/compiler_codegen.py; `replay_source` shows
it). The bound parameter and buffer arrays, the gradient sinks, the absence of post-accumulate
hooks and the layout of any argument a view is rebuilt from are checked
before each kernel replay; when one has changed (`p.data = ...`) that call replays node by node,
reading the tensors afresh. `explain(*args)` says which way a signature runs and why. NumPy and
CuPy arrays alike: on the GPU a replay launches the eager step's kernels, no more; with
`cuda_graph=True` a GPU step, optimizer updates included, becomes one CUDA graph launch
(gpunn/compiler_graph.py).

What cannot be replayed is detected while tracing and the signature then runs eagerly, with one
`CompileWarning` naming the cause (never a wrong result): a host read of a tensor inside fn
(`.item()`, `float()`, `bool()`, `.numpy()`, `.tolist()`), an in-place tensor op (`p -= lr * g`,
`.add_()`, `.copy_()`), a tensor created inside fn that feeds the
computation (pass it as an argument), `backward(gradient)` or `step(closure)`, an argument that
requires grad, a return value that is not built from tensors, or a second trace that differs from
the first (Python control flow on values, parameters added or replaced). `strict=True` raises
`CompileError` instead.

Randomness and modes: Dropout draws its mask inside its node's forward, so each replay draws a
fresh mask from gpunn's generator (the same draws, in the same order, as eager mode), and
BatchNorm1d updates its running statistics inside its node, so a replay updates them too. The
training flags that such layers read (`Module._mode`) are recorded with the trace: after
`model.eval()` / `model.train()` changes one, fn is traced again instead of replaying the other mode.

Under the profiler (`gpunn profile --compile`) a signature that is ready replays (at either level)
with its kernels, node spans, layers and phases recorded as in eager mode; one that is not runs
eagerly.

Not seen by a replay (as with jax.jit): Python side effects inside fn other than the optimizer
calls (a scheduler.step() or a counter inside fn runs at trace time only: keep them outside fn),
and writes to arrays through `.data` inside fn. Replacing a model's parameter object after tracing
is seen only through the optimizer (its parameter list is checked before each replay, with every
outside tensor's requires_grad). Tracing patches Function.apply, Tensor.backward, Tensor's host
reads and Optimizer.step/zero_grad for its duration: trace from one thread at a time.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import warnings
from collections import OrderedDict

import numpy as np

import gpunn.autograd.tensor  # noqa: F401 - the module itself: gpunn.autograd.tensor is also a function's name
from gpunn.autograd import grad_sink as _sink
from gpunn.autograd.tensor import Function, Tensor, is_grad_enabled
from gpunn.kernels import ops as _kops
from gpunn.nn.module import Module
from gpunn.optim.optimizer import Optimizer

_tmod = sys.modules["gpunn.autograd.tensor"]

__all__ = ["compile", "CompiledFunction", "CompileError", "CompileWarning"]


class CompileError(RuntimeError):
    """fn cannot be replayed (raised with strict=True; otherwise a CompileWarning and eager fallback)."""


class CompileWarning(UserWarning):
    """A compiled function falls back to eager execution for one input signature."""


class _Unreplayable(Exception):
    pass


_HOST_READS = ("item", "__bool__", "__float__", "__int__", "numpy", "tolist", "__array__")
_IN_PLACE = ("_inplace", "fill_", "copy_")  # Tensor's in-place writers: no graph node records them


class _Trace:
    """One eager run of fn, recorded. `events` is the program a replay runs:
    ("fwd", cls, params, binds, keep, out_slot, node_inputs, needs)  a graph node's forward
    ("bwd", root_slot, order, holders)                                a backward walk
    ("call", method, obj, args)                                       Optimizer.step / zero_grad"""

    def __init__(self, arg_arrays):
        self.arg_arrays = arg_arrays     # each argument's array, or None (what a replay binds)
        self.args = {id(a): i for i, a in enumerate(arg_arrays) if a is not None}  # id(array) -> position
        self.events = []
        self.slots = {}                  # id(output array) -> slot index
        self.tensor_slot = {}            # id(output Tensor) -> slot index
        self.keep = []                   # every traced object, kept alive so ids stay unique
        self.holder_of = {}              # id(output Tensor) -> (Tensor, event index)
        self.live = []                   # outside tensors, in first-use order (compared between traces)
        self.param_tensors = []          # tensors among the parameters of kernel-replayable nodes
        self.optimizers = []
        self.modes = {}                  # id(module) -> (module, its training flag) read through Module._mode
        self.cause = None
        # The same step one level down, for the kernel-level replay (_KernelProgram): in order,
        # ("k", fn, args, kwargs, result, ((ops, name) or None, node, direction))  a kernel (an Ops
        #                                   method) or a replayed glue function, called by a node
        # ("acc", tensor, grad)             a leaf accumulating its gradient
        # ("claim", tensor, sink, (node, direction))  a node asking for a leaf's gradient sink
        # ("pass", "begin" | "end")        a backward walk's bounds (the sinks' claims are per walk)
        # ("call", method, obj, args, kw)   Optimizer.step / zero_grad, as in `events`
        self.kprog = []
        self.kcause = None               # why the step cannot be replayed kernel by kernel (node-level then)
        self.node = None                 # the node whose forward or backward is running
        self.direction = None            # "forward" or "backward": which of the two
        self.in_call = 0                 # > 0 inside a recorded kernel call (its own kernels are not recorded)

    def fail(self, cause):
        if self.cause is None:
            self.cause = cause

    def kfail(self, cause):
        if self.kcause is None:
            self.kcause = cause

    def call(self, fn, args, kwargs, kernel=None):
        """fn(*args, **kwargs), recorded as one step of the kernel program. kernel: (Ops object,
        method name) when fn is a kernel, for a profiled replay to call it through the profiler."""
        self.in_call += 1
        try:
            result = fn(*args, **kwargs)
        finally:
            self.in_call -= 1
        self.kprog.append(("k", fn, args, kwargs, result, (kernel, self.node, self.direction)))
        self.keep.append((args, kwargs, result))
        return result

    def bind(self, t: Tensor):
        """Where input t of a node comes from at replay time."""
        k = self.tensor_slot.get(id(t))
        if k is not None:
            return ("slot", k)
        d = t.data
        k = self.slots.get(id(d))
        if k is not None:
            return ("slot", k)
        i = self.args.get(id(d))
        if i is not None:
            return ("arg", i)
        if t._node is not None:
            self.fail(f"a {t._node.name} node's output was computed outside the trace")
        self.live.append(t)
        return ("live", t)

    def slot(self, out: Tensor) -> int:
        k = len(self.slots)
        self.slots[id(out.data)] = k
        self.tensor_slot[id(out)] = k
        self.keep.append(out)
        return k


_active: _Trace | None = None
_depth = 0  # > 0 while a recorded operation (node forward, backward walk, optimizer call) runs


class _KernelWatch:
    """ops_for's hook while tracing: a kernel called outside every recorded operation (an optimizer
    that overrides step(), a kernel called directly) would be missing from the replay."""

    def __call__(self, ops, array):
        tr = _active
        if tr is None:
            return ops
        if _depth == 0:
            tr.fail(f"a {ops.name} kernel ran outside any graph node or optimizer call")
        if tr.node is None or tr.in_call or not type(tr.node).kernel_replay:
            return ops  # an optimizer's kernels (replayed through its step()), nested, or node by node anyway
        return _RecordingOps(ops, tr)

    @staticmethod
    def node_forward(fn, arrays, params):
        with _in_node(fn, "forward"):
            return fn.forward(*arrays, **params)

    @staticmethod
    def node_backward(node, grad):
        with _in_node(node, "backward"):
            return node.backward(grad)

    @staticmethod
    def accumulate_grad(tensor, grad):
        tr = _active
        if tr is not None:
            if tensor._post_hooks:
                tr.kfail("a leaf has post-accumulate-grad hooks")
            tr.kprog.append(("acc", tensor, grad))
            tr.keep.append(grad)
        return tensor._accumulate_grad(grad)

    @staticmethod
    @contextlib.contextmanager
    def phase(name):
        yield


class _RecordingOps:
    """What a kernel-replayable node gets from ops_for while tracing: the Ops object, with each
    kernel call recorded in the trace's kernel program."""

    __slots__ = ("_ops", "_tr")

    def __init__(self, ops, tr):
        self._ops, self._tr = ops, tr

    def __getattr__(self, name):
        attr = getattr(self._ops, name)
        if not callable(attr):
            return attr
        tr = self._tr
        return lambda *args, **kwargs: tr.call(attr, args, kwargs, (self._ops, name))


@contextlib.contextmanager
def _in_node(node, direction):
    tr = _active
    if tr is None:
        yield
        return
    if not type(node).kernel_replay:  # whatever it does, with kernels or not, is not in the kernel program
        tr.kfail(f"{node.name} nodes do array work of their own (Function.kernel_replay)")
    outer = tr.node, tr.direction
    tr.node, tr.direction = node, direction
    try:
        yield
    finally:
        tr.node, tr.direction = outer


@contextlib.contextmanager
def _recorded():
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1


def _traced_apply(orig):
    def apply(cls, *inputs, **params):
        tr = _active
        with _recorded():
            out = orig.__func__(cls, *inputs, **params)
        if tr is None:
            return out
        binds = tuple(tr.bind(t) for t in inputs)
        if cls.kernel_replay:  # tensors among its parameters (BatchNorm's buffers): their arrays are bound
            tr.param_tensors.extend(v for v in params.values() if isinstance(v, Tensor))
        node = out._node
        k = tr.slot(out)
        ev = ("fwd", cls, params, binds, node is not None, k,
              node.inputs if node is not None else None, node.needs_grad if node is not None else None)
        if node is not None:
            tr.holder_of[id(out)] = (out, len(tr.events))
        tr.events.append(ev)
        return out
    return classmethod(apply)


def _traced_run_backward(orig):
    def run_backward(order, grads, rec):
        tr = _active
        if tr is not None:
            (root_id, g), = grads.items()
            root = next(t for t in order if id(t) == root_id)
            k = tr.tensor_slot.get(root_id)
            if k is None:
                tr.fail("backward() from a tensor computed outside the trace")
            holders = tuple(tr.holder_of.get(id(t), (None, None))[1] for t in order)
            if any(h is None and t._node is not None for h, t in zip(holders, order)):
                tr.fail("backward() reaches a graph node built outside the compiled function")
            tr.events.append(("bwd", k, tuple(order), holders))
            tr.kprog.append(("pass", "begin"))
        try:
            with _recorded():
                return orig(order, grads, rec)
        finally:
            if tr is not None:
                tr.kprog.append(("pass", "end"))
    return run_backward


@contextlib.contextmanager
def _tracing(tr: _Trace):
    """Install the trace hooks (class attributes, restored on exit): tracing is not thread-safe."""
    global _active
    saved = []

    def patch(owner, name, value):
        saved.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, value)

    def host_read(name, orig):
        @functools.wraps(orig)
        def read(self, *a, **k):
            if _active is not None:
                _active.fail(f"Tensor.{name}() read a tensor's value on the host inside fn")
            return orig(self, *a, **k)
        return read

    def in_place(name, orig):
        @functools.wraps(orig)
        def write(self, *a, **k):
            if _active is not None:
                op = a[0] if name == "_inplace" else name
                _active.fail(f"an in-place Tensor.{op}() inside fn (a replay would not repeat it; "
                             "update parameters through an optimizer)")
            return orig(self, *a, **k)
        return write

    def opt_call(name, orig):
        @functools.wraps(orig)
        def call(self, *a, **k):
            t = _active
            if t is not None:
                if name == "step" and (a or k.get("closure") is not None):
                    t.fail("optimizer.step(closure) inside fn")
                t.events.append(("call", orig, self, a, tuple(sorted(k.items()))))
                t.kprog.append(t.events[-1])
                if self not in t.optimizers:
                    t.optimizers.append(self)
            with _recorded():
                return orig(self, *a, **k)
        return call

    def mode(orig):
        @functools.wraps(orig)
        def read(self):
            value = orig(self)
            if _active is not None:
                _active.modes.setdefault(id(self), (self, value))
            return value
        return read

    def grad_sink(orig):
        @functools.wraps(orig)
        def claim(self, i):
            sink = orig(self, i)
            t = _active
            if t is not None and t.node is self and not t.in_call:
                t.kprog.append(("claim", self.inputs[i], sink, (self, t.direction)))
            return sink
        return claim

    def replayed_call(orig):
        @functools.wraps(orig)
        def call(*a, **k):
            t = _active
            if t is None or t.node is None or t.in_call:
                return orig(*a, **k)
            return t.call(orig, a, k)
        return call

    def backward(orig):
        @functools.wraps(orig)
        def bw(self, gradient=None):
            if _active is not None and gradient is not None:
                _active.fail("backward(gradient) inside fn (only a scalar loss's backward() is replayed)")
            return orig(self, gradient)
        return bw

    try:
        patch(Function, "apply", _traced_apply(Function.__dict__["apply"]))
        patch(Function, "grad_sink", grad_sink(Function.__dict__["grad_sink"]))
        patch(Tensor, "backward", backward(Tensor.__dict__["backward"]))
        for name in _HOST_READS:
            patch(Tensor, name, host_read(name, Tensor.__dict__[name]))
        for name in _IN_PLACE:
            if name in Tensor.__dict__:
                patch(Tensor, name, in_place(name, Tensor.__dict__[name]))
        for name in ("step", "zero_grad"):
            patch(Optimizer, name, opt_call(name, Optimizer.__dict__[name]))
        patch(Module, "_mode", mode(Module.__dict__["_mode"]))
        for module, name in _tmod.REPLAYED_CALLS:  # the nodes' array glue (autograd.tensor.replayed)
            mod = sys.modules[module]
            orig = getattr(mod, name)
            saved.append((mod, name, orig))
            setattr(mod, name, replayed_call(orig))
        saved.append((_tmod, "_run_backward", _tmod._run_backward))
        _tmod._run_backward = _traced_run_backward(_tmod._run_backward)
        saved.append((_kops, "_recorder", None))
        _kops._recorder = _KernelWatch()
        _active = tr
        yield tr
    finally:
        _active = None
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def _same(a, b) -> bool:
    """Trace equality of node parameters / outside tensors: arrays and tensors by identity."""
    if _is_array(a) or _is_array(b):
        return a is b
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # noqa: BLE001 - incomparable values are different
        return a is b


def _difference(t1: _Trace, t2: _Trace):
    """The first way two traces of one signature differ (a sentence), or None."""
    if len(t1.events) != len(t2.events):
        return f"the second trace ran {len(t2.events)} recorded operations, the first {len(t1.events)}"
    for i, (e1, e2) in enumerate(zip(t1.events, t2.events)):
        what = f"operation {i}"
        if e1[0] != e2[0]:
            return f"{what} is a {e2[0]} on the second trace but a {e1[0]} on the first"
        if e1[0] == "fwd":
            if e1[1] is not e2[1]:
                return f"{what} is {e2[1].__name__} on the second trace but {e1[1].__name__} on the first"
            if not _same(e1[2], e2[2]):
                return f"{what} ({e1[1].__name__}) has different parameters on the second trace"
            for b1, b2 in zip(e1[3], e2[3]):
                if b1[0] != b2[0] or (b1[0] == "live" and b1[1] is not b2[1]) or (b1[0] != "live" and b1[1] != b2[1]):
                    return (f"{what} ({e1[1].__name__}) takes a different input on the second trace (a tensor "
                            "created inside fn, or a parameter added or replaced; pass such tensors as arguments)")
            if e1[4] != e2[4] or e1[7] != e2[7]:
                return f"{what} ({e1[1].__name__}) differs in which inputs require grad"
        elif e1[0] == "bwd":
            if e1[3] != e2[3]:
                return f"{what} (backward) walks a different graph on the second trace"
        elif e1[1] is not e2[1] or e1[2] is not e2[2] or not _same(e1[3], e2[3]) or e1[4] != e2[4]:
            return f"{what} ({e1[1].__name__} of an optimizer) differs on the second trace"
    return None


def _flatten_args(args, kwargs):
    return tuple(args) + tuple(kwargs[k] for k in sorted(kwargs))


def _signature(args, kwargs):
    """(the arguments in order, keywords sorted; the cache key of their input signature)."""
    flat = _flatten_args(args, kwargs) if kwargs else args
    return flat, (tuple(map(_arg_key, flat)), tuple(sorted(kwargs)), is_grad_enabled())


def _array_key(d):
    """An array's part of a signature: array type, shape, dtype, device (-1: host)."""
    dev = -1 if type(d) is np.ndarray else int(getattr(getattr(d, "device", None), "id", -1))
    return (type(d), d.shape, d.dtype, dev)


def _arg_key(a):
    if isinstance(a, Tensor):
        return (_array_key(a.data), a.requires_grad)
    if _is_array(a):
        return _array_key(a)
    try:
        hash(a)
    except TypeError:
        return ("id", id(a))
    return ("V", type(a), a)


def _arrays(flat):
    """Each argument's array (or None): what a replay binds."""
    return [a.data if isinstance(a, Tensor) else a if _is_array(a) else None for a in flat]


def _is_array(a) -> bool:
    return isinstance(a, (Tensor, np.ndarray)) or hasattr(a, "__cuda_array_interface__")


class _Program:
    """A verified trace, ready to replay node by node; `kernels` is its kernel-level form
    (_KernelProgram, used when no profiler is on and its guards hold) or None, with the reason in
    `kernel_cause`."""

    kernels = None
    kernel_cause = None
    graph = None        # compiler_graph.CudaGraphReplay (cuda_graph=True, a GPU step that can be one)
    graph_cause = None  # why not, when cuda_graph=True

    def __init__(self, tr: _Trace, out_spec):
        self.events = tr.events
        self.n_slots = len(tr.slots)
        self.out_spec = out_spec
        self.guard = [(opt, self._param_ids(opt)) for opt in tr.optimizers]
        # a parameter frozen or unfrozen after tracing changes which gradients the graph computes
        self.live = [(t, t.requires_grad) for t in {id(t): t for t in tr.live}.values()]
        # train/eval of the layers whose forward depends on it (Dropout, BatchNorm1d): recorded, not replayed
        self.modes = list(tr.modes.values())

    @staticmethod
    def _param_ids(opt):
        return tuple(id(p) for g in opt.param_groups for p in g["params"])

    def guard_ok(self) -> bool:
        """Whether what the recording assumed still holds (else fn is traced again)."""
        for t, rg in self.live:
            if t.requires_grad != rg:
                return False
        for m, training in self.modes:
            if m.training != training:
                return False
        return all(self._param_ids(opt) == ids for opt, ids in self.guard)

    def run(self, arrays):
        slots = [None] * self.n_slots
        nodes = {}
        rec = _kops._recorder  # a profiler (gpunn profile --compile): it times the replay's kernels
        for i, ev in enumerate(self.events):
            kind = ev[0]
            if kind == "fwd":
                _, cls, params, binds, keep, k, node_inputs, needs = ev
                ins = [slots[b[1]] if b[0] == "slot" else arrays[b[1]] if b[0] == "arg" else b[1].data
                       for b in binds]
                fn = cls()
                out = fn.forward(*ins, **params) if rec is None else rec.node_forward(fn, ins, params)
                if isinstance(out, np.generic):
                    out = np.asarray(out)
                slots[k] = out
                if keep:
                    fn.inputs, fn.needs_grad = node_inputs, needs
                    nodes[i] = fn
            elif kind == "bwd":
                _, k, order, holders = ev
                for t, h in zip(order, holders):
                    if h is not None:
                        t._node = nodes[h]
                seeds = {id(order[-1]): _tmod._unit_seed(slots[k])}
                if rec is None:
                    _tmod._run_backward(order, seeds, None)
                else:
                    with rec.phase("backward"):
                        _tmod._run_backward(order, seeds, rec)
            else:
                _, method, obj, a, kw = ev
                method(obj, *a, **dict(kw))
        return _build_out(self.out_spec, arrays, slots)


class _NotKernelReplayable(Exception):
    pass


class _Roles:
    """Where each array of one trace came from: an argument or a recorded call's result."""

    def __init__(self, tr: _Trace):
        self.of = {k: ("arg", i) for k, i in tr.args.items()}

    def add(self, k, result):
        """Call k's result: its arrays now come from it (also one that an earlier call produced or
        that is an argument: at replay time it is this call's output that later calls receive)."""
        for j, r in enumerate(result) if isinstance(result, (tuple, list)) else ((None, result),):
            if _is_array(r):
                self.of[id(r)] = ("res", k, j)
                if getattr(r, "base", None) is not None:  # a kernel that returns a view (a reshape) of its output
                    self.of.setdefault(id(r.base), ("base", k, j))
            elif not isinstance(r, _PLAIN):  # an object a later call takes (a generator): this call's, at replay
                self.of[id(r)] = ("res", k, j)

    def root(self, a):
        """(role, root array) of the nearest array a views that has a role, else (None, None)."""
        b = a.base
        while b is not None:
            r = self.of.get(id(b))
            if r is not None:
                return r, b
            b = getattr(b, "base", None)
        return None, None


# Results that are values, not objects with an identity of their own (small ints, True, None are
# shared): equal values on both traces are constants.
_PLAIN = (type(None), bool, int, str, tuple, np.dtype)


def _owner(a):
    while getattr(a, "base", None) is not None:
        a = a.base
    return a


def _address(a) -> int:
    """The address of a's first element (host or device)."""
    if type(a) is np.ndarray:
        return a.__array_interface__["data"][0]
    return a.__cuda_array_interface__["data"][0]


def _view_of(base, dtype, shape, strides, offset):
    """The view of base (C-contiguous, NumPy or CuPy) with this layout, offset bytes in."""
    if type(base) is np.ndarray:
        return np.ndarray(shape, dtype, buffer=base, offset=offset, strides=strides)
    return type(base)(shape, dtype, memptr=base.data + offset, strides=strides)


def _resolve(v1, v2, r1: _Roles, r2: _Roles):
    """How a replay gets the value that was v1 on the first trace and v2 on the second:
    ("c", value) a constant, ("arg", i), ("res", k, j), ("view", source, dtype, shape, strides,
    offset), ("seq", type, parts). Raises _NotKernelReplayable when there is no such way."""
    array = _is_array(v2) or _is_array(v1)  # a Tensor counts too: kernels take arrays, never Tensors
    if array and (isinstance(v1, Tensor) or isinstance(v2, Tensor)):
        raise _NotKernelReplayable("a kernel takes a Tensor (kernels take arrays)")
    if array and type(v1) is not type(v2):
        raise _NotKernelReplayable("an argument is a different type of array on the two traces")
    role1, role2 = r1.of.get(id(v1)), r2.of.get(id(v2))
    if role1 is not None or role2 is not None:  # an argument, or an earlier call's result
        if role1 != role2:
            raise _NotKernelReplayable(f"{'an array' if array else 'a value'} comes from different places "
                                       "on the two traces")
        return role2
    if array:
        return _resolve_view(v1, v2, r1, r2)
    if isinstance(v2, (tuple, list)) and type(v1) is type(v2) and len(v1) == len(v2):
        parts = tuple(_resolve(a, b, r1, r2) for a, b in zip(v1, v2))
        if all(p[0] == "c" for p in parts):
            return ("c", v2)
        return ("seq", type(v2), parts)
    if not _same(v1, v2):
        raise _NotKernelReplayable("a kernel's argument differs between the two traces")
    return ("c", v2)


def _resolve_view(v1, v2, r1: _Roles, r2: _Roles):
    """_resolve for a NumPy array with no role of its own: the same object on both traces, a view
    of one that lives outside the step, or a view of an argument or result."""
    if v1 is v2:
        return ("c", v2)  # lives outside the step (a parameter, a gradient sink, a cached constant)
    (role1, b1), (role2, b2) = r1.root(v1), r2.root(v2)
    if role1 is None and role2 is None:
        o1, o2 = _owner(v1), _owner(v2)
        if o1 is o2 and o2 is not v2 and (v1.dtype, v1.shape, v1.strides, _address(v1)) == \
                (v2.dtype, v2.shape, v2.strides, _address(v2)):
            return ("c", v2)  # a view of an array that lives outside the step (a reshaped parameter)
    if role2 is None or role1 != role2:
        raise _NotKernelReplayable("an array made outside the recorded kernels feeds one of them")
    layout1 = (v1.dtype, v1.shape, v1.strides, _address(v1) - _address(b1))
    layout2 = (v2.dtype, v2.shape, v2.strides, _address(v2) - _address(b2))
    if layout1 != layout2 or not b2.flags.c_contiguous:
        raise _NotKernelReplayable("a view differs between the two traces")
    return ("view", role2) + layout2


def _resolve_arg(label, which, v1, v2, r1, r2):
    try:
        return _resolve(v1, v2, r1, r2)
    except _NotKernelReplayable as err:
        raise _NotKernelReplayable(f"{label}, argument {which}: {err}") from None


def _value(spec, arrays, res):
    kind = spec[0]
    if kind == "c":
        return spec[1]
    if kind == "arg":
        return arrays[spec[1]]
    if kind == "res":
        out = res[spec[1]]
        return out if spec[2] is None else out[spec[2]]
    if kind == "base":
        out = res[spec[1]]
        return (out if spec[2] is None else out[spec[2]]).base
    if kind == "view":
        base = _value(spec[1], arrays, res)
        return _view_of(base, spec[2], spec[3], spec[4], spec[5])
    return spec[1](_value(p, arrays, res) for p in spec[2])


class _KernelProgram:
    """A step replayed one level down: the kernels the kernel-replayable nodes called, with their
    arguments bound (constants fixed, the rest taken from the step's arguments and earlier results),
    the leaves' gradient accumulation and the optimizer calls. No Function objects, no backward
    walk. Built from both traces, which must agree call for call; `build` says why not when they do not."""

    def __init__(self, steps, n, out, guards):
        self.steps, self.n, self.out, self.guards = steps, n, out, guards
        self._straight = None  # compiler_codegen.straight_line(steps): the unprofiled replay

    @classmethod
    def build(cls, tr1: _Trace, v1, tr2: _Trace, v2):
        """The program, or (None, cause) when the step has to replay node by node."""
        cause = tr2.kcause or tr1.kcause
        if cause is None and len(tr1.kprog) != len(tr2.kprog):
            cause = "the two traces called a different number of kernels"
        if cause is not None:
            return None, cause
        r1, r2 = _Roles(tr1), _Roles(tr2)
        steps, sinks = [], {}
        arg_strides = [getattr(a, "strides", None) for a in tr2.arg_arrays]
        try:
            for k, (e1, e2) in enumerate(zip(tr1.kprog, tr2.kprog)):
                if e1[0] != e2[0]:
                    raise _NotKernelReplayable("the two traces differ in their kernel calls")
                if e2[0] == "k":
                    _, fn, args, kwargs, result, meta = e2
                    if getattr(fn, "__func__", fn) is not getattr(e1[1], "__func__", e1[1]) or \
                            getattr(fn, "__self__", None) is not getattr(e1[1], "__self__", None) or \
                            kwargs.keys() != e1[3].keys():
                        raise _NotKernelReplayable("the two traces differ in their kernel calls")
                    if len(args) != len(e1[2]):
                        raise _NotKernelReplayable("the two traces differ in their kernel calls")
                    label = getattr(fn, "__name__", "a kernel")
                    a = [_resolve_arg(label, i, x, y, r1, r2) for i, (x, y) in enumerate(zip(e1[2], args))]
                    kw = {name: _resolve_arg(label, name, e1[3][name], kwargs[name], r1, r2) for name in kwargs}
                    r1.add(k, e1[4])
                    r2.add(k, result)
                    steps.append(_bound_call(fn, a, kw, k) + (meta,))
                elif e2[0] == "claim":
                    # claimed again at replay time: whether the leaf has a .grad then decides (as in
                    # eager mode) between writing into its sink and adding to the gradient there
                    if e1[1] is not e2[1] or (e1[2] is None) != (e2[2] is None):
                        raise _NotKernelReplayable("the two traces claim different gradient sinks")
                    r1.add(k, e1[2])
                    r2.add(k, e2[2])
                    steps.append(("claim", e2[1], k, e2[3]))
                elif e2[0] == "pass":
                    steps.append(("pass", e2[1]))
                elif e2[0] == "acc":
                    if e1[1] is not e2[1]:
                        raise _NotKernelReplayable("the two traces accumulate different leaves")
                    t = e2[1]
                    sinks[id(t)] = (t, t._grad_sink)
                    steps.append(("acc", t._accumulate_grad, _resolve(e1[2], e2[2], r1, r2)))
                else:
                    steps.append(("call", e2[1], e2[2], e2[3], dict(e2[4])))
            out = _kernel_out(v1, v2, r1, r2)
        except _NotKernelReplayable as err:
            return None, str(err)
        # what the constants assume: each parameter's array and each leaf's gradient sink unchanged
        guards = [(t, t.data, None) for t in {id(t): t for t in tr2.live + tr2.param_tensors}.values()]
        guards += [(t, None, sink) for t, sink in sinks.values()]
        prog = cls(steps, len(tr2.kprog), out, guards)
        # a view of an argument is rebuilt with the traced layout: a call whose argument is laid out
        # otherwise (a Fortran-order or strided array of the same shape) replays node by node
        prog.arg_layouts = tuple({(spec[1][1], arg_strides[spec[1][1]]) for spec in _specs(steps)
                                  if spec[0] == "view" and spec[1][0] == "arg"})
        return prog, None

    def straight(self, n_args: int):
        """The program as one straight-line function (gpunn/compiler_codegen.py), written on first
        use: a signature that never replays costs nothing."""
        if self._straight is None:
            from gpunn.compiler_codegen import straight_line
            keep = {sp[1] for sp in _out_specs(self.out) if sp[0] in ("res", "base")}
            self._straight = straight_line(self.steps, n_args, keep)
        return self._straight

    def layout_ok(self, arrays) -> bool:
        """Whether the arguments a view is rebuilt from are laid out as when traced."""
        for i, strides in self.arg_layouts:
            a = arrays[i]
            if a.strides != strides or not a.flags.c_contiguous:
                return False
        return True

    def guard_ok(self) -> bool:
        for t, data, sink in self.guards:
            if (t.data is not data) if sink is None else (t._grad_sink is not sink or t._post_hooks):
                return False  # a hook registered since tracing runs in the engine's walk (node by node)
        return True

    def run(self, arrays):
        res = [None] * self.n
        rec = _kops._recorder
        if rec is None:
            fast = self._straight
            if fast is None:
                fast = self.straight(len(arrays))
            fast(*arrays, res)
        else:
            self._run_profiled(arrays, res, rec)
        return _build_out(self.out, arrays, res)

    def _run_profiled(self, arrays, res, rec):
        """run() under the profiler, recorded as an eager step is: each kernel through the profiler's
        Ops proxy, inside a span of the node that called it while tracing (forward or backward, with
        its phase and layer), the walk inside the "backward" phase, the leaves' gradients through
        its accumulate_grad, the optimizer's own step() marking the "optimizer" phase."""
        steps, i, n = self.steps, 0, len(self.steps)
        walk = contextlib.ExitStack()
        with walk:
            while i < n:
                st = steps[i]
                j = i + 1
                node = _node_of(st)
                if node is not None:  # the node's kernels and claims, in its span
                    while j < n and _node_of(steps[j]) == node:
                        j += 1
                    span = _NodeSpan(node[0], lambda g=steps[i:j]: _run_steps(g, arrays, res, rec))
                    if node[1] == "forward":
                        rec.node_forward(span, (), {})
                    else:
                        rec.node_backward(span, None)
                elif st[0] == "pass" and st[1] == "begin":
                    walk.enter_context(rec.phase("backward"))
                    walk.callback(_sink.end_pass, _sink.begin_pass())
                elif st[0] == "pass":
                    walk.close()
                else:
                    _run_steps((st,), arrays, res, rec)
                i = j


def _run_steps(steps, arrays, res, rec):
    """Run kernel-program steps, their results into res; rec: the profiler (None: none), through
    which the kernels and the leaves' accumulation then go."""
    token = None  # the backward walk's sink claims (grad_sink.begin_pass), open between its bounds
    try:
        for st in steps:
            kind = st[0]
            if kind == "k":
                _, fn, args, dyn, kwargs, kdyn, k, meta = st
                if dyn:
                    args = list(args)
                    for i, spec in dyn:
                        if spec[0] == "res":  # the common case, inline
                            out = res[spec[1]]
                            args[i] = out if spec[2] is None else out[spec[2]]
                        else:
                            args[i] = _value(spec, arrays, res)
                if kdyn:
                    kwargs = dict(kwargs)
                    for name, spec in kdyn:
                        kwargs[name] = _value(spec, arrays, res)
                if rec is not None and meta[0] is not None:
                    fn = getattr(rec(meta[0][0], _first_array(args)), meta[0][1])
                res[k] = fn(*args, **kwargs)
            elif kind == "acc":
                if rec is None:
                    st[1](_value(st[2], arrays, res))
                else:
                    rec.accumulate_grad(st[1].__self__, _value(st[2], arrays, res))
            elif kind == "claim":
                res[st[2]] = _sink.claim(st[1])
            elif kind == "pass":
                if st[1] == "begin":
                    token = _sink.begin_pass()
                else:
                    _sink.end_pass(token)
                    token = None
            else:
                _, method, obj, a, kw = st
                method(obj, *a, **kw)
    finally:
        if token is not None:  # a kernel raised inside the walk
            _sink.end_pass(token)


class _NodeSpan:
    """What the profiler's node hooks see of a recorded node in a profiled kernel replay: its name,
    phase, layer and inputs, and its recorded kernels as forward()/backward()."""

    def __init__(self, node, run):
        self.name, self.phase, self.layer, self.inputs = node.name, node.phase, node.layer, node.inputs
        self._run = run

    def forward(self):
        self._run()

    def backward(self, grad):
        self._run()


def _node_of(st):
    """(node, direction) that made a kernel step or a claim while tracing, or None."""
    if st[0] == "k":
        return st[7][1:] if st[7][1] is not None else None
    return st[3] if st[0] == "claim" else None


def _first_array(args):
    return next((a for a in args if _is_array(a)), None)


def _expand(specs):
    """The argument specs `specs` and every spec they are built from (views' sources, sequences' parts)."""
    specs = list(specs)
    while specs:
        sp = specs.pop()
        yield sp
        if sp[0] == "view":
            specs.append(sp[1])
        elif sp[0] == "seq":
            specs.extend(sp[2])


def _specs(steps):
    """Every argument spec of a kernel program's steps, views' sources included."""
    return _expand(sp for st in steps
                   for sp in ([sp for _, sp in st[3]] + [sp for _, sp in st[5]] if st[0] == "k"
                              else [st[2]] if st[0] == "acc" else []))


def _out_specs(out):
    """Every array spec that `_build_out(out, ...)` reads, views' sources included."""
    arrays, stack = [], [out]
    while stack:
        spec = stack.pop()
        if spec[0] == "tensor":
            arrays.append(spec[1])
        elif spec[0] == "seq":
            stack.extend(spec[2])
        elif spec[0] == "dict":
            stack.extend(s for _, s in spec[1])
    return _expand(arrays)


def _bound_call(fn, a, kw, k):
    """("k", fn, args with the constants in place, [(position, spec)] to fill, kwargs likewise, k)."""
    args = tuple(spec[1] if spec[0] == "c" else None for spec in a)
    dyn = tuple((i, spec) for i, spec in enumerate(a) if spec[0] != "c")
    kwargs = {name: spec[1] for name, spec in kw.items() if spec[0] == "c"}
    kdyn = tuple((name, spec) for name, spec in kw.items() if spec[0] != "c")
    return ("k", fn, args, dyn, kwargs, kdyn, k)


def _kernel_out(v1, v2, r1, r2):
    """How a kernel replay rebuilds fn's return value (as `_spec` does for the node-level one)."""
    if v2 is None and v1 is None:
        return ("none",)
    if isinstance(v2, Tensor) and isinstance(v1, Tensor):
        spec = _resolve(v1.data, v2.data, r1, r2)
        if spec[0] == "c":
            raise _NotKernelReplayable("fn returns a tensor that no recorded kernel made")
        return ("tensor", spec)
    if isinstance(v2, (tuple, list)) and type(v1) is type(v2) and len(v1) == len(v2):
        return ("seq", type(v2), tuple(_kernel_out(a, b, r1, r2) for a, b in zip(v1, v2)))
    if isinstance(v2, dict) and isinstance(v1, dict) and list(v1) == list(v2):
        return ("dict", tuple((k, _kernel_out(v1[k], v2[k], r1, r2)) for k in v2))
    raise _NotKernelReplayable("fn's return value differs between the two traces")


def _build_out(spec, arrays, res, value=None):
    """fn's return value from a replay: spec from `_spec` (node level: res are the node outputs) or
    `_kernel_out` (kernel level: res are the kernels' results); value(array spec) -> the array of a
    returned tensor, when not `_value`'s (a CUDA graph's replay returns copies)."""
    kind = spec[0]
    if kind == "tensor":
        return Tensor(_value(spec[1], arrays, res) if value is None else value(spec[1]))
    if kind == "none":
        return None
    if kind == "seq":
        return spec[1](_build_out(s, arrays, res, value) for s in spec[2])
    return {k: _build_out(s, arrays, res, value) for k, s in spec[1]}


def _spec(value, tr: _Trace):
    """How to rebuild fn's return value from a replay's slots."""
    if value is None:
        return ("none",)
    if isinstance(value, Tensor):
        k = tr.tensor_slot.get(id(value))
        if k is None:
            k = tr.slots.get(id(value.data))
        if k is not None:
            return ("tensor", ("res", k, None))
        i = tr.args.get(id(value.data))
        if i is not None:
            return ("tensor", ("arg", i))
        raise _Unreplayable("fn returns a tensor that no recorded operation produced")
    if isinstance(value, (tuple, list)):
        return ("seq", type(value), tuple(_spec(v, tr) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _spec(v, tr)) for k, v in value.items()))
    raise _Unreplayable(f"fn returns a {type(value).__name__}, not tensors (return the tensor; read it outside fn)")


class CompiledFunction:
    """fn traced per input signature and replayed (see the module doc). `cache_size` recordings are
    kept (least recently used dropped first); `strict=True` raises CompileError where the default
    falls back to eager with a CompileWarning; `cuda_graph=True` replays a GPU step as one CUDA graph
    where it can (gpunn/compiler_graph.py). `stats` counts traces, replays (kernel by kernel, of which
    as a graph) and eager calls."""

    def __init__(self, fn, cache_size: int = 8, strict: bool = False, cuda_graph: bool = False):
        if not callable(fn):
            raise TypeError(f"gn.compile needs a callable, got {type(fn).__name__}")
        if not isinstance(cache_size, int) or cache_size < 1:
            raise ValueError(f"cache_size must be an int >= 1, got {cache_size!r}")
        self.fn = fn
        self.cache_size = cache_size
        self.strict = strict
        self.cuda_graph = bool(cuda_graph)
        # signature -> ("trace", _Trace, out_spec, value) | ("ready", _Program) | ("eager", cause)
        self._cache = OrderedDict()
        # replays: all of them; kernel_replays: those that ran kernel by kernel (_KernelProgram)
        self.stats = {"traces": 0, "replays": 0, "kernel_replays": 0, "graph_replays": 0, "eager": 0}
        functools.update_wrapper(self, fn)
        try:
            self.__signature__ = inspect.signature(fn)
        except (TypeError, ValueError):
            pass

    def explain(self, *args, **kwargs) -> str:
        """How a call with these arguments runs now: "graph" (one CUDA graph launch, cuda_graph=True),
        "kernels" (replayed kernel by kernel; with cuda_graph=True "kernels: no CUDA graph: <why>"),
        "nodes: <why not kernels>", "eager: <why>", or "tracing" (not traced twice yet)."""
        return self._how(self._cache.get(_signature(args, kwargs)[1]))

    def _how(self, entry) -> str:
        """`explain` of a cache entry (None: not traced yet)."""
        if entry is None or entry[0] == "trace":
            return "tracing"
        if entry[0] == "eager":
            return f"eager: {entry[1]}"
        prog = entry[1]
        if prog.kernels is None:
            return f"nodes: {prog.kernel_cause}"
        if not prog.kernels.guard_ok():
            return "nodes: a parameter's array or gradient sink changed"
        if not self.cuda_graph:
            return "kernels"
        g = prog.graph
        if g is None or g.disabled is not None:
            return f"kernels: no CUDA graph: {prog.graph_cause if g is None else g.disabled}"
        return "graph"

    def replay_source(self, *args, **kwargs) -> str:
        """The Python source of the function that replays these arguments' signature kernel by kernel
        (gpunn/compiler_codegen.py): one line per kernel call, gradient-sink claim, gradient
        accumulation and optimizer call, each named in a comment. ValueError saying how the signature
        runs instead when it does not replay kernel by kernel (`explain`)."""
        flat, key = _signature(args, kwargs)
        entry = self._cache.get(key)
        how = self._how(entry)
        if how != "graph" and not how.startswith("kernels"):
            raise ValueError(f"gn.compile({getattr(self.fn, '__name__', 'fn')}): this signature does not replay "
                             f"kernel by kernel ({how})")
        return entry[1].kernels.straight(len(flat)).source

    def _give_up(self, key, cause):
        if self.strict:
            raise CompileError(f"gn.compile({getattr(self.fn, '__name__', 'fn')}): cannot replay: {cause}")
        warnings.warn(f"gn.compile({getattr(self.fn, '__name__', 'fn')}): running eagerly for this input "
                      f"signature: {cause}", CompileWarning, stacklevel=3)
        self._store(key, ("eager", cause))

    def _store(self, key, entry):
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _trace(self, flat, args, kwargs):
        arrays = _arrays(flat)
        tr = _Trace(arrays)
        for a in flat:
            if isinstance(a, Tensor) and a.requires_grad:
                tr.fail("an argument requires grad (its gradient would not reach the new argument)")
        with _tracing(tr):
            value = self.fn(*args, **kwargs)
        self.stats["traces"] += 1
        spec = None
        if tr.cause is None:
            try:
                spec = _spec(value, tr)
            except _Unreplayable as err:
                tr.fail(str(err))
        return value, tr, spec

    def __call__(self, *args, **kwargs):
        flat, key = _signature(args, kwargs)
        entry = self._cache.get(key)
        if _active is not None or (_kops._recorder is not None and (entry is None or entry[0] != "ready")):
            # nested in a trace; or a profiler is on and this signature is not ready to replay (tracing
            # installs its own kernel hook, which would hide the kernels from the profiler): eagerly
            self.stats["eager"] += 1
            return self.fn(*args, **kwargs)
        if entry is not None:
            self._cache.move_to_end(key)
            if entry[0] == "ready":
                prog = entry[1]
                if prog.guard_ok():
                    self.stats["replays"] += 1
                    kp = prog.kernels
                    arrays = _arrays(flat)
                    if kp is not None and kp.guard_ok() and kp.layout_ok(arrays):
                        self.stats["kernel_replays"] += 1
                        g = prog.graph
                        if g is not None and g.disabled is None and _kops._recorder is None:
                            if g.warm:
                                out = g.run(arrays)
                                self.stats["graph_replays"] += g.launched
                                return out
                            g.warm = True
                        return kp.run(arrays)
                    return prog.run(arrays)
                entry = None  # parameters changed (optimizer's list, requires_grad): trace afresh
            elif entry[0] == "eager":
                self.stats["eager"] += 1
                return self.fn(*args, **kwargs)
        value, tr, spec = self._trace(flat, args, kwargs)
        if tr.cause is not None:
            self._give_up(key, tr.cause)
        elif entry is None:
            self._store(key, ("trace", tr, spec, value))
        else:
            diff = _difference(entry[1], tr)
            if diff is not None:
                self._give_up(key, diff)
            else:
                prog = _Program(tr, spec)
                prog.kernels, prog.kernel_cause = _KernelProgram.build(entry[1], entry[3], tr, value)
                if self.cuda_graph:
                    if prog.kernels is None:
                        prog.graph_cause = f"the step does not replay kernel by kernel ({prog.kernel_cause})"
                    else:
                        from gpunn.compiler_graph import CudaGraphReplay  # it builds on this module
                        prog.graph, prog.graph_cause = CudaGraphReplay.plan(prog.kernels, tr)
                self._store(key, ("ready", prog))
        return value


def compile(fn=None, *, cache_size: int = 8, strict: bool = False, cuda_graph: bool = False):  # noqa: A001 - PyTorch's name
    """`gn.compile(fn)` or `@gn.compile(strict=True)`: fn traced per input signature and replayed
    without an autograd graph (see gpunn/compiler.py). cuda_graph=True: a GPU step that can be is
    replayed as one CUDA graph (gpunn/compiler_graph.py; not yet run on a GPU, so off by default)."""
    if fn is None:
        return lambda f: CompiledFunction(f, cache_size=cache_size, strict=strict, cuda_graph=cuda_graph)
    return CompiledFunction(fn, cache_size=cache_size, strict=strict, cuda_graph=cuda_graph)
