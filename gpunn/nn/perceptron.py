"""Rosenblatt's perceptron: one unit with a step activation, trained by the perceptron rule.

    yhat = 1 if w . x + b > 0 else 0
    w += lr * (y - yhat) * x;   b += lr * (y - yhat)        (one sample at a time)

It converges on linearly separable data (AND, OR) and never on XOR. The parameters have
nn.Linear(in_features, 1)'s layout (weight (1, in_features), bias (1,)) and start at zero; they do
not require grad: the step has no useful gradient, the rule replaces it.
"""
from __future__ import annotations

import numpy as np

from gpunn import functional
from gpunn.autograd.tensor import Parameter, Tensor, no_grad
from gpunn.backend import generator as default_generator
from gpunn.backend import get_array_module, is_cupy_array
from gpunn.nn.linear import _check_features, _empty_parameter
from gpunn.nn.module import Module


def _host(a):
    if isinstance(a, Tensor):
        a = a.data
    if is_cupy_array(a):
        a = a.get()
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a)


class Perceptron(Module):
    """A single threshold unit. `fit(X, y)` trains it; `predict(X)` and `forward(X)` give 0/1 labels."""

    def __init__(self, in_features: int, dtype=np.float32, device=None):
        super().__init__()
        _check_features("Perceptron", in_features=in_features)
        self.in_features = int(in_features)
        self.weight = Parameter(_empty_parameter((1, self.in_features), dtype, device), requires_grad=False)
        self.bias = Parameter(_empty_parameter((1,), dtype, device), requires_grad=False)

    def _where(self) -> str:
        return f"Perceptron {self._path!r}" if self._path else "Perceptron"

    def _inputs(self, X) -> np.ndarray:
        X = _host(X)
        if X.dtype.kind not in "biuf":
            raise TypeError(f"{self._where()}: X must be numeric, got dtype {X.dtype}")
        if X.ndim != 2 or X.shape[1] != self.in_features:
            raise ValueError(f"{self._where()}: expects X of shape (n_samples, {self.in_features}), got {X.shape}")
        return X.astype(np.float64)

    def forward(self, x):
        """0/1 predictions (n,) as a Tensor of the parameters' dtype; no graph is recorded."""
        with no_grad():
            x = x if isinstance(x, Tensor) else Tensor(_host(x).astype(self.weight.dtype, copy=False))
            z = functional.dense(x, self.weight, self.bias, None, name=self._layer_name)
            return Tensor((z.data[..., 0] > 0).astype(self.weight.dtype))

    def decision_function(self, X) -> np.ndarray:
        """w . x + b for each row (float64, NumPy)."""
        X = self._inputs(X)
        return X @ _host(self.weight)[0].astype(np.float64) + float(_host(self.bias)[0])

    def predict(self, X) -> np.ndarray:
        """0/1 labels (int64, NumPy) for the rows of X."""
        return (self.decision_function(X) > 0).astype(np.int64)

    def fit(self, X, y, epochs: int = 100, lr: float = 1.0, shuffle: bool = True, seed=None,
            stop_when_converged: bool = True) -> list:
        """Train with the perceptron rule; returns the number of mistakes made in each epoch.

        X (n, in_features); y (n,) of 0/1 labels. Each epoch visits every sample once (in a fresh
        random order when shuffle, drawn from `seed` or else gpunn's seeded generator). With
        stop_when_converged, training stops after the first epoch without mistakes (so the list
        may be shorter than `epochs`). Starts from the current weights.
        """
        X = self._inputs(X)
        y = _host(y)
        if y.shape != (X.shape[0],):
            raise ValueError(f"{self._where()}: y must have shape ({X.shape[0]},) to match X {X.shape}, got {y.shape}")
        if y.size and not np.all((y == 0) | (y == 1)):
            raise ValueError(f"{self._where()}: y must hold 0/1 labels, got values {np.unique(y)[:10].tolist()}")
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"{self._where()}: epochs must be a non-negative integer, got {epochs!r}")
        if not lr > 0:
            raise ValueError(f"{self._where()}: lr must be > 0, got {lr!r}")
        rng = np.random.default_rng(seed) if seed is not None else default_generator()
        y = y.astype(np.float64)
        w = _host(self.weight)[0].astype(np.float64)
        b = float(_host(self.bias)[0])
        rows = [X[i] for i in range(X.shape[0])]
        order = np.arange(X.shape[0])
        history = []
        for _ in range(int(epochs)):
            if shuffle:
                order = rng.permutation(X.shape[0])
            mistakes = 0
            for i in order:
                xi = rows[i]
                err = y[i] - (1.0 if float(xi @ w) + b > 0.0 else 0.0)
                if err != 0.0:
                    mistakes += 1
                    w += (lr * err) * xi
                    b += lr * err
            history.append(mistakes)
            if stop_when_converged and mistakes == 0:
                break
        with no_grad():
            xp = get_array_module(self.weight.data)
            self.weight.data[...] = xp.asarray(w.reshape(1, -1), dtype=self.weight.dtype)
            self.bias.data[...] = xp.asarray([b], dtype=self.bias.dtype)
        return history

    def score(self, X, y) -> float:
        """Accuracy of predict(X) against the 0/1 labels y."""
        y = _host(y)
        return float(np.mean(self.predict(X) == y)) if y.size else float("nan")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}"
