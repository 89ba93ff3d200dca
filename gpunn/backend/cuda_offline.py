"""Compile gpunn's CUDA kernels for a GPU architecture on a machine WITHOUT a GPU, and read what
the compiler says of them: registers, spills, stack, shared memory, and the occupancy those allow.

How: inside `offline_build(cc)`, `numba_cuda.jit(sig, fn)` does not load a kernel onto a device;
it runs the same front end (Numba typing and lowering, NVVM) to PTX for compute capability `cc`
(`numba.cuda.compile_ptx`, the same options as `numba.cuda.jit`), then assembles the PTX into a
cubin with nvJitLink (ptxas inside it) in verbose mode and parses ptxas's resource report. The
kernel registry used inside is a fresh one, so nothing built offline can ever be launched.
Needs numba-cuda with CUDA 13's NVVM, NVRTC and nvJitLink (pip: `numba-cuda[cu13]`, in gpunn's
`cuda-compile` extra); no driver, no device.

What this proves: the kernels type-check, lower and assemble for the real target, with the
resources ptxas reports. What it does not: that they run correctly or fast on the hardware.

Occupancy (`occupancy()`): resident blocks per SM = the minimum over the limits on threads, blocks,
registers (allocated per warp in units of 256) and shared memory, from NVIDIA's CUDA occupancy
rules for the listed compute capabilities. Shared memory is counted as ptxas reports it for sm_80+:
the kernel's static shared arrays plus the 1 KB the driver reserves per block (a 4000-byte array
reports 5024 bytes); a kernel without shared arrays reports 0 and is counted as the 1 KB.
"""
from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import dataclass, field

from gpunn.backend import numba_cuda as nc


@dataclass(frozen=True)
class SMLimits:
    """Per-SM limits of one compute capability (CUDA C Programming Guide, compute capabilities table)."""

    threads: int = 2048
    blocks: int = 32
    registers: int = 65536
    max_registers_per_thread: int = 255
    register_unit: int = 256          # registers are allocated per warp in multiples of this
    shared_bytes: int = 233472        # usable shared memory per SM (228 KB on sm_90)
    shared_reserved_per_block: int = 1024


SM_LIMITS = {
    (8, 0): SMLimits(shared_bytes=167936),  # A100: 164 KB usable shared memory per SM
    (9, 0): SMLimits(),                     # H100/H200
}


@dataclass
class OfflineKernel:
    """One kernel compiled offline for `cc`: ptxas's report, and why it is not launchable."""

    name: str
    cc: tuple
    registers: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    stack_bytes: int = -1
    shared_bytes: int = -1  # static shared memory per block, with the 1 KB reservation (see above)
    local_bytes: int = -1
    ptx_lines: int = 0
    local_ops: int = 0  # ld.local + st.local instructions in the PTX: arrays the compiler could not keep in registers
    seconds: float = 0.0
    log: str = field(default="", repr=False)

    def __getitem__(self, launch_config):
        raise RuntimeError(f"kernel {self.name} was compiled offline for sm_{self.cc[0]}{self.cc[1]} "
                           "(gpunn.backend.cuda_offline) and cannot be launched")

    def occupancy(self, threads_per_block: int) -> tuple[int, float]:
        """(resident blocks per SM, occupancy = resident threads / max threads) for this block size."""
        return occupancy(self.cc, threads_per_block, self.registers, max(self.shared_bytes, 0))


def occupancy(cc, threads_per_block: int, registers: int, shared_bytes: int) -> tuple[int, float]:
    """Resident blocks per SM and the fraction of the SM's thread slots they fill. `shared_bytes`
    per block as ptxas reports it (the driver's 1 KB reservation included)."""
    try:
        lim = SM_LIMITS[tuple(cc)]
    except KeyError:
        raise ValueError(f"no occupancy limits for compute capability {cc}; known: {sorted(SM_LIMITS)}") from None
    if not 0 < threads_per_block <= 1024:
        raise ValueError(f"threads per block must be in 1..1024, got {threads_per_block}")
    warps = math.ceil(threads_per_block / 32)
    by_threads = lim.threads // (warps * 32)
    regs_per_warp = math.ceil(max(registers, 1) * 32 / lim.register_unit) * lim.register_unit
    by_regs = lim.registers // (regs_per_warp * warps)
    by_shared = lim.shared_bytes // max(shared_bytes, lim.shared_reserved_per_block)
    blocks = max(0, min(lim.blocks, by_threads, by_regs, by_shared))
    return blocks, blocks * warps * 32 / lim.threads


