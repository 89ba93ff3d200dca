"""Functional API (torch.nn.functional's names): activations, the fused dense layer, dropout,
layer and batch normalisation, losses.

Every function checks its inputs first (dtype, device, shapes, label range) and raises an error
that names the op, what it expected and what it got. Losses never broadcast prediction against
target: a shape mismatch is an error, not a silently wrong average.
"""
from __future__ import annotations

import numpy as np

from gpunn.autograd import functions as F
from gpunn.autograd.checks import check_float, check_number, check_same_device, check_same_dtype, defer_check
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
    """The functions of activations and losses registered after import (registry.register_activation:
    `<name>`; registry.register_loss with a module: `<name>_loss`)."""
    m = _registry.ACTIVATIONS.get(name)
    if m is not None and m.module:
        return _elementwise(m)
    loss = _registry.LOSSES.get(name[:-len("_loss")]) if name.endswith("_loss") else None
    if loss is not None and loss.module:
        return loss_function(loss)
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
    stats = {k: ps.pop(k, None) for k in ("running_mean", "running_var")}
    return F.BatchNorm.apply(x, *ps.values(), has_weight="weight" in ps, has_bias="bias" in ps,
                             training=bool(training), num_batches_tracked=num_batches_tracked, momentum=momentum,
                             eps=check_number(where, "eps", eps), layer=name, **stats)


# ----------------------------------------------------------------------------- losses

def _labels(target, n: int, op: str):
    lab = target.data if isinstance(target, Tensor) else target
    if not is_array(lab):
        lab = np.asarray(lab)
    if lab.dtype.kind not in "iu":
        raise TypeError(f"{op}: target must hold integer class labels, got dtype {lab.dtype} (class-probability "
                        "targets are not supported; for independent binary targets use "
                        "binary_cross_entropy_with_logits)")
    if lab.shape != (n,):
        raise ValueError(f"{op}: target must have shape ({n},) to match input of {n} rows, got {lab.shape}")
    return lab


def _class_loss_args(op, input, target, reduction, ignore_index, weight, what):
    """The checked (input Tensor, labels, ignore_index, weight array) of a class-label loss."""
    _check_reduction(op, reduction)
    if ignore_index is not None:
        if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"{op}: ignore_index must be an int (or None), got {ignore_index!r}")
        ignore_index = int(ignore_index)
    x = _tensor(input, op, "input")
    check_float(op, x.data)
    if x.ndim != 2:
        raise ValueError(f"{op}: input must be {what} of shape (batch, classes), got {x.shape}")
    if x.shape[1] == 0:
        raise ValueError(f"{op}: input of shape {x.shape} has no classes; it needs at least one column")
    lab = _labels(target, x.shape[0], op)
    check_same_device(op, x.data, lab)
    if weight is not None:
        if isinstance(weight, Tensor):
            if weight.requires_grad:
                raise ValueError(f"{op}: weight requires grad, but the class weights get no gradient (as in "
                                 "PyTorch); pass weight.detach()")
            weight = weight.data
        if not is_array(weight):
            raise TypeError(f"{op}: weight must be a Tensor or an array of {x.shape[1]} class weights, got "
                            f"{type(weight).__name__}")
        if weight.shape != (x.shape[1],):
            raise ValueError(f"{op}: weight must be 1-D with one value per class: shape ({x.shape[1]},) for input "
                             f"of shape {x.shape}, got weight of shape {weight.shape}")
        check_same_device(op, x.data, weight)
        check_same_dtype(op, x.data, weight, names=("input", "weight"))
    return x, lab, ignore_index, weight


def cross_entropy(input, target, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
                  reduction: str = "mean", label_smoothing: float = 0.0):
    """Softmax cross-entropy from logits (N, C) and integer labels (N,), fused in one node.

    loss_i = (1 - eps) w_y (lse_i - x_iy) + (eps / C) sum_j w_j (lse_i - x_ij) (w = weight, 1 when
    None; eps = label_smoothing in [0, 1]); "mean" divides the sum by the sum of w_y over the
    targets != ignore_index (their count without weights), as PyTorch. weight (C,) has the input's
    dtype and device and gets no gradient.
    """
    op = "cross_entropy"
    reduction = _legacy_reduction(op, size_average, reduce, reduction)
    x, lab, ignore_index, weight = _class_loss_args(op, input, target, reduction, ignore_index, weight, "logits")
    if isinstance(label_smoothing, (bool, np.bool_)) or not isinstance(label_smoothing, (int, float, np.number)) \
            or not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    # label values are checked by the kernel itself (F.CrossEntropy): no extra pass, no GPU sync
    return F.CrossEntropy.apply(x, Tensor(lab), reduction=reduction, ignore_index=ignore_index, weight=weight,
                                label_smoothing=float(label_smoothing))


