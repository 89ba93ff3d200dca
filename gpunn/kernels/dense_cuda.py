"""The fused dense layer on the GPU: Numba CUDA kernels for y = act(x @ W.T + b) and its gradients.

Contract: gpunn/kernels/dense.py. x (N, K), W (M, K), b (M,) or None, y (N, M); one dtype
(float32 or float64). Forward returns (y, saved): saved is z for gelu, gelu_tanh and leaky_relu
with a negative slope (`needs_preactivation`), else y (the same array). Backward, with
dz = dy * act'(saved): dx = dz @ W, dW = dz.T @ x, db = column sums of dz.

Two implementations, chosen per shape by gpunn/kernels/dense_dispatch.py:

"fused" -- our own tiled GEMMs, one launch per product:
  forward   `dense_forward_kernel`: C = x @ W.T with register blocking. A block of BM*BN/(TM*TN)
            threads computes a BM x BN tile of the output; each thread a TM x TN sub-tile made of
            groups of 4 contiguous rows / columns (`tile_index`), read from shared memory with
            16-byte loads. K is walked in BK-wide slices staged in two shared buffers (x slice
            stored transposed, rows padded by 16 bytes); the next slice is loaded into registers
            (16-byte global loads when the operands allow: `vector_width`) while the current one
            is multiplied, the multiply is unrolled (see "What makes the loop tight" below). The
            epilogue adds b, applies the activation and writes y (and z when backward needs it)
            once. Grid (ceil(M/BN), ceil(N/BM)).
  backward  `dense_dx_kernel`: dx = dz @ W, reduction over M; dz = dy * act'(saved) is formed
            while the dy/saved slice is loaded into shared memory (never stored).
            `dense_dw_kernel`: dW = dz.T @ x, reduction over N, dz formed on load the same way;
            the blocks of the first K-tile column also sum the dz slices they load into db
            (float64, one thread per column, rows in order): deterministic, no atomics.
            Grids (ceil(K/BN), ceil(N/BM)) and (ceil(K/BN), ceil(M/BM)).
  Accumulation in the data's dtype (as cuBLAS does), products fused into FMAs by the compiler;
  db in float64.

"cublas" -- xp.matmul (cuBLAS through CuPy; full float32 unless the user set CUPY_TF32=1) plus ONE
  element-wise kernel: `bias_act_kernel` (z += b; y = act(z), in place when saved is y) forward;
  `dz_colsum_kernel` (dz = dy * act'(saved) and per-chunk float64 column sums of dz) backward,
  followed, when the rows were split into several chunks, by `colsum_finalize_kernel` (the chunk
  sums added in chunk order). Both deterministic: no float atomics anywhere.

Limits (checked before launch, ValueError otherwise): 2-D C-contiguous operands of one float
dtype (the dispatcher copies non-contiguous ones); fused grids need ceil(rows/BM) <= 65535
(N <= 4,194,240 at BM=64; the dispatcher then uses cublas). Every kernel is compiled once per
(dtype, activation code, flags, tile configuration, load width) with an explicit signature; the
load width is 16 bytes when every operand is 16-byte aligned with rows of a multiple of 16 bytes,
else one element (any shape: ragged edges are bounds-checked either way).
Shared memory per block: 2 * BK * (BM + BN + 2 * 16 / itemsize) * itemsize (17 KB float32 for
64x64x16). Registers and fma_share (ptxas / nvdisasm, sm_90; kernels/ptxas_report.py and
kernels/results/sm_90-ptxas-2026-11-29.txt): see the README. `variants()` lists every kernel this
module can build.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gpunn.backend import numba_cuda as nc
from gpunn.kernels import registry
from gpunn.kernels.activations import IDENTITY, check_code, needs_preactivation
from gpunn.kernels.activations_cuda import act_device, dz_device
from gpunn.kernels.cuda_elementwise import SUPPORTED_DTYPES, launch
from gpunn.kernels.activations_cuda import backward_kernel as activation_backward_kernel

cuda = None  # numba.cuda once a kernel is built: kernels reach it as this global (nc.bind_numba_cuda)


def _cuda():
    return nc.bind_numba_cuda(globals())


VEC_BYTES = 16  # the widest load a thread issues (LDG.128 / LDS.128)


def shared_pad(itemsize: int) -> int:
    """Elements each shared row is padded by: 16 bytes keep rows 16-byte aligned for LDS.128."""
    return VEC_BYTES // itemsize


@dataclass(frozen=True)
class TileConfig:
    """The fused GEMMs' geometry: block tile BM x BN, K slice BK, per-thread tile TM x TN; and
    min_blocks > 0 for launch bounds (threads, min_blocks): the compiler must fit that many blocks
    per SM, i.e. at most 65536 / (threads * min_blocks) registers per thread (kernels/ptxas_report.py
    shows the registers and spills each choice gives)."""

    bm: int
    bn: int
    bk: int
    tm: int
    tn: int
    min_blocks: int = 0

    @property
    def name(self) -> str:
        bound = f"@{self.min_blocks}" if self.min_blocks else ""
        return f"{self.bm}x{self.bn}x{self.bk}/{self.tm}x{self.tn}{bound}"

    @property
    def launch_bounds(self):
        return (self.threads, self.min_blocks) if self.min_blocks else None

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)

    def shared_bytes(self, itemsize: int) -> int:
        """Two buffers (double buffering) of the A and B slices, rows padded by 16 bytes."""
        pad = shared_pad(itemsize)
        return 2 * self.bk * (self.bm + self.bn + 2 * pad) * itemsize

    def check(self) -> "TileConfig":
        t = self.threads
        ok = (self.bm % self.tm == 0 and self.bn % self.tn == 0 and t <= 1024
              and (self.bm * self.bk) % t == 0 and (self.bn * self.bk) % t == 0 and t >= self.bm
              and self.shared_bytes(8) <= 48 * 1024)
        if not ok:
            raise ValueError(f"invalid tile configuration {self.name}: need BM % TM == BN % TN == 0, "
                             "threads <= 1024, BM*BK and BN*BK multiples of the thread count, "
                             "threads >= BM, shared memory <= 48 KB")
        return self


TILES = {t.name: t for t in (
    TileConfig(64, 64, 16, 4, 4),       # 256 threads, 16 accumulators per thread
    TileConfig(128, 128, 8, 8, 8),      # 256 threads, 64 accumulators: large GEMMs
    TileConfig(32, 32, 8, 2, 2),        # 256 threads: more blocks for small outputs
    # 64x64 with launch bounds (float32 only: `_launch_bounds`). ptxas for sm_90
    # (kernels/results/sm_90-ptxas-2026-11-29.txt) gives the unbounded float32 GEMMs 63-79
    # registers with 16-byte loads (3-4 blocks of 256 threads per SM) and 65-119 with element
    # loads (2-3); bounded to 3 blocks all take 79-80 and spill nothing. Whether a bound is faster
    # is for the autotune on a GPU to say. (In 2026-11-26's loop a bound of 4 spilled 20-76 bytes
    # per thread and 128x128 bounded to 2 blocks 4-36 bytes in dx/dW: not offered.)
    TileConfig(64, 64, 16, 4, 4, min_blocks=3),
)}
DEFAULT_TILE = "64x64x16/4x4"
# The simulator runs one Python thread per CUDA thread: tiny tiles keep the tests fast.
SIM_TILE = TileConfig(4, 4, 2, 2, 2)
MAX_GRID_Y = 65535

for _t in TILES.values():
    _t.check()


def tile_config(tile=None) -> TileConfig:
    """A TileConfig from a name, a TileConfig or None (the default; SIM_TILE in the simulator)."""
    if isinstance(tile, TileConfig):
        return tile.check()
    if tile is None:
        return SIM_TILE if nc.is_simulator() else TILES[DEFAULT_TILE]
    try:
        return TILES[tile]
    except KeyError:
        raise ValueError(f"unknown tile configuration {tile!r}; known: {', '.join(TILES)}") from None


def fused_fits(rows: int, cfg: TileConfig) -> bool:
    """Whether a fused GEMM over `rows` output rows fits the grid's y limit."""
    return math.ceil(rows / cfg.bm) <= MAX_GRID_Y


