"""docs/extending.md's worked example, run: a new activation (SiLU, x * sigmoid(x)) added in ONE
place, a `register_activation` call with its two scalar formulas, flows through the registry to
functional, nn (its module and Sequential's fusion), the CLI's choices, the CPU kernels (the
elementwise ones and the fused dense epilogue), the CUDA kernels in Numba's simulator and the
cost model; checked here against a float64 reference and PyTorch written in this file."""
from __future__ import annotations

import numpy as np
import pytest

import gpunn as gn
from cuda_util import target  # noqa: F401  (a fixture)
from gpunn.kernels import CpuOps, registry
from gpunn.kernels.registry import ONE, ZERO  # noqa: F401  (the formulas' constants, typed per dtype)


# --- the whole addition (what docs/extending.md shows going into gpunn/kernels/registry.py) -------

def silu_forward(z, slope):
    e = exp(-abs(z))  # noqa: F821  (exp: bound per backend by registry.retarget)
    return z * (ONE if z >= ZERO else e) / (ONE + e)


def silu_backward(dy, s, slope):
    e = exp(-abs(s))  # noqa: F821
    sig = (ONE if s >= ZERO else e) / (ONE + e)
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



def test_debug():
    import sys
    import gpunn.nn.activation as a
    print("DBG", id(a), id(sys.modules["gpunn.nn.activation"]), a.__dict__.get("SiLU"), a.__file__)
