"""LayerNorm, BatchNorm and Dropout as graph nodes, each one node with a hand-written backward
(the formulas: gpunn/kernels/normalization.py and gpunn/kernels/dropout.py).

Inputs are (x, weight?, bias?): `has_weight` / `has_bias` say which parameters follow x; `layer`
is the layer's path in its model (the profiler's label), as for Dense.
BatchNorm's running statistics are node parameters, not graph inputs: the running update (and
num_batches_tracked's increment) happens inside forward, so gn.compile's replay of the node
repeats it. Dropout draws its mask inside forward for the same reason: a replay draws a fresh one.
"""
from __future__ import annotations

from gpunn.autograd.tensor import REPLAYED_CALLS, Function, replayed
from gpunn.backend import generator_for, get_array_module
from gpunn.kernels import ops_for
from gpunn.kernels.normalization import update_running_stats

# Dropout's generator is looked up again by a kernel replay (manual_seed replaces the generator).
REPLAYED_CALLS.append((__name__, "generator_for"))


class _Normalization(Function):
    """Shared by LayerNorm and BatchNorm: forward sets stat_axes, param_axes, batch_stats,
    xhat, rstd, w (broadcastable) and the parameters' shapes."""

    saves_output = False

    def _params(self, x, params, has_weight, has_bias, shape):
        w = params[0] if has_weight else None
        b = params[-1] if has_bias else None
        self.shapes = [p.shape for p in params]
        self.has = (has_weight, has_bias)
        return (None if w is None else w.reshape(shape)), (None if b is None else b.reshape(shape))

    def backward(self, g):
        need = self.needs_grad
        has_w, has_b = self.has
        dx, dw, db = ops_for(g).normalization_backward(
            g, self.xhat, self.rstd, self.w, self.stat_axes, self.param_axes, self.batch_stats,
            need[0], has_w and need[1], has_b and need[-1])
        out = [dx]
        if has_w:
            out.append(None if dw is None else dw.reshape(self.shapes[0]))
        if has_b:
            out.append(None if db is None else db.reshape(self.shapes[-1]))
        return tuple(out)


class LayerNorm(_Normalization):
    """Statistics over the last `ndim` axes; weight and bias shaped like those axes."""

    kernel_replay = True  # its two kernels and reshapes

    def forward(self, x, *params, ndim: int, eps: float, has_weight: bool, has_bias: bool, layer=None):
        self.layer = layer
        lead = x.ndim - ndim
        self.stat_axes = tuple(range(lead, x.ndim))
        self.param_axes = tuple(range(lead))
        self.batch_stats = True
        self.w, b = self._params(x, params, has_weight, has_bias, x.shape[lead:])
        y, self.xhat, self.rstd, _, _ = ops_for(x).normalization_forward(x, self.w, b, self.stat_axes, eps)
        return y


class BatchNorm(_Normalization):
    """Per channel (axis 1) over every other axis. training: batch statistics, and the running
    ones (when given) updated in place; else normalised by the running statistics.
    running_mean, running_var, num_batches_tracked: the buffer Tensors (or None), whose arrays are
    read here, so a gn.compile replay uses the current ones after a module.to(...)."""

    kernel_replay = True  # its kernels and _track_running_stats (gn.compile guards the buffers' arrays)

    def forward(self, x, *params, has_weight: bool, has_bias: bool, training: bool, running_mean, running_var,
                num_batches_tracked, momentum, eps: float, layer=None):
        self.layer = layer
        running_mean, running_var, num_batches_tracked = (
            None if t is None else t.data for t in (running_mean, running_var, num_batches_tracked))
        c = x.shape[1]
        axes = (0,) + tuple(range(2, x.ndim))
        bshape = (1, c) + (1,) * (x.ndim - 2)
        self.stat_axes = self.param_axes = axes
        self.batch_stats = training
        self.w, b = self._params(x, params, has_weight, has_bias, bshape)
        ops = ops_for(x)
        if not training:
            y, self.xhat, self.rstd, _, _ = ops.normalization_forward(
                x, self.w, b, axes, eps, running_mean.reshape(bshape), running_var.reshape(bshape))
            return y
        n = x.size // c if c else 0
        if n == 0:  # an empty batch: an empty output; the running statistics stay (as PyTorch)
            xp = get_array_module(x)
            y, self.xhat, self.rstd = xp.empty_like(x), xp.empty_like(x), xp.ones(bshape, dtype=x.dtype)
            mean = var = None
        else:
            y, self.xhat, self.rstd, mean, var = ops.normalization_forward(x, self.w, b, axes, eps)
        if running_mean is not None:
            _track_running_stats(running_mean, running_var, num_batches_tracked, mean, var, n, momentum)
        return y


@replayed
def _track_running_stats(running_mean, running_var, num_batches_tracked, mean, var, n, momentum):
    """BatchNorm's running statistics updated in place from one batch's (n > 1 values a channel),
    num_batches_tracked counted; momentum None: the cumulative average (1 / batches seen)."""
    factor = momentum
    if num_batches_tracked is not None:
        num_batches_tracked += 1
        if momentum is None:  # computed on the device
            factor = 1 / num_batches_tracked.astype(running_mean.dtype)
    if n > 1:
        update_running_stats(running_mean, running_var, mean, var, n, factor)


class Dropout(Function):
    """y = x * mask with a fresh mask from gpunn's generator for x's device."""

    saves_inputs = False
    saves_output = False
    kernel_replay = True  # its two kernels; the generator is looked up again at every replay

    def forward(self, x, p: float, layer=None):
        self.layer = layer
        y, self.mask = ops_for(x).dropout_forward(x, p, generator_for(x))
        return y

    def backward(self, g):
        return (ops_for(g).dropout_backward(g, self.mask),)
