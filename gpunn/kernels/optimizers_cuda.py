"""Fused optimizer updates on the GPU (Numba CUDA): every registered update (SGD, Adam/AdamW, RMSprop,
Adagrad, ...) over a param group's flat buffers in ONE launch per step; `update(name)` (also the
module attribute `<name>_update`) is made from the registry entry, as the CPU functions are.
Contract, signatures and semantics: gpunn/kernels/optimizers.py (PyTorch's formulas, t from 1,
everything updated in place, grad never written, unused state buffers neither needed nor touched).

Each kernel is a grid-stride loop over the flat buffer (256 threads per block, at most 32 blocks
per SM) around the registry's update for the optimizer (gpunn/kernels/registry.py), the same
definition the CPU kernels are made from: float64 arithmetic, rounded once per stored value, so
the GPU and CPU results agree to the last bit except where the GPU compiler fuses a multiply-add.
Memory-bound: float64 arithmetic costs nothing measurable on datacenter GPUs.

Options that change the code path (maximize, weight decay on/off or decoupled, momentum on/off,
nesterov, first step, amsgrad, centered; the registry's flags) are compile-time constants: one kernel per combination
in use (usually one or two per run), compiled once with an explicit signature and with fewer
launch arguments. Learning rate, betas, eps, ... are run-time arguments (schedulers change them
every step without a recompile). Step-dependent bias corrections are computed on the host from
the host-side step count: no device synchronisation.
Limits: 1-D C-contiguous buffers of one float dtype (float32/float64) and one array type, checked
before the launch (ValueError, as on the CPU).
"""
from __future__ import annotations

import math

import numpy as np

from gpunn.backend import numba_cuda as nc
from gpunn.kernels import registry
from gpunn.kernels.cuda_elementwise import SUPPORTED_DTYPES, check_dtype, launch
from gpunn.kernels.optimizers import member, named, per_member, split_call

cuda = None  # numba.cuda once a kernel is built: kernels reach it as this global (nc.bind_numba_cuda)


def _cuda():
    return nc.bind_numba_cuda(globals())


def _build(m, dt, flags, staged=False):
    """The CUDA kernel of registry optimizer m for one option combination: its update as a device
    function (options bound as constants) inside a grid-stride loop; arrays of dt, scalars float64
    (staged: one float64 device array of them, read by each thread)."""
    if not m.valid(dict(flags)):
        raise ValueError(f"{m.name}: flag combination {dict(flags)} is not valid (registry `valid`)")
    _cuda()
    import numba

    # inlined at the Numba IR level, so the kernel is the loop the update would be written in
    # (an NVVM call left 6-17 more registers in some float32 RMSprop variants)
    update = nc.numba_cuda().jit(device=True, inline="always")(
        registry.rebind(m.update, {**dict(flags), "sqrt": math.sqrt, "f64": numba.float64}))
    kernel = registry.update_loop(m, "cuda_staged" if staged else "cuda", update, {"cuda": cuda})
    a1 = nc.arr(dt)
    scalars = [nc.arr(np.float64)] if staged else [numba.float64] * (len(m.params) - len(m.arrays))
    return nc.jit(nc.void(*([a1] * len(m.arrays) + scalars)), kernel)


def _kernel(m, dt, flags: tuple, staged=False):
    # the member's code in the key: a member registered again under an old name gets new kernels
    return nc.kernel((m.name, m.code, dt.name) + flags + (("staged",) if staged else ()),
                     lambda: _build(m, dt, flags, staged))


def kernel(name, dtype, **flags):
    """The CUDA kernel of registry optimizer `name` for one combination of its option flags."""
    return _kernel(member(name), np.dtype(dtype), tuple(sorted(flags.items())))


def variants(dtypes=SUPPORTED_DTYPES):
    """Every kernel of this family (each valid option combination of each registered update, with
    its scalars as arguments and staged), as (getter, arguments, threads per block): for offline
    compilation (kernels/ptxas_report.py)."""
    for dt in dtypes:
        for name, m in registry.OPTIMIZERS.items():
            for flags in m.variants():
                for staged in (False, True):
                    yield _get, (name, dt, tuple(flags.items()), staged), nc.ELEMENTWISE_THREADS


def _get(name, dt, flags, staged=False):
    return _kernel(member(name), np.dtype(dt), tuple(sorted(flags)), staged)


# gn.compile's CUDA-graph replay (gpunn/compiler_graph.py) sets this while it captures or replays a
# step: stage(m, dtype, flags, arrays, scalars) then takes each update call in place of its launch.
stage = None


def staged_kernel(m, dtype, flags: tuple):
    """The kernel of registry optimizer m (flags: sorted (name, value) pairs) that reads its scalars
    from a float64 device array: what a CUDA graph captures, so that they change between launches."""
    return _kernel(m, np.dtype(dtype), flags, staged=True)


@per_member
def update(m):
    """`<name>_update` on the GPU: registry optimizer m's kernel behind its checked call (one launch)."""

    def run(*args, **kwargs):
        flags, arrays, scalars = split_call(m, args, kwargs)
        p = arrays[0]
        check_dtype(f"{m.name}_update", p.dtype)
        arrays = [nc.dummy(p) if a is None else a for a in arrays]
        if stage is not None:
            stage(m, p.dtype, tuple(sorted(flags.items())), arrays, [float(s) for s in scalars])
            return
        launch(_kernel(m, p.dtype, tuple(sorted(flags.items()))), p.size, p, *arrays, *map(float, scalars))

    return named(m, run, f"{m.name}_update", f"{m.name}'s update, CUDA kernel (Numba).", __name__)


def __getattr__(attr):
    """`<name>_update` of every registered optimizer."""
    if attr.endswith("_update") and attr[:-7] in registry.OPTIMIZERS:
        return update(attr[:-7])
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
