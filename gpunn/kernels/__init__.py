"""Kernels: pure functions over arrays, one module per family, one `Ops` interface per backend.

Families: `activations`, `dense` (fused matmul + bias + activation), `softmax_ce`, `losses`,
`optimizers`, `normalization` (LayerNorm / BatchNorm), `dropout` (the last two: array expressions
that serve NumPy and CuPy alike). The activations' and optimizer updates' formulas are written once, in `registry`,
and their CPU and CUDA kernels are made from them; `*_ref` is each family's `Ops` reference;
`ops.ops_for(array)` picks the implementation for the array's device. Nothing here knows
about tensors or modules.
"""
from gpunn.kernels.activations import ACTIVATIONS, activation_code, needs_preactivation
from gpunn.kernels.ops import KERNEL_CHOICES, CpuOps, Ops, ops_for, use_kernels

__all__ = ["ACTIVATIONS", "activation_code", "needs_preactivation", "Ops", "CpuOps", "ops_for",
           "use_kernels", "KERNEL_CHOICES"]
