"""Helpers over a model's parameters, with torch.nn.utils' names.

    vec = gn.nn.utils.parameters_to_vector(model.parameters())     # one flat copy of all values
    gn.nn.utils.vector_to_parameters(vec + 0.1 * direction, model.parameters())
    gn.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)    # after backward, before step

Unlike PyTorch's `vector_to_parameters`, which rebinds each `param.data`, gpunn's copies the
values IN PLACE: an optimizer keeps its parameters as views into flat buffers, and in-place
writes keep those views (and the optimizer) valid.
"""
from __future__ import annotations

import numpy as np

from gpunn.autograd.checks import check_number
from gpunn.autograd.tensor import Tensor, no_grad
from gpunn.backend import is_array

__all__ = ["clip_grad_norm_", "clip_grad_value_", "parameters_to_vector", "vector_to_parameters"]


def _param_list(parameters, fn: str) -> list:
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    params = list(parameters)
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{fn}: expected Tensors (e.g. model.parameters()), but item {i} is a {type(p).__name__}")
    return params


def _check_one_device(params, fn: str) -> None:
    if params:
        dev = params[0].device
        for i, p in enumerate(params[1:], 1):
            if p.device != dev:
                raise ValueError(f"{fn}: the parameters are on several devices (item 0 on {dev}, item {i} on "
                                 f"{p.device}); move the model with model.to(device) first")


def parameters_to_vector(parameters) -> Tensor:
    """A new 1-D Tensor holding every parameter's values in order (flattened, C order), on their
    device and in their dtype. It is a copy: changing it does not change the parameters."""
    params = _param_list(parameters, "parameters_to_vector")
    if not params:
        raise ValueError("parameters_to_vector: got no parameters")
    _check_one_device(params, "parameters_to_vector")
    dtypes = {p.dtype for p in params}
    if len(dtypes) > 1:
        raise TypeError(f"parameters_to_vector: the parameters have several dtypes {sorted(map(str, dtypes))}; "
                        "cast the model with model.to(dtype) first")
    xp = params[0].device.xp
    return Tensor(xp.concatenate([p.data.reshape(-1) for p in params]))


def vector_to_parameters(vec, parameters) -> None:
    """Copy consecutive slices of the 1-D `vec` (a Tensor, NumPy or CuPy array) into the parameters,
    in place, in order; the inverse of parameters_to_vector. Values are cast to each parameter's
    dtype and moved to its device. Raises ValueError unless vec has exactly as many elements as
    the parameters together."""
    params = _param_list(parameters, "vector_to_parameters")
    data = vec.data if isinstance(vec, Tensor) else vec
    if not is_array(data):
        raise TypeError(f"vector_to_parameters: vec must be a Tensor or an array, got {type(vec).__name__}")
    if data.ndim != 1:
        raise ValueError(f"vector_to_parameters: vec must be 1-D, got shape {tuple(data.shape)}")
    total = sum(int(p.data.size) for p in params)
    if data.shape[0] != total:
        raise ValueError(f"vector_to_parameters: vec has {data.shape[0]} elements but the parameters hold {total}")
    offset = 0
    with no_grad():
        for p in params:
            n = int(p.data.size)
            piece = data[offset:offset + n].reshape(p.shape)
            p_on_gpu = not isinstance(p.data, np.ndarray)
            if p_on_gpu != (not isinstance(piece, np.ndarray)):
                piece = p.device.xp.asarray(piece) if p_on_gpu else piece.get()
            p.data[...] = piece
            offset += n


def _grads(parameters, fn: str) -> list:
    """The .grad Tensors of the parameters that have one (all on one device)."""
    grads = [p.grad for p in _param_list(parameters, fn) if p.grad is not None]
    _check_one_device(grads, fn)
    return grads


def _address(a) -> int:
    return a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr


def _one_buffer(grads):
    """The 1-D C-contiguous array that the gradients' arrays tile exactly, each a distinct view of
    it (an optimizer's flat gradient buffer when every parameter it holds has a gradient), or None.
    Clipping it scales or clamps every gradient in one pass instead of one per parameter."""
    base = grads[0].data.base
    if base is None or base.ndim != 1 or not base.flags.c_contiguous:
        return None
    if any(g.data.base is not base for g in grads) or sum(int(g.data.size) for g in grads) != base.size:
        return None
    if len({_address(g.data) for g in grads}) != len(grads):
        return None
    return base


