"""Helpers over a model's parameters, with torch.nn.utils' names.

    vec = gn.nn.utils.parameters_to_vector(model.parameters())     # one flat copy of all values
    gn.nn.utils.vector_to_parameters(vec + 0.1 * direction, model.parameters())

Unlike PyTorch's `vector_to_parameters`, which rebinds each `param.data`, gpunn's copies the
values IN PLACE: an optimizer keeps its parameters as views into flat buffers, and in-place
writes keep those views (and the optimizer) valid.
"""
from __future__ import annotations

import numpy as np

from gpunn.autograd.tensor import Tensor, no_grad
from gpunn.backend import is_array

__all__ = ["parameters_to_vector", "vector_to_parameters"]


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
