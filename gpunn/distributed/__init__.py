"""Collectives over many processes with torch.distributed's names: MPI on CPUs, NCCL on GPUs.

    import gpunn.distributed as dist
    dist.init_process_group()              # under mpiexec / srun; "mpi" or "nccl" chosen for you
    dist.all_reduce(t, op=dist.ReduceOp.AVG)
    dist.destroy_process_group()

Start with `mpiexec -n 4 python train.py` (or `srun`; see the README, "Many processes"). Rank and
world size come from MPI; the launcher's variables (`_launch.py`) give the local rank, which picks
the GPU on the NCCL backend. Faults: every collective has a deadline (`timeout`, default 3 minutes;
the environment variable GPUNN_DIST_TIMEOUT sets it in seconds for programs that do not pass one);
past it the rank names the collective and aborts the whole job. An uncaught exception on any rank
prints that rank's traceback, prefixed with its rank, and aborts the job, so no rank waits forever.
"""
from __future__ import annotations

import datetime
import numbers
import os
import sys
import traceback

import numpy as np

from gpunn.autograd.tensor import Tensor
from gpunn.distributed._launch import LaunchInfo, launch_info

__all__ = ["init_process_group", "is_initialized", "is_available", "get_rank", "get_world_size",
           "get_local_rank", "get_backend", "all_reduce", "broadcast", "barrier", "destroy_process_group",
           "ReduceOp", "launch_info", "LaunchInfo", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = datetime.timedelta(minutes=3)
_BACKENDS = ("mpi", "nccl")

_group = None  # the initialized backend (MPIBackend or NCCLBackend), or None
_prev_excepthook = None


class ReduceOp:
    """The reductions `all_reduce` takes (torch.distributed.ReduceOp's names); plain strings
    "sum" and "avg" work too."""

    SUM = "sum"
    AVG = "avg"


def is_available() -> bool:
    """Whether mpi4py is importable (every backend starts over MPI)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def _timeout_seconds(timeout) -> float:
    if timeout is None:
        env = os.environ.get("GPUNN_DIST_TIMEOUT")
        if env is None:
            return DEFAULT_TIMEOUT.total_seconds()
        try:
            timeout = float(env)
        except ValueError:
            raise ValueError(f"GPUNN_DIST_TIMEOUT={env!r} must be a number of seconds") from None
    if isinstance(timeout, datetime.timedelta):
        timeout = timeout.total_seconds()
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or a datetime.timedelta, got {timeout!r}")
    return float(timeout)


def _default_backend() -> str:
    from gpunn.backend import gpu_status

    usable, _ = gpu_status()
    if not usable:
        return "mpi"
    try:
        from cupy.cuda import nccl
    except ImportError:
        return "mpi"
    return "nccl" if getattr(nccl, "available", True) else "mpi"


def init_process_group(backend=None, timeout=None, **kwargs) -> None:
    """Join this process to the job. backend: "mpi", "nccl", or None (nccl when this process has a
    usable GPU and CuPy's NCCL, mpi otherwise). timeout: seconds or a datetime.timedelta that every
    collective may take before the job is aborted (default: GPUNN_DIST_TIMEOUT, else 3 minutes).
    torch's init_method/world_size/rank/store keywords are refused: MPI knows them."""
    global _group, _prev_excepthook
    if kwargs:
        raise TypeError(f"init_process_group() got {sorted(kwargs)}; gpunn takes rank and world size from "
                        "MPI (start the processes with mpiexec or srun), so only backend and timeout are accepted")
    if _group is not None:
        raise RuntimeError("trying to initialize the default process group twice; call destroy_process_group() "
                           "first")
    seconds = _timeout_seconds(timeout)
    if backend is not None:
        if not isinstance(backend, str) or backend.lower() not in _BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(_BACKENDS)} or None")
        backend = backend.lower()
    else:
        backend = _default_backend()
    info = launch_info()
    from gpunn.distributed._backends import MPIBackend, NCCLBackend

    mpi = MPIBackend(seconds, info.local_rank)
    if info.world_size is not None and info.world_size != mpi.size:
        mpi.destroy()
        raise RuntimeError(
            f"the {info.launcher} says the job has {info.world_size} processes but MPI connects {mpi.size}: "
            f"these processes were not started by an MPI launcher (gpunn's transport is MPI); start them with "
            f"mpiexec -n {info.world_size} ... or srun --mpi=pmi2/pmix ...")
    if info.rank is not None and info.world_size is not None and info.rank != mpi.rank:
        mpi.destroy()
        raise RuntimeError(f"the {info.launcher} gives rank {info.rank} but MPI gives {mpi.rank}")
    _group = NCCLBackend(seconds, mpi) if backend == "nccl" else mpi
    _share_cores(mpi.local_size)
    if mpi.size > 1:
        _prev_excepthook = sys.excepthook
        sys.excepthook = _abort_on_exception


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_blas_limit = None


def _share_cores(local_size: int) -> None:
    """Give each of the `local_size` ranks on this node its share of the cores for BLAS (as
    torchrun sets OMP_NUM_THREADS=1): every rank's BLAS pool spinning on all cores slows 4 ranks
    on 2 cores by 5x. Left alone when the user set a thread variable, or without threadpoolctl."""
    global _blas_limit
    if local_size <= 1 or any(v in os.environ for v in _THREAD_VARS):
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    _blas_limit = threadpool_limits(limits=max(1, cores // local_size), user_api="blas")


def _abort_on_exception(etype, value, tb) -> None:
    """sys.excepthook while a group of more than one rank is up: the traceback, each line naming
    this rank, then an abort of the whole job (the other ranks would otherwise wait forever)."""
    group = _group
    if group is None:  # pragma: no cover - destroyed in between
        (_prev_excepthook or sys.__excepthook__)(etype, value, tb)
        return
    lines = "".join(traceback.format_exception(etype, value, tb)).rstrip("\n").splitlines()
    sys.stderr.write("".join(f"[rank {group.rank}] {line}\n" for line in lines))
    from gpunn.distributed._backends import fail

    fail(group.rank, group.size, f"uncaught {etype.__name__}", group.abort)


def is_initialized() -> bool:
    return _group is not None


def _need(what: str):
    if _group is None:
        raise RuntimeError(f"{what}: the default process group has not been initialized; call "
                           "gpunn.distributed.init_process_group() first")
    return _group


def get_rank() -> int:
    return _need("get_rank").rank


def get_world_size() -> int:
    return _need("get_world_size").size


def get_local_rank() -> int:
    """This process's rank among those on its node (the GPU index on the NCCL backend)."""
    return _need("get_local_rank").local_rank


def get_backend() -> str:
    return _need("get_backend").name


def _array(tensor, what: str):
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{what} takes a gpunn Tensor, got {type(tensor).__name__}")
    return tensor.data


def _op(op) -> bool:
    """True for "avg", False for "sum"; ValueError naming the valid ops otherwise."""
    name = op.lower() if isinstance(op, str) else op
    if name not in (ReduceOp.SUM, ReduceOp.AVG):
        raise ValueError(f"all_reduce op must be ReduceOp.SUM ('sum') or ReduceOp.AVG ('avg'), got {op!r}")
    return name == ReduceOp.AVG


def all_reduce(tensor, op=ReduceOp.SUM) -> None:
    """Replace `tensor`'s values, in place, by their sum (or average) over all ranks. Same shape
    and dtype on every rank; AVG needs a float dtype."""
    group = _need("all_reduce")
    average = _op(op)
    a = _array(tensor, "all_reduce")
    if average and a.dtype.kind != "f":
        raise TypeError(f"all_reduce with op=AVG needs a float tensor, got dtype {a.dtype}")
    what = f"all_reduce({op}, shape {tuple(a.shape)}, {a.dtype})"
    group.wait(group.start_all_reduce(a, what, average), what)


def broadcast(tensor, src: int = 0) -> None:
    """Replace `tensor`'s values, in place, on every rank by rank `src`'s."""
    group = _need("broadcast")
    if isinstance(src, bool) or not isinstance(src, numbers.Integral) or not 0 <= src < group.size:
        raise ValueError(f"broadcast src must be a rank in 0..{group.size - 1}, got {src!r}")
    a = _array(tensor, "broadcast")
    what = f"broadcast(src={src}, shape {tuple(a.shape)}, {a.dtype})"
    group.wait(group.start_broadcast(a, int(src), what), what)


def barrier() -> None:
    """Wait until every rank has reached this call (or abort the job at the timeout)."""
    group = _need("barrier")
    group.wait(group.start_barrier(), "barrier")


def destroy_process_group() -> None:
    """Leave the group (collectives then raise until init_process_group is called again)."""
    global _group, _prev_excepthook, _blas_limit
    group = _need("destroy_process_group")
    _group = None
    if _prev_excepthook is not None:
        sys.excepthook = _prev_excepthook
        _prev_excepthook = None
    group.destroy()
    if _blas_limit is not None:
        _blas_limit.restore_original_limits()
        _blas_limit = None


def host_all_reduce(values, what: str):
    """Sum a small host array (metrics, flags) over ranks; returns the summed float64 array.
    With no group (or a world of one) returns the values unchanged."""
    out = np.array(values, dtype=np.float64).reshape(-1)
    if _group is not None and _group.size > 1:
        _group.wait(_group.start_all_reduce(out, what), what)
    return out


def host_broadcast(values, what: str, src: int = 0):
    """Rank `src`'s small host array (seeds, decisions) on every rank, as int64."""
    out = np.array(values, dtype=np.int64).reshape(-1)
    if _group is not None and _group.size > 1:
        _group.wait(_group.start_broadcast(out, src, what), what)
    return out