# ------------------------------------------------------------------------------------------ builders

# The three fused GEMMs share one main loop: walk the reduction in BK-wide slices, stage an A slice
# (BK x BM, transposed) and a B slice (BK x BN) in shared memory, then let each thread accumulate
# its TM x TN sub-tile. They differ only in how a slice is fetched (which array, which index is
# contiguous in global memory, whether dz = dy * act'(s) is formed on the way) and in the epilogue.
# The fetches are device functions built per (tile, dtype, activation, vector width) and inlined by
# NVVM; ptxas reports no stack use for the kernels that call them (kernels/ptxas_report.py).
#
# What makes the loop tight (kernels/ptxas_report.py measures fma_share in the SASS):
# - every loop over BK, TM, TN has constant bounds, so NVVM unrolls the whole slice: the only loop
#   left is the one over K slices;
# - a thread's sub-tile is made of groups of G = gcd(4, TM) rows (gcd(4, TN) columns) that are
#   contiguous in shared memory (rows ty*G .. ty*G+G-1, the next group BM/(TM/G) rows on), so NVVM
#   reads each group with one 16-byte shared load (LDS.128; float64: two) from the 16-byte aligned,
#   16-byte padded shared arrays;
# - global memory is read V = 16 / itemsize elements at a time (LDG.128) along the contiguous
#   index, when every operand is 16-byte aligned with rows of a multiple of V elements (checked at
#   dispatch: `vector_width`); otherwise (V = 1) element by element, with the same bounds checks;
# - the next slice is fetched into registers while the current one is multiplied, and stored into
#   the other of two shared buffers: one barrier per slice (register double buffering).

def _launch_bounds(cfg, dt):
    """The tile's launch bounds in float32. In float64 the 3-blocks bound leaves 80 registers for
    32 float64 accumulators, the double-buffered slice and the addresses: ptxas spilled 76-304 bytes
    per thread (kernels/results/sm_90-ptxas-2026-11-29.txt), so float64 kernels are built unbounded."""
    return cfg.launch_bounds if np.dtype(dt) == np.float32 else None


def _tile_geometry(cfg):
    TX, TY = cfg.bn // cfg.tn, cfg.bm // cfg.tm
    return TX, TY, TX * TY


def _group(t):
    """Rows (columns) a thread owns contiguously: 4 (a 16-byte float32 shared load) when TM allows."""
    return math.gcd(4, t)


