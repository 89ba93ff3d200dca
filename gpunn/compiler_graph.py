"""gn.compile's CUDA-graph replay of a GPU step: `gn.compile(fn, cuda_graph=True)`.

A signature whose step replays kernel by kernel on CuPy arrays (`compiler._KernelProgram`) is
captured, at its second kernel replay (the first one compiles the kernels and fills their caches),
into one CUDA graph: the device work from the step's first kernel to its last gradient (forward,
loss, backward), over static copies of the step's array arguments and a private memory pool, so
nothing outside the graph is ever allocated where it writes. Every call from then on:

  1. runs the optimizer calls before the kernels (zero_grad) as eager mode does;
  2. copies the step's array arguments into the static buffers (one copy each);
  3. does the host side of the captured span: each leaf's gradient-sink claim, and its .grad set to
     its sink (the graph writes or copies the gradients into the same sinks every time); no device
     work;
  4. launches the graph on the current stream;
  5. queues the deferred label checks again, on a snapshot of this step's flags (the next launch
     overwrites the graph's own);
  6. runs the optimizer calls after the kernels (optimizer.step) as eager mode does: their scalars
     (lr, Adam's bias corrections, the step count) are kernel arguments that change every step, so
     they stay out of the graph and are read afresh, one fused launch per param group;
  7. returns copies of the returned tensors (the next launch overwrites the graph's buffers).

Launches per step: one per array argument, the graph, one per optimizer param group, one per label
check and one per returned tensor; eager mode launches every kernel of the step instead.

Not captured (the step keeps its kernel replay and `explain` says why): a step that draws random
numbers (Dropout: the generator's state would be frozen into the graph), a step whose leaves are
not reset by zero_grad(set_to_none=True) before its kernels (their gradients would be added into a
.grad captured once), an optimizer call between the step's kernels, and any step under the
profiler. A call whose host side differs from the capture's (a gradient sink claimed otherwise)
runs the kernel replay instead.

Not run on a GPU yet: checked on stand-in CuPy arrays (tests/launch_count.py), whose capture records
the operations issued and runs them at each launch, as CUDA does.
"""
from __future__ import annotations

from gpunn.autograd import checks
from gpunn.autograd import grad_sink as _sink
from gpunn.autograd.tensor import Tensor
from gpunn.backend import get_array_module
from gpunn.compiler import _is_array, _run_steps, _value

__all__ = ["CudaGraphReplay"]


class _HostSideDiffers(Exception):
    """This call's host bookkeeping does not match the capture's: run the kernel replay instead."""


def _is_zero_grad_to_none(st) -> bool:
    _, method, _, args, kwargs = st
    return getattr(method, "__name__", "") == "zero_grad" and bool(args[0] if args else kwargs.get("set_to_none", True))


