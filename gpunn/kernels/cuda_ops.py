"""`CudaOps`: the GPU backend's kernel set (CuPy arrays, Numba CUDA kernels, cuBLAS through CuPy).

Exactly the base `Ops` methods and signatures (tests/test_kernels_consistency.py checks it); each
delegates to its family's CUDA module:
  dense_forward / dense_backward           dense_dispatch (fused GEMM or cuBLAS + fused epilogue)
  activation_forward / _backward           activations_cuda
  softmax_cross_entropy_forward / _backward  softmax_ce_cuda
  loss_forward / loss_backward             losses_cuda (every registered elementwise loss)
  <name>_update (sgd, adam, rmsprop, adagrad, every registered optimizer update)
                                           optimizers_cuda (one launch per param group)
Arrays of a dtype the kernels do not take (anything but float32/float64, e.g. float16) go to the
reference implementation, which runs on CuPy too. Bad calls (mismatched shapes, dtypes, array
types) raise ValueError/TypeError before any launch.

`gpu_ops()` is what `gpunn.kernels.ops._gpu()` returns for CuPy arrays: a CudaOps when the kernels
can run (`numba_cuda.kernel_status()`), else the reference `Ops` (with one RuntimeWarning saying
why). Importing this module imports neither CuPy nor numba.cuda.
"""
from __future__ import annotations

import functools
import time

from gpunn.backend import numba_cuda as nc
from gpunn.kernels import activations_cuda, dense, dense_dispatch, losses, losses_cuda, optimizers
from gpunn.kernels import optimizers_cuda, softmax_ce, softmax_ce_cuda
from gpunn.kernels.activations import activation_backward_ref, activation_forward_ref
from gpunn.kernels.cuda_elementwise import supported
from gpunn.kernels.ops import Ops, optimizer_updates


def _or_reference(fast, ref, index: int, name: str):
    """Run `fast` when the array argument `name` (position `index`) is float32/float64, else `ref`."""

    @functools.wraps(fast)
    def run(*args, **kwargs):
        a = args[index] if len(args) > index else kwargs.get(name)
        if a is not None and hasattr(a, "dtype") and not supported(a.dtype):
            return ref(*args, **kwargs)
        return fast(*args, **kwargs)

    return run


def dense_forward(x, W, b, code: int, negative_slope: float = 0.01):
    return dense_dispatch.dense_forward(x, W, b, code, negative_slope)


def dense_backward(dy, x, W, saved, code: int, negative_slope: float = 0.01,
                   need_dx: bool = True, need_dw: bool = True, need_db: bool = True,
                   dW_out=None, db_out=None):
    return dense_dispatch.dense_backward(dy, x, W, saved, code, negative_slope, need_dx, need_dw, need_db,
                                         dW_out=dW_out, db_out=db_out)


@functools.lru_cache(maxsize=None)
def _cached(fast, ref):
    return _or_reference(fast, ref, 0, "p")


def optimizer_update(name: str):
    """CudaOps' `<name>_update`: the CUDA kernel, or the reference for dtypes the kernels do not take."""
    return _cached(optimizers_cuda.update(name), optimizers.update_reference(name))


@optimizer_updates
class CudaOps(Ops):
    """Numba CUDA kernels on CuPy arrays (launched on CuPy's current stream); see the module docstring."""

    name = "cuda"

    dense_forward = staticmethod(_or_reference(dense_forward, dense.dense_forward_ref, 0, "x"))
    dense_backward = staticmethod(_or_reference(dense_backward, dense.dense_backward_ref, 0, "dy"))
    activation_forward = staticmethod(_or_reference(activations_cuda.activation_forward, activation_forward_ref,
                                                    0, "z"))
    activation_backward = staticmethod(_or_reference(activations_cuda.activation_backward, activation_backward_ref,
                                                     0, "dy"))
    softmax_cross_entropy_forward = staticmethod(_or_reference(
        softmax_ce_cuda.softmax_cross_entropy_forward, softmax_ce.softmax_cross_entropy_forward_ref, 0, "logits"))
    softmax_cross_entropy_backward = staticmethod(_or_reference(
        softmax_ce_cuda.softmax_cross_entropy_backward, softmax_ce.softmax_cross_entropy_backward_ref, 1, "probs"))
    loss_forward = staticmethod(_or_reference(losses_cuda.loss_forward, losses.loss_forward_ref, 1, "x"))
    loss_backward = staticmethod(_or_reference(losses_cuda.loss_backward, losses.loss_backward_ref, 2, "x"))
    _optimizer_update = staticmethod(optimizer_update)


def gpu_ops():
    """CudaOps() when the GPU kernels can run here (the probe kernel ran: `nc.kernel_status()`),
    else the reference Ops() on CuPy, still on the GPU (`nc.fallback_warning()` says why, once)."""
    return CudaOps() if nc.fallback_warning(stacklevel=3) else Ops()


