"""Measured dense-layer timings that gpunn/kernels/dense_dispatch.py chooses from.

Written by `dense_dispatch.autotune()` on a GPU (kernels/gpu_check.sh runs it) and committed; do not
edit by hand. For a device with no entries here the dispatcher uses its conservative default rule
(`dense_dispatch.default_choice`).

FORMAT 1: each entry is a dict
    device  CUDA device name as CuPy reports it, e.g. "NVIDIA H100 80GB HBM3"
    dtype   "float32" or "float64"
    pass    "forward" or "backward" (backward: dx, dW and db all requested)
    n, k, m batch rows, in_features, out_features
    act     activation measured (its cost is small next to the GEMM)
    us      {implementation: median microseconds}, implementations "cublas" and "fused:<tile>"
    best    the fastest key of `us`
"""

FORMAT = 1

ENTRIES = [
]