_INFO = re.compile(r"used (\d+) registers.*?(\d+) stack, (\d+) bytes smem.*?(\d+) bytes lmem")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas(log: str, kernel: OfflineKernel) -> OfflineKernel:
    """Fill `kernel`'s resources from nvJitLink's verbose log (one entry function)."""
    m = _INFO.search(log)
    if m is None:
        raise RuntimeError(f"no resource report in the nvJitLink log of {kernel.name}:\n{log}")
    kernel.registers, kernel.stack_bytes, kernel.shared_bytes, kernel.local_bytes = map(int, m.groups())
    s = _SPILL.search(log)
    if s is not None:
        kernel.spill_stores, kernel.spill_loads = map(int, s.groups())
    return kernel


class OfflineTarget:
    """Replaces `numba_cuda.jit` while `offline_build` is active."""

    def __init__(self, cc):
        self.cc = tuple(cc)
        if self.cc not in SM_LIMITS:
            raise ValueError(f"offline builds target {sorted(SM_LIMITS)}, got {self.cc}")
        self.built: list = []

    def jit(self, sig, fn, launch_bounds=None) -> OfflineKernel:
        from cuda.core import Linker, LinkerOptions, ObjectCode

        cuda = nc.numba_cuda()
        t0 = time.perf_counter()
        ptx, _ = cuda.compile_ptx(fn, sig, cc=self.cc, launch_bounds=launch_bounds)
        linker = Linker(ObjectCode.from_ptx(ptx.encode()),
                        options=LinkerOptions(arch=f"sm_{self.cc[0]}{self.cc[1]}", verbose=True))
        linker.link("cubin")
        log = (linker.get_info_log() or "").replace("\x00", "")
        k = OfflineKernel(fn.__name__, self.cc, ptx_lines=ptx.count("\n"),
                          local_ops=ptx.count("ld.local") + ptx.count("st.local"), log=log)
        parse_ptxas(log, k)
        k.seconds = time.perf_counter() - t0
        self.built.append(k)
        return k


def toolchain_status() -> tuple[bool, str]:
    """(usable, reason): whether kernels can be compiled offline here (numba-cuda, NVVM, nvJitLink)."""
    if nc.is_simulator():
        return False, f"{nc.SIM_ENV}=1: numba.cuda is the simulator, which compiles nothing"
    try:
        cuda = nc.numba_cuda()
        from cuda.core import Linker  # noqa: F401

        def probe(a):
            a[0] = 1.0

        import numba

        cuda.compile_ptx(probe, (numba.float32[:],), cc=(9, 0))
    except Exception as err:
        return False, (f"cannot compile CUDA kernels offline: {type(err).__name__}: {err} "
                       "(needs numba-cuda[cu13]: pip install 'gpunn[cuda-compile]')")
    return True, "numba-cuda with NVVM and nvJitLink"


@contextlib.contextmanager
def offline_build(cc=(9, 0)):
    """Within the block, every kernel build compiles for `cc` and returns an `OfflineKernel`
    (into a fresh kernel registry, restored afterwards). Yields the OfflineTarget (its `.built`)."""
    target = OfflineTarget(cc)
    # A device function compiles when a kernel that calls it is typed, for the *current device's*
    # compute capability (numba.cuda.dispatcher.get_current_device); offline there is none, so the
    # dispatcher module is given a stand-in device of the target's capability for the duration.
    from numba.cuda import dispatcher

    class _TargetDevice:
        compute_capability = target.cc

    saved_jit, saved_registry = nc._jit_override, nc.KERNELS
    saved_device = getattr(dispatcher, "get_current_device", None)
    nc._jit_override, nc.KERNELS = target.jit, nc.KernelRegistry()
    if saved_device is not None:
        dispatcher.get_current_device = _TargetDevice
    try:
        yield target
    finally:
        nc._jit_override, nc.KERNELS = saved_jit, saved_registry
        if saved_device is not None:
            dispatcher.get_current_device = saved_device