class CudaGraphReplay:
    """The CUDA-graph form of one signature's kernel program (see the module docstring); `plan`
    makes it, `run` captures it on its first call and launches it after that."""

    def __init__(self, kp, first, last, xp):
        self.kp, self.xp = kp, xp
        self.prefix, self.span, self.suffix = kp.steps[:first], kp.steps[first:last + 1], kp.steps[last + 1:]
        # glue that does no device work (a deferred label check): run again after each launch
        self.host_steps = [st for st in self.span if st[0] == "k" and getattr(st[1], "host_only", False)]
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
        span = [i for i, st in enumerate(steps) if st[0] != "call"]
        if not span:
            return None, "the step launches no kernels"
        first, last = span[0], span[-1]
        if any(st[0] == "call" for st in steps[first:last + 1]):
            return None, "an optimizer call comes between the step's kernels"
        reset = {id(p) for st in steps[:first] if _is_zero_grad_to_none(st)
                 for g in st[2].param_groups for p in g["params"]}
        for st in steps[first:last + 1]:
            if st[0] == "acc" and id(st[1].__self__) not in reset:
                return None, ("a leaf's gradient is not reset by optimizer.zero_grad() (set_to_none=True) before "
                              "the step's kernels, so it would be added into a .grad captured once")
        return cls(kp, first, last, get_array_module(device[0])), None

    # ------------------------------------------------------------------------------------ calls
    def run(self, arrays):
        """One call of the step: capture on the first, launch the graph after that."""
        xp = self.xp
        if self.graph is None:
            return self._capture(arrays, xp)
        _run_steps(self.prefix, arrays, [], None)
        try:
            self._host_side()
        except _HostSideDiffers:
            return self.kp.run(arrays)  # safe: the prefix's zero_grad resets what the host side set
        for i, static in self.statics.items():
            static[...] = arrays[i]
        return self._launch(arrays, xp)

    def _capture(self, arrays, xp):
        checks.flush_checks()  # a flush reads the device, which a capture does not permit
        _run_steps(self.prefix, arrays, [], None)
        self.statics = {i: a.copy() for i, a in enumerate(arrays) if a is not None and not _is_host(a)}
        bound = [self.statics.get(i, a) for i, a in enumerate(arrays)]
        xp.cuda.get_current_stream().synchronize()  # once: the capture stream is not ordered after it
        self.pool = xp.cuda.MemoryPool()  # the graph's own memory, kept while it lives
        self.stream = xp.cuda.Stream(non_blocking=True)
        self.res = res = [None] * self.kp.n
        queued = len(checks._pending)
        with xp.cuda.using_allocator(self.pool.malloc), self.stream:
            self.stream.begin_capture()
            try:
                _run_steps(self.span, bound, res, None)
            finally:
                graph = self.stream.end_capture()
        del checks._pending[queued:]  # they read the graph's flags: queued again on snapshots (_launch)
        self.bound = bound
        self.claims = {st[2]: res[st[2]] for st in self.span if st[0] == "claim"}
        for st in self.span:  # each leaf's gradient landed in its sink (written there, or copied)
            if st[0] == "acc":
                t = st[1].__self__
                if t.grad is None or t.grad.data is not t._grad_sink:
                    self.disabled = "a leaf's gradient does not land in its gradient sink"
        self.graph = graph
        out = self._launch(arrays, xp)  # this call's own step: the capture ran nothing on the device
        if self.disabled is not None:
            self.graph = None
        return out

    def _host_side(self):
        """The span's host bookkeeping for this call, as the capture did it (no device work)."""
        token = None
        try:
            for st in self.span:
                kind = st[0]
                if kind == "claim":
                    if _sink.claim(st[1]) is not self.claims[st[2]]:
                        raise _HostSideDiffers
                elif kind == "acc":  # the graph writes the gradient into the leaf's sink
                    t = st[1].__self__
                    if t.grad is not None:
                        raise _HostSideDiffers
                    t.grad = Tensor(t._grad_sink)
                elif kind == "pass":
                    if st[1] == "begin":
                        token = _sink.begin_pass()
                    else:
                        _sink.end_pass(token)
                        token = None
        finally:
            if token is not None:
                _sink.end_pass(token)

    def _launch(self, arrays, xp):
        self.graph.launch(stream=xp.cuda.get_current_stream())
        for st in self.host_steps:
            _, fn, args, dyn, kwargs, kdyn, _, _ = st
            args = list(args)
            for i, spec in dyn:
                args[i] = self._snapshot(spec, arrays)
            kwargs = dict(kwargs, **{name: self._snapshot(spec, arrays) for name, spec in kdyn})
            fn(*args, **kwargs)
        _run_steps(self.suffix, arrays, [], None)
        return self._out(self.kp.out, arrays)

    def _snapshot(self, spec, arrays):
        """A host step's argument: the call's own argument, or a copy of what the graph wrote (the
        next launch overwrites it)."""
        if spec[0] == "arg":
            return arrays[spec[1]]
        v = _value(spec, self.bound, self.res)
        return v.copy() if _is_array(v) else v

    def _out(self, spec, arrays):
        kind = spec[0]
        if kind == "tensor":
            return Tensor(self._snapshot(spec[1], arrays))
        if kind == "none":
            return None
        if kind == "seq":
            return spec[1](self._out(s, arrays) for s in spec[2])
        return {k: self._out(s, arrays) for k, s in spec[1]}


def _is_host(a) -> bool:
    return not hasattr(a, "__cuda_array_interface__")
