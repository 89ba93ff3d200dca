"""Every CUDA kernel compiled for sm_90 (H100/H200) by NVIDIA's real compiler, no GPU needed.

The simulator tests (test_cuda_kernels.py) run the kernels' Python semantics; they cannot catch
what only Numba's CUDA typing, NVVM or ptxas would refuse, nor tell how many registers a kernel
takes. Here kernels/ptxas_report.py compiles every kernel variant of every family (float32, the
default GEMM tile) to a cubin in subprocesses with the simulator off, and the report is checked:
nothing fails, nothing spills, the GEMMs' shared memory is what TileConfig.shared_bytes says, and
occupancy stays at the levels reached today (a regression guard, not a performance claim).
The offline plumbing itself (occupancy arithmetic, ptxas log parsing) is checked without the toolchain.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gpunn.backend import cuda_offline
from gpunn.kernels import activations_cuda, dense_cuda, losses_cuda, optimizers_cuda, softmax_ce_cuda
from gpunn.kernels import ACTIVATIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(ROOT, "kernels", "ptxas_report.py")

# A real nvJitLink verbose log (sm_90, a float32 element-wise kernel), as parse_ptxas sees it.
SAMPLE_LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN8__main__1kB2v1' for 'sm_90'
ptxas info    : Function properties for _ZN8__main__1kB2v1
ptxas         .     0 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 14 registers, used 0 barriers
info    : Function properties for '_ZN8__main__1kB2v1':
info    : used 14 registers, used 5 barriers, 16 stack, 5024 bytes smem, 640 bytes cmem[0], 4 bytes lmem
"""


def _offline_env():
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _toolchain() -> tuple[bool, str]:
    """Ask a simulator-free subprocess (this one runs under the simulator) whether NVVM works."""
    code = "from gpunn.backend import cuda_offline as c; ok, why = c.toolchain_status(); print(why); raise SystemExit(0 if ok else 3)"
    r = subprocess.run([sys.executable, "-c", code], env=_offline_env(), capture_output=True, text=True, timeout=120)
    return r.returncode == 0, (r.stdout + r.stderr).strip().splitlines()[-1] if (r.stdout + r.stderr).strip() else "?"


# ------------------------------------------------------------------------------------------ no toolchain needed

def test_occupancy_by_hand():
    # 256 threads = 8 warps; 96 registers -> 3072 per warp -> 24576 per block -> 2 blocks in 65536
    assert cuda_offline.occupancy((9, 0), 256, 96, 9344) == (2, 0.25)
    # 32 registers: 8192 per block -> registers allow 8, threads allow 8
    assert cuda_offline.occupancy((9, 0), 256, 32, 0) == (8, 1.0)
    # 40 registers -> 1280 per warp (a multiple of 256) -> 10240 per block -> 6 blocks
    assert cuda_offline.occupancy((9, 0), 256, 40, 0) == (6, 0.75)
    # shared memory binds: 100 KB per block -> 2 blocks on sm_90 (228 KB), 1 on sm_80 (164 KB)
    assert cuda_offline.occupancy((9, 0), 128, 32, 100 * 1024)[0] == 2
    assert cuda_offline.occupancy((8, 0), 128, 32, 100 * 1024)[0] == 1
    # tiny blocks: the 32-blocks-per-SM limit binds
    assert cuda_offline.occupancy((9, 0), 32, 16, 0) == (32, 0.5)
    # a register count is rounded up per warp: 33 registers cost as much as 40
    assert cuda_offline.occupancy((9, 0), 256, 33, 0) == cuda_offline.occupancy((9, 0), 256, 40, 0)


def test_occupancy_refuses_unknown_targets_and_block_sizes():
    with pytest.raises(ValueError, match="compute capability"):
        cuda_offline.occupancy((7, 5), 256, 32, 0)
    with pytest.raises(ValueError, match="1..1024"):
        cuda_offline.occupancy((9, 0), 2048, 32, 0)


def test_parse_ptxas_reads_every_resource():
    k = cuda_offline.parse_ptxas(SAMPLE_LOG, cuda_offline.OfflineKernel("k", (9, 0)))
    assert (k.registers, k.stack_bytes, k.shared_bytes, k.local_bytes) == (14, 16, 5024, 4)
    assert (k.spill_stores, k.spill_loads) == (8, 12)
    with pytest.raises(RuntimeError, match="no resource report"):
        cuda_offline.parse_ptxas("ptxas fatal: something else", cuda_offline.OfflineKernel("k", (9, 0)))


def test_offline_kernels_cannot_be_launched():
    k = cuda_offline.OfflineKernel("dense_forward_kernel", (9, 0), registers=96)
    with pytest.raises(RuntimeError, match="compiled offline for sm_90"):
        k[1, 256, 0]


