"""gpunn: a neural-network library whose hot paths are its own fused kernels.

    import gpunn as gn
    model = gn.nn.Sequential(gn.nn.Linear(64, 128), gn.nn.ReLU(), gn.nn.Linear(128, 10))
    opt = gn.optim.Adam(model.parameters(), lr=1e-3)
    loss = gn.nn.CrossEntropyLoss()(model(gn.tensor(X)), gn.tensor(y))
    opt.zero_grad(); loss.backward(); opt.step()

Importing gpunn imports neither CuPy nor any compiled kernel; submodules load on first use.
"""
import builtins as _builtins
import importlib

from gpunn.backend import Device, DeviceError, device, gpu_status, manual_seed
from gpunn.autograd import (Parameter, Tensor, enable_grad, inference_mode, is_grad_enabled, is_inference_mode_enabled,
                            no_grad, tensor)
from gpunn.autograd.creation import *  # noqa: F401,F403  (zeros, ones, ..., the dtype names)
from gpunn.autograd.creation import __all__ as _creation_names
from gpunn.autograd.torch_functions import *  # noqa: F401,F403  (cat, stack, where, exp, ...)
from gpunn.autograd.torch_functions import __all__ as _function_names
from gpunn import functional
from gpunn.gradcheck import GradcheckError, gradcheck

__version__ = "0.1.0"

_LAZY_MODULES = {"nn", "optim", "data", "datasets", "train", "checkpoint", "kernels", "backend", "cli",
                 "profiler", "utils", "distributed"}
# gn.compile is lazy too, and not in __all__: `from gpunn import *` must not shadow Python's compile
_LAZY_ATTRS = {"compile": "gpunn.compiler", "save": "gpunn.checkpoint", "load": "gpunn.checkpoint",
               "CheckpointError": "gpunn.checkpoint"}


def __getattr__(name):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"gpunn.{name}")
    if name in _LAZY_ATTRS:
        return getattr(importlib.import_module(_LAZY_ATTRS[name]), name)
    raise AttributeError(f"module 'gpunn' has no attribute {name!r}")


def __dir__():
    """The names tab completion offers: what is loaded and what loads on first use (nn, optim, save, ...)."""
    return sorted(set(globals()) | _LAZY_MODULES | set(_LAZY_ATTRS))


__all__ = ["Device", "DeviceError", "device", "gpu_status", "manual_seed", "Parameter", "Tensor",
           "enable_grad", "inference_mode", "is_grad_enabled", "is_inference_mode_enabled", "no_grad", "tensor",
           "functional", "gradcheck", "GradcheckError", "save", "load", "nn", "optim", "data", "datasets", "train", "profiler", "utils",
           "distributed",
           "__version__",
           # `from gpunn import *` must not shadow Python's own bool, int, float, abs, max, min, sum
           *[n for n in (*_creation_names, *_function_names) if not hasattr(_builtins, n)]]
