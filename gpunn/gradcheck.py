"""Check analytic gradients against central finite differences (float64).

For f with output y and a fixed random cotangent v, compare d<v, f(x)>/dx from `backward`
with (<v, f(x + eps e_i)> - <v, f(x - eps e_i)>) / (2 eps) for every element i of every input
that requires grad. Passes when |analytic - numeric| <= atol + rtol |numeric| everywhere
(PyTorch's gradcheck defaults: eps 1e-6, atol 1e-5, rtol 1e-3).
"""
from __future__ import annotations

import numpy as np

from gpunn.autograd.tensor import Tensor, no_grad
from gpunn.backend import get_array_module


class GradcheckError(AssertionError):
    """Analytic and numeric gradients disagree; the message names the input and element."""


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3, seed: int = 0,
              raise_exception: bool = True) -> bool:
    """Return True if every gradient of `fn(*inputs)` matches finite differences.

    inputs: Tensors (float64 ones that require grad are checked; others are held fixed).
    """
    inputs = tuple(inputs)
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} is {inputs[i].dtype}; finite differences need float64")
    out = fn(*inputs)
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(out.shape)
    xp = get_array_module(out.data)
    v = xp.asarray(v, dtype=out.dtype)
    for i in checked:
        inputs[i].grad = None
    out.backward(v)

    def objective():
        with no_grad():
            return float((fn(*inputs).data * v).sum())

    for i in checked:
        t = inputs[i]
        analytic = t.grad.numpy() if t.grad is not None else np.zeros(t.shape)
        numeric = np.zeros(t.shape)
        data = t.data  # perturbed in place element by element (any layout, also non-contiguous), restored exactly
        for k in np.ndindex(*t.shape):
            orig = data[k].item()
            data[k] = orig + eps
            plus = objective()
            data[k] = orig - eps
            minus = objective()
            data[k] = orig
            numeric[k] = (plus - minus) / (2 * eps)
        err = np.abs(analytic - numeric)
        bad = err > atol + rtol * np.abs(numeric)
        if bad.any():
            if not raise_exception:
                return False
            k = tuple(int(j) for j in np.unravel_index(int(np.argmax(bad)), t.shape)) if t.shape else ()
            raise GradcheckError(
                f"gradcheck: input {i} (shape {t.shape}) element {k}: analytic {analytic[k]:.8g} vs "
                f"numeric {numeric[k]:.8g}; max abs error {err.max():.3g} (atol {atol}, rtol {rtol})")
    return True
