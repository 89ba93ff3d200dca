"""gn.compile's CUDA-graph replay of a GPU step: `gn.compile(fn, cuda_graph=True)`.

A signature whose step replays kernel by kernel on CuPy arrays (`compiler._KernelProgram`) is
captured, at its second kernel replay (the first one compiles the kernels and fills their caches),
into one CUDA graph: the device work from the step's first kernel to its last optimizer update
(forward, loss, backward, the fused updates), over static copies of the step's array arguments and
a private memory pool, so nothing outside the graph is ever allocated where it writes.

The optimizer's scalars (lr, Adam's bias corrections, the step count) change every step, so the
graph's updates are the staged variants of their kernels (`optimizers_cuda.staged_kernel`), which
read them from a small float64 device buffer. Every call from then on:

  1. runs the optimizer calls before the kernels (zero_grad) as eager mode does;
  2. does the host side of the step, with no device work: each leaf's gradient-sink claim and its
     .grad set to its sink (the graph writes the gradients into the same sinks every time), then
     the optimizers' own step() with each update call staged, not launched: its scalars go to the
     host copy of the buffer (`optimizers_cuda.stage`); so whatever the optimizer reads (lr from
     param_groups, its step counts, a load_state_dict) is read at this call, as in eager mode;
  3. copies the step's array arguments into the static buffers (one copy each) and the scalars to
     the device (one copy);
  4. launches the graph on the current stream;
  5. queues the deferred label checks again, on a snapshot of this step's flags (the next launch
     overwrites the graph's own);
  6. returns copies of the returned tensors (the next launch overwrites the graph's buffers).

Launches per step: one per array argument, the scalars' upload, the graph, one per label check and
one per returned tensor, whatever the depth of the network; eager mode launches every kernel.

Not captured (the step keeps its kernel replay and `explain` says why): a step that draws random
numbers (Dropout: the generator's state would be frozen into the graph), a step whose leaves are
not reset by zero_grad(set_to_none=True) before its kernels (their gradients would be added into a
.grad captured once), an optimizer call between the step's kernels, and any step under the
profiler. A call whose host side differs from the capture's (a gradient sink claimed otherwise, an
update that needs another kernel variant, e.g. weight decay switched on) undoes the optimizers' step
counts and runs the kernel replay instead; the next call captures the step again. A capture that
fails (a CUDA error) leaves the signature at its kernel replay, with one CompileWarning.

Not run on a GPU yet: checked on stand-in CuPy arrays (tests/launch_count.py), whose capture records
the operations issued and runs them at each launch, as CUDA does.
"""
from __future__ import annotations

import warnings

import numpy as np

from gpunn.autograd import checks
from gpunn.autograd import grad_sink as _sink
from gpunn.autograd.tensor import Tensor
from gpunn.backend import get_array_module
from gpunn.compiler import CompileWarning, _address, _build_out, _is_array, _run_steps, _value
from gpunn.kernels import optimizers_cuda
from gpunn.kernels.cuda_elementwise import launch

__all__ = ["CudaGraphReplay"]

SCALAR_SLOTS = 512  # float64 scalars of the optimizer updates one graph can stage (8-12 per update)


class _HostSideDiffers(Exception):
    """This call's host bookkeeping does not match the capture's: run the kernel replay instead."""


class _TooManyScalars(_HostSideDiffers):
    """The step's optimizer updates take more scalars than the graph's buffer holds."""


def _is_zero_grad_to_none(st) -> bool:
    _, method, _, args, kwargs = st
    return getattr(method, "__name__", "") == "zero_grad" and bool(args[0] if args else kwargs.get("set_to_none", True))


def _where(a):
    """What an update call's array is, for comparing calls: its address, size and dtype."""
    return _address(a), a.size, a.dtype