def tile_index(cfg):
    """(row(ty, i), col(tx, j)): the output row / column, within the block tile, of a thread's
    accumulator acc[i, j] (the sub-tile layout the main loop reads; the epilogues write with it)."""
    TX, TY, _ = _tile_geometry(cfg)
    GM, GN = _group(cfg.tm), _group(cfg.tn)

    def build():
        def row(ty, i):
            return (i // GM) * (TY * GM) + ty * GM + i % GM

        def col(tx, j):
            return (j // GN) * (TX * GN) + tx * GN + j % GN

        return nc.device_jit(row), nc.device_jit(col)

    return nc.kernel(("dense_tile_index", cfg), build)


def max_vector_width(cfg, itemsize: int) -> int:
    """The widest global load (elements) the tile allows: 16 bytes, if it divides BK, BM and BN."""
    v = VEC_BYTES // itemsize
    while v > 1 and (cfg.bk % v or cfg.bm % v or cfg.bn % v):
        v //= 2
    return v


def _address(a) -> int:
    iface = getattr(a, "__cuda_array_interface__", None) or a.__array_interface__
    return iface["data"][0]


def vector_width(cfg, *arrays) -> int:
    """The global load width for a launch: max_vector_width when every operand starts 16-byte
    aligned and its rows (the contiguous index) hold a multiple of that many elements, so that every
    V-element group a thread loads is aligned and lies wholly inside or wholly outside the array;
    else 1 (element by element)."""
    v = max_vector_width(cfg, arrays[0].dtype.itemsize)
    if v > 1 and all(_address(a) % VEC_BYTES == 0 and a.shape[-1] % v == 0 for a in arrays):
        return v
    return 1


def _vector_load(dt, v):
    """The device function load(R, o, A, r, c): R[o + q] = A[r, c + q] for q < v, A 2-D C-contiguous;
    on a GPU one v * itemsize-byte load that NVVM may assume aligned (the caller guarantees it:
    `vector_width`), in the simulator element by element."""
    dt = np.dtype(dt)
    V = v

    def build():
        if nc.is_simulator():
            def load(R, o, A, r, c):
                for q in range(V):
                    R[o + q] = A[r, c + q]

            return nc.device_jit(load)
        from llvmlite import ir
        from numba.core import types
        from numba.cuda import cgutils
        from numba.cuda.extending import intrinsic

        @intrinsic
        def load(typingctx, R, o, A, r, c):
            def codegen(context, builder, sig, args):
                rty, oty, aty = sig.args[:3]
                idx = [context.cast(builder, a, t, types.intp) for a, t in zip(args[3:], sig.args[3:])]
                ary = context.make_array(aty)(context, builder, args[2])
                ptr = cgutils.get_item_pointer(context, builder, aty, ary, idx)
                vty = ir.VectorType(context.get_value_type(aty.dtype), V)
                vec = builder.load(builder.bitcast(ptr, vty.as_pointer()), align=V * dt.itemsize)
                regs = context.make_array(rty)(context, builder, args[0])
                o0 = context.cast(builder, args[1], oty, types.intp)
                for q in range(V):
                    oq = builder.add(o0, ir.Constant(o0.type, q))
                    dst = cgutils.get_item_pointer(context, builder, rty, regs, [oq])
                    builder.store(builder.extract_element(vec, ir.Constant(ir.IntType(32), q)), dst)
                return context.get_dummy_value()

            return types.void(R, o, A, r, c), codegen

        return load

    return nc.kernel(("dense_vector_load", dt.name, v), build)


def _group_get(dt, n):
    """The device function get(S, b, k, i) -> (S[b, k, i], ..., S[b, k, i + n - 1]) for a 3-D shared
    array whose element (b, k, i) is 16-byte aligned (the caller's layout guarantees it: padded rows,
    i a multiple of n): on a GPU, loads of 16 bytes each (LDS.128) that NVVM may assume aligned,
    which its own vectoriser does not always prove; in the simulator element by element."""
    dt = np.dtype(dt)
    N = n
    step = max(1, min(N, VEC_BYTES // dt.itemsize))  # elements per load

    def build():
        if nc.is_simulator():
            return nc.device_jit(lambda S, b, k, i: tuple([S[b, k, i + q] for q in range(N)]))
        from llvmlite import ir
        from numba.core import types
        from numba.cuda import cgutils
        from numba.cuda.extending import intrinsic

        @intrinsic
        def get(typingctx, S, b, k, i):
            ret = types.UniTuple(S.dtype, N)

            def codegen(context, builder, sig, args):
                sty = sig.args[0]
                idx = [context.cast(builder, a, t, types.intp) for a, t in zip(args[1:], sig.args[1:])]
                ary = context.make_array(sty)(context, builder, args[0])
                ptr = cgutils.get_item_pointer(context, builder, sty, ary, idx)
                vty = ir.VectorType(context.get_value_type(sty.dtype), step)
                vals = []
                for q0 in range(0, N, step):
                    p = builder.gep(ptr, [ir.Constant(ir.IntType(64), q0)])
                    vec = builder.load(builder.bitcast(p, vty.as_pointer()), align=step * dt.itemsize)
                    vals += [builder.extract_element(vec, ir.Constant(ir.IntType(32), q)) for q in range(step)]
                return context.make_tuple(builder, ret, vals)

            return ret(S, b, k, i), codegen

        return get

    return nc.kernel(("dense_group_get", dt.name, n), build)


def _slice_loader(cfg, dt, width, reduction_fastest, code, v):
    """Two device functions over a BK x width slice of a 2-D operand, op = A, or with `code`
    dz = dy * act'(s) of (A1, A2) = (dy, s):
      fetch(R1, R2, A1, A2, i0, k0, ni, nk, tid)  global -> registers R1 (and R2: s), zero outside
      put(S, buf, R1, R2, slope, tid)              registers -> S[buf, kk, i] (dz formed here)
    with  reduction_fastest  S[kk, i] = op[i0 + i, k0 + kk]   (op's rows are tile rows)
          otherwise          S[kk, i] = op[k0 + kk, i0 + i]   (op's rows are the reduction)
    Each thread moves ceil(width*BK / (G*threads)) groups of G = max_vector_width elements adjacent
    in op's rows, consecutive threads touching consecutive groups: with v = G one load per group
    (which needs `vector_width`'s guarantee), with v = 1 one per element, each bounds-checked (any
    shape, any alignment; the addresses of a group still share one base)."""
    dt = np.dtype(dt)
    BK = cfg.bk
    _, _, NT = _tile_geometry(cfg)
    V = max_vector_width(cfg, dt.itemsize)
    VEC = v > 1
    if VEC and v != V:
        raise ValueError(f"dense GEMM: load width {v} for tile {cfg.name} and {dt}: 1 or {V}")
    NV = width * BK // V             # groups in a slice
    PER = -(-NV // NT)               # groups per thread
    EXACT = NV % NT == 0
    GPR = BK // V if reduction_fastest else width // V   # groups per row of op
    RF = reduction_fastest
    DZ = code is not None and code != IDENTITY  # the identity's dz is dy itself: one operand
    zero = dt.type(0)

    def build():
        vload = _vector_load(dt, V)
        dzf = dz_device(code, dt) if DZ else None

        def fetch(R1, R2, A1, A2, i0, k0, ni, nk, tid):
            for q in range(PER):
                e = tid + q * NT
                g = e // GPR
                h = (e - g * GPR) * V
                if RF:  # group: op[i0 + g, k0 + h : k0 + h + V]
                    r, c, nr, ncol = i0 + g, k0 + h, ni, nk
                else:   # group: op[k0 + g, i0 + h : i0 + h + V]
                    r, c, nr, ncol = k0 + g, i0 + h, nk, ni
                ok = r < nr
                if not EXACT:
                    ok = ok and e < NV
                if VEC and ok and c < ncol:  # the whole group is inside: ncol % V == 0
                    vload(R1, q * V, A1, r, c)
                    if DZ:
                        vload(R2, q * V, A2, r, c)
                elif not VEC and ok:
                    for p in range(V):
                        if c + p < ncol:
                            R1[q * V + p] = A1[r, c + p]
                            if DZ:
                                R2[q * V + p] = A2[r, c + p]
                        else:
                            R1[q * V + p] = zero
                            if DZ:
                                R2[q * V + p] = zero
                else:
                    for p in range(V):
                        R1[q * V + p] = zero
                        if DZ:
                            R2[q * V + p] = zero

        def put(S, buf, R1, R2, slope, tid):
            for q in range(PER):
                e = tid + q * NT
                if EXACT or e < NV:
                    g = e // GPR
                    h = (e - g * GPR) * V
                    for p in range(V):
                        val = R1[q * V + p]
                        if DZ:
                            val = dzf(val, R2[q * V + p], slope)
                        if RF:
                            S[buf, h + p, g] = val
                        else:
                            S[buf, g, h + p] = val

        return nc.device_jit(fetch), nc.device_jit(put)

    return nc.kernel(("dense_slice", dt.name, cfg, width, reduction_fastest, code, v), build)


def _tile_mma(cfg, dt):
    """The device function acc[i, j] += sum_kk As[buf, kk, row(ty, i)] * Bs[buf, kk, col(tx, j)] over
    one slice: per kk, TM + TN shared loads (in 16-byte groups) feed TM * TN FMAs. Its source is
    generated straight-line (every kk, i, j written out, accumulators in scalars): NVVM neither
    fully unrolls a 16-step loop of this size by itself (the SASS kept a per-kk loop) nor quickly
    untangles nested loops over small local arrays; straight-line code compiles in a fraction of the
    time and lets ptxas overlap the shared loads of step kk + 1 with the FMAs of step kk."""
    dt = np.dtype(dt)
    BK, TM, TN = cfg.bk, cfg.tm, cfg.tn

    def build():
        row, col = tile_index(cfg)
        GM, GN = _group(TM), _group(TN)
        lines = ["def mma(As, Bs, buf, acc, tx, ty):"]
        lines += [f"    r{i} = row(ty, {i})" for i in range(0, TM, GM)]
        lines += [f"    c{j} = col(tx, {j})" for j in range(0, TN, GN)]
        lines += [f"    s{i}_{j} = acc[{i}, {j}]" for i in range(TM) for j in range(TN)]
        for kk in range(BK):
            lines += [f"    {', '.join(f'a{i + q}' for q in range(GM))}, = geta(As, buf, {kk}, r{i})"
                      for i in range(0, TM, GM)]
            lines += [f"    {', '.join(f'b{j + q}' for q in range(GN))}, = getb(Bs, buf, {kk}, c{j})"
                      for j in range(0, TN, GN)]
            lines += [f"    s{i}_{j} += a{i} * b{j}" for i in range(TM) for j in range(TN)]
        lines += [f"    acc[{i}, {j}] = s{i}_{j}" for i in range(TM) for j in range(TN)]
        ns = {"row": row, "col": col, "geta": _group_get(dt, GM), "getb": _group_get(dt, GN)}
        exec("\n".join(lines) + "\n", ns)
        return nc.device_jit(ns["mma"])

    return nc.kernel(("dense_tile_mma", dt.name, cfg), build)


def _tile_store(cfg, dt):
    """The device function out[r0 + row(ty, i), c0 + col(tx, j)] = acc[i, j] inside (nr, ncols)."""
    dt = np.dtype(dt)
    TM, TN = cfg.tm, cfg.tn

    def build():
        row, col = tile_index(cfg)

        def store(out, acc, r0, c0, nr, ncols, tx, ty):
            for i in range(TM):
                r = r0 + row(ty, i)
                if r < nr:
                    for j in range(TN):
                        c = c0 + col(tx, j)
                        if c < ncols:
                            out[r, c] = acc[i, j]

        return nc.device_jit(store)

    return nc.kernel(("dense_tile_store", dt.name, cfg), build)


def _mainloop(cfg, dt, a_layout, b_layout, with_db, v):
    """The device function acc = A-slices . B-slices over the whole reduction (length nk), for the
    block's tile; returns the float64 sum of the A slice's column `tid` (the db of dense_dw_kernel)
    when with_db and do_db, else 0. A = (A1, A2) is read at tile offset a0 (na rows) and B at b0
    (nb rows), laid out as a_layout = (reduction_fastest, activation code or None) and
    b_layout = reduction_fastest (see _slice_loader), v elements per global load."""
    _cuda()
    dt = np.dtype(dt)
    BM, BN, BK, TM, TN = cfg.bm, cfg.bn, cfg.bk, cfg.tm, cfg.tn
    PAD = shared_pad(dt.itemsize)
    BMP, BNP = BM + PAD, BN + PAD
    _, _, NT = _tile_geometry(cfg)
    G = max_vector_width(cfg, dt.itemsize)  # the loaders move groups of G elements (_slice_loader)
    RA = -(-(BM * BK) // (G * NT)) * G  # registers per thread holding the next A / B slice
    RB = -(-(BN * BK) // (G * NT)) * G
    ALIGN = None if nc.is_simulator() else VEC_BYTES  # the simulator refuses an alignment
    zero = dt.type(0)
    WITH_DB = with_db
    mma = _tile_mma(cfg, dt)
    fetch_a, put_a = _slice_loader(cfg, dt, BM, *a_layout, v)
    fetch_b, put_b = _slice_loader(cfg, dt, BN, b_layout, None, v)
    key = ("dense_mainloop", dt.name, cfg, a_layout, b_layout, with_db, v)

    def build():
        import numba

        nbt = nc.nbtype(dt)
        f64 = numba.float64

        def mainloop(acc, A1, A2, B, slope, a0, b0, na, nb, nk, tid, tx, ty, do_db):
            As = cuda.shared.array((2, BK, BMP), nbt, alignment=ALIGN)
            Bs = cuda.shared.array((2, BK, BNP), nbt, alignment=ALIGN)
            ra1 = cuda.local.array(RA, nbt)
            ra2 = cuda.local.array(RA, nbt)
            rb = cuda.local.array(RB, nbt)
            for i in range(TM):
                for j in range(TN):
                    acc[i, j] = zero
            dbacc = f64(0.0)
            slices = (nk + BK - 1) // BK
            # Slice s is in registers when step s begins: stored into shared buffer s % 2 (which
            # the multiply of step s - 2 read before the barrier that ended step s - 1), then,
            # after the barrier, the loads of slice s + 1 are issued and stay in flight while
            # slice s is multiplied. One barrier per slice.
            fetch_a(ra1, ra2, A1, A2, a0, 0, na, nk, tid)
            fetch_b(rb, rb, B, B, b0, 0, nb, nk, tid)
            for s in range(slices):
                buf = s % 2
                put_a(As, buf, ra1, ra2, slope, tid)
                put_b(Bs, buf, rb, rb, slope, tid)
                cuda.syncthreads()
                if s + 1 < slices:
                    fetch_a(ra1, ra2, A1, A2, a0, (s + 1) * BK, na, nk, tid)
                    fetch_b(rb, rb, B, B, b0, (s + 1) * BK, nb, nk, tid)
                if WITH_DB:
                    if do_db:  # the block's dz columns, summed in row order: deterministic
                        for kk in range(BK):
                            dbacc += f64(As[buf, kk, tid])
                mma(As, Bs, buf, acc, tx, ty)
            return dbacc

        return nc.device_jit(mainloop)

    return nc.kernel(key, build)


def _build_forward(dt, code, has_bias, store_z, cfg, v):
    """y (N, M) = act(x (N, K) @ W.T + b); z = x @ W.T + b stored too when backward needs it."""
    _cuda()
    nbt = nc.nbtype(dt)
    act = act_device(code, dt)
    # As[k, r] = x[row0 + r, k0 + k], Bs[k, c] = W[col0 + c, k0 + k]
    mainloop = _mainloop(cfg, dt, (True, None), True, False, v)
    row, col = tile_index(cfg)
    BM, BN, TM, TN = cfg.bm, cfg.bn, cfg.tm, cfg.tn
    TX, TY, _ = _tile_geometry(cfg)
    HAS_BIAS, STORE_Z = has_bias, store_z

    def dense_forward_kernel(x, W, b, slope, y, z):
        acc = cuda.local.array((TM, TN), nbt)
        tid = cuda.threadIdx.x
        tx, ty = tid % TX, tid // TX
        row0, col0 = cuda.blockIdx.y * BM, cuda.blockIdx.x * BN
        N, K, M = x.shape[0], x.shape[1], W.shape[0]
        mainloop(acc, x, x, W, slope, row0, col0, N, M, K, tid, tx, ty, False)
        for i in range(TM):
            r = row0 + row(ty, i)
            if r < N:
                for j in range(TN):
                    c = col0 + col(tx, j)
                    if c < M:
                        v = acc[i, j]
                        if HAS_BIAS:
                            v += b[c]
                        if STORE_Z:
                            z[r, c] = v
                        y[r, c] = act(v, slope)

    a2, a1 = nc.arr(dt, 2), nc.arr(dt, 1)
    return nc.jit(nc.void(a2, a2, a1, nbt, a2, a2), dense_forward_kernel, _launch_bounds(cfg, dt))


def _build_dx(dt, code, cfg, v):
    """dx (N, K) = dz (N, M) @ W (M, K); dz formed on load."""
    _cuda()
    nbt = nc.nbtype(dt)
    # As[m, r] = dz[row0 + r, m0 + m], Bs[m, c] = W[m0 + m, col0 + c]
    mainloop = _mainloop(cfg, dt, (True, code), False, False, v)
    store = _tile_store(cfg, dt)
    BM, BN, TM, TN = cfg.bm, cfg.bn, cfg.tm, cfg.tn
    TX, _, _ = _tile_geometry(cfg)

    def dense_dx_kernel(dy, s, W, slope, dx):
        acc = cuda.local.array((TM, TN), nbt)
        tid = cuda.threadIdx.x
        tx, ty = tid % TX, tid // TX
        row0, col0 = cuda.blockIdx.y * BM, cuda.blockIdx.x * BN
        N, M, K = dy.shape[0], dy.shape[1], W.shape[1]
        mainloop(acc, dy, s, W, slope, row0, col0, N, K, M, tid, tx, ty, False)
        store(dx, acc, row0, col0, N, K, tx, ty)

    a2 = nc.arr(dt, 2)
    return nc.jit(nc.void(a2, a2, a2, nbt, a2), dense_dx_kernel, _launch_bounds(cfg, dt))


def _build_dw(dt, code, want_db, cfg, v):
    """dW (M, K) = dz.T (M, N) @ x (N, K); dz formed on load; db folded into the first K-tile column."""
    _cuda()
    nbt = nc.nbtype(dt)
    # As[n, r] = dz[n0 + n, row0 + r], Bs[n, c] = x[n0 + n, col0 + c]
    mainloop = _mainloop(cfg, dt, (False, code), False, want_db, v)
    store = _tile_store(cfg, dt)
    BM, BN, TM, TN = cfg.bm, cfg.bn, cfg.tm, cfg.tn
    TX, _, _ = _tile_geometry(cfg)
    WANT_DB = want_db

    def dense_dw_kernel(dy, s, x, slope, dW, db):
        acc = cuda.local.array((TM, TN), nbt)
        tid = cuda.threadIdx.x
        tx, ty = tid % TX, tid // TX
        row0, col0 = cuda.blockIdx.y * BM, cuda.blockIdx.x * BN  # rows of dW: m; columns: k
        N, M, K = dy.shape[0], dy.shape[1], x.shape[1]
        do_db = WANT_DB and cuda.blockIdx.x == 0 and tid < BM
        dbacc = mainloop(acc, dy, s, x, slope, row0, col0, M, K, N, tid, tx, ty, do_db)
        store(dW, acc, row0, col0, M, K, tx, ty)
        if do_db and row0 + tid < M:
            db[row0 + tid] = dbacc

    a2, a1 = nc.arr(dt, 2), nc.arr(dt, 1)
    return nc.jit(nc.void(a2, a2, a2, nbt, a2, a1), dense_dw_kernel, _launch_bounds(cfg, dt))


def _build_bias_act(dt, code, has_bias, mode):
    """The cublas path's forward epilogue over the flat (N*M) output, v = z + b:
    mode "inplace": z = act(v);  "both": z = v and y = act(v);  "y": y = act(v) (z untouched)."""
    _cuda()
    act = act_device(code, dt)
    HAS_BIAS, INPLACE, BOTH = has_bias, mode == "inplace", mode == "both"

    def bias_act_kernel(z, b, m, slope, y):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        n = z.shape[0]
        while i < n:
            v = z[i]
            if HAS_BIAS:
                v += b[i % m]
            if INPLACE:
                z[i] = act(v, slope)
            else:
                if BOTH:
                    z[i] = v
                y[i] = act(v, slope)
            i += stride

    a1 = nc.arr(dt, 1)
    from numba.core import types

    return nc.jit(nc.void(a1, a1, types.int64, nc.nbtype(dt), a1), bias_act_kernel)


def _build_colsum(dt, code, write_dz, final, cx, cy):
    """dz = dy * act'(s) (stored if write_dz) and float64 column sums of dz over a chunk of rows."""
    _cuda()
    import numba
    from numba.core import types

    f64 = numba.float64
    dzf = dz_device(code, dt)
    CX, CY = cx, cy
    WRITE_DZ, FINAL = write_dz, final

    def dz_colsum_kernel(dy, s, slope, rows_per_chunk, dz, partial, db):
        sm = cuda.shared.array((CY, CX), f64)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        c = cuda.blockIdx.x * CX + tx
        N = dy.shape[0]
        M = dy.shape[1]
        r0 = cuda.blockIdx.y * rows_per_chunk
        r1 = min(N, r0 + rows_per_chunk)
        acc = f64(0.0)
        if c < M:
            r = r0 + ty
            while r < r1:
                d = dzf(dy[r, c], s[r, c], slope)
                if WRITE_DZ:
                    dz[r, c] = d
                acc += f64(d)
                r += CY
        sm[ty, tx] = acc
        cuda.syncthreads()
        if ty == 0 and c < M:
            t = f64(0.0)
            for q in range(CY):
                t += sm[q, tx]
            if FINAL:
                db[c] = t
            else:
                partial[cuda.blockIdx.y, c] = t

    a2, a1 = nc.arr(dt, 2), nc.arr(dt, 1)
    p2 = nc.arr(np.float64, 2)
    return nc.jit(nc.void(a2, a2, nc.nbtype(dt), types.int64, a2, p2, a1), dz_colsum_kernel)


def _build_finalize(dt):
    _cuda()
    import numba

    f64 = numba.float64

    def colsum_finalize_kernel(partial, db):
        c = cuda.grid(1)
        stride = cuda.gridsize(1)
        chunks = partial.shape[0]
        m = partial.shape[1]
        while c < m:
            t = f64(0.0)
            for q in range(chunks):
                t += partial[q, c]
            db[c] = t
            c += stride

    return nc.jit(nc.void(nc.arr(np.float64, 2), nc.arr(dt, 1)), colsum_finalize_kernel)


# The fused GEMM kernels take `v`, the elements per global load (`vector_width`; 1: unaligned
# operands, element by element); None means the tile's widest (`max_vector_width`).

def _width(cfg, dt, v):
    return max_vector_width(cfg, dt.itemsize) if v is None else v


def forward_kernel(dtype, code, has_bias, store_z, cfg, v=None):
    dt = np.dtype(dtype)
    v = _width(cfg, dt, v)
    return nc.kernel(("dense_forward", dt.name, code, has_bias, store_z, cfg, v),
                     lambda: _build_forward(dt, code, has_bias, store_z, cfg, v))


def dx_kernel(dtype, code, cfg, v=None):
    dt = np.dtype(dtype)
    v = _width(cfg, dt, v)
    return nc.kernel(("dense_dx", dt.name, code, cfg, v), lambda: _build_dx(dt, code, cfg, v))


def dw_kernel(dtype, code, want_db, cfg, v=None):
    dt = np.dtype(dtype)
    v = _width(cfg, dt, v)
    return nc.kernel(("dense_dw", dt.name, code, want_db, cfg, v), lambda: _build_dw(dt, code, want_db, cfg, v))


def bias_act_kernel(dtype, code, has_bias, mode):
    dt = np.dtype(dtype)
    return nc.kernel(("bias_act", dt.name, code, has_bias, mode),
                     lambda: _build_bias_act(dt, code, has_bias, mode))


def colsum_kernel(dtype, code, write_dz, final, cx, cy):
    dt = np.dtype(dtype)
    return nc.kernel(("dz_colsum", dt.name, code, write_dz, final, cx, cy),
                     lambda: _build_colsum(dt, code, write_dz, final, cx, cy))


def finalize_kernel(dtype):
    dt = np.dtype(dtype)
    return nc.kernel(("colsum_finalize", dt.name), lambda: _build_finalize(dt))


# The cublas path's column-sum block (CX, CY): 32 columns x 8 row lanes on a GPU (`_colsum`).
COLSUM_BLOCK = (32, 8)


def variants(dtypes=SUPPORTED_DTYPES, tiles=None, element_load_codes=None):
    """Every kernel of this family, as (getter, arguments, threads per block): for offline
    compilation (kernels/ptxas_report.py) and warm-up. `tiles`: names in TILES (default: all);
    `element_load_codes`: the activation codes whose element-load GEMMs (v = 1) are listed
    (default: all)."""
    cx, cy = COLSUM_BLOCK
    for dt in dtypes:
        for name in (tiles or TILES):
            cfg = TILES[name]
            widths = sorted({max_vector_width(cfg, np.dtype(dt).itemsize), 1}, reverse=True)
            for m in registry.ACTIVATIONS.values():
                code = m.code
                for v in widths:  # 16-byte loads (aligned operands), element loads (any operands)
                    if v == 1 and element_load_codes is not None and code not in element_load_codes:
                        continue
                    for has_bias in (True, False):
                        yield forward_kernel, (dt, code, has_bias, False, cfg, v), cfg.threads
                        if m.may_need_input:
                            yield forward_kernel, (dt, code, has_bias, True, cfg, v), cfg.threads
                    yield dx_kernel, (dt, code, cfg, v), cfg.threads
                    for want_db in (True, False):
                        yield dw_kernel, (dt, code, want_db, cfg, v), cfg.threads
        for m in registry.ACTIVATIONS.values():  # the combinations forward_cublas / backward_cublas launch
            code = m.code
            for has_bias in (True, False):
                if has_bias or code != IDENTITY:
                    yield bias_act_kernel, (dt, code, has_bias, "inplace"), nc.ELEMENTWISE_THREADS
                if m.may_need_input:
                    yield bias_act_kernel, (dt, code, has_bias, "both" if has_bias else "y"), nc.ELEMENTWISE_THREADS
            for write_dz in (True, False) if code != IDENTITY else (False,):
                for final in (True, False):
                    yield colsum_kernel, (dt, code, write_dz, final, cx, cy), cx * cy
        yield finalize_kernel, (dt,), nc.ELEMENTWISE_THREADS


# ------------------------------------------------------------------------------------------ checks

def check_operands(op, x, W, b=None, dy=None, saved=None):
    """Refuse a bad call before any launch: 2-D C-contiguous arrays of one array type and one
    supported float dtype, with shapes that agree."""
    from gpunn.kernels.cuda_elementwise import supported

    t, dt = type(x), x.dtype
    if not supported(dt):
        raise TypeError(f"{op}: the CUDA kernels take float32 or float64, got {dt}")
    if x.ndim != 2 or W.ndim != 2:
        raise ValueError(f"{op}: x and W must be 2-D, got shapes {x.shape} and {W.shape}")
    n, k = x.shape
    m = W.shape[0]
    if W.shape[1] != k:
        raise ValueError(f"{op}: x {x.shape} and W {W.shape} disagree on in_features ({k} != {W.shape[1]})")
    named = [("W", W, (m, k))]
    if b is not None:
        named.append(("b", b, (m,)))
    if dy is not None:
        named.append(("dy", dy, (n, m)))
    if saved is not None:
        named.append(("saved", saved, (n, m)))
    for name, a, shape in [("x", x, (n, k))] + named:
        if type(a) is not t or a.dtype != dt:
            raise ValueError(f"{op}: {name} must be a {t.__name__} of dtype {dt}, got {type(a).__name__} "
                             f"of dtype {getattr(a, 'dtype', '?')}")
        if tuple(a.shape) != shape:
            raise ValueError(f"{op}: {name} must have shape {shape}, got {tuple(a.shape)}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{op}: {name} must be C-contiguous")


# ------------------------------------------------------------------------------------------ fused

def forward_fused(x, W, b, code, negative_slope=0.01, tile=None):
    """Fused GEMM + bias + activation (one launch). Operands as `check_operands` requires."""
    check_code(code)
    check_operands("dense_forward", x, W, b)
    cfg = tile_config(tile)
    xp = nc.xp_of(x)
    n, m = x.shape[0], W.shape[0]
    if not fused_fits(n, cfg):
        raise ValueError(f"dense_forward: {n} rows exceed the fused kernel's grid "
                         f"({MAX_GRID_Y} blocks of {cfg.bm} rows); use the cublas path")
    dt = x.dtype
    pre = code != IDENTITY and needs_preactivation(code, negative_slope)
    y = xp.empty((n, m), dtype=dt)
    z = xp.empty((n, m), dtype=dt) if pre else y
    if n and m:
        grid = (math.ceil(m / cfg.bn), math.ceil(n / cfg.bm))
        kern = forward_kernel(dt, code, b is not None, pre, cfg, vector_width(cfg, x, W))
        nc.launch(kern, grid, cfg.threads, x, x, W, nc.dummy(x) if b is None else b,
                  dt.type(negative_slope), y, z if pre else nc.dummy(x, ndim=2))
    return y, z


def _colsum(dy, s, code, slope, dz, db, write_dz):
    """dz (if write_dz) and db = column sums of dz, deterministic (one or two launches)."""
    xp = nc.xp_of(dy)
    n, m = dy.shape
    dt = dy.dtype
    if nc.is_cupy(dy):
        cx, cy = COLSUM_BLOCK
        target = 2 * nc.sm_count(nc._device_id(dy))
    else:  # simulator: small blocks, and at least two chunks for N > 4 so both paths are exercised
        cx, cy = 4, 2
        target = 2 * math.ceil(m / cx)
    bx = math.ceil(m / cx)
    chunks = max(1, min(math.ceil(target / bx), math.ceil(n / (4 * cy)), MAX_GRID_Y))
    rows = math.ceil(n / chunks)
    chunks = math.ceil(n / rows)
    final = chunks == 1
    partial = nc.dummy(dy, np.float64, 2) if final else xp.empty((chunks, m), dtype=np.float64)
    kern = colsum_kernel(dt, code, write_dz, final, cx, cy)
    nc.launch(kern, (bx, chunks), (cx, cy), dy, dy, s, dt.type(slope), rows,
              dz if write_dz else nc.dummy(dy, ndim=2), partial, db)
    if not final:
        grid, block = nc.elementwise_geometry(m, dy)
        nc.launch(finalize_kernel(dt), grid, block, dy, partial, db)


def backward_fused(dy, x, W, saved, code, negative_slope=0.01, need_dx=True, need_dw=True, need_db=True,
                   tile=None, dW_out=None, db_out=None):
    """dx with one launch (dense_dx_kernel), dW and db with one (dense_dw_kernel); db alone (no dW)
    with the column-sum kernel. dz is never stored. dW / db go into dW_out / db_out when given
    (C-contiguous, of dW's / db's shape and dtype: the dispatcher checks)."""
    check_code(code)
    check_operands("dense_backward", x, W, None, dy, saved)
    cfg = tile_config(tile)
    xp = nc.xp_of(dy)
    n, k = x.shape
    m = W.shape[0]
    dt = dy.dtype
    s = dy if code == IDENTITY else saved
    slope = dt.type(negative_slope)
    dx = dW = db = None
    if need_dx:
        if not fused_fits(n, cfg):
            raise ValueError(f"dense_backward: {n} rows exceed the fused kernel's grid; use the cublas path")
        dx = xp.empty((n, k), dtype=dt)
        if n and k:
            if m:
                grid = (math.ceil(k / cfg.bn), math.ceil(n / cfg.bm))
                kern = dx_kernel(dt, code, cfg, vector_width(cfg, dy, s, W))
                nc.launch(kern, grid, cfg.threads, dy, dy, s, W, slope, dx)
            else:
                dx[...] = 0
    if need_db:
        db = db_out if db_out is not None else xp.empty(m, dtype=dt)
    if need_dw:
        dW = dW_out if dW_out is not None else xp.empty((m, k), dtype=dt)
        if m and (k or need_db):
            if not fused_fits(m, cfg):
                raise ValueError(f"dense_backward: {m} output features exceed the fused kernel's grid")
            if n:
                grid = (max(1, math.ceil(k / cfg.bn)), math.ceil(m / cfg.bm))
                kern = dw_kernel(dt, code, need_db, cfg, vector_width(cfg, dy, s, x))
                nc.launch(kern, grid, cfg.threads, dy, dy, s, x, slope, dW, db if need_db else nc.dummy(dy))
            else:
                dW[...] = 0
                if need_db:
                    db[...] = 0
    elif need_db and m:
        if n:
            _colsum(dy, s, code, negative_slope, dy, db, write_dz=False)
        else:
            db[...] = 0
    return dx, dW, db


# ------------------------------------------------------------------------------------------ cublas

def forward_cublas(x, W, b, code, negative_slope=0.01):
    """xp.matmul (cuBLAS on CuPy arrays) + one bias/activation epilogue launch."""
    check_code(code)
    check_operands("dense_forward", x, W, b)
    xp = nc.xp_of(x)
    dt = x.dtype
    z = xp.matmul(x, W.T)
    if not z.flags.c_contiguous:  # pragma: no cover - matmul returns C order
        z = xp.ascontiguousarray(z)
    m = W.shape[0]
    pre = code != IDENTITY and needs_preactivation(code, negative_slope)
    if code == IDENTITY and b is None:
        return z, z
    y = xp.empty_like(z) if pre else z
    if z.size:
        zf = z.reshape(-1)
        mode = ("both" if b is not None else "y") if pre else "inplace"
        launch(bias_act_kernel(dt, code, b is not None, mode), zf.size, zf, zf, nc.dummy(z) if b is None else b, m,
               dt.type(negative_slope), y.reshape(-1) if pre else nc.dummy(z))
    return (y, z) if pre else (z, z)


def backward_cublas(dy, x, W, saved, code, negative_slope=0.01, need_dx=True, need_dw=True, need_db=True,
                    dW_out=None, db_out=None):
    """One dz (+ column sums) launch (a second one adds the chunk sums when the rows were split),
    then xp.matmul for dx = dz @ W and dW = dz.T @ x (into dW_out / db_out when given)."""
    check_code(code)
    check_operands("dense_backward", x, W, None, dy, saved)
    xp = nc.xp_of(dy)
    n, m = dy.shape
    dt = dy.dtype
    s = dy if code == IDENTITY else saved
    db = (db_out if db_out is not None else xp.empty(m, dtype=dt)) if need_db else None
    if code == IDENTITY:
        dz = dy
        if need_db and m:
            if n:
                _colsum(dy, s, code, negative_slope, dy, db, write_dz=False)
            else:
                db[...] = 0
    elif need_dx or need_dw:
        dz = xp.empty_like(dy)
        if n and m:
            if need_db:
                _colsum(dy, s, code, negative_slope, dz, db, write_dz=True)
            else:
                launch(activation_backward_kernel(code, dt), dy.size, dy, dy.reshape(-1), s.reshape(-1),
                       dt.type(negative_slope), dz.reshape(-1))
        elif need_db:
            db[...] = 0
    else:
        dz = None
        if need_db and m:
            if n:
                _colsum(dy, s, code, negative_slope, dy, db, write_dz=False)
            else:
                db[...] = 0
    dx = xp.matmul(dz, W) if need_dx else None
    dW = xp.matmul(dz.T, x, out=dW_out) if need_dw else None
    return dx, dW, db