def test_variants_are_distinct_and_cover_every_activation():
    for mod in (activations_cuda, dense_cuda, softmax_ce_cuda, losses_cuda, optimizers_cuda):
        keys = [(g.__name__, tuple(str(a) for a in args)) for g, args, _ in mod.variants()]
        assert len(keys) == len(set(keys)), mod.__name__
        assert all(t in (256, 1024) or 0 < t <= 1024 for _, _, t in mod.variants())
    codes = {args[1] for g, args, _ in dense_cuda.variants(tiles=[dense_cuda.DEFAULT_TILE])
             if g is dense_cuda.forward_kernel}
    assert codes == set(ACTIVATIONS.values())


# ------------------------------------------------------------------------------------------ NVVM + ptxas

@pytest.fixture(scope="module")
def report(tmp_path_factory):
    ok, why = _toolchain()
    if not ok:
        if _installed("nvidia-nvvm"):
            # the cuda-compile (or cuda13) extra is installed: then the compiler must work
            pytest.fail(f"numba-cuda[cu13] is installed but cannot compile offline: {why}")
        pytest.skip(f"needs numba-cuda[cu13] (pip install -e '.[test,cuda-compile]'): {why}")
    out = tmp_path_factory.mktemp("ptxas")
    # two processes (dense is about half of the compile time), both cores busy on a 2-core machine
    groups = {"dense": ["--family", "dense"],
              "rest": ["--family", "activations", "--family", "softmax_ce", "--family", "losses",
                       "--family", "optimizers"]}
    procs = {name: subprocess.Popen([sys.executable, REPORT, "--quick", "-q", "--json", str(out / f"{name}.json"), *args],
                                    env=_offline_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, args in groups.items()}
    rows, failures, logs = [], [], []
    for name, p in procs.items():
        text, _ = p.communicate(timeout=900)
        logs.append(text)
        assert p.returncode in (0, 1), f"ptxas_report ({name}) exit {p.returncode}:\n{text[-3000:]}"
        with open(out / f"{name}.json") as f:
            data = json.load(f)
        rows += data["rows"]
        failures += data["failures"]
    return {"rows": rows, "failures": failures, "log": "\n".join(logs)}


def _expected_count() -> int:
    f32 = [np.dtype(np.float32)]
    n = sum(1 for _ in dense_cuda.variants(f32, tiles=[dense_cuda.DEFAULT_TILE]))
    for mod in (activations_cuda, softmax_ce_cuda, losses_cuda, optimizers_cuda):
        n += sum(1 for _ in mod.variants(f32))
    return n


def test_every_kernel_compiles_for_sm90(report):
    assert not report["failures"], "\n".join(f"{f['family']} {f['variant']}: {f['error']}" for f in report["failures"])
    assert len(report["rows"]) == _expected_count()


def test_no_kernel_spills_registers_or_uses_local_memory(report):
    """No spills, and no per-thread array left in local memory (PTX ld/st.local, stack frame): the
    GEMM accumulators stay in registers. (The 128x128 tile with gelu/sigmoid does keep a 256-byte
    copy of them on the stack for its epilogue; it is not in this quick set: see ptxas_report.)"""
    bad = [r for r in report["rows"]
           if r["spill_stores"] or r["spill_loads"] or r["local_bytes"] or r["stack_bytes"] or r["local_ops"]]
    assert not bad, bad


def test_gemm_shared_memory_is_what_the_tile_config_says(report):
    cfg = dense_cuda.TILES[dense_cuda.DEFAULT_TILE]
    gemms = [r for r in report["rows"] if r["kernel"] in ("dense_forward_kernel", "dense_dx_kernel", "dense_dw_kernel")]
    assert gemms
    for r in gemms:  # ptxas counts the driver's 1 KB per-block reservation (cuda_offline docstring)
        assert r["shared_bytes"] == cfg.shared_bytes(4) + 1024, r
        assert r["threads"] == cfg.threads


def test_occupancy_does_not_regress(report):
    """Levels reached on 2026-11-26 (numba-cuda 0.30.4, CUDA 13.5 NVVM): GEMMs 2 blocks of 256
    threads per SM (96-116 registers), every element-wise / reduction kernel >= 4 blocks (<= 64)."""
    for r in report["rows"]:
        if r["kernel"] in ("dense_forward_kernel", "dense_dx_kernel", "dense_dw_kernel"):
            assert r["blocks_per_sm"] >= 2, r
        else:
            assert r["blocks_per_sm"] >= 4 and r["registers"] <= 64, r
