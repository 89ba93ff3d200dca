"""The fused dense layer as ONE graph node: y = act(x @ W.T + b).

x may have any number of leading axes (..., K); they are flattened to rows for the kernel.
Backward calls the fused backward kernel once, asking only for the gradients that are needed
(no dx for a first layer fed with data). `layer` is the layer's path in its model (the
profiler's label; functional.dense passes its `name`).
"""
from __future__ import annotations

from gpunn.autograd.tensor import Function
from gpunn.kernels import ops_for


class Dense(Function):
    kernel_replay = True  # one kernel each way; reshapes and the leaves' gradient sinks besides

    def forward(self, x, W, b=None, code=1, negative_slope=0.01, layer=None):
        self.layer = layer
        self.lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x
        y, saved = ops_for(x2).dense_forward(x2, W, b, code, negative_slope)
        self.x, self.W, self.saved, self.code, self.slope = x2, W, saved, code, negative_slope
        return y.reshape(*self.lead, W.shape[0]) if x.ndim != 2 else y

    def backward(self, g):
        need = self.needs_grad
        g2 = g.reshape(-1, g.shape[-1]) if g.ndim != 2 else g
        need_db = len(need) > 2 and need[2]
        # dW and db straight into the leaves' gradient sinks where they have them (no copy)
        dx, dW, db = ops_for(g2).dense_backward(
            g2, self.x, self.W, self.saved, self.code, self.slope,
            need_dx=need[0], need_dw=need[1], need_db=need_db,
            dW_out=self.grad_sink(1) if need[1] else None, db_out=self.grad_sink(2) if need_db else None)
        if dx is not None and len(self.lead) != 1:
            dx = dx.reshape(*self.lead, dx.shape[-1])
        return (dx, dW, db) if len(need) > 2 else (dx, dW)