def _vector_norm(xp, a, p: float):
    """The p-norm of the flattened array a as a 0-d array (p = inf: max |a|, -inf: min |a|, 0: the
    number of non-zeros), as torch.linalg.vector_norm."""
    a = a.reshape(-1)
    if a.size == 0:
        return xp.zeros((), dtype=a.dtype)
    if p == 2:
        return xp.sqrt((a * a).sum())
    if p == float("inf"):
        return xp.abs(a).max()
    if p == -float("inf"):
        return xp.abs(a).min()
    if p == 0:
        return (a != 0).sum().astype(a.dtype)
    if p == 1:
        return xp.abs(a).sum()
    return (xp.abs(a) ** a.dtype.type(p)).sum() ** a.dtype.type(1 / p)


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach=None) -> Tensor:
    """Scale every gradient by min(1, max_norm / (total + 1e-6)) in place, where total is the
    norm_type-norm of the per-parameter gradient norms (the norm of all gradients as one vector);
    parameters without a gradient are skipped. Returns total as a 0-d Tensor (0 when no parameter
    has a gradient), as torch.nn.utils.clip_grad_norm_.

    The scaling writes into each `.grad`'s own array, which is the optimizer's flat gradient buffer
    when an optimizer holds the parameters, so its next step() sees the clipped values. The norm
    stays on the gradients' device (no host synchronisation unless error_if_nonfinite). `foreach`
    is accepted for PyTorch compatibility and changes nothing. Inside a function given to gn.compile
    the in-place scaling makes that function run eagerly (with a CompileWarning)."""
    grads = _grads(parameters, "clip_grad_norm_")
    max_norm = check_number("clip_grad_norm_", "max_norm", max_norm)
    if isinstance(norm_type, str) and norm_type.lower() in ("inf", "-inf"):  # PyTorch takes "inf" too
        norm_type = float(norm_type)
    norm_type = check_number("clip_grad_norm_", "norm_type", norm_type)
    if not grads:
        return Tensor(np.zeros((), dtype=np.float32))
    xp = grads[0].device.xp
    flat = _one_buffer(grads)
    if flat is not None and norm_type != 0:
        # one pass over the optimizer's flat gradient buffer: the same norm as the norm of the
        # per-parameter norms, except for p = 0, where that counts parameters, not elements
        total = _vector_norm(xp, flat, norm_type)
        dtype = total.dtype
    else:
        norms = [_vector_norm(xp, g.data, norm_type) for g in grads]
        dtype = np.result_type(*[n.dtype for n in norms])
        total = _vector_norm(xp, xp.stack([n.astype(dtype) for n in norms]), norm_type)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so "
                           "it cannot be clipped. To disable this error and scale the gradients by the non-finite "
                           "norm anyway, set `error_if_nonfinite=False`")
    coef = xp.minimum(dtype.type(max_norm) / (total + dtype.type(1e-6)), dtype.type(1))
    with no_grad():  # through Tensor.mul_, so gn.compile sees the in-place write (and falls back)
        for g in _write_targets(grads, flat):
            g.mul_(Tensor(xp.asarray(coef, dtype=g.dtype)))
    return Tensor(xp.asarray(total))


def _write_targets(grads, flat) -> list:
    """The tensors a clip writes into: the flat buffer as one tensor when the gradients tile it
    (one pass), else each gradient."""
    return grads if flat is None else [Tensor(flat)]


def clip_grad_value_(parameters, clip_value: float, foreach=None) -> None:
    """Clamp every gradient into [-clip_value, clip_value] in place (into the optimizer's flat
    gradient buffer when there is one), as torch.nn.utils.clip_grad_value_. `foreach` is accepted
    for PyTorch compatibility and changes nothing."""
    clip_value = check_number("clip_grad_value_", "clip_value", clip_value)
    grads = _grads(parameters, "clip_grad_value_")
    with no_grad():  # through Tensor.copy_, so gn.compile sees the in-place write (and falls back)
        for g in _write_targets(grads, _one_buffer(grads) if grads else None):
            v = g.dtype.type(clip_value)
            g.copy_(g.device.xp.clip(g.data, -v, v))

