"""The fused dense layer on the GPU: Numba CUDA kernels for y = act(x @ W.T + b) and its gradients.

Contract: gpunn/kernels/dense.py. x (N, K), W (M, K), b (M,) or None, y (N, M); one dtype
(float32 or float64). Forward returns (y, saved): saved is z for gelu, gelu_tanh and leaky_relu
with a negative slope (`needs_preactivation`), else y (the same array). Backward, with
dz = dy * act'(saved): dx = dz @ W, dW = dz.T @ x, db = column sums of dz.

Two implementations, chosen per shape by gpunn/kernels/dense_dispatch.py:

"fused" -- our own tiled GEMMs, one launch per product:
  forward   `dense_forward_kernel`: C = x @ W.T with register blocking. A block of BM*BN/(TM*TN)
            threads computes a BM x BN tile of the output; each thread a TM x TN sub-tile (rows
            ty + i*TY, columns tx + j*TX: strided, so stores and shared-memory reads are
            coalesced / conflict-free). K is walked in BK-wide slices staged in shared memory
            (x slice stored transposed, padded by one column). The epilogue adds b, applies the
            activation and writes y (and z when backward needs it) once. Grid (ceil(M/BN), ceil(N/BM)).
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
(dtype, activation code, flags, tile configuration) with an explicit signature.
Shared memory per block: (BK*(BM+1) + BK*(BN+1)) * itemsize (8.3 KB float32 for 64x64x16).
Registers (ptxas, sm_90, float32; kernels/ptxas_report.py): 96-116 per thread for 64x64x16/4x4,
i.e. 2 blocks of 256 threads per SM; the "@3" variant adds launch bounds for 3 blocks (72-80
registers, no spills). `variants()` lists every kernel this module can build.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gpunn.backend import numba_cuda as nc
from gpunn.kernels import registry
from gpunn.kernels.activations import IDENTITY, check_code, needs_preactivation
from gpunn.kernels.activations_cuda import act_device, dz_device
from gpunn.kernels.cuda_elementwise import SUPPORTED_DTYPES
from gpunn.kernels.activations_cuda import backward_kernel as activation_backward_kernel

cuda = None  # numba.cuda once a kernel is built: kernels reach it as this global (nc.bind_numba_cuda)


def _cuda():
    return nc.bind_numba_cuda(globals())


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
        return (self.bk * (self.bm + 1) + self.bk * (self.bn + 1)) * itemsize

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
    # 64x64 with launch bounds. ptxas for sm_90 (kernels/results/sm_90-ptxas-*.txt) gives the
    # unbounded float32 GEMMs 96-116 registers: 2 blocks of 256 threads per SM; bounded to 3 blocks
    # they take 72-80 registers and spill nothing. Whether that is faster is for the autotune on a
    # GPU to say. (A bound of 4 spills 20-76 bytes per thread; 128x128 bounded to 2 blocks spills
    # 4-36 bytes in dx/dW, so it is not offered.)
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
# The fetches are device functions built per (tile, dtype, activation) and inlined by NVVM; ptxas
# reports no stack use for the kernels that call them (kernels/ptxas_report.py).

def _tile_geometry(cfg):
    TX, TY = cfg.bn // cfg.tn, cfg.bm // cfg.tm
    return TX, TY, TX * TY


def _slice_loader(cfg, dt, width, reduction_fastest, code=None):
    """A device function load(S, A, B, slope, i0, k0, ni, nk, tid) that fills S[kk, i] (kk < BK,
    i < width) with a slice of a 2-D operand, zero outside it; each of the block's threads moves
    width*BK/threads elements, consecutive threads touching consecutive global addresses:
      reduction_fastest  S[kk, i] = op[i0 + i, k0 + kk]   (op's rows are tile rows)
      otherwise          S[kk, i] = op[k0 + kk, i0 + i]   (op's rows are the reduction)
    where op is A (B unused), or with `code` dz = dy * act'(s) formed from (A, B) = (dy, s) on the
    way (never stored)."""
    dt = np.dtype(dt)
    BK = cfg.bk
    _, _, NT = _tile_geometry(cfg)
    PER_THREAD = width * BK // NT
    WIDTH = width
    RF = reduction_fastest
    zero = dt.type(0)

    def build():
        if code is None:
            def fetch(A, B, slope, r, c):
                return A[r, c]
        else:
            dzf = dz_device(code, dt)

            def fetch(A, B, slope, r, c):
                return dzf(A[r, c], B[r, c], slope)
        get = nc.device_jit(fetch)

        def load(S, A, B, slope, i0, k0, ni, nk, tid):
            for q in range(PER_THREAD):
                e = tid + q * NT
                if RF:
                    i = e // BK
                    kk = e - i * BK
                else:
                    kk = e // WIDTH
                    i = e - kk * WIDTH
                v = zero
                if i0 + i < ni and k0 + kk < nk:
                    if RF:
                        v = get(A, B, slope, i0 + i, k0 + kk)
                    else:
                        v = get(A, B, slope, k0 + kk, i0 + i)
                S[kk, i] = v

        return nc.device_jit(load)

    return nc.kernel(("dense_slice", dt.name, cfg, width, reduction_fastest, code), build)


def _tile_mma(cfg, dt):
    """The device function acc[i, j] += sum_kk As[kk, ty + i*TY] * Bs[kk, tx + j*TX] over one slice
    (operands staged in registers first: TM + TN loads feed TM * TN FMAs)."""
    dt = np.dtype(dt)
    BK, TM, TN = cfg.bk, cfg.tm, cfg.tn
    TX, TY, _ = _tile_geometry(cfg)

    def build():
        nbt = nc.nbtype(dt)

        def mma(As, Bs, acc, tx, ty):
            ar = cuda.local.array(TM, nbt)
            br = cuda.local.array(TN, nbt)
            for kk in range(BK):
                for i in range(TM):
                    ar[i] = As[kk, ty + i * TY]
                for j in range(TN):
                    br[j] = Bs[kk, tx + j * TX]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += ar[i] * br[j]

        return nc.device_jit(mma)

    return nc.kernel(("dense_tile_mma", dt.name, cfg), build)


def _tile_store(cfg, dt):
    """The device function out[r0 + ty + i*TY, c0 + tx + j*TX] = acc[i, j] inside (nr, nc)."""
    dt = np.dtype(dt)
    TM, TN = cfg.tm, cfg.tn
    TX, TY, _ = _tile_geometry(cfg)

    def store(out, acc, r0, c0, nr, ncols, tx, ty):
        for i in range(TM):
            r = r0 + ty + i * TY
            if r < nr:
                for j in range(TN):
                    c = c0 + tx + j * TX
                    if c < ncols:
                        out[r, c] = acc[i, j]

    return nc.kernel(("dense_tile_store", dt.name, cfg), lambda: nc.device_jit(store))


def _mainloop(cfg, dt, a_layout, b_layout, with_db):
    """The device function acc = A-slices . B-slices over the whole reduction (length nk), for the
    block's tile; returns the float64 sum of the A slice's column `tid` (the db of dense_dw_kernel)
    when with_db and do_db, else 0. A = (A1, A2) is read at tile offset a0 (na rows) and B at b0
    (nb rows), laid out as a_layout = (reduction_fastest, activation code or None) and
    b_layout = reduction_fastest (see _slice_loader)."""
    _cuda()
    dt = np.dtype(dt)
    BM, BN, BK, TM, TN = cfg.bm, cfg.bn, cfg.bk, cfg.tm, cfg.tn
    BMP, BNP = BM + 1, BN + 1
    zero = dt.type(0)
    WITH_DB = with_db
    mma = _tile_mma(cfg, dt)
    load_a = _slice_loader(cfg, dt, BM, *a_layout)
    load_b = _slice_loader(cfg, dt, BN, b_layout)
    key = ("dense_mainloop", dt.name, cfg, a_layout, b_layout, with_db)

    def build():
        import numba

        nbt = nc.nbtype(dt)
        f64 = numba.float64

        def mainloop(acc, A1, A2, B, slope, a0, b0, na, nb, nk, tid, tx, ty, do_db):
            As = cuda.shared.array((BK, BMP), nbt)  # padded by one column: no bank conflicts
            Bs = cuda.shared.array((BK, BNP), nbt)
            for i in range(TM):
                for j in range(TN):
                    acc[i, j] = zero
            dbacc = f64(0.0)
            for k0 in range(0, nk, BK):
                load_a(As, A1, A2, slope, a0, k0, na, nk, tid)
                load_b(Bs, B, B, slope, b0, k0, nb, nk, tid)
                cuda.syncthreads()
                if WITH_DB:
                    if do_db:  # the block's dz columns, summed in row order: deterministic
                        for kk in range(BK):
                            dbacc += f64(As[kk, tid])
                mma(As, Bs, acc, tx, ty)
                cuda.syncthreads()
            return dbacc

        return nc.device_jit(mainloop)

    return nc.kernel(key, build)


def _build_forward(dt, code, has_bias, store_z, cfg):
    """y (N, M) = act(x (N, K) @ W.T + b); z = x @ W.T + b stored too when backward needs it."""
    _cuda()
    nbt = nc.nbtype(dt)
    act = act_device(code, dt)
    # As[k, r] = x[row0 + r, k0 + k], Bs[k, c] = W[col0 + c, k0 + k]
    mainloop = _mainloop(cfg, dt, (True, None), True, False)
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
            r = row0 + ty + i * TY
            if r < N:
                for j in range(TN):
                    c = col0 + tx + j * TX
                    if c < M:
                        v = acc[i, j]
                        if HAS_BIAS:
                            v += b[c]
                        if STORE_Z:
                            z[r, c] = v
                        y[r, c] = act(v, slope)

    a2, a1 = nc.arr(dt, 2), nc.arr(dt, 1)
    return nc.jit(nc.void(a2, a2, a1, nbt, a2, a2), dense_forward_kernel, cfg.launch_bounds)


def _build_dx(dt, code, cfg):
    """dx (N, K) = dz (N, M) @ W (M, K); dz formed on load."""
    _cuda()
    nbt = nc.nbtype(dt)
    # As[m, r] = dz[row0 + r, m0 + m], Bs[m, c] = W[m0 + m, col0 + c]
    mainloop = _mainloop(cfg, dt, (True, code), False, False)
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
    return nc.jit(nc.void(a2, a2, a2, nbt, a2), dense_dx_kernel, cfg.launch_bounds)


def _build_dw(dt, code, want_db, cfg):
    """dW (M, K) = dz.T (M, N) @ x (N, K); dz formed on load; db folded into the first K-tile column."""
    _cuda()
    nbt = nc.nbtype(dt)
    # As[n, r] = dz[n0 + n, row0 + r], Bs[n, c] = x[n0 + n, col0 + c]
    mainloop = _mainloop(cfg, dt, (False, code), False, want_db)
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
    return nc.jit(nc.void(a2, a2, a2, nbt, a2, a1), dense_dw_kernel, cfg.launch_bounds)


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


def forward_kernel(dtype, code, has_bias, store_z, cfg):
    dt = np.dtype(dtype)
    return nc.kernel(("dense_forward", dt.name, code, has_bias, store_z, cfg),
                     lambda: _build_forward(dt, code, has_bias, store_z, cfg))


def dx_kernel(dtype, code, cfg):
    dt = np.dtype(dtype)
    return nc.kernel(("dense_dx", dt.name, code, cfg), lambda: _build_dx(dt, code, cfg))


def dw_kernel(dtype, code, want_db, cfg):
    dt = np.dtype(dtype)
    return nc.kernel(("dense_dw", dt.name, code, want_db, cfg), lambda: _build_dw(dt, code, want_db, cfg))


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


def variants(dtypes=SUPPORTED_DTYPES, tiles=None):
    """Every kernel of this family, as (getter, arguments, threads per block): for offline
    compilation (kernels/ptxas_report.py) and warm-up. `tiles`: names in TILES (default: all)."""
    cx, cy = COLSUM_BLOCK
    for dt in dtypes:
        for name in (tiles or TILES):
            cfg = TILES[name]
            for m in registry.ACTIVATIONS.values():
                code = m.code
                for has_bias in (True, False):
                    yield forward_kernel, (dt, code, has_bias, False, cfg), cfg.threads
                    if m.derivative_from != "output":  # backward may need z
                        yield forward_kernel, (dt, code, has_bias, True, cfg), cfg.threads
                yield dx_kernel, (dt, code, cfg), cfg.threads
                for want_db in (True, False):
                    yield dw_kernel, (dt, code, want_db, cfg), cfg.threads
        for m in registry.ACTIVATIONS.values():  # the combinations forward_cublas / backward_cublas launch
            code = m.code
            for has_bias in (True, False):
                if has_bias or code != IDENTITY:
                    yield bias_act_kernel, (dt, code, has_bias, "inplace"), nc.ELEMENTWISE_THREADS
                if m.derivative_from != "output":  # backward may need z
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
        kern = forward_kernel(dt, code, b is not None, pre, cfg)
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
                nc.launch(dx_kernel(dt, code, cfg), grid, cfg.threads, dy, dy, s, W, slope, dx)
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
                nc.launch(dw_kernel(dt, code, need_db, cfg), grid, cfg.threads, dy, dy, s, x, slope, dW,
                          db if need_db else nc.dummy(dy))
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
        grid, block = nc.elementwise_geometry(zf.size, zf)
        kern = bias_act_kernel(dt, code, b is not None, mode)
        nc.launch(kern, grid, block, zf, zf, nc.dummy(z) if b is None else b, m, dt.type(negative_slope),
                  y.reshape(-1) if pre else nc.dummy(z))
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
                grid, block = nc.elementwise_geometry(dy.size, dy)
                nc.launch(activation_backward_kernel(code, dt), grid, block, dy, dy.reshape(-1), s.reshape(-1),
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
