"""`DistributedDataParallel`: every rank trains a replica; gradients are averaged during backward.

After PyTorch DDP (broadcast at wrap, gradient buckets started by backward hooks) and Horovod (one
collective over a fusion buffer). The optimizer's flat per-group gradient buffer is that fusion
buffer: a bucket is a contiguous slice of it, reduced in place with no copy, and a bucket's
collective starts (nonblocking) as soon as backward has produced all of its gradients, so it overlaps
the rest of backward. The end of backward waits for every bucket (each with the group's deadline).

    dist.init_process_group()
    model = nn.parallel.DistributedDataParallel(build_model())
    opt = optim.Adam(model.parameters(), lr=1e-3)     # after wrapping: its buffers hold the buckets
"""
from __future__ import annotations

import contextlib
import numbers

import numpy as np

from gpunn import distributed as dist
from gpunn.autograd.grad_sink import grad_sink_of
from gpunn.autograd.tensor import Tensor, queue_callback
from gpunn.backend import get_array_module
from gpunn.nn.module import Module

__all__ = ["DistributedDataParallel"]


def _address(a) -> int:
    return a.__array_interface__["data"][0] if isinstance(a, np.ndarray) else a.data.ptr


def _owner(a):
    while a.base is not None:
        a = a.base
    return a


class _Bucket:
    """A contiguous slice `array` of one flat gradient buffer holding the gradients of `params`
    (`views[i]` is param i's gradient view), or one parameter's own gradient when it has no buffer."""

    __slots__ = ("params", "views", "array", "left")

    def __init__(self, params, views, array):
        self.params, self.views, self.array = params, views, array
        self.left = len(params)


