"""Elementwise losses and their gradients on the GPU (Numba CUDA). Contract, operand layouts and
the loop each kernel is: gpunn/kernels/losses.py; the formulas: the registry's `LOSSES`.

Each call is ONE launch of a grid-stride kernel over the flattened arrays (256 threads per block,
at most 32 blocks per SM), where an array-expression version issues one CuPy kernel per operation
(BCE-with-logits forward 8, backward 6). Memory-bound: the win is launches and passes, not FLOPs.
The kernel is the registry's formula (the bytecode the CPU kernels are made from) with
`cuda_math` (libdevice, plus a sigmoid) and every constant in the array's dtype: float32 math for float32.
One kernel per (loss, direction, dtype, operand layout, upstream layout), compiled once with an
explicit signature. Limits: float32/float64 (CudaOps sends other dtypes to the reference); x and y
of one shape, dtype and array type; non-contiguous operands are copied to C order first.
"""
from __future__ import annotations


import numpy as np

from gpunn.backend import numba_cuda as nc
from gpunn.kernels import losses, registry
from gpunn.kernels.cuda_elementwise import SUPPORTED_DTYPES, check_dtype, cuda_math, launch

cuda = None  # numba.cuda once a kernel is built: kernels reach it as this global (nc.bind_numba_cuda)


def _cuda():
    return nc.bind_numba_cuda(globals())


def _device(f, dt):
    return nc.device_jit(registry.retarget(f, cuda_math(dt), dt))


def _build(name, direction, dt, w_layout, g_layout):
    _cuda()
    from numba.core import types

    template = losses.loop(direction, "cuda", {})
    bound = {"cuda": cuda, "T": nc.nbtype(dt), "formula": _device(losses.formula(name, direction), dt),
             "w_at": _device(losses.ACCESSORS[w_layout], dt), "g_at": _device(losses.ACCESSORS[g_layout], dt)}
    kernel = registry.rebind(template, bound, f"{name}_{direction}_kernel")
    a1 = nc.arr(dt, 1)
    sig = (a1, a1, a1, types.int64, types.float64, a1)  # x, y, w, c, a, out
    return nc.jit(nc.void(*(sig if direction == "forward" else (a1,) + sig)), kernel)


def kernel(member, direction, dtype, w_layout, g_layout):
    """The kernel of registry loss `member` (or its name) for one direction ("forward", "input",
    "target"), dtype and operand layouts."""
    if isinstance(member, str):
        member = registry.loss(member)
    dt = np.dtype(dtype)
    if direction == "forward":
        g_layout = losses.EACH  # unused: one kernel per forward, whatever the caller passed
    return nc.kernel(("loss", member.name, member.serial, direction, dt.name, w_layout, g_layout),
                     lambda: _build(member.name, direction, dt, w_layout, g_layout))


def variants(dtypes=SUPPORTED_DTYPES):
    """Every kernel of this family, as (getter, arguments, threads per block): for offline
    compilation (kernels/ptxas_report.py) and warm-up."""
    t = nc.ELEMENTWISE_THREADS
    w_layouts = (losses.NONE, losses.SCALAR, losses.LAST_AXIS, losses.EACH)
    for dt in dtypes:
        for name, m in registry.LOSSES.items():
            for w in (w_layouts if m.operand else (losses.NONE,)):
                yield kernel, (name, "forward", dt, w, losses.EACH), t
                for direction in ("input", "target") if m.grad_target else ("input",):
                    for g in (losses.SCALAR, losses.EACH):
                        yield kernel, (name, direction, dt, w, g), t


def _gpu(name, direction, g, x, y, operand, scalar):
    check_dtype(f"{name}_{'forward' if direction == 'forward' else 'backward'}", x.dtype)
    return losses.run_loss(kernel, nc.dummy, launch_over, name, direction, g, x, y, operand, scalar)


def launch_over(kern, n, *args):
    """Launch on the stream of the result (the last argument)."""
    launch(kern, n, args[-1], *args)


def loss_forward(name, x, y, operand=None, scalar=None):
    """Per-element losses of registry loss `name` (x's shape and dtype); one launch."""
    return _gpu(name, "forward", None, x, y, operand, scalar)


def loss_backward(name, g, x, y, operand=None, scalar=None, wrt="input"):
    """g * d loss / d x (or d y with wrt="target"); one launch."""
    return _gpu(name, wrt, g, x, y, operand, scalar)
