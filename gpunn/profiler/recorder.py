"""The recorder behind `gpunn.profiler.profile`: what runs, where in the step, and for how long.

While a profile is active, `gpunn.kernels.ops._recorder` is a `Recorder`. The lower layers call it
through a small protocol and nothing else (they never import this package):

- `recorder(ops, array)` (from `ops_for`): a proxy of `ops` whose kernels time themselves;
- `node_forward(fn, arrays, params)` / `node_backward(node, grad)` (from `Function.apply` and the
  backward walk): run one graph node inside a span labelled with its phase and layer;
- `accumulate_grad(tensor, grad)` (from the backward walk): a leaf's gradient copy, timed as a kernel;
- `phase(name)` (from `Tensor.backward` and `Optimizer.step`): a context manager around the
  "backward" and "optimizer" phases; the end of an "optimizer" phase ends a training step.

Times: on the CPU each kernel is bracketed by `time.perf_counter_ns()`. On a GPU each kernel is
bracketed by two CUDA events on the current stream (and an NVTX range, so Nsight shows gpunn's
names); the events are read after the device is synchronised at the end of the profile, and placed
on the host's clock through a reference event recorded after a synchronisation. With `sync=True`
every range waits for its kernels before it ends (CuPy's `time_range(sync=True)`), so NVTX ranges
and host spans last until their kernels finish, at the price of the launch/execution overlap.
"""
from __future__ import annotations

import threading
import time
from collections import ChainMap
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from gpunn.autograd import grad_sink
from gpunn.kernels import activations, dense, dropout, losses, normalization, optimizers, softmax_ce
from gpunn.kernels.activations import operand_bytes

__all__ = ["COSTS", "KernelEvent", "Span", "Recorder"]

# Ops method name -> cost(*args, **kwargs) -> (flops, bytes); each family keeps its own beside its kernels.
# A live view: the optimizer updates' costs follow the registry (members registered later included).
COSTS = ChainMap(activations.COSTS, dense.COSTS, softmax_ce.COSTS, losses.COSTS, optimizers.COSTS,
                 normalization.COSTS, dropout.COSTS)

_now = time.perf_counter_ns


@dataclass(slots=True)
class KernelEvent:
    """One kernel call. Times are nanoseconds on the host's perf_counter clock, relative to the
    profile's start once the profile has stopped. `device_start_ns`/`device_end_ns` are the GPU
    execution times from CUDA events (None on the CPU); `duration_ns` uses them when present."""

    name: str                  # Ops method ("dense_forward"), "accumulate_grad", or "<Node>.forward" for unfused ops
    backend: str               # the implementation: "cpu", "reference", a GPU Ops name, "numpy"/"cupy" for plain arrays
    device: str                # "cpu" or "gpu:N"
    phase: str                 # "forward", "loss", "backward", "optimizer" or "other"
    layer: str | None          # the layer's path in its model ("0", "2"), "loss", or None
    shapes: tuple
    dtype: str | None
    start_ns: int
    end_ns: int
    flops: int | None
    bytes: int | None
    tid: int                   # host thread (threading.get_ident())
    stream: int | None = None  # CUDA stream pointer (0: the legacy default stream)
    device_start_ns: int | None = None
    device_end_ns: int | None = None

    @property
    def duration_ns(self) -> int:
        if self.device_start_ns is not None:
            return self.device_end_ns - self.device_start_ns
        return self.end_ns - self.start_ns


@dataclass(slots=True)
class Span:
    """A phase ("backward", "optimizer") or a graph node ("Dense[0]", "Dense[0].backward") on a host thread."""

    kind: str                  # "phase" or "node"
    name: str
    phase: str
    layer: str | None
    tid: int
    start_ns: int
    end_ns: int = 0
    depth: int = 0             # spans open around it on its thread when it opened
    first_event: int = 0       # len(events) when the span opened
    clock: object = None       # the _CudaClock of a span over GPU arrays
    token: object = None
    arrays: tuple = ()


