"""Reverse-mode autodiff: Tensor, Function, the tape, grad modes."""
from gpunn.autograd.grad_sink import grad_sink_of, register_grad_sink
from gpunn.autograd.tensor import (Function, Parameter, Tensor, enable_grad, inference_mode, is_grad_enabled,
                                   is_inference_mode_enabled, no_grad, tensor)

__all__ = ["Function", "Parameter", "Tensor", "enable_grad", "grad_sink_of", "inference_mode", "is_grad_enabled",
           "is_inference_mode_enabled", "no_grad", "register_grad_sink", "tensor"]
