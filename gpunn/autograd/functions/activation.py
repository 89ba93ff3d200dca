"""Activations as graph nodes: elementwise (through the kernels' activation family), softmax
and log_softmax along an axis.

Softmax:     y = exp(x - lse(x));  dx = y * (g - sum(g * y))
LogSoftmax:  y = x - lse(x);       dx = g - exp(y) * sum(g)
lse(x) = m + log(sum(exp(x - m))), m = max(x): finite for any finite logits.
"""
from __future__ import annotations

from gpunn.autograd.tensor import Function
from gpunn.backend import get_array_module
from gpunn.kernels import needs_preactivation, ops_for


class Activation(Function):
    kernel_replay = True  # one kernel each way

    def forward(self, z, code, negative_slope=0.01):
        self.code, self.slope = code, negative_slope
        y = ops_for(z).activation_forward(z, code, negative_slope)
        self.z = z if needs_preactivation(code, negative_slope) else None
        self.y = y
        return y

    def backward(self, g):
        return (ops_for(g).activation_backward(g, self.z, self.y, self.code, self.slope),)


def _log_softmax(x, axis):
    xp = get_array_module(x)
    if x.ndim == 0:  # one element: its log-probability is 0
        return xp.zeros_like(x)
    if x.shape[axis] == 0:
        return x.copy()
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


class Softmax(Function):
    saves_inputs = False

    def forward(self, x, axis=-1):
        self.axis = axis
        self.y = get_array_module(x).exp(_log_softmax(x, axis))
        return self.y

    def backward(self, g):
        y = self.y
        return (y * (g - (g * y).sum(axis=self.axis, keepdims=True)),)


class LogSoftmax(Function):
    saves_inputs = False

    def forward(self, x, axis=-1):
        self.axis = axis
        self.y = _log_softmax(x, axis)
        return self.y

    def backward(self, g):
        return (g - get_array_module(g).exp(self.y) * g.sum(axis=self.axis, keepdims=True),)
