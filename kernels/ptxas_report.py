"""Compile every gpunn CUDA kernel for a GPU architecture WITHOUT a GPU and report what ptxas says.

For each kernel variant the CUDA families can build (`variants()` in gpunn/kernels/*_cuda.py:
every activation, dtype, flag combination and tile configuration), this compiles Numba -> NVVM ->
PTX -> cubin for the target (gpunn.backend.cuda_offline) and prints registers per thread, spill
stores/loads, stack, the PTX's local-memory loads and stores (ldst.local: a per-thread array the
compiler could not keep in registers), static shared memory (with the driver's 1 KB), and the
occupancy those allow at the kernel's block size (resident blocks per SM, resident threads /
2048). For the fused GEMMs (dense forward, dx, dW) it adds `fma_share`: FMA instructions (FFMA;
DFMA in float64) over all instructions in the main loop of the kernel's SASS (the cubin disassembled
by nvdisasm; the main loop is the loop with the most FMAs multiplying two values loaded from shared
memory, the innermost of those that tie: `cuda_offline.sass_main_loop`), with that loop's FMA and instruction counts. Any compile failure is listed and makes the exit status 1; so does any spill when
--no-spills is given.

Reading it: the 128x128x8/8x8 forward GEMM with gelu, gelu_tanh or sigmoid (and float64 tanh)
shows a 256-byte (float64: 512) stack and 40 ldst.local: its epilogue loop is too large to unroll,
so the 64 accumulators are stored to local memory once after the main loop and read back there;
the main loop itself keeps them in registers (checked in the PTX, 2026-11-26).

    python kernels/ptxas_report.py [--cc 9.0] [--quick] [--family dense] [--json out.json]

Needs numba-cuda[cu13] (gpunn's `cuda-compile` extra: NVVM, NVRTC, nvJitLink); no GPU, no driver.
It proves the kernels compile for the target with these resources, not that they run correctly
or fast there: that is kernels/gpu_check.sh's job, on a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone

# Before numba is imported: this report needs the real compiler, never the simulator.
if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
    raise SystemExit("ptxas_report: unset NUMBA_ENABLE_CUDASIM (the simulator compiles nothing)")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from gpunn.backend import cuda_offline  # noqa: E402
from gpunn.kernels import (  # noqa: E402
    activations_cuda,
    dense_cuda,
    losses_cuda,
    optimizers_cuda,
    softmax_ce_cuda,
)

FAMILIES = {
    "activations": activations_cuda,
    "dense": dense_cuda,
    "softmax_ce": softmax_ce_cuda,
    "losses": losses_cuda,
    "optimizers": optimizers_cuda,
}


def describe(args) -> str:
    """A short text for a variant's arguments (dtypes by name, tile configs by name, builders dropped)."""
    out = []
    for a in args:
        if isinstance(a, dense_cuda.TileConfig):
            out.append(a.name)
        elif isinstance(a, np.dtype) or isinstance(a, type) and issubclass(a, np.generic):
            out.append(np.dtype(a).name)
        elif callable(a):
            continue
        else:
            out.append(str(a))
    return ",".join(out)


# --quick compiles the element-load (unaligned operands) GEMMs for these activations only.
QUICK_ELEMENT_LOAD_CODES = (dense_cuda.IDENTITY,)
GEMM_GETTERS = (dense_cuda.forward_kernel, dense_cuda.dx_kernel, dense_cuda.dw_kernel)


def main_loop_figures(k) -> dict:
    """fma_share, FMAs and instructions of a GEMM kernel's SASS main loop (see the module docstring)."""
    loop = cuda_offline.sass_main_loop(k.sass())
    if loop is None:
        return {"fma_share": 0.0, "loop_fmas": 0, "loop_instructions": 0}
    return {"fma_share": round(loop.fma_share, 4), "loop_fmas": loop.fmas, "loop_instructions": loop.size}


def collect(families, dtypes, tiles, quick=False, codes=None):
    for fam in families:
        mod = FAMILIES[fam]
        kwargs = {"tiles": tiles} if fam == "dense" else {}
        if fam == "dense" and quick:  # element-load GEMMs share their main loop across activations
            kwargs["element_load_codes"] = QUICK_ELEMENT_LOAD_CODES
        for getter, args, threads in mod.variants(dtypes=dtypes, **kwargs):
            if codes is None or fam == "dense" and len(args) > 1 and args[1] in codes:
                yield fam, getter, args, threads


