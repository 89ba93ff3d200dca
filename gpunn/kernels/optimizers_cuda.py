"""Fused optimizer updates on the GPU (Numba CUDA): SGD, Adam/AdamW, RMSprop over a param group's
flat buffers in ONE launch per step. Contract, signatures and semantics: gpunn/kernels/optimizers.py
(PyTorch's formulas, t from 1, everything updated in place, grad never written, unused state
buffers neither needed nor touched).

Each kernel is a grid-stride loop over the flat buffer (256 threads per block, at most 32 blocks
per SM) around the registry's update for the optimizer (gpunn/kernels/registry.py), the same
definition the CPU kernels are made from: float64 arithmetic, rounded once per stored value, so
the GPU and CPU results agree to the last bit except where the GPU compiler fuses a multiply-add.
Memory-bound: float64 arithmetic costs nothing measurable on datacenter GPUs.

Options that change the code path (maximize, weight decay on/off or decoupled, momentum on/off,
nesterov, first step, amsgrad, centered) are compile-time constants: one kernel per combination
in use (usually one or two per run), compiled once with an explicit signature and with fewer
launch arguments. Learning rate, betas, eps, ... are run-time arguments (schedulers change them
every step without a recompile). Step-dependent bias corrections are computed on the host from
the host-side step count: no device synchronisation.
Limits: 1-D C-contiguous buffers of one float dtype (float32/float64) and one array type, checked
before the launch (ValueError, as on the CPU).
"""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from gpunn.backend import numba_cuda as nc
from gpunn.kernels import registry
from gpunn.kernels.cuda_elementwise import SUPPORTED_DTYPES, check_dtype, launch
from gpunn.kernels.optimizers import _adam_call, _rmsprop_call, _sgd_call

cuda = None  # numba.cuda once a kernel is built: kernels reach it as this global (nc.bind_numba_cuda)


def _cuda():
    return nc.bind_numba_cuda(globals())


def _build(name, dt, flags):
    """The CUDA kernel of registry optimizer `name` for one option combination: its update as a
    device function (options bound as constants) inside a grid-stride loop; arrays of dt, scalars
    float64."""
    _cuda()
    import numba

    member = registry.OPTIMIZERS[name]
    # inlined at the Numba IR level, so the kernel is the loop the update would be written in
    # (an NVVM call left 6-17 more registers in some float32 RMSprop variants)
    update = nc.numba_cuda().jit(device=True, inline="always")(
        registry.rebind(member.update, {**dict(flags), "sqrt": math.sqrt, "f64": numba.float64}))
    kernel = registry.update_loop(member, "cuda", update, {"cuda": cuda})
    a1 = nc.arr(dt)
    sig = [a1] * len(member.arrays) + [numba.float64] * (len(member.params) - len(member.arrays))
    return nc.jit(nc.void(*sig), kernel)


def kernel(name, dtype, **flags):
    dt = np.dtype(dtype)
    fl = tuple(sorted(flags.items()))
    return nc.kernel((name, dt.name) + fl, lambda: _build(name, dt, fl))


def variants(dtypes=SUPPORTED_DTYPES):
    """Every kernel of this family (each option combination the update functions can select), as
    (getter, arguments, threads per block): for offline compilation (kernels/ptxas_report.py)."""
    for dt in dtypes:
        for name, member in registry.OPTIMIZERS.items():
            keys = list(member.flags)
            for values in itertools.product(*member.flags.values()):
                flags = dict(zip(keys, values))
                if name == "sgd" and not flags["MOMENTUM"] and (flags["NESTEROV"] or flags["FIRST_STEP"]):
                    continue  # nesterov and first-step only exist with momentum (_sgd_call)
                yield _get, (name, dt, tuple(flags.items())), nc.ELEMENTWISE_THREADS


def _get(name, dt, flags):
    return kernel(name, dt, **dict(flags))


def _gpu(prepare):
    """A CUDA update function (the signature of `prepare`) made from an optimizers._*_call."""

    @functools.wraps(prepare)
    def run(*args, **kwargs):
        name, flags, arrays, scalars = prepare(*args, **kwargs)
        p = arrays[0]
        check_dtype(f"{name}_update", p.dtype)
        launch(kernel(name, p.dtype, **flags), p.size, p, *(nc.dummy(p) if a is None else a for a in arrays),
               *(float(x) for x in scalars))

    run.__name__ = run.__qualname__ = f"{prepare.__name__[1:-5]}_update"
    return run


sgd_update = _gpu(_sgd_call)
adam_update = _gpu(_adam_call)
rmsprop_update = _gpu(_rmsprop_call)