def _nvtx_functions():
    """(push, pop) from CuPy's NVTX bindings or the `nvtx` package; (None, None) without either."""
    try:
        from cupy.cuda import nvtx

        if getattr(nvtx, "available", True):
            return nvtx.RangePush, nvtx.RangePop
    except Exception:  # noqa: BLE001 - no libnvToolsExt is not an error, only no ranges
        pass
    try:
        import nvtx

        return nvtx.push_range, nvtx.pop_range
    except Exception:  # noqa: BLE001
        return None, None


class _CudaClock:
    """CUDA-event timing (and NVTX ranges) for one GPU. GPU-only: nothing here runs on the CPU."""

    def __init__(self, index: int, nvtx: bool, sync: bool):
        import cupy

        self.cupy = cupy
        self.index = index
        self.sync = sync
        with cupy.cuda.Device(index):
            self.ref = cupy.cuda.Event()
            self.ref.record()
            self.ref.synchronize()
        self.ref_ns = _now()  # the reference event's time on the host clock (it completed just now)
        self.push, self.pop = _nvtx_functions() if nvtx else (None, None)

    def start(self, label):
        if self.push is not None:
            self.push(label)
        stream = self.cupy.cuda.get_current_stream()
        ev = self.cupy.cuda.Event()
        ev.record(stream)
        return ev, stream

    def stop(self, token):
        ev0, stream = token
        ev1 = self.cupy.cuda.Event()
        ev1.record(stream)
        if self.sync:
            ev1.synchronize()
        if self.pop is not None:
            self.pop()
        return ev0, ev1, stream.ptr

    def synchronize(self):
        self.cupy.cuda.Device(self.index).synchronize()

    def resolve(self, handle):
        """(start_ns, end_ns, stream) of a finished (ev0, ev1, stream) handle on the host clock."""
        ev0, ev1, ptr = handle
        elapsed = self.cupy.cuda.get_elapsed_time
        return (self.ref_ns + round(elapsed(self.ref, ev0) * 1e6),
                self.ref_ns + round(elapsed(self.ref, ev1) * 1e6), ptr)


class _RecordingOps:
    """A stand-in for an Ops object whose kernels record themselves (built on first use of each)."""

    def __init__(self, ops, recorder, device: int):
        self._ops, self._rec, self._device = ops, recorder, device
        self.name = ops.name

    def __getattr__(self, attr):
        value = getattr(self._ops, attr)
        if callable(value) and not attr.startswith("_"):
            value = self._rec.wrap(self._ops.name, attr, value, self._device)
        self.__dict__[attr] = value
        return value

    def __repr__(self) -> str:
        return f"<recording {self._ops!r}>"


_DTYPE_NAMES = {}  # dtype -> its name (numpy's dtype.name is slow enough to show in a profile)


def _describe(args) -> tuple:
    """(shapes of the array arguments with at least one axis, the first float dtype's name or None)."""
    shapes = []
    dtype = None
    for a in args:
        shape = getattr(a, "shape", None)
        if shape and hasattr(a, "strides"):
            shapes.append(tuple(shape))
            if dtype is None and a.dtype.kind == "f":
                dtype = _DTYPE_NAMES.get(a.dtype) or _DTYPE_NAMES.setdefault(a.dtype, a.dtype.name)
    return tuple(shapes), dtype


def _device_index(array) -> int:
    """-1 for NumPy data, else the CUDA device the (CuPy) array lives on."""
    if array is None or isinstance(array, (np.ndarray, np.generic)):
        return -1
    return int(getattr(getattr(array, "device", None), "id", 0))