class CudaGraphReplay:
    """The CUDA-graph form of one signature's kernel program (see the module docstring); `plan`
    makes it, `run` captures it on its first call and launches it after that."""

    def __init__(self, kp, first, xp):
        self.kp, self.xp = kp, xp
        self.prefix, self.body = kp.steps[:first], kp.steps[first:]
        # glue that does no device work (a deferred label check): run again after each launch
        self.host_steps = [st for st in self.body if st[0] == "k" and getattr(st[1], "host_only", False)]
        self.optimizers = [st[2] for st in self.body if st[0] == "call"]
        self.graph = None
        self.disabled = None  # why a capture turned out not to be replayable (then: kernel replays)
        self.warm = False     # one kernel replay has run (kernels compiled, caches filled)

    @classmethod
    def plan(cls, kp, tr):
        """(CudaGraphReplay, None), or (None, why the step cannot be one graph)."""
        device = [a for a in tr.arg_arrays if a is not None and not _is_host(a)]
        if not device:
            return None, "its arrays are on the host (CUDA graphs are for GPU steps)"
        for e in tr.kprog:
            if e[0] == "k" and e[4] is not None and not _is_array(e[4]) and not isinstance(e[4], (tuple, list, int, float)):
                return None, ("a kernel takes an object made at every call, such as Dropout's generator "
                              "(its random state would be frozen into the graph)")
        steps = kp.steps
        kernels = [i for i, st in enumerate(steps) if st[0] != "call"]
        if not kernels:
            return None, "the step launches no kernels"
        first, last = kernels[0], kernels[-1]
        if any(st[0] == "call" for st in steps[first:last + 1]):
            return None, "an optimizer call comes between the step's kernels"
        if any(getattr(st[1], "__name__", "") != "step" for st in steps[last + 1:]):
            return None, "an optimizer call other than step() comes after the step's kernels"
        reset = {id(p) for st in steps[:first] if _is_zero_grad_to_none(st)
                 for g in st[2].param_groups for p in g["params"]}
        for st in steps[first:last + 1]:
            if st[0] == "acc" and id(st[1].__self__) not in reset:
                return None, ("a leaf's gradient is not reset by optimizer.zero_grad() (set_to_none=True) before "
                              "the step's kernels, so it would be added into a .grad captured once")
        return cls(kp, first, get_array_module(device[0])), None

    # ------------------------------------------------------------------------------------ calls
    def run(self, arrays):
        """One call of the step: capture on the first, launch the graph after that; `launched` says
        whether this call ran as the graph."""
        self.launched = True
        if self.graph is None:
            return self._capture(arrays)
        _run_steps(self.prefix, arrays, [], None)
        saved = self._step_counts()
        try:
            self._host_side()
        except _HostSideDiffers:
            self.graph = None  # captured again at the next call, as the step is now
            return self._kernel_replay(arrays, saved)
        for i, static in self.statics.items():
            static[...] = arrays[i]
        return self._launch(arrays)

    def _step_counts(self):
        """The optimizers' host state that their step() advances, for `_kernel_replay`."""
        return [(fg, fg.steps.copy(), fg.uniform, fg.synced) for opt in self.optimizers for fg in opt._flat]

    def _kernel_replay(self, arrays, saved):
        """This call as a kernel replay, after a host side that went part of the way: the optimizers'
        step counts go back (their step() runs again), and the replay's zero_grad resets the rest."""
        for fg, steps, uniform, synced in saved:
            fg.steps[...] = steps
            fg.uniform, fg.synced = uniform, synced
        self.launched = False
        return self.kp.run(arrays)

    def _capture(self, arrays):
        xp = self.xp
        checks.flush_checks()  # a flush reads the device, which a capture does not permit
        _run_steps(self.prefix, arrays, [], None)
        saved = self._step_counts()
        self.statics = {i: a.copy() for i, a in enumerate(arrays) if a is not None and not _is_host(a)}
        bound = [self.statics.get(i, a) for i, a in enumerate(arrays)]
        self.host_scalars = np.zeros(SCALAR_SLOTS)
        self.scalars = xp.zeros(SCALAR_SLOTS, dtype=np.float64)
        self.updates = []  # each staged update call: (member, dtype, flags, arrays' places, slot, size)
        xp.cuda.get_current_stream().synchronize()  # once: the capture stream is not ordered after it
        self.pool = xp.cuda.MemoryPool()  # the graph's own memory, kept while it lives
        self.stream = xp.cuda.Stream(non_blocking=True)
        self.res = res = [None] * self.kp.n
        queued = len(checks._pending)
        try:
            with xp.cuda.using_allocator(self.pool.malloc), self.stream:
                self.stream.begin_capture()
                optimizers_cuda.stage = self._capture_update
                try:
                    _run_steps(self.body, bound, res, None)
                finally:
                    optimizers_cuda.stage = None
                    graph = self.stream.end_capture()
        except Exception as err:  # noqa: BLE001 - nothing ran on the device: this call replays kernel by kernel
            del checks._pending[queued:]
            if isinstance(err, _TooManyScalars):
                self.disabled = f"its optimizer updates take more than {SCALAR_SLOTS} scalars"
            else:
                self.disabled = f"capturing it failed ({type(err).__name__}: {err})"
                warnings.warn(f"gn.compile(cuda_graph=True): {self.disabled}; the step replays kernel by kernel",
                              CompileWarning, stacklevel=4)
            return self._kernel_replay(arrays, saved)
        del checks._pending[queued:]  # they read the graph's flags: queued again on snapshots (_launch)
        self.bound = bound
        # what a call does on the host instead, in the body's order (run by _run_steps, as "call"s)
        self.host_program = [
            ("call", CudaGraphReplay._claim, self, (st[1], res[st[2]]), {}) if st[0] == "claim"
            else ("call", CudaGraphReplay._set_grad, self, (st[1].__self__,), {}) if st[0] == "acc"
            else st for st in self.body if st[0] != "k"]
        for st in self.body:  # each leaf's gradient landed in its sink (written there, or copied)
            if st[0] == "acc":
                t = st[1].__self__
                if t.grad is None or t.grad.data is not t._grad_sink:
                    self.disabled = "a leaf's gradient does not land in its gradient sink"
        self.graph = graph
        out = self._launch(arrays)  # this call's own step: the capture ran nothing on the device
        if self.disabled is not None:
            self.graph = None
        return out

    def _capture_update(self, m, dtype, flags, arrays, scalars):
        """optimizers_cuda.stage while capturing: the staged kernel, reading its scalars from its
        slot of the device buffer, launched (so captured) on the update's arrays."""
        slot = sum(u[5] for u in self.updates)
        if slot + len(scalars) > SCALAR_SLOTS:
            raise _TooManyScalars
        self.host_scalars[slot:slot + len(scalars)] = scalars
        self.updates.append((m, dtype, flags, [_where(a) for a in arrays], slot, len(scalars)))
        launch(optimizers_cuda.staged_kernel(m, dtype, flags), arrays[0].size, arrays[0], *arrays,
               self.scalars[slot:slot + len(scalars)])

    def _claim(self, t, sink):
        """A node's claim on leaf t's gradient sink, which must give what it gave the capture."""
        if _sink.claim(t) is not sink:
            raise _HostSideDiffers

    def _set_grad(self, t):
        """Leaf t's gradient: the graph writes it into t's sink (or copies it there)."""
        if t.grad is not None:
            raise _HostSideDiffers
        t.grad = Tensor(t._grad_sink)

    def _host_side(self):
        """This call's host bookkeeping, as the capture did it, with no device work: the sinks'
        claims and the leaves' .grad, then the optimizers' step() with every update staged."""
        calls = iter(self.updates)

        def stage(m, dtype, flags, arrays, scalars):
            u = next(calls, None)
            if u is None or u[:3] != (m, dtype, flags) or u[3] != [_where(a) for a in arrays]:
                raise _HostSideDiffers
            self.host_scalars[u[4]:u[4] + u[5]] = scalars

        optimizers_cuda.stage = stage
        try:
            _run_steps(self.host_program, self.bound, [], None)
        finally:
            optimizers_cuda.stage = None
        if next(calls, None) is not None:
            raise _HostSideDiffers

    def _launch(self, arrays):
        stream = self.xp.cuda.get_current_stream()
        self.scalars.set(self.host_scalars)
        self.graph.launch(stream=stream)
        for st in self.host_steps:
            _, fn, args, dyn, kwargs, kdyn, _, _ = st
            args = list(args)
            for i, spec in dyn:
                args[i] = self._snapshot(spec, arrays)
            kwargs = dict(kwargs, **{name: self._snapshot(spec, arrays) for name, spec in kdyn})
            fn(*args, **kwargs)
        return _build_out(self.kp.out, arrays, self.res, lambda spec: self._snapshot(spec, arrays))

    def _snapshot(self, spec, arrays):
        """A host step's argument: the call's own argument, or a copy of what the graph wrote (the
        next launch overwrites it)."""
        if spec[0] == "arg":
            return arrays[spec[1]]
        v = _value(spec, self.bound, self.res)
        return v.copy() if _is_array(v) else v


def _is_host(a) -> bool:
    return not hasattr(a, "__cuda_array_interface__")
