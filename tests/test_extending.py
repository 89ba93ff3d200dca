"""docs/extending.md's worked examples, run.

A new activation (SiLU, x * sigmoid(x)) added in ONE place, a `register_activation` call with its
two scalar formulas, flows through the registry to functional, nn (its module and Sequential's
fusion), the CLI's choices, the CPU kernels (the elementwise ones and the fused dense epilogue),
the CUDA kernels in Numba's simulator and the cost model; checked here against a float64
reference and PyTorch written in this file.

A new optimizer update (Signum: sign-SGD with an optional momentum buffer) added in ONE place, a
`register_optimizer` call with its update, option mapping and cost, flows to the CPU kernel, the
reference, the CUDA kernel in Numba's simulator, `ops_for(array).signum_update`, the offline
compile list and the cost model (the profiler's too); checked against a float64 reference."""
from __future__ import annotations

import numpy as np
import pytest

import gpunn as gn
from cuda_util import target  # noqa: F401  (a fixture)
from gpunn.kernels import CpuOps, registry
from gpunn.kernels.registry import ONE  # noqa: F401  (the formulas' constants, typed per dtype)


# --- the whole addition (what docs/extending.md shows going into gpunn/kernels/registry.py) -------

def silu_forward(z, slope):
    return z * sigmoid(z)  # noqa: F821  (sigmoid: a primitive, bound per backend by registry.retarget)


def silu_backward(dy, s, slope):
    sig = sigmoid(s)  # noqa: F821
    return dy * (sig * (ONE + s * (ONE - sig)))


@pytest.fixture
def silu():
    m = registry.register_activation("silu", silu_forward, silu_backward, "input", 5, 9, module="SiLU",
                                     doc="x * sigmoid(x)")
    try:
        yield m
    finally:
        registry.unregister_activation("silu")


# --- its test case: a float64 reference written from the definition ----------------------------

def silu64(z):
    z = np.asarray(z, np.float64)
    s = 0.5 * (1 + np.tanh(0.5 * z))
    return z * s, s * (1 + z * (1 - s))


