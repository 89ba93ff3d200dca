"""Neural-network modules with torch.nn's names, semantics and state_dict layouts.

    import gpunn as gn
    model = gn.nn.Sequential(gn.nn.Linear(4, 16), gn.nn.ReLU(), gn.nn.Linear(16, 3))
    model.load_state_dict(torch_model.state_dict())   # torch tensors accepted; torch not imported
    loss = gn.nn.CrossEntropyLoss()(model(x), y)

`gn.nn.functional` is `gpunn.functional`; `gn.nn.init` holds the initialisers; `gn.nn.utils` has
parameters_to_vector / vector_to_parameters
and clip_grad_norm_ / clip_grad_value_.
"""
import sys as _sys

from gpunn import functional
from gpunn.autograd.tensor import Parameter
from gpunn.nn import init, parallel, utils
from gpunn.nn.activation import GELU, Flatten, Identity, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from gpunn.nn.container import ModuleDict, ModuleList, Sequential
from gpunn.nn.linear import Dense, Linear
from gpunn.nn.loss import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, L1Loss, MSELoss, NLLLoss, SmoothL1Loss
from gpunn.nn.module import IncompatibleKeys, Module, StateDictError
from gpunn.nn.normalization import BatchNorm1d, Dropout, LayerNorm
from gpunn.nn.perceptron import Perceptron


def __getattr__(name):  # the module classes of activations and losses registered after import
    from gpunn.nn import activation, loss

    try:
        return getattr(activation, name)
    except AttributeError:
        return getattr(loss, name)


# `import gpunn.nn.functional as F` works as with torch.nn.functional.
_sys.modules.setdefault(__name__ + ".functional", functional)

__all__ = ["Module", "Parameter", "Linear", "Dense", "ReLU", "LeakyReLU", "GELU", "Sigmoid", "Tanh", "Softmax",
           "LogSoftmax", "Identity", "Flatten", "Dropout", "LayerNorm", "BatchNorm1d", "Sequential", "ModuleList",
           "ModuleDict", "Perceptron", "MSELoss", "L1Loss", "HuberLoss", "SmoothL1Loss", "CrossEntropyLoss", "NLLLoss",
           "BCELoss", "BCEWithLogitsLoss", "StateDictError", "IncompatibleKeys", "init", "utils", "functional", "parallel"]