def run(families, dtypes, tiles, cc, quiet=False, quick=False, codes=None) -> dict:
    rows, failures = [], []
    t0 = time.perf_counter()
    with cuda_offline.offline_build(cc):
        for fam, getter, args, threads in collect(families, dtypes, tiles, quick, codes):
            label = describe(args)
            try:
                k = getter(*args)
            except Exception as err:
                failures.append({"family": fam, "variant": label, "error": f"{type(err).__name__}: {err}",
                                 "traceback": traceback.format_exc(limit=4)})
                if not quiet:
                    print(f"FAILED {fam} {label}: {type(err).__name__}: {str(err).splitlines()[0][:200]}", flush=True)
                continue
            blocks, occ = k.occupancy(threads)
            row = {"family": fam, "kernel": k.name, "variant": label, "threads": threads,
                   "registers": k.registers, "spill_stores": k.spill_stores, "spill_loads": k.spill_loads,
                   "stack_bytes": k.stack_bytes, "local_ops": k.local_ops, "shared_bytes": k.shared_bytes,
                   "local_bytes": k.local_bytes,
                   "blocks_per_sm": blocks, "occupancy": round(occ, 4), "compile_seconds": round(k.seconds, 3)}
            gemm = getter in GEMM_GETTERS
            if gemm:
                row.update(main_loop_figures(k))
            rows.append(row)
            if not quiet:
                fma = (f"  fma {row['fma_share']:.2f} ({row['loop_fmas']}/{row['loop_instructions']})"
                       if gemm else "")
                print(f"{fam:11s} {k.name:28s} {label:42s} thr {threads:4d} reg {k.registers:3d} "
                      f"spill {k.spill_stores}/{k.spill_loads} stack {k.stack_bytes:4d} ldst.local {k.local_ops:4d} "
                      f"smem {k.shared_bytes:6d} "
                      f"blk/SM {blocks:2d} occ {occ:5.1%}  {k.seconds:5.2f}s{fma}", flush=True)
    return {"rows": rows, "failures": failures, "seconds": round(time.perf_counter() - t0, 1)}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("numba", "numba-cuda", "nvidia-nvvm", "nvidia-nvjitlink", "nvidia-cuda-nvrtc"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cc", default="9.0", help="target compute capability (9.0 = H100/H200, 8.0 = A100)")
    ap.add_argument("--family", action="append", choices=sorted(FAMILIES), help="only these families")
    ap.add_argument("--dtype", action="append", choices=("float32", "float64"), help="only these dtypes")
    ap.add_argument("--tile", action="append", choices=sorted(dense_cuda.TILES), help="only these GEMM tiles")
    ap.add_argument("--quick", action="store_true", help=f"float32 and the default tile ({dense_cuda.DEFAULT_TILE}) only; element-load GEMMs "
                    "for the identity only")
    ap.add_argument("--activation", action="append", type=int, choices=sorted(dense_cuda.registry.BY_CODE),
                    help="only the dense kernels of these activation codes (gpunn.kernels.activations)")
    ap.add_argument("--no-spills", action="store_true", help="exit 1 if any kernel spills registers")
    ap.add_argument("--json", help="write the rows, failures and versions here")
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args(argv)
    try:
        cc = tuple(int(p) for p in a.cc.split("."))
    except ValueError:
        ap.error(f"--cc must look like 9.0, got {a.cc!r}")
    ok, why = cuda_offline.toolchain_status()
    if not ok:
        print(f"ptxas_report: {why}", file=sys.stderr)
        return 2
    dtypes = [np.dtype(d) for d in (a.dtype or (["float32"] if a.quick else ["float32", "float64"]))]
    tiles = a.tile or ([dense_cuda.DEFAULT_TILE] if a.quick else list(dense_cuda.TILES))
    families = a.family or list(FAMILIES)
    result = run(families, dtypes, tiles, cc, quiet=a.quiet, quick=a.quick, codes=a.activation)
    rows, failures = result["rows"], result["failures"]
    spilled = [r for r in rows if r["spill_stores"] > 0 or r["spill_loads"] > 0]
    print(f"\n{len(rows)} kernels compiled for sm_{cc[0]}{cc[1]} in {result['seconds']} s, {len(failures)} failed, "
          f"{len(spilled)} spill; registers {min((r['registers'] for r in rows), default=0)}.."
          f"{max((r['registers'] for r in rows), default=0)}")
    for f in failures:
        print(f"FAILED {f['family']} {f['variant']}\n{f['traceback']}")
    for r in spilled:
        print(f"SPILLS {r['family']} {r['kernel']} {r['variant']}: {r['spill_stores']} B stored, {r['spill_loads']} B loaded")
    if a.json:
        meta = {"cc": list(cc), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "commit": _commit(),
                "versions": _versions(), "dtypes": [d.name for d in dtypes], "tiles": tiles, "families": families,
                "activations": a.activation}
        with open(a.json, "w") as f:
            json.dump({**meta, **result}, f, indent=1)
    if failures or (a.no_spills and spilled):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