def nll_loss(input, target, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
             reduction: str = "mean"):
    """Negative log-likelihood from log-probabilities (N, C) (e.g. log_softmax's output) and integer
    labels (N,): loss_i = -w_y input_iy; "mean" divides the sum by the sum of w_y over the targets
    != ignore_index, as PyTorch. nll_loss(log_softmax(x), y) equals cross_entropy(x, y)."""
    op = "nll_loss"
    reduction = _legacy_reduction(op, size_average, reduce, reduction)
    x, lab, ignore_index, weight = _class_loss_args(op, input, target, reduction, ignore_index, weight,
                                                    "log-probabilities")
    return F.NLL.apply(x, Tensor(lab), reduction=reduction, ignore_index=ignore_index, weight=weight)


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


def _legacy_reduction(op, size_average, reduce, reduction):
    """torch's deprecated size_average/reduce pair mapped to a reduction (as torch does, with a warning)."""
    if size_average is None and reduce is None:
        return reduction
    import warnings

    warnings.warn(f"{op}: size_average and reduce are deprecated, use reduction= instead", DeprecationWarning,
                  stacklevel=3)
    if reduce is not None and not reduce:
        return "none"
    return "sum" if size_average is not None and not size_average else "mean"


def _per_element(op, what, v, x, broadcasts: bool):
    """A weight or operand as an array of x's device and dtype: the same shape as x, or (when
    `broadcasts`, as torch's BCE losses allow) any shape that broadcasts to it."""
    if v is None:
        return None
    if isinstance(v, Tensor):
        v = v.data  # a tensor must match the input's dtype: no silent cast
    else:
        if hasattr(v, "detach") and hasattr(v, "numpy"):  # a torch tensor
            v = v.detach().cpu().numpy()
        if not is_array(v) or type(v) is type(x.data):  # numbers, lists, arrays of the input's device
            v = get_array_module(x.data).asarray(v, dtype=x.dtype)
    check_same_device(op, x.data, v)
    check_same_dtype(op, x.data, v, names=("input", what))
    if broadcasts:
        try:
            ok = np.broadcast_shapes(v.shape, x.shape) == x.shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{op}: {what} of shape {v.shape} must broadcast to the input shape {x.shape}")
    elif v.shape != x.shape:
        raise ValueError(f"{op}: {what} of shape {v.shape} must have the input's shape {x.shape}")
    return v


def elementwise_loss(name, input, target, reduction: str = "mean", weight=None, operand=None, scalar=None):
    """Any registered elementwise loss (gpunn/kernels/registry.py `LOSSES`) by name, reduced;
    `weight` rescales each element's loss, `operand` and `scalar` are the loss's own (its
    registry entry names them: pos_weight, delta, beta)."""
    m = _registry.loss(name)
    op = f"{name}_loss"
    _check_reduction(op, reduction)
    x, y = _pair(op, input, target)
    w = _per_element(op, "weight", weight, x, m.weight_broadcasts)
    v = _per_element(op, m.operand or "operand", operand, x, True)
    return F.ElementwiseLoss.apply(x, y, name=name, reduction=reduction, operand=v, scalar=scalar, weight=w)


def loss_options(op, member, options: dict):
    """(operand, scalar) from the keyword options of a registry loss (its entry's operand and
    scalar names, e.g. delta=...); TypeError naming the valid ones for anything else."""
    known = [n for n in (member.operand, member.scalar) if n]
    extra = set(options) - set(known)
    if extra:
        raise TypeError(f"{op}: unexpected option(s) {sorted(extra)}; valid: {known or 'none'}")
    scalar = options.get(member.scalar) if member.scalar else None
    if scalar is not None:
        scalar = _positive(op, member.scalar, scalar, strict=False)
    return (options.get(member.operand) if member.operand else None), scalar