Z = np.concatenate([np.linspace(-12, 12, 97), [-100.0, 100.0, 0.0]])
TOL = {np.float32: dict(rtol=2e-6, atol=2e-6), np.float64: dict(rtol=1e-13, atol=1e-14)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_a_new_activation_runs_on_the_cpu_kernels(silu, dtype):
    z = Z.astype(dtype)
    dy = np.random.default_rng(0).standard_normal(z.shape).astype(dtype)
    y_ref, d_ref = silu64(z)
    ops = CpuOps()
    y = ops.activation_forward(z, silu.code)
    dz = ops.activation_backward(dy, z, y, silu.code)
    assert y.dtype == dz.dtype == dtype
    np.testing.assert_allclose(y, y_ref, **TOL[dtype])
    np.testing.assert_allclose(dz, dy * d_ref, **TOL[dtype])
    # the fused dense layer's epilogue (GEMM + bias + silu), forward and backward
    rng = np.random.default_rng(1)
    x, W, b = (rng.standard_normal(s).astype(dtype) for s in ((5, 4), (3, 4), (3,)))
    g = rng.standard_normal((5, 3)).astype(dtype)
    yd, saved = ops.dense_forward(x, W, b, silu.code)
    dx, dW, db = ops.dense_backward(g, x, W, saved, silu.code)
    zz = x.astype(np.float64) @ W.T.astype(np.float64) + b
    yz, dz64 = silu64(zz)
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(yd, yz, **tol)
    np.testing.assert_allclose(dx, (g * dz64) @ W, **tol)
    np.testing.assert_allclose(dW, (g * dz64).T @ x, **tol)
    np.testing.assert_allclose(db, (g * dz64).sum(0), **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_a_new_activation_runs_on_the_cuda_kernels(silu, target, dtype):  # noqa: F811
    from gpunn.kernels import activations_cuda, dense_cuda

    z = Z.astype(dtype)
    dy = np.random.default_rng(2).standard_normal(z.shape).astype(dtype)
    y = activations_cuda.activation_forward(target.asarray(z), silu.code)
    dz = activations_cuda.activation_backward(target.asarray(dy), target.asarray(z), y, silu.code)
    y_ref, d_ref = silu64(z)
    np.testing.assert_allclose(target.get(y), y_ref, **TOL[dtype])
    np.testing.assert_allclose(target.get(dz), dy * d_ref, **TOL[dtype])
    rng = np.random.default_rng(3)
    x, W, b = (rng.standard_normal(s).astype(dtype) for s in ((5, 4), (3, 4), (3,)))
    yd, saved = dense_cuda.forward_fused(*(target.asarray(a) for a in (x, W, b)), silu.code)
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(target.get(yd), silu64(x.astype(np.float64) @ W.T + b)[0], **tol)
    assert ("activation_forward", silu.code, np.dtype(dtype).name) in dense_cuda.nc.KERNELS._kernels
    assert any(g is activations_cuda.forward_kernel and args[0] == silu.code
               for g, args, _ in activations_cuda.variants())  # ptxas_report compiles it too


def test_a_new_activation_in_functional_nn_and_the_cli(silu):
    from gpunn import functional as F
    from gpunn import nn
    from gpunn.cli import build_parser

    x = gn.tensor(np.random.default_rng(4).standard_normal((4, 5)), requires_grad=True)
    y = F.silu(x)
    np.testing.assert_allclose(y.numpy(), silu64(x.numpy())[0], rtol=1e-13)
    assert gn.gradcheck(F.silu, (x,))
    assert F.activation(x, "silu").numpy().tolist() == y.numpy().tolist()
    # nn: a module class with torch's name, folded into the preceding Linear by Sequential
    seq = nn.Sequential(nn.Linear(5, 3, dtype=np.float64), nn.SiLU())
    assert seq.fusion_plan() == ["dense(0, silu)"] and repr(seq[1]) == "SiLU()"
    lin = seq[0]
    np.testing.assert_allclose(seq(x).numpy(), F.silu(lin(x)).numpy(), rtol=1e-13)
    assert gn.gradcheck(lambda x, W, b: seq(x), (x, lin.weight, lin.bias))
    d = nn.Dense(5, 3, "silu", dtype=np.float64)
    assert gn.gradcheck(lambda x, W, b: d(x), (x, d.weight, d.bias))
    # the CLI offers it; the cost model counts it
    assert build_parser().parse_args(["train", "--data", "digits", "--activation", "silu"]).activation == "silu"
    from gpunn.kernels.activations import activation_forward_cost

    assert activation_forward_cost(np.zeros(10), silu.code) == (50, 160)


def test_a_new_activation_matches_torch(silu):
    torch = pytest.importorskip("torch")
    from gpunn import functional as F

    z = Z.astype(np.float32)
    Zt = torch.tensor(z, requires_grad=True)
    want = torch.nn.functional.silu(Zt)
    want.sum().backward()
    x = gn.tensor(z, requires_grad=True)
    y = F.silu(x)
    y.sum().backward()
    np.testing.assert_allclose(y.numpy(), want.detach().numpy(), rtol=1.3e-6, atol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), Zt.grad.numpy(), rtol=1.3e-6, atol=1e-5)


def test_after_unregister_nothing_is_left():
    """Run after the tests above: the toy member leaves no function, module or choice behind."""
    from gpunn import functional as F
    from gpunn import nn

    assert "silu" not in registry.ACTIVATIONS
    with pytest.raises(AttributeError):
        F.silu  # noqa: B018
    with pytest.raises(AttributeError):
        nn.SiLU  # noqa: B018
    from gpunn.cli import activation_choices

    assert "silu" not in activation_choices()




# --- an optimizer update: the whole addition (what docs/extending.md shows going into registry.py) --

def signum_update(i, p, grad, momentum_buffer, lr, momentum):
    g = f64(grad[i])  # noqa: F821  (f64, MOMENTUM: bound per backend and kernel variant)
    if MOMENTUM:  # noqa: F821
        momentum_buffer[i] = momentum * f64(momentum_buffer[i]) + (1.0 - momentum) * g  # noqa: F821
        g = f64(momentum_buffer[i])  # noqa: F821
    if g > 0.0:
        p[i] = f64(p[i]) - lr  # noqa: F821
    elif g < 0.0:
        p[i] = f64(p[i]) + lr  # noqa: F821


def signum_prepare(lr, momentum=0.0):
    return dict(MOMENTUM=momentum != 0), (lr, momentum)


def signum_cost(f):
    """sign and p -+ lr: 2 FLOPs per element, momentum 3; read p, grad (buffer), write p (buffer)."""
    return 2 + 3 * f["MOMENTUM"], 3 + 2 * f["MOMENTUM"]


@pytest.fixture
def signum():
    m = registry.register_optimizer("signum", signum_update, {"momentum_buffer": "MOMENTUM"}, signum_prepare,
                                    signum_cost, MOMENTUM=(False, True))
    try:
        yield m
    finally:
        registry.unregister_optimizer("signum")


# --- its test case: a float64 reference written from the definition ----------------------------

def signum64(p, g, buf, lr, momentum):
    p, g = np.asarray(p, np.float64), np.asarray(g, np.float64)
    if momentum:
        buf = momentum * np.asarray(buf, np.float64) + (1 - momentum) * g
        g = buf
    return p - lr * np.sign(g), buf


def _signum_arrays(dtype, n=23, seed=5):
    rng = np.random.default_rng(seed)
    p, g, buf = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    g[:3] = 0.0  # sign(0) = 0: no move
    return p, g, buf


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_a_new_optimizer_update_runs_on_the_cpu_and_through_ops(signum, dtype, momentum):
    from gpunn.kernels import ops_for, use_kernels
    from gpunn.kernels import optimizers as K

    p, g, buf = _signum_arrays(dtype)
    want_p, want_buf = signum64(p, g, buf, 0.01, momentum)
    ops = ops_for(p)
    assert ops.signum_update is K.signum_update_cpu
    ops.signum_update(p, g, buf if momentum else None, 0.01, momentum=momentum)
    np.testing.assert_allclose(p, want_p, **TOL[dtype])
    if momentum:
        np.testing.assert_allclose(buf, want_buf, **TOL[dtype])
    with use_kernels("reference"):
        q, g, buf = _signum_arrays(dtype)
        ops_for(q).signum_update(q, g, buf, 0.01, momentum)
    np.testing.assert_array_equal(q, p)
    with pytest.raises(ValueError, match="signum_update: momentum_buffer is None, but the options given turn on "
                                         "MOMENTUM"):
        ops.signum_update(p, g, None, 0.01, momentum=0.9)
    # the cost model, the kernels' and the profiler's
    from gpunn.profiler import COSTS

    assert K.signum_update_cost(p, g, None, 0.01) == (2 * p.size, 3 * p.nbytes)
    assert COSTS["signum_update"](p, g, buf, 0.01, 0.9) == (5 * p.size, 5 * p.nbytes)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_a_new_optimizer_update_runs_on_the_cuda_kernels(signum, target, dtype):  # noqa: F811
    from gpunn.kernels import optimizers_cuda

    p, g, buf = _signum_arrays(dtype)
    want_p, want_buf = signum64(p, g, buf, 0.01, 0.5)
    dp, dbuf = target.asarray(p), target.asarray(buf)
    optimizers_cuda.signum_update(dp, target.asarray(g), dbuf, 0.01, 0.5)
    np.testing.assert_allclose(target.get(dp), want_p, **TOL[dtype])
    np.testing.assert_allclose(target.get(dbuf), want_buf, **TOL[dtype])
    listed = [args for getter, args, _ in optimizers_cuda.variants() if args[0] == "signum"]
    # ptxas_report compiles it too: MOMENTUM off/on, float32 and float64, scalars as arguments and staged
    # (read from a device array, what gn.compile's CUDA graph captures)
    assert sorted((a[1].name, a[2], a[3]) for a in listed) == sorted(
        (dt, (("MOMENTUM", momentum),), staged) for dt in ("float32", "float64") for momentum in (False, True)
        for staged in (False, True))


def test_a_new_optimizer_update_drives_an_optimizer_and_the_profiler(signum):
    """An Optimizer subclass (what gpunn/optim/<name>.py holds) steps through ops.signum_update."""
    from gpunn.optim.optimizer import Optimizer
    from gpunn.profiler import profile

    class Signum(Optimizer):
        _state_buffers = {"momentum_buffer": None}

        def __init__(self, params, lr=1e-3, momentum=0.9):
            super().__init__(params, dict(lr=lr, momentum=momentum))

        def _update(self, group, ops, p, g, state, step):
            ops.signum_update(p, g, state["momentum_buffer"], group["lr"], group["momentum"])

    w = gn.Parameter(np.array([1.0, -2.0, 3.0], np.float32))
    opt = Signum([w], lr=0.5)
    with profile(peaks=False) as prof:
        (w * w).sum().backward()
        opt.step()
    np.testing.assert_allclose(w.numpy(), [0.5, -1.5, 2.5])
    np.testing.assert_allclose(opt.state[w]["momentum_buffer"], 0.1 * np.array([2.0, -4.0, 6.0]), rtol=1e-6)
    ev = [e for e in prof.events if e.name == "signum_update"]
    assert [(e.flops, e.bytes) for e in ev] == [(15, 60)]


def test_after_unregister_no_optimizer_update_is_left():
    """Run after the tests above: the toy update leaves no method, function, cost or variant behind."""
    from gpunn.kernels import ops_for, optimizers, optimizers_cuda
    from gpunn.profiler import COSTS

    assert "signum" not in registry.OPTIMIZERS
    with pytest.raises(AttributeError):
        ops_for(np.zeros(2)).signum_update  # noqa: B018
    with pytest.raises(AttributeError):
        optimizers.signum_update_cpu  # noqa: B018
    with pytest.raises(AttributeError):
        optimizers_cuda.signum_update  # noqa: B018
    assert "signum_update" not in COSTS and "signum_update" not in list(COSTS)
    assert not any(args[0] == "signum" for _, args, _ in optimizers_cuda.variants())
