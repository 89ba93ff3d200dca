"""Gradient sinks: storage for a leaf's gradient, chosen by whoever owns the leaf.

`register_grad_sink(t, array)` gives the leaf tensor `t` an array shaped, typed and placed like
`t.data`. During `backward()` the first gradient that reaches `t` (while `t.grad` is None) is
stored in that array and `t.grad` becomes a Tensor over it: nothing is copied aside. Later
gradients (a second backward without zero_grad) are added into `.grad` as they are without a
sink. `grad_sink_of(t)` returns the sink, `register_grad_sink(t, None)` removes it. A sink that
no longer fits `t.data` (rebound to another shape, dtype or device) is ignored: `.grad` is then
a fresh array.

A gradient reaches the sink in one of two ways:
- a backward that can write its result anywhere asks `Function.grad_sink(i)` for input i's sink
  and writes there (the fused dense backward hands it to its kernel as the dW/db output), then
  returns that very array; a pass hands each sink out at most once, so two contributions to one
  leaf are never written into one array;
- otherwise the engine copies the gradient into the sink (`receive`).

gpunn's optimizers register views of one flat gradient buffer per param group (so a step reads
every gradient from one array); the engine needs to know only what is written here.
"""
from __future__ import annotations

import contextvars

import numpy as np

__all__ = ["grad_sink_of", "register_grad_sink"]

# Leaves whose sink a node has claimed during the current backward pass; None outside one.
_claimed = contextvars.ContextVar("gpunn_claimed_grad_sinks", default=None)


def register_grad_sink(tensor, sink) -> None:
    """Store `tensor`'s gradients in `sink` (an array like `tensor.data`), or stop (`sink=None`)."""
    if sink is not None and not (hasattr(sink, "shape") and hasattr(sink, "dtype")):
        raise TypeError(f"a gradient sink must be a NumPy or CuPy array or None, got {type(sink).__name__}")
    tensor._grad_sink = sink


def grad_sink_of(tensor):
    """The array registered as `tensor`'s gradient sink, or None."""
    return tensor._grad_sink


def fits(sink, a) -> bool:
    """Whether `sink` (or None) can hold a gradient like `a`: same shape, dtype, array type and device."""
    if sink is None or sink.shape != a.shape or sink.dtype != a.dtype:
        return False
    kind = type(sink)
    return kind is type(a) and (kind is np.ndarray or sink.device.id == a.device.id)


def begin_pass():
    """Start one backward walk: within it each sink is handed out once (`claim`). Returns the
    token that `end_pass` takes (a pair of calls, not a context manager: this runs every step)."""
    return _claimed.set(set())


def end_pass(token) -> None:
    _claimed.reset(token)


def claim(t):
    """The sink a backward may write leaf `t`'s gradient into, or None: `t` is a leaf with no .grad
    yet, its sink fits, and no node has claimed it in this pass."""
    claimed = _claimed.get()
    if claimed is None:
        return None
    sink = t._grad_sink
    if t._node is not None or t.grad is not None or id(t) in claimed or not fits(sink, t.data):
        return None
    claimed.add(id(t))
    return sink


def written_in_place(t, g) -> bool:
    """Whether `g` is leaf `t`'s first gradient, already written into its sink by a backward."""
    return t.grad is None and g is t._grad_sink


def receive(t, g):
    """Leaf `t`'s first gradient `g` in its sink (copied there unless already written in place), or
    None when `t` has no sink that fits `g`."""
    sink = t._grad_sink
    if g is sink:
        return sink
    if not fits(sink, g):
        return None
    sink[...] = g
    return sink