def loss_function(member):
    """functional.<name>_loss(input, target, reduction="mean", weight=None, **options) for a
    registry loss (options: `loss_options`)."""
    def fn(input, target, reduction: str = "mean", weight=None, **options):
        operand, scalar = loss_options(f"{member.name}_loss", member, options)
        return elementwise_loss(member.name, input, target, reduction, weight, operand=operand, scalar=scalar)

    fn.__name__ = fn.__qualname__ = f"{member.name}_loss"
    fn.__doc__ = member.doc
    return fn


def mse_loss(input, target, size_average=None, reduce=None, reduction: str = "mean", weight=None):
    """(input - target)^2 per element, times weight, reduced ("mean" with a weight: sum / sum(weight))."""
    reduction = _legacy_reduction("mse_loss", size_average, reduce, reduction)
    return elementwise_loss("mse", input, target, reduction, weight)


def l1_loss(input, target, size_average=None, reduce=None, reduction: str = "mean", weight=None):
    """|input - target| per element, times weight, reduced ("mean" with a weight: sum / sum(weight))."""
    reduction = _legacy_reduction("l1_loss", size_average, reduce, reduction)
    return elementwise_loss("l1", input, target, reduction, weight)


def huber_loss(input, target, reduction: str = "mean", delta: float = 1.0, weight=None):
    """0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta), d = input - target; delta > 0."""
    delta = _positive("huber_loss", "delta", delta, strict=True)
    return elementwise_loss("huber", input, target, reduction, weight, scalar=delta)


def smooth_l1_loss(input, target, size_average=None, reduce=None, reduction: str = "mean", beta: float = 1.0):
    """0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta, d = input - target; beta >= 0 (0: L1)."""
    reduction = _legacy_reduction("smooth_l1_loss", size_average, reduce, reduction)
    beta = _positive("smooth_l1_loss", "beta", beta, strict=False)
    return elementwise_loss("smooth_l1", input, target, reduction, scalar=beta)


def _positive(op, name, v, strict: bool):
    """A loss option (delta, beta) as a float > 0 (strict) or >= 0."""
    f = check_number(op, name, v)
    if f < 0 or (strict and f == 0) or f != f:
        raise ValueError(f"{op}: {name} must be {'> 0' if strict else '>= 0'}, got {v}")
    return f


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None, reduction: str = "mean"):
    """-(y log x + (1 - y) log(1 - x)) on probabilities x in [0, 1], logarithms clamped at -100
    (as PyTorch); weight (broadcastable to input) rescales each element."""
    op = "binary_cross_entropy"
    reduction = _legacy_reduction(op, size_average, reduce, reduction)
    x = _tensor(input, op, "input")
    if is_array(x.data) and x.data.dtype in FLOAT_DTYPES:
        xp = get_array_module(x.data)
        outside = xp.logical_not((x.data >= 0) & (x.data <= 1)).any()
        error = lambda: ValueError(f"{op}: all elements of input should be between 0 and 1 (probabilities; "  # noqa: E731
                                   "for logits use binary_cross_entropy_with_logits)")
        if xp is np:
            if outside:
                raise error()
        else:
            defer_check(outside, error)
    return elementwise_loss("bce", input, target, reduction, weight)


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction: str = "mean", pos_weight=None):
    """BCE on logits: (1 - y) x + (1 + (p - 1) y) log(1 + exp(-x)), p = pos_weight (broadcastable to
    input, e.g. one per class), stable for any x (ATen's formula); weight rescales each element."""
    op = "binary_cross_entropy_with_logits"
    if isinstance(weight, str):
        raise TypeError(f"{op}: the third argument is weight (as in PyTorch); pass reduction={weight!r} by name")
    reduction = _legacy_reduction(op, size_average, reduce, reduction)
    return elementwise_loss("bce_with_logits", input, target, reduction, weight, operand=pos_weight)


bce_with_logits = binary_cross_entropy_with_logits


__all__ = [m.name for m in _registry.ACTIVATIONS.values() if m.module and _registry.is_builtin(m)] + [
           "activation", "leaky_relu", "gelu", "softmax", "log_softmax", "gather", "dense",
           "linear", "dropout", "layer_norm", "batch_norm", "cross_entropy", "nll_loss", "binary_cross_entropy",
           "binary_cross_entropy_with_logits", "bce_with_logits", "mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss",
           "elementwise_loss", "ACTIVATIONS", "REDUCTIONS"]
