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

SASS (`sass_main_loop()`): the cubin is kept and disassembled on demand with NVIDIA's nvdisasm
(pip: `nvidia-cuda-nvdisasm`, also in the `cuda-compile` extra), to measure what the compiler made
of a GEMM's main loop: `fma_share` = FMA instructions (FFMA, DFMA) over all instructions in it.

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
    cubin: bytes = field(default=b"", repr=False)

    def sass(self) -> str:
        """The kernel's SASS, as nvdisasm prints it."""
        return disassemble(self.cubin)

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


# ------------------------------------------------------------------------------------------ SASS

def nvdisasm_path() -> str:
    """Where NVIDIA's nvdisasm is (the nvidia-cuda-nvdisasm wheel, or a CUDA toolkit), or an error saying
    what to install."""
    from cuda import pathfinder

    path = pathfinder.find_nvidia_binary_utility("nvdisasm")
    if not path:
        raise RuntimeError("nvdisasm not found: pip install nvidia-cuda-nvdisasm (gpunn's cuda-compile extra)")
    return path


def disassemble(cubin: bytes) -> str:
    """nvdisasm -c of a cubin: the code sections' SASS as text."""
    import subprocess
    import tempfile

    if not cubin:
        raise ValueError("no cubin to disassemble")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        r = subprocess.run([nvdisasm_path(), "-c", f.name], capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise RuntimeError(f"nvdisasm failed ({r.returncode}): {r.stderr.strip()[:500]}")
    return r.stdout


# `/*1c80*/  @!P0 BRA `(.L_x_2) ;` -> address, opcode with modifiers, operands
_SASS_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_SASS_LABEL = re.compile(r"^(\.L\w+):")
_SASS_TARGET = re.compile(r"`\((\.L\w+)\)")
FMA_OPCODES = ("FFMA", "DFMA")
_SASS_REG = re.compile(r"R\d+")
_NO_REGISTER_WRITE = ("ST", "STS", "STG", "STL", "RED", "ATOM", "ATOMS", "BRA", "BAR", "EXIT")


@dataclass
class SassLoop:
    """A loop of the SASS: the instructions (opcode, operands) from a backward branch's target label
    to the branch."""

    start: int  # address of its first instruction
    end: int    # address of the branch
    instrs: list

    @property
    def size(self) -> int:
        return len(self.instrs)

    @property
    def fmas(self) -> int:
        return sum(op.split(".")[0] in FMA_OPCODES for op, _ in self.instrs)

    @property
    def shared_fmas(self) -> int:
        """FMAs whose two multiplicands were loaded from shared memory (LDS; a 64/128-bit load fills
        2/4 registers) by the last instruction writing them, in program order around the loop (the
        body is walked twice, as loads for the next step may sit before the back branch): the FMAs
        of a GEMM's tile product. A polynomial (an activation's derivative, formed on load)
        multiplies computed values, and a register-renaming compiler keeps these visible, unlike
        accumulator registers."""
        writer, n = {}, 0
        for walk in (0, 1):
            for op, operands in self.instrs:
                base = op.split(".")[0]
                regs = [r.strip().split(".")[0].strip("-|") for r in operands.split(",")]
                if walk and base in FMA_OPCODES and len(regs) == 4 \
                        and writer.get(regs[1]) == writer.get(regs[2]) == "LDS":
                    n += 1
                if regs and _SASS_REG.fullmatch(regs[0]) and base not in _NO_REGISTER_WRITE:
                    width = 4 if ".128" in op else 2 if ".64" in op else 1
                    first = int(regs[0][1:])
                    for w in range(width):
                        writer[f"R{first + w}"] = base
        return n

    @property
    def fma_share(self) -> float:
        return self.fmas / self.size


def sass_loops(sass: str) -> list:
    """Every loop of a SASS listing (one kernel): a branch (BRA, conditional or not) to a label at or
    before it closes the loop whose body runs from that label to the branch, both included."""
    labels, instrs = {}, []
    pending = []
    for line in sass.splitlines():
        m = _SASS_LABEL.match(line.strip())
        if m:
            pending.append(m.group(1))
            continue
        m = _SASS_INSTR.match(line)
        if not m:
            continue
        addr = int(m.group(1), 16)
        for lab in pending:
            labels[lab] = addr
        pending = []
        instrs.append((addr, m.group(2), m.group(3)))
    loops = []
    for addr, op, operands in instrs:
        t = _SASS_TARGET.search(operands)
        if op.startswith("BRA") and t and t.group(1) in labels and labels[t.group(1)] <= addr:
            lo = labels[t.group(1)]
            loops.append(SassLoop(lo, addr, [(o, ops) for a, o, ops in instrs if lo <= a <= addr]))
    return loops


def sass_main_loop(sass: str):
    """The GEMM main loop of a kernel's SASS (None if no loop has one): the loop with the most FMAs
    that multiply two values loaded from shared memory (`SassLoop.shared_fmas`); of loops that tie
    (a loop and those nested around it that add none), the smallest, i.e. the innermost. Counting
    these, not all FMAs, keeps a loop that forms dz = dy * act'(s) on load with a polynomial (FMAs
    too) from being taken for the main loop. Measured this way, a k-loop that is not unrolled is
    the per-kk loop (its few FMAs and the shared loads and counters around them), and a fully
    unrolled one is the loop over the K slices, with its global loads, shared-memory stores,
    barrier and (in dx/dW) the dz formed on load."""
    loops = [lp for lp in sass_loops(sass) if lp.shared_fmas]
    if not loops:
        return None
    return max(loops, key=lambda lp: (lp.shared_fmas, -lp.size))


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
        cubin = linker.link("cubin")
        log = (linker.get_info_log() or "").replace("\x00", "")
        k = OfflineKernel(fn.__name__, self.cc, ptx_lines=ptx.count("\n"),
                          local_ops=ptx.count("ld.local") + ptx.count("st.local"), log=log, cubin=bytes(cubin.code))
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
