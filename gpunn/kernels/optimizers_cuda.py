"""Fused optimizer updates on the GPU (Numba CUDA): SGD, Adam/AdamW, RMSprop over a param group's
flat buffers in ONE launch per step. Contract, signatures and semantics: gpunn/kernels/optimizers.py
(PyTorch's formulas, t from 1, everything updated in place, grad never written, unused state
buffers neither needed nor touched).

Each kernel is a grid-stride loop over the flat buffer (256 threads per block, at most 32 blocks
per SM). Per element it computes in float64 and rounds once per stored value, re-reading each
stored state value before using it -- the same rounding points as the CPU kernels, so the GPU and
CPU results agree to the last bit except where the GPU compiler fuses a multiply-add (FMA).
Memory-bound: float64 arithmetic costs nothing measurable on datacenter GPUs.

Options that change the code path (maximize, weight decay on/off or decoupled, momentum on/off,
nesterov, first step, amsgrad, centered) are compile-time constants: one kernel per combination
in use (usually one or two per run), compiled once with an explicit signature and with fewer
launch arguments. Learning rate, betas, eps, ... are run-time arguments (schedulers change them
every step without a recompile). Step-dependent bias corrections are computed on the host from
the host-side step count: no device synchronisation.
Limits: 1-D C-contiguous buffers of one float dtype (float32/float64) and one array type, checked
before the launch (ValueError, as on the CPU).
"""
from __future__ import annotations

import math

import numpy as np

from gpunn.backend import numba_cuda as nc
from gpunn.kernels.cuda_elementwise import SUPPORTED_DTYPES, check_dtype, launch
from gpunn.kernels.optimizers import _check_adam, _check_rmsprop, _check_sgd

cuda = None  # numba.cuda once a kernel is built: kernels reach it as this global (nc.bind_numba_cuda)


def _cuda():
    return nc.bind_numba_cuda(globals())


def _f64():
    import numba

    return numba.float64


def _build_sgd(dt, maximize, has_wd, has_momentum, nesterov, first_step):
    _cuda()
    f64 = _f64()
    MAX, WD, MOM, NEST, FIRST = maximize, has_wd, has_momentum, nesterov, first_step

    def sgd_kernel(p, grad, buf, lr, momentum, dampening, weight_decay):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        n = p.shape[0]
        while i < n:
            g = f64(grad[i])
            if MAX:
                g = -g
            if WD:
                g += weight_decay * f64(p[i])
            if MOM:
                if FIRST:
                    b = g
                else:
                    b = momentum * f64(buf[i]) + (1.0 - dampening) * g
                buf[i] = b
                b = f64(buf[i])
                if NEST:
                    g = g + momentum * b
                else:
                    g = b
            p[i] = f64(p[i]) - lr * g
            i += stride

    a1 = nc.arr(dt)
    s = f64
    return nc.jit(nc.void(a1, a1, a1, s, s, s, s), sgd_kernel)


def _build_adam(dt, maximize, wd_mode, amsgrad):
    _cuda()
    f64 = _f64()
    MAX, WDM, AMS = maximize, wd_mode, amsgrad

    def adam_kernel(p, grad, m, v, vmax, beta1, beta2, eps, weight_decay, decay, step_size, bc2_sqrt):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        n = p.shape[0]
        while i < n:
            g = f64(grad[i])
            if MAX:
                g = -g
            pi = f64(p[i])
            if WDM == 2:
                pi = pi * decay
            elif WDM == 1:
                g += weight_decay * pi
            mi = f64(m[i])
            mi = mi + (1.0 - beta1) * (g - mi)
            m[i] = mi
            vi = beta2 * f64(v[i]) + (1.0 - beta2) * g * g
            v[i] = vi
            if AMS:
                vs = f64(v[i])
                if vs > f64(vmax[i]) or vs != vs:
                    vmax[i] = v[i]
                vi = f64(vmax[i])
            else:
                vi = f64(v[i])
            denom = math.sqrt(vi) / bc2_sqrt + eps
            p[i] = pi - step_size * f64(m[i]) / denom
            i += stride

    a1 = nc.arr(dt)
    s = f64
    return nc.jit(nc.void(a1, a1, a1, a1, a1, s, s, s, s, s, s, s), adam_kernel)