class DistributedDataParallel(Module):
    """Data parallelism over the default process group. module: the replica (its parameters and
    buffers are broadcast from rank 0 here). After each `loss.backward()` every parameter's .grad is
    the average over ranks. bucket_cap_mb: the largest bucket (PyTorch's default, 25 MB); None:
    one collective per flat gradient buffer. Build the optimizer from this wrapper's parameters
    after wrapping. A parameter that gets no gradient on a rank contributes zeros there (and then
    has the average as its .grad on every rank). `.module` is the replica; state_dict keys carry
    the `module.` prefix, as PyTorch's do."""

    def __init__(self, module, bucket_cap_mb=25, broadcast_buffers: bool = True):
        group = dist._need("DistributedDataParallel")
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel wraps a gpunn Module, got {type(module).__name__}")
        if bucket_cap_mb is not None and (isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, numbers.Real)
                                          or not bucket_cap_mb > 0):
            raise ValueError(f"bucket_cap_mb must be a positive number of megabytes or None, got {bucket_cap_mb!r}")
        super().__init__()
        self.module = module
        d = self.__dict__  # plain attributes, not registered as parameters/modules
        d["bucket_cap_mb"] = bucket_cap_mb
        d["_group"] = group
        d["_params"] = [p for p in module.parameters() if p.requires_grad]
        d["_layout"] = None  # the gradient buffers the buckets were planned on
        d["_buckets"] = []
        d["_bucket_of"] = {}
        d["_pending"] = None  # the started collectives of the current backward, or None outside one
        d["_sync"] = True
        d["_next"] = 0  # the first bucket not yet started in this backward
        tensors = list(module.parameters()) + (list(module.buffers()) if broadcast_buffers else [])
        started = [(t.data, group.start_broadcast(t.data, 0, "DistributedDataParallel: broadcast of the "
                                                           f"initial parameters (shape {t.shape})")) for t in tensors]
        for a, pending in started:
            group.wait(pending, f"DistributedDataParallel: broadcast from rank 0 (shape {a.shape})")
        d["_handles"] = [p.register_post_accumulate_grad_hook(self._on_grad) for p in self._params]

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside accumulate local gradients with no communication; the first
        backward after it averages the accumulated ones (PyTorch's gradient accumulation idiom)."""
        self.__dict__["_sync"] = False
        try:
            yield
        finally:
            self.__dict__["_sync"] = True

    # ------------------------------------------------------------------ buckets
    def _plan(self) -> None:
        """Buckets: runs of parameters adjacent in one flat gradient buffer, at most bucket_cap_mb
        each, in reverse buffer order (backward produces the last layers' gradients first)."""
        by_owner = {}
        buckets = []
        for p in self._params:
            gv = grad_sink_of(p)
            if gv is None:  # no optimizer owns this gradient: it is its own bucket
                buckets.append(_Bucket([p], [None], None))
                continue
            owner = _owner(gv)
            start = (_address(gv) - _address(owner)) // gv.itemsize
            by_owner.setdefault(id(owner), (owner, []))[1].append((start, start + gv.size, p, gv))
        cap = None if self.bucket_cap_mb is None else self.bucket_cap_mb * 2**20
        for owner, items in by_owner.values():
            items.sort(key=lambda it: -it[0])
            run = []
            for it in items:
                if run and (run[-1][0] != it[1] or (cap is not None and (run[0][1] - it[0]) * owner.itemsize > cap)):
                    buckets.append(self._bucket(owner, run))
                    run = []
                run.append(it)
            buckets.append(self._bucket(owner, run))
        self.__dict__["_buckets"] = buckets
        self.__dict__["_bucket_of"] = {id(p): (b, v) for b in buckets for p, v in zip(b.params, b.views)}
        self.__dict__["_layout"] = [grad_sink_of(p) for p in self._params]

    @staticmethod
    def _bucket(owner, run):
        lo, hi = run[-1][0], run[0][1]
        return _Bucket([it[2] for it in run], [it[3] for it in run], owner[lo:hi])

    def _begin(self) -> None:
        layout = self._layout
        if layout is None or any(grad_sink_of(p) is not v for p, v in zip(self._params, layout)):
            self._plan()  # first backward, or the optimizer re-packed its buffers
        for b in self._buckets:
            b.left = len(b.params)
        self.__dict__["_pending"] = []
        self.__dict__["_next"] = 0

    def _launch_ready(self) -> None:
        """Start the ready buckets in plan order: MPI and NCCL need every rank to issue its
        collectives in one order, whatever order this rank's backward finished them in."""
        buckets, i = self._buckets, self._next
        while i < len(buckets) and buckets[i].left == 0:
            self._start(buckets[i])
            i += 1
        self.__dict__["_next"] = i

    def _start(self, b: _Bucket) -> None:
        group = self._group
        if b.array is None:
            p = b.params[0]
            if not p.grad.data.flags.c_contiguous:
                p.grad = Tensor(p.grad.data.copy())
            arr = p.grad.data
        else:
            arr = b.array
        what = f"DistributedDataParallel: gradient average of {len(b.params)} parameter(s) ({arr.size} values)"
        self._pending.append((group.start_all_reduce(arr, what, True), what))

    # ------------------------------------------------------------------ backward hooks
    def _on_grad(self, p) -> None:
        if not self._sync:
            return
        if self._pending is None:
            self._begin()
            queue_callback(self._finish)
        b, view = self._bucket_of[id(p)]
        if view is not None:
            if p.grad.data is not view:  # a gradient not written into the buffer: move it there
                view[...] = p.grad.data
                p.grad = Tensor(view)
        b.left -= 1
        if b.left == 0:
            self._launch_ready()

    def _finish(self) -> None:
        """End of backward: buckets with a parameter that got no gradient here are completed with
        zeros for it, then every collective is waited for."""
        try:
            for b in self._buckets:
                if b.left > 0:
                    for p, view in zip(b.params, b.views):
                        if p.grad is None:
                            if view is None:
                                p.grad = Tensor(get_array_module(p.data).zeros_like(p.data))
                            else:
                                view[...] = 0
                                p.grad = Tensor(view)
                    b.left = 0
            self._launch_ready()
            for pending, what in self._pending:
                self._group.wait(pending, what)
        finally:
            self.__dict__["_pending"] = None

    def sync_gradients(self) -> None:
        """Take part in the gradient average without a backward pass, contributing zeros: for a
        rank whose share of a (short) global batch is empty."""
        if self._pending is not None:
            raise RuntimeError("sync_gradients() during a backward pass")
        self._begin()
        self._finish()

    def extra_repr(self) -> str:
        return f"bucket_cap_mb={self.bucket_cap_mb}"
