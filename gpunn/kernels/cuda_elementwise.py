"""What every Numba CUDA kernel family shares: the dtypes the kernels are compiled for, the dtype
check before a launch, flattening, the launch of a 1-D grid-stride loop (256 threads per block,
at most 32 blocks per SM: `numba_cuda.elementwise_geometry`), and the math the registry's formulas
are compiled against (`cuda_math`)."""
from __future__ import annotations

import functools
import math
import types

import numpy as np

from gpunn.backend import FLOAT_DTYPES as SUPPORTED_DTYPES  # noqa: F401 (the families import it from here)
from gpunn.backend import numba_cuda as nc


def supported(dtype) -> bool:
    return np.dtype(dtype) in SUPPORTED_DTYPES


def check_dtype(op: str, dtype) -> None:
    """TypeError naming the op when the CUDA kernels have no variant for `dtype`."""
    if not supported(dtype):
        raise TypeError(f"{op}: the CUDA kernels take float32 or float64, got {np.dtype(dtype)}")


def flat(a, xp):
    """a as a flat C-contiguous array (a copy only when a is not C-contiguous)."""
    return xp.ascontiguousarray(a).reshape(-1)


def launch(kern, n: int, like, *args):
    """Launch a grid-stride kernel over n elements on `like`'s stream; nothing when n == 0."""
    if n:
        grid, block = nc.elementwise_geometry(n, like)
        nc.launch(kern, grid, block, like, *args)


@functools.lru_cache(maxsize=None)
def cuda_math(dtype):
    """The transcendental functions of registry formulas compiled for the GPU in `dtype`: `math`'s
    (Numba maps them to libdevice) and, for those libdevice lacks (`registry.COMPOSITES`: sigmoid),
    the registry's own definition as a device function in `dtype`."""
    from gpunn.kernels import registry

    ns = {n: getattr(math, n) for n in registry.TRANSCENDENTALS if n not in registry.COMPOSITES}
    for n, f in registry.COMPOSITES.items():
        ns[n] = nc.device_jit(registry.retarget(f, types.SimpleNamespace(**ns), dtype))
    return types.SimpleNamespace(**ns)