# ------------------------------------------------------------------------------------------ warm-up

def warmup(xp=None, dtypes=("float32",)):
    """Compile (and run once, on tiny arrays) the kernels a typical training step uses: the fused
    and cuBLAS dense paths (relu, identity), softmax cross-entropy, MSE, SGD and Adam. Returns
    [(kernel key, compile seconds)] for the kernels compiled by this call, and the wall time.
    `xp` defaults to cupy (numpy works under the simulator)."""
    import numpy as np

    from gpunn.kernels.activations import IDENTITY, RELU

    if xp is None:
        import cupy as xp
    before = len(nc.compile_log())
    t0 = time.perf_counter()
    ops = CudaOps()
    rng = np.random.default_rng(0)
    for dtype in dtypes:
        dt = np.dtype(dtype)
        x = xp.asarray(rng.standard_normal((5, 3)).astype(dt))
        W = xp.asarray(rng.standard_normal((4, 3)).astype(dt))
        b = xp.asarray(rng.standard_normal(4).astype(dt))
        for impl in ("fused", "cublas"):
            for code in (RELU, IDENTITY):
                y, saved = dense_dispatch.dense_forward(x, W, b, code, impl=impl)
                dense_dispatch.dense_backward(y, x, W, saved, code, impl=impl)
        labels = xp.asarray(np.array([0, 1, 2, 3, 0], dtype=np.int64))
        _, probs, stats = ops.softmax_cross_entropy_forward(y, labels, -100, "mean")
        ops.softmax_cross_entropy_backward(xp.asarray(dt.type(0.2)), probs, labels, -100, "mean", stats)
        ops.loss_backward("mse", xp.broadcast_to(xp.asarray(dt.type(0.1)), y.shape), y, y)
        p = xp.zeros(8, dtype=dt)
        g = xp.ones(8, dtype=dt)
        ops.sgd_update(p, g, xp.zeros(8, dtype=dt), 0.1, momentum=0.9, first_step=True)
        ops.sgd_update(p, g, xp.zeros(8, dtype=dt), 0.1, momentum=0.9, first_step=False)
        ops.adam_update(p, g, xp.zeros(8, dtype=dt), xp.zeros(8, dtype=dt), None, 1e-3)
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()
    return nc.compile_log()[before:], time.perf_counter() - t0


def gpu_report(out=None) -> None:
    """What `gpunn info --gpu` prints: whether the GPU kernels can run and why, the settings they
    depend on, the dense dispatch table's coverage of this device, and (on a GPU) the compile time
    of each kernel a training step uses (this compiles them)."""
    import os
    import sys

    from gpunn.kernels import dense_dispatch as dd

    out = out or sys.stdout
    usable, why = nc.kernel_status()
    print(f"gpu kernels: {'usable' if usable else 'not usable, CuPy arrays use the reference kernels'}: {why}",
          file=out)
    if nc.NVVM_STATUS:
        print(f"  {nc.NVVM_STATUS}", file=out)
    print(f"  {nc.tf32_status()}", file=out)
    print(f"  dense implementation: {os.environ.get(dd.ENV) or 'auto'} ({dd.ENV}); "
          f"fused GEMM tiles: {', '.join(dense_cuda_tiles())}", file=out)
    if not usable:
        print("  kernel compile times: not measured (no GPU kernels here)", file=out)
        return
    cuda = nc.numba_cuda()
    impl = getattr(cuda, "implementation", "?")
    print(f"  numba.cuda: {impl}; CuPy arrays reach kernels through DLPack on CuPy's current stream; "
          f"{nc.SYNC_ENV}={os.environ.get(nc.SYNC_ENV)!r} (CUDA Array Interface arguments only)", file=out)
    name = nc.device_name()
    entries = [k for k in dd._table_index() if k[0] == name]
    table = f"measured for {name}" if entries else f"no measurements for {name} (default rule)"
    print(f"  dispatch table: {table}", file=out)
    log, wall = warmup()
    log = [(k, sec) for k, sec in log if not str(k[0]).endswith("_device")]  # typed inside their kernels
    total = sum(s for _, s in log)
    print(f"  compiled {len(log)} kernels in {total:.2f} s (warm-up wall time {wall:.2f} s):", file=out)
    for key, seconds in log:
        print(f"    {seconds * 1000:8.1f} ms  {' '.join(str(k) for k in key)}", file=out)
    for key, text in nc.KERNELS.warnings:
        print(f"  warning while building {key}: {text}", file=out)


def dense_cuda_tiles():
    from gpunn.kernels import dense_cuda

    return list(dense_cuda.TILES)
