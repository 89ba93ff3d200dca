"""A product with inner dimension 1 in the CPU dense layer: NumPy's matmul (OpenBLAS's GEMM) vs the
Numba outer product gpunn runs instead (gpunn/kernels/dense.py `_gemm`), in one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python kernels/bench_outer_product.py [--rounds 7]

Where it occurs: dx of a layer with one output (the 32-64-64-64-1 network's last layer: 1024x1 @
1x64), the forward of a layer with one input feature, dW at batch 1. Alternating rounds of a few
tenths of a second; each side's best round; and whether the two results are equal bit for bit
(zeros included: a GEMM's zero products are +0).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import best_rounds, blas_info  # noqa: E402

from gpunn.kernels.dense import _gemm  # noqa: E402

SHAPES = [(1024, 64), (256, 512), (64, 128), (1, 784)]  # (rows of a, columns of b)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    print(f"blas: {blas_info()}")
    rng = np.random.default_rng(0)
    for m, n in SHAPES:
        for dtype in (np.float32, np.float64):
            a = rng.standard_normal((m, 1)).astype(dtype)
            b = rng.standard_normal((1, n)).astype(dtype)
            a[::5], b[:, 1::5] = 0.0, -0.0  # zero products of either sign: a GEMM gives +0
            out = np.empty((m, n), dtype)
            calls = max(20, int(3e6 / (m * n)))
            best = best_rounds({"matmul": lambda: np.matmul(a, b, out=out), "outer": lambda: _gemm(a, b, out)},
                               args.rounds, calls)
            same = np.array_equal(np.matmul(a, b).view(np.uint8), _gemm(a, b).view(np.uint8))
            print(f"{m}x1 @ 1x{n} {np.dtype(dtype).name}: matmul {best['matmul']:.2f} us, outer product "
                  f"{best['outer']:.2f} us ({best['matmul'] / best['outer']:.1f}x); same bits: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
