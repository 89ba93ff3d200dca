"""Reverse-mode autodiff: Tensor, Function, the tape, grad modes."""
from gpunn.autograd.grad_sink import grad_sink_of, register_grad_sink
from gpunn.autograd.tensor import Function, Parameter, Tensor, enable_grad, is_grad_enabled, no_grad, tensor

__all__ = ["Function", "Parameter", "Tensor", "enable_grad", "grad_sink_of", "is_grad_enabled", "no_grad",
           "register_grad_sink", "tensor"]