def _build_rmsprop(dt, maximize, has_wd, centered, has_momentum):
    _cuda()
    f64 = _f64()
    MAX, WD, CEN, MOM = maximize, has_wd, centered, has_momentum

    def rmsprop_kernel(p, grad, sq, buf, gavg, lr, alpha, eps, weight_decay, momentum):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        n = p.shape[0]
        while i < n:
            g = f64(grad[i])
            if MAX:
                g = -g
            if WD:
                g += weight_decay * f64(p[i])
            sq[i] = alpha * f64(sq[i]) + (1.0 - alpha) * g * g
            s = f64(sq[i])
            if CEN:
                a = f64(gavg[i])
                gavg[i] = a + (1.0 - alpha) * (g - a)
                a = f64(gavg[i])
                avg = math.sqrt(s - a * a) + eps
            else:
                avg = math.sqrt(s) + eps
            if MOM:
                buf[i] = momentum * f64(buf[i]) + g / avg
                p[i] = f64(p[i]) - lr * f64(buf[i])
            else:
                p[i] = f64(p[i]) - lr * g / avg
            i += stride

    a1 = nc.arr(dt)
    s = f64
    return nc.jit(nc.void(a1, a1, a1, a1, a1, s, s, s, s, s), rmsprop_kernel)


def _get(name, build, dt, *flags):
    dt = np.dtype(dt)
    return nc.kernel((name, dt.name) + flags, lambda: build(dt, *flags))


def variants(dtypes=SUPPORTED_DTYPES):
    """Every kernel of this family (each option combination the update functions can select), as
    (getter, arguments, threads per block): for offline compilation (kernels/ptxas_report.py)."""
    t = nc.ELEMENTWISE_THREADS
    tf = (True, False)
    for dt in dtypes:
        for mx in tf:
            for wd in tf:
                yield _get, ("sgd", _build_sgd, dt, mx, wd, False, False, False), t
                for nesterov in tf:
                    for first in tf:
                        yield _get, ("sgd", _build_sgd, dt, mx, wd, True, nesterov, first), t
                for centered in tf:
                    for mom in tf:
                        yield _get, ("rmsprop", _build_rmsprop, dt, mx, wd, centered, mom), t
            for wd_mode in (0, 1, 2):
                for ams in tf:
                    yield _get, ("adam", _build_adam, dt, mx, wd_mode, ams), t


def sgd_update(p, grad, buf, lr, momentum=0.0, dampening=0.0, nesterov=False,
               weight_decay=0.0, maximize=False, first_step=True):
    _check_sgd("sgd_update", p, grad, buf, momentum)
    check_dtype("sgd_update", p.dtype)
    has_m = momentum != 0
    kern = _get("sgd", _build_sgd, p.dtype, bool(maximize), weight_decay != 0, has_m,
                bool(nesterov) and has_m, bool(first_step) and has_m)
    launch(kern, p.size, p, p, grad, buf if has_m else nc.dummy(p), float(lr), float(momentum), float(dampening),
            float(weight_decay))


def adam_update(p, grad, m, v, vmax, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                decoupled=False, amsgrad=False, maximize=False, step=1):
    _check_adam("adam_update", p, grad, m, v, vmax, amsgrad)
    check_dtype("adam_update", p.dtype)
    wd_mode = 0 if weight_decay == 0 else (2 if decoupled else 1)
    kern = _get("adam", _build_adam, p.dtype, bool(maximize), wd_mode, bool(amsgrad))
    bc1 = 1.0 - beta1**step
    launch(kern, p.size, p, p, grad, m, v, vmax if amsgrad else nc.dummy(p), float(beta1), float(beta2), float(eps),
            float(weight_decay), 1.0 - lr * weight_decay, float(lr) / bc1, math.sqrt(1.0 - beta2**step))


def rmsprop_update(p, grad, sq, buf, gavg, lr, alpha=0.99, eps=1e-8, weight_decay=0.0,
                   momentum=0.0, centered=False, maximize=False):
    _check_rmsprop("rmsprop_update", p, grad, sq, buf, gavg, momentum, centered)
    check_dtype("rmsprop_update", p.dtype)
    kern = _get("rmsprop", _build_rmsprop, p.dtype, bool(maximize), weight_decay != 0, bool(centered),
                momentum > 0)
    launch(kern, p.size, p, p, grad, sq, buf if momentum > 0 else nc.dummy(p), gavg if centered else nc.dummy(p),
            float(lr),
            float(alpha), float(eps), float(weight_decay), float(momentum))