class Recorder:
    """Collects kernel events and spans while a profile is active (see the module doc)."""

    def __init__(self, nvtx: bool | None = None, sync: bool = False):
        self.nvtx = True if nvtx is None else bool(nvtx)
        self.sync = bool(sync)
        self.events: list[KernelEvent] = []
        self.parts: list[KernelEvent] = []  # passes inside a fused CPU kernel (its time includes theirs)
        self.spans: list[Span] = []
        self.step_ends: list[int] = []
        self._pending = []  # (event, clock, handle) of GPU kernels, read when the profile stops
        self._local = threading.local()
        self._proxies = {}
        self._clocks = {}  # CUDA device index -> _CudaClock
        self._leaf_layer = {}  # id(leaf tensor) -> the layer of the node it feeds
        self.t0 = _now()
        self.t1 = None

    # ------------------------------------------------------------------ state
    def _stack(self) -> list:
        try:
            return self._local.stack
        except AttributeError:
            self._local.stack = []
            return self._local.stack

    def _clock(self, index: int):
        clock = self._clocks.get(index)
        if clock is None:
            clock = self._clocks[index] = _CudaClock(index, self.nvtx, self.sync)
        return clock

    def _where(self):
        stack = self._stack()
        if stack:
            top = stack[-1]
            return top.phase, top.layer
        return "other", None

    # ------------------------------------------------------------------ kernels
    def __call__(self, ops, array):
        """ops_for's hook: the recording proxy of `ops` for `array`'s device."""
        index = _device_index(array)
        key = (id(ops), index)
        proxy = self._proxies.get(key)
        if proxy is None:
            proxy = self._proxies[key] = _RecordingOps(ops, self, index)
        return proxy

    def wrap(self, backend: str, name: str, fn, index: int):
        """`fn` (one kernel of an Ops object) timed and recorded on every call."""
        cost = COSTS.get(name)

        def kernel(*args, **kwargs):
            return self.run(name, backend, index, fn, args, kwargs, cost)

        kernel.__name__ = name
        kernel.__wrapped__ = fn
        return kernel

    def run(self, name, backend, index, fn, args, kwargs, cost, layer=None):
        """Call fn(*args, **kwargs) timed and record it, with cost(*args, **kwargs) as its (flops,
        bytes) (or cost itself when it is already that pair); `layer` overrides the current layer."""
        phase, here = self._where()
        if layer is None:
            layer = here
        if index < 0:
            t0 = _now()
            out = fn(*args, **kwargs)
            t1 = _now()
            clock = handle = None
            device = "cpu"
        else:
            clock = self._clock(index)
            token = clock.start(name if layer is None else f"{name} [{layer}]")
            t0 = _now()
            try:
                out = fn(*args, **kwargs)
            finally:
                t1 = _now()
                handle = clock.stop(token)
            device = f"gpu:{index}"
        flops = nbytes = None
        if callable(cost):
            try:
                flops, nbytes = cost(*args, **kwargs)
            except Exception:  # noqa: BLE001 - a cost model never breaks a run; the event just lacks counts
                pass
        elif cost is not None:
            flops, nbytes = cost
        ev = KernelEvent(name, backend, device, phase, layer, *_describe(args), t0, t1, flops, nbytes,
                         threading.get_ident())
        self.events.append(ev)
        if handle is not None:
            self._pending.append((ev, clock, handle))
        return out

    def part(self, kernel, part, fn, args, cost):
        """The hook a fused CPU kernel calls for one of its passes (gpunn.kernels.dense.part_hook):
        fn(*args) timed and kept in `parts` as "<kernel> / <part>", not in `events` (the kernel's
        own event already contains its time)."""
        phase, layer = self._where()
        t0 = _now()
        out = fn(*args)
        t1 = _now()
        self.parts.append(KernelEvent(f"{kernel} / {part}", "cpu", "cpu", phase, layer, *_describe(args), t0, t1,
                                      cost[0], cost[1], threading.get_ident()))
        return out

    # ------------------------------------------------------------------ graph nodes and phases
    def _open(self, kind, name, phase, layer, arrays) -> Span:
        stack = self._stack()
        if stack:
            top = stack[-1]
            if kind == "node":
                phase = top.phase
                layer = layer if layer is not None else top.layer
        index = _device_index(arrays[0]) if arrays else next(iter(self._clocks), -1)
        clock = self._clock(index) if index >= 0 else None
        span = Span(kind, name, phase, layer, threading.get_ident(), 0, depth=len(stack),
                    first_event=len(self.events), clock=clock, arrays=arrays)
        if clock is not None:
            span.token = clock.start(name)
        span.start_ns = _now()
        stack.append(span)
        return span

    def _close(self, span: Span, unfused_name: str | None) -> None:
        end = _now()
        stack = self._stack()
        while stack and stack[-1] is not span:  # spans an exception left open end here too
            self._finish(stack.pop(), end, None)
        if stack:
            stack.pop()
        self._finish(span, end, unfused_name)

    def _finish(self, span: Span, end: int, unfused_name: str | None) -> None:
        handle = span.clock.stop(span.token) if span.clock is not None else None
        span.end_ns = end
        self.spans.append(span)
        arrays, span.arrays, span.token = span.arrays, (), None
        if unfused_name is not None and len(self.events) == span.first_event:
            # The node ran no gpunn kernel: its plain array expressions count as one (unfused) op.
            gpu = span.clock is not None
            ev = KernelEvent(unfused_name, "cupy" if gpu else "numpy", f"gpu:{span.clock.index}" if gpu else "cpu",
                             span.phase, span.layer, *_describe(arrays), span.start_ns, end, None, None, span.tid)
            self.events.append(ev)
            if handle is not None:
                self._pending.append((ev, span.clock, handle))

    def node_forward(self, fn, arrays, params):
        """Function.apply's hook: fn.forward(*arrays, **params) inside the node's span."""
        layer = params.get("layer") or fn.layer
        return self._in_node_span(fn, "forward", fn.phase, layer, arrays, lambda: fn.forward(*arrays, **params))

    def node_backward(self, node, grad):
        """The backward walk's hook: node.backward(grad) inside the node's span."""
        layer = node.layer
        for inp in node.inputs:
            if inp._node is None and layer is not None:
                self._leaf_layer[id(inp)] = layer
        return self._in_node_span(node, "backward", "backward", layer, (grad,), lambda: node.backward(grad))

    def _in_node_span(self, node, which, phase, layer, arrays, call):
        """call() inside a span named after the node ("Dense[0].backward"); if it runs
        no gpunn kernel it counts as one unfused op ("Dense.backward"). An exception closes the span."""
        label = node.name if layer is None else f"{node.name}[{layer}]"
        span = self._open("node", label if which == "forward" else f"{label}.{which}", phase, layer, arrays)
        try:
            out = call()
        except BaseException:
            self._close(span, None)
            raise
        self._close(span, f"{node.name}.{which}")
        return out

    def accumulate_grad(self, tensor, grad):
        """The backward walk's hook for a leaf: its gradient copied (or added) into .grad, timed as
        a kernel and filed under the layer of the node that produced it. A gradient the node already
        wrote into the leaf's gradient sink (Function.grad_sink) needs no copy and records nothing."""
        if grad_sink.written_in_place(tensor, grad):
            return tensor._accumulate_grad(grad)
        n = operand_bytes(grad)
        cost = (0, 2 * n) if tensor.grad is None else (int(grad.size), 3 * n)
        index = _device_index(grad)
        return self.run("accumulate_grad", "numpy" if index < 0 else "cupy", index, tensor._accumulate_grad,
                        (grad,), {}, cost, layer=self._leaf_layer.get(id(tensor)))

    @contextmanager
    def phase(self, name: str):
        """A "backward" or "optimizer" phase; the end of an optimizer phase ends a training step."""
        span = self._open("phase", name, name, None, ())
        try:
            yield
        finally:
            self._close(span, None)
            if name == "optimizer":
                self.step_ends.append(span.end_ns)

    # ------------------------------------------------------------------ end
    def finish(self) -> None:
        """Close what is still open, wait for the GPU, and read the CUDA events."""
        for clock in self._clocks.values():
            clock.synchronize()
        self.t1 = _now()
        stack = self._stack()
        while stack:
            self._finish(stack.pop(), self.t1, None)
        for ev, clock, handle in self._pending:
            ev.device_start_ns, ev.device_end_ns, ev.stream = clock.resolve(handle)
        self._pending.clear()
        self._proxies.clear()
        self._leaf_layer.clear()
