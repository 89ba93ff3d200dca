"""Where a process sits in the job, read from its launcher's environment.

Launchers and their variables (rank, world size, local rank):
- Open MPI `mpiexec`/`mpirun`: OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK
- MPICH/Hydra (also Intel MPI, MVAPICH): PMI_RANK, PMI_SIZE, MPI_LOCALRANKID
- PMIx launchers (prrte, `srun --mpi=pmix`): PMIX_RANK, with the size from MPI
- Slurm `srun`: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID
- torchrun style (or a cluster's own wrapper): RANK, WORLD_SIZE, LOCAL_RANK
The first launcher found names the values; MPI itself must still connect the processes (gpunn's
transport is MPI, and NCCL's unique id travels over it).
"""
from __future__ import annotations

import os

__all__ = ["LaunchInfo", "launch_info"]

# (launcher, rank variable, size variable, local rank variable)
_LAUNCHERS = (
    ("Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("MPICH (Hydra)", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("PMIx", "PMIX_RANK", None, None),
    ("Slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    ("torchrun-style environment", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
)


class LaunchInfo:
    """rank, world_size and local_rank as the launcher set them (None where it set none), and
    `launcher`, the name of the launcher they came from (None: a plain `python` process)."""

    __slots__ = ("rank", "world_size", "local_rank", "launcher")

    def __init__(self, rank=None, world_size=None, local_rank=None, launcher=None):
        self.rank, self.world_size, self.local_rank, self.launcher = rank, world_size, local_rank, launcher

    def __repr__(self) -> str:
        return (f"LaunchInfo(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank}, "
                f"launcher={self.launcher!r})")


def _int_var(env, name):
    if name is None or name not in env:
        return None
    text = env[name].strip()
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={env[name]!r} must be a whole number") from None
    if value < 0:
        raise ValueError(f"environment variable {name}={value} must be >= 0")
    return value


def launch_info(env=None) -> LaunchInfo:
    """The launcher's view of this process, from `env` (default: os.environ)."""
    env = os.environ if env is None else env
    for launcher, rank_var, size_var, local_var in _LAUNCHERS:
        rank = _int_var(env, rank_var)
        if rank is None:
            continue
        size = _int_var(env, size_var)
        if size is not None and rank >= size:
            raise ValueError(f"{launcher}: {rank_var}={rank} is not below {size_var}={size}")
        return LaunchInfo(rank, size, _int_var(env, local_var), launcher)
    return LaunchInfo()
