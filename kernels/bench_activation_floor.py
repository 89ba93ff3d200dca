"""The floor under issue 18's epilogue target: what one float32 exp costs per element against bias+ReLU.

Four in-place passes over 256x512 float32, each adding the bias and applying one function, the same
loop shape as gpunn's forward epilogue: ReLU (memory traffic only), 1 / (1 + |v|) (one division),
fastmath.exp(-|v|) (0.9 ulp, the cheapest transcendental the activations need) and fastmath.tanh.
Best of 300 calls each, two rounds.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python kernels/bench_activation_floor.py
"""
import time

import numpy as np
from numba import njit
from gpunn.kernels import fastmath as fm
def best(f, *a):
    f(*a); b = 1e9
    for r in range(300):
        t = time.perf_counter(); f(*a); b = min(b, time.perf_counter() - t)
    return b * 1e6
@njit(error_model="numpy")
def bias_relu(z, b):
    n, m = z.shape
    for i in range(n):
        for j in range(m):
            v = z[i, j] + b[j]
            z[i, j] = v if v > np.float32(0) else np.float32(0)
@njit(error_model="numpy")
def bias_exp(z, b):
    n, m = z.shape
    for i in range(n):
        for j in range(m):
            z[i, j] = fm.exp(-abs(z[i, j] + b[j]))
@njit(error_model="numpy")
def bias_recip(z, b):
    n, m = z.shape
    for i in range(n):
        for j in range(m):
            z[i, j] = np.float32(1.0) / (np.float32(1.0) + abs(z[i, j] + b[j]))
@njit(error_model="numpy")
def bias_tanh(z, b):
    n, m = z.shape
    for i in range(n):
        for j in range(m):
            z[i, j] = fm.tanh(z[i, j] + b[j])
z0 = np.random.RandomState(0).randn(256, 512).astype(np.float32); b = np.zeros(512, np.float32)
for f in (bias_relu, bias_exp, bias_recip, bias_tanh) * 2:
    z = z0.copy()
    print(f"{f.__name__:11s} {best(f, z, b):6.1f} us")
