"""Functional API (torch.nn.functional's names): activations, the fused dense layer, dropout,
layer and batch normalisation, losses.

Every function checks its inputs first (dtype, device, shapes, label range) and raises an error
that names the op, what it expected and what it got. Losses never broadcast prediction against
target: a shape mismatch is an error, not a silently wrong average.
"""
from __future__ import annotations

import numpy as np

from gpunn.autograd import functions as F
from gpunn.autograd.checks import check_float, check_number, check_same_device, check_same_dtype
from gpunn.autograd.tensor import Tensor
from gpunn.backend import FLOAT_DTYPES, get_array_module, is_array
from gpunn.kernels import ACTIVATIONS, activation_code
from gpunn.kernels import registry as _registry

REDUCTIONS = ("mean", "sum", "none")


def _tensor(x, op: str, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if is_array(x):
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{op}: {name} must be numeric, got dtype {x.dtype}")
        return Tensor(x)
    raise TypeError(f"{op}: {name} must be a Tensor or an array, got {type(x).__name__}")


def _check_reduction(op, reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


# ----------------------------------------------------------------------------- activations

def activation(x, name: str, negative_slope: float = 0.01):
    """Any registered activation by name (gpunn/kernels/registry.py), elementwise."""
    return F.activation(x, name, negative_slope)


def leaky_relu(x, negative_slope: float = 0.01):
    """x if x > 0 else negative_slope * x."""
    return F.activation(x, "leaky_relu", negative_slope)


def gelu(x, approximate: str = "none"):
    """x * Phi(x) (approximate="none", exact erf) or its tanh approximation (approximate="tanh")."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return F.activation(x, "gelu" if approximate == "none" else "gelu_tanh")


def _elementwise(member):
    """functional.<name>(x) for a parameterless registry activation (relu, sigmoid, tanh, ...)."""
    name = member.name

    def fn(x):
        return F.activation(x, name)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = member.doc
    return fn


for _m in _registry.ACTIVATIONS.values():
    if _m.module and _registry.is_builtin(_m):  # later registrations: through __getattr__
        globals()[_m.name] = _elementwise(_m)


def __getattr__(name):
    """The functions of activations registered after import (registry.register_activation)."""
    m = _registry.ACTIVATIONS.get(name)
    if m is not None and m.module:
        return _elementwise(m)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_dim(op, x, dim):
    n = max(x.ndim, 1)  # a 0-d tensor accepts dim 0 and -1, as in PyTorch
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)) or not -n <= dim < n:
        raise ValueError(f"{op}: dim must be an int in [{-n}, {n - 1}] for a tensor of shape {x.shape}, got {dim!r}")
    return int(dim)


def softmax(x, dim: int = -1):
    """exp(x - logsumexp(x)) along dim."""
    x = _tensor(x, "softmax", "input")
    check_float("softmax", x.data)
    return F.Softmax.apply(x, axis=_check_dim("softmax", x, dim))


def log_softmax(x, dim: int = -1):
    """x - logsumexp(x) along dim."""
    x = _tensor(x, "log_softmax", "input")
    check_float("log_softmax", x.data)
    return F.LogSoftmax.apply(x, axis=_check_dim("log_softmax", x, dim))


def gather(x, dim: int, index):
    """out[i][j] = x[i][index[i][j]] for dim=1 (torch.gather)."""
    x = _tensor(x, "gather", "input")
    idx = index.data if isinstance(index, Tensor) else index
    if not hasattr(idx, "dtype"):
        idx = np.asarray(idx)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"gather: index must be an integer array, got dtype {idx.dtype}")
    if idx.ndim != x.ndim:
        raise ValueError(f"gather: index has {idx.ndim} dims but input has {x.ndim}")
    return F.Gather.apply(x, index=idx, axis=dim)


# ----------------------------------------------------------------------------- dense


def _dense_inputs_valid(x, W, b) -> bool:
    """The common case, decided with a few attribute reads: CPU tensors of one float dtype, a 2-D
    input of the weight's width and a bias of the right shape. Everything else takes the full
    checks below, which say what is wrong and name the layer."""
    if type(x) is not Tensor or not isinstance(W, Tensor):
        return False
    xd, Wd = x.data, W.data
    dt = Wd.dtype
    if (type(xd) is not np.ndarray or type(Wd) is not np.ndarray or xd.dtype != dt or dt not in FLOAT_DTYPES
            or xd.ndim != 2 or Wd.ndim != 2 or xd.shape[1] != Wd.shape[1]):
        return False
    if b is None:
        return True
    if not isinstance(b, Tensor):
        return False
    bd = b.data
    return type(bd) is np.ndarray and bd.dtype == dt and bd.shape == (Wd.shape[0],)


def dense(x, weight, bias=None, activation="relu", negative_slope: float = 0.01, name: str | None = None):
    """y = activation(x @ weight.T + bias), one fused graph node.

    x (..., in_features); weight (out_features, in_features); bias (out_features,) or None;
    activation one of: identity (or None), relu, leaky_relu, gelu, gelu_tanh, sigmoid, tanh.
    `name` (the layer's path in its model) is quoted in error messages and labels the layer in profiles.
    """
    code = activation_code(activation)
    if _dense_inputs_valid(x, weight, bias):
        if bias is None:
            return F.Dense.apply(x, weight, code=code, negative_slope=negative_slope, layer=name)
        return F.Dense.apply(x, weight, bias, code=code, negative_slope=negative_slope, layer=name)
    where = f"dense layer {name!r}" if name is not None else "dense"
    x = _tensor(x, where, "input")
    W = _tensor(weight, where, "weight")
    if bias is not None:
        bias = _tensor(bias, where, "bias")
    arrays = (x.data, W.data) if bias is None else (x.data, W.data, bias.data)
    check_same_device(where, *arrays)
    check_float(where, x.data, "input")
    check_same_dtype(where, *arrays, names=("input", "weight", "bias"))
    if W.ndim != 2:
        raise ValueError(f"{where}: weight must be 2-D (out_features, in_features), got shape {W.shape}")
    if x.ndim < 1 or x.shape[-1] != W.shape[1]:
        raise ValueError(f"{where}: expects input of shape (batch, {W.shape[1]}) but got {x.shape} "
                         f"(weight shape {W.shape})")
    if bias is not None and bias.shape != (W.shape[0],):
        raise ValueError(f"{where}: bias must have shape ({W.shape[0]},), got {bias.shape}")
    if bias is None:
        return F.Dense.apply(x, W, code=code, negative_slope=negative_slope, layer=name)
    return F.Dense.apply(x, W, bias, code=code, negative_slope=negative_slope, layer=name)


def linear(x, weight, bias=None):
    """y = x @ weight.T + bias."""
    return dense(x, weight, bias, activation=None)


# ----------------------------------------------------------------------------- dropout, normalisation

def layer_label(op: str, name) -> str:
    """How errors name an op: "batch_norm layer '1'" for a layer at path '1' of its model, else "batch_norm"."""
    return f"{op} layer {name!r}" if name is not None else op


def check_dropout_p(p, where: str = "dropout") -> float:
    """p as a float in [0, 1] (PyTorch's message otherwise)."""
    p = check_number(where, "p", p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{where}: dropout probability has to be between 0 and 1, but got {p}")
    return p


def dropout(input, p: float = 0.5, training: bool = True, inplace: bool = False, *, name: str | None = None):
    """Inverted dropout: each element is zeroed with probability p, the others scaled by 1/(1-p), so
    the expectation is unchanged; backward multiplies by the same mask. training=False returns the
    input itself. The mask comes from gpunn's seeded generator for the input's device (gn.manual_seed).

    inplace=True writes the result into input where no graph is recorded (grad mode off, or an
    input that needs no gradient); inside a recorded graph the result is a new tensor with the same
    values, because gpunn's tape records no in-place operations.
    """
    where = layer_label("dropout", name)
    p = check_dropout_p(p, where)
    x = _tensor(input, where, "input")
    check_float(where, x.data)
    if not training:
        return x
    y = F.Dropout.apply(x, p=p, layer=name)
    if inplace and not y.requires_grad:
        return x.copy_(y)
    return y


def _params(where, x, shape, **named):
    """The tensors given among `named` (weight, bias, running statistics): on x's device, of x's
    dtype, of shape `shape`."""
    out = {}
    for what, t in named.items():
        if t is None:
            continue
        t = _tensor(t, where, what)
        check_same_device(where, x.data, t.data)
        check_same_dtype(where, x.data, t.data, names=("input", what))
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{where}: expected {what} of shape {tuple(shape)} for an input of shape "
                             f"{tuple(x.shape)}, got {what} of shape {tuple(t.shape)}")
        out[what] = t
    return out


def layer_norm(input, normalized_shape, weight=None, bias=None, eps: float = 1e-5, *, name: str | None = None):
    """(x - mean) / sqrt(var + eps) * weight + bias, with mean and the biased var over the last
    len(normalized_shape) dimensions, which must equal normalized_shape; weight and bias (optional)
    have that shape. One graph node."""
    where = layer_label("layer_norm", name)
    x = _tensor(input, where, "input")
    check_float(where, x.data)
    shape = normalized_shape_of(normalized_shape, where)
    k = len(shape)
    if x.ndim < k or tuple(x.shape[x.ndim - k:]) != shape:
        raise ValueError(f"{where}: Given normalized_shape={list(shape)}, expected input with shape "
                         f"[*, {', '.join(map(str, shape))}], but got input of size {list(x.shape)}")
    ps = _params(where, x, shape, weight=weight, bias=bias)
    return F.LayerNorm.apply(x, *ps.values(), ndim=k, eps=check_number(where, "eps", eps),
                             has_weight="weight" in ps, has_bias="bias" in ps, layer=name)


def normalized_shape_of(normalized_shape, where: str = "layer_norm") -> tuple:
    """normalized_shape (an int or a sequence of ints) as a non-empty tuple of positive ints."""
    dims = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else normalized_shape
    try:
        dims = tuple(dims)
    except TypeError:
        raise TypeError(f"{where}: normalized_shape must be an int or a sequence of ints, "
                        f"got {type(normalized_shape).__name__}") from None
    if not dims or any(isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)) or d < 1
                       for d in dims):
        raise ValueError(f"{where}: normalized_shape must be a positive int or a non-empty sequence of "
                         f"positive ints, got {normalized_shape!r}")
    return tuple(int(d) for d in dims)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, *, name: str | None = None):
    """Per channel c (dimension 1 of an (N, C, ...) input): (x - mean_c) / sqrt(var_c + eps) *
    weight_c + bias_c. training=True: the batch's mean and biased variance over every dimension but
    1, and running_mean / running_var (when given) updated in place with
    running = (1 - momentum) * running + momentum * batch statistic (the variance unbiased);
    training=False: the running statistics. One graph node."""
    return batch_norm_checked(input, running_mean, running_var, weight, bias, training, momentum, eps, None, name)


def batch_norm_checked(input, running_mean, running_var, weight, bias, training, momentum, eps,
                       num_batches_tracked, name):
    """batch_norm, and BatchNorm1d's forward: num_batches_tracked (an int64 0-d Tensor or None) is
    incremented in training; momentum=None then averages cumulatively (factor 1/num_batches_tracked)."""
    where = layer_label("batch_norm", name)
    x = _tensor(input, where, "input")
    check_float(where, x.data)
    if x.ndim < 2:
        raise ValueError(f"{where}: expected an input of shape (N, C) or (N, C, L), got shape {tuple(x.shape)}")
    c = x.shape[1]
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{where}: give both running_mean and running_var, or neither")
    if not training and running_mean is None:
        raise ValueError(f"{where}: running_mean and running_var must be defined in evaluation mode "
                         "(training=False)")
    if momentum is None and num_batches_tracked is None:
        raise TypeError(f"{where}: momentum must be a number")
    momentum = None if momentum is None else check_number(where, "momentum", momentum)
    ps = _params(where, x, (c,), weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    if training:
        n = x.numel() // c if c else 0
        if n == 1:
            raise ValueError(f"{where}: Expected more than 1 value per channel when training, got input size "
                             f"{tuple(x.shape)}")
    stats = {k: ps.pop(k).data if k in ps else None for k in ("running_mean", "running_var")}
    nbt = None if num_batches_tracked is None else num_batches_tracked.data
    return F.BatchNorm.apply(x, *ps.values(), has_weight="weight" in ps, has_bias="bias" in ps,
                             training=bool(training), num_batches_tracked=nbt, momentum=momentum,
                             eps=check_number(where, "eps", eps), layer=name, **stats)


# ----------------------------------------------------------------------------- losses

def _labels(target, n: int, op: str):
    lab = target.data if isinstance(target, Tensor) else target
    if not is_array(lab):
        lab = np.asarray(lab)
    if lab.dtype.kind not in "iu":
        raise TypeError(f"{op}: target must hold integer class labels, got dtype {lab.dtype} "
                        "(for probabilities use a different loss)")
    if lab.shape != (n,):
        raise ValueError(f"{op}: target must have shape ({n},) to match input of {n} rows, got {lab.shape}")
    return lab


def cross_entropy(input, target, reduction: str = "mean", ignore_index: int = -100):
    """Softmax cross-entropy from logits (N, C) and integer labels (N,), fused in one node.

    loss_i = logsumexp(x_i) - x_{i, y_i}; "mean" averages over targets != ignore_index.
    """
    op = "cross_entropy"
    _check_reduction(op, reduction)
    if ignore_index is not None:
        if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"{op}: ignore_index must be an int (or None), got {ignore_index!r}")
        ignore_index = int(ignore_index)
    x = _tensor(input, op, "input")
    check_float(op, x.data)
    if x.ndim != 2:
        raise ValueError(f"{op}: input must be logits of shape (batch, classes), got {x.shape}")
    if x.shape[1] == 0:
        raise ValueError(f"{op}: input of shape {x.shape} has no classes; logits need at least one column")
    lab = _labels(target, x.shape[0], op)
    check_same_device(op, x.data, lab)
    # label values are checked by the kernel itself (F.CrossEntropy): no extra pass, no GPU sync
    return F.CrossEntropy.apply(x, Tensor(lab), reduction=reduction, ignore_index=ignore_index)


def _pair(op, input, target):
    x = _tensor(input, op, "input")
    y = _tensor(target, op, "target")
    check_same_device(op, x.data, y.data)
    check_float(op, x.data, "input")
    check_same_dtype(op, x.data, y.data, names=("input", "target"))
    if x.shape != y.shape:
        raise ValueError(f"{op}: input shape {x.shape} and target shape {y.shape} differ; gpunn does not "
                         "broadcast losses (reshape the target, e.g. y.reshape(-1, 1))")
    return x, y


def binary_cross_entropy_with_logits(input, target, reduction: str = "mean", pos_weight=None):
    """BCE on logits: (1 - y) x + log(1 + exp(-x)), stable for any x (ATen's formula)."""
    op = "binary_cross_entropy_with_logits"
    _check_reduction(op, reduction)
    x, y = _pair(op, input, target)
    pw = None
    if pos_weight is not None:
        if isinstance(pos_weight, Tensor):
            pw = pos_weight.data
        else:
            pw = get_array_module(x.data).asarray(pos_weight, x.dtype)
        check_same_device(op, x.data, pw)
        check_same_dtype(op, x.data, pw, names=("input", "pos_weight"))
        try:
            ok = np.broadcast_shapes(pw.shape, x.shape) == x.shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{op}: pos_weight of shape {pw.shape} must broadcast to the input shape {x.shape} "
                             "(one weight per class: shape (classes,))")
    return F.BCEWithLogits.apply(x, y, reduction=reduction, pos_weight=pw)


bce_with_logits = binary_cross_entropy_with_logits


def mse_loss(input, target, reduction: str = "mean"):
    """(input - target)^2, reduced."""
    _check_reduction("mse_loss", reduction)
    return F.MSE.apply(*_pair("mse_loss", input, target), reduction=reduction)


def l1_loss(input, target, reduction: str = "mean"):
    """|input - target|, reduced."""
    _check_reduction("l1_loss", reduction)
    return F.L1.apply(*_pair("l1_loss", input, target), reduction=reduction)


__all__ = [m.name for m in _registry.ACTIVATIONS.values() if m.module and _registry.is_builtin(m)] + [
           "activation", "leaky_relu", "gelu", "softmax", "log_softmax", "gather", "dense",
           "linear", "dropout", "layer_norm", "batch_norm", "cross_entropy", "binary_cross_entropy_with_logits", "bce_with_logits", "mse_loss",
           "l1_loss", "ACTIVATIONS", "REDUCTIONS"]
