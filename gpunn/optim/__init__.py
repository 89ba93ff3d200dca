"""Optimizers and learning-rate schedules (PyTorch's names and formulas).

Each optimizer keeps a param group's parameters, gradients and state in flat buffers and steps
them with one fused kernel call (gpunn/kernels/optimizers.py); see `optimizer.py`.
"""
from gpunn.optim import lr_scheduler
from gpunn.optim.adagrad import Adagrad
from gpunn.optim.adam import Adam, AdamW
from gpunn.optim.optimizer import Optimizer
from gpunn.optim.rmsprop import RMSprop
from gpunn.optim.sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "lr_scheduler"]
