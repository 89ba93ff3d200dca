"""gpunn.kernels.fastmath against independent references, in ulps of the result's own precision.

float32: a sweep of ~10 million points per function (a dense linear sweep through the range that
matters, the overflow and saturation edges included, plus a geometric sweep from the smallest
denormal up to it on both sides), compared with NumPy's float64 exp/tanh (and math.erf on a
1-million-point grid). float64: extended precision (np.longdouble, 64-bit mantissa on x86) or
libm's. Plus the specials PyTorch fixes, and that the loops really are SIMD code on this CPU.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from numba import njit

from gpunn.kernels import fastmath as fm

TINY32 = float(np.finfo(np.float32).smallest_subnormal)
SPECIALS = [0.0, -0.0, np.inf, -np.inf, np.nan, TINY32, -TINY32, 1e-30, -1e-30,
            float(np.finfo(np.float32).max), -float(np.finfo(np.float32).max)]


def sweep32(lo, hi, n_lin, n_geo):
    """float32 points: linspace(lo, hi) and +-geomspace(smallest denormal, max(|lo|, |hi|)), specials."""
    top = max(abs(lo), abs(hi))
    geo = np.geomspace(TINY32, top, n_geo)
    x = np.concatenate([np.linspace(lo, hi, n_lin), geo, -geo, SPECIALS]).astype(np.float32)
    return x[(x >= lo) & (x <= hi) | ~np.isfinite(x) | (np.abs(x) < 1)]


# float32 ulp of a float64 by its binary exponent (biased, 0..2047): 2^(max(e, -126) - 23)
_ULP32 = np.ldexp(1.0, np.maximum(np.arange(2048) - 1023, -126) - 23)


@njit(cache=True)
def _ulp32(got, ref, bits, table, err):
    """err[i] = |got - ref| in float32 ulps of ref (float64, finite): one pass, where NumPy needs ten."""
    for i in range(ref.size):
        g, r = np.float64(got[i]), ref[i]
        err[i] = 0.0 if g == r else abs(g - r) / table[(bits[i] >> 52) & 0x7FF]


def ulp_error(got, ref, dtype):
    """|got - ref| in units of the last place of ref rounded to dtype (denormal spacing below the
    normal range); ref finite. got == ref (both infinite, say) counts 0."""
    if dtype == np.float32 and ref.dtype == np.float64:
        err = np.empty(ref.shape)
        ref = np.ascontiguousarray(ref)
        _ulp32(np.ascontiguousarray(got), ref, ref.view(np.int64), _ULP32, err)
        return err
    fi = np.finfo(dtype)
    _, e = np.frexp(np.abs(ref))
    ulp = np.ldexp(1.0, np.maximum(e - 1, fi.minexp) - fi.nmant)
    with np.errstate(invalid="ignore"):
        err = np.abs(got.astype(ref.dtype) - ref) / ulp
    return np.where(got.astype(ref.dtype) == ref, 0.0, err)


def check32(fn, ref_fn, x, bound):
    """max ulp error of fn(x) (float32) against ref_fn(float64 x), where the reference is a finite
    float32 value; where it overflows float32, fn must give the same infinity. Returns the max."""
    got = fn(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    ref = ref_fn(x.astype(np.float64))
    finite = np.isfinite(x) & (np.abs(ref) <= np.finfo(np.float32).max)
    over = np.isfinite(x) & ~finite & np.isfinite(ref)
    assert np.all(got[over] == np.sign(ref[over]) * np.inf)
    err = ulp_error(got[finite], ref[finite], np.float32)
    worst = float(err.max())
    assert worst <= bound, f"max {worst:.3f} ulp at x = {x[finite][np.argmax(err)]!r}"
    return worst


def sigmoid_ref(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


def test_exp_float32_within_1_ulp_through_denormals_and_overflow():
    x = sweep32(-110.0, 95.0, 8_000_000, 1_000_000)
    check32(fm.exp, np.exp, x, 1.0)
    # the edges: the last finite value, the first inf, the last denormal, exp(-104) = 0
    e = fm.exp(np.array([88.72283, 88.7229, -103.27, -104.0, -np.inf, np.inf], np.float32))
    assert np.isfinite(e[0]) and e[1] == np.inf and 0 < e[2] < 1e-44 and e[3] == 0 and e[4] == 0 and e[5] == np.inf


def test_tanh_float32_within_2_ulp_and_saturates_exactly():
    x = sweep32(-12.0, 12.0, 8_000_000, 1_000_000)
    check32(fm.tanh, np.tanh, x, 2.0)
    t = fm.tanh(np.array([9.1, -9.1, 1000.0, -1000.0, np.inf, -np.inf, -0.0], np.float32))
    np.testing.assert_array_equal(t, [1, -1, 1, -1, 1, -1, 0])
    assert np.signbit(t[-1])


def test_sigmoid_float32_within_2_ulp_exact_at_1000_without_warnings():
    x = sweep32(-110.0, 40.0, 8_000_000, 1_000_000)
    check32(fm.sigmoid, sigmoid_ref, x, 2.0)
    with np.errstate(all="raise"):
        s = fm.sigmoid(np.array([1000.0, -1000.0, np.inf, -np.inf], np.float32))
    np.testing.assert_array_equal(s, [1, 0, 1, 0])


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_cpu_activation_kernels_are_as_accurate_as_their_primitive(name):
    """The CPU sigmoid and tanh activations (the registry's formulas through CPU_MATH) keep their
    primitive's float32 bound: the formula adds no rounding of its own."""
    from gpunn.kernels import ACTIVATIONS, CpuOps

    x = sweep32(-110.0, 40.0, 8_000_000, 1_000_000) if name == "sigmoid" else sweep32(-12.0, 12.0, 8_000_000, 1_000_000)
    check32(lambda v: CpuOps().activation_forward(v, ACTIVATIONS[name]), sigmoid_ref if name == "sigmoid" else np.tanh,
            x, 2.0)


def test_erf_float32_within_2_ulp_against_math_erf():
    x = sweep32(-5.0, 5.0, 1_000_000, 100_000)
    check32(fm.erf, np.vectorize(math.erf, otypes=[np.float64]), x, 2.0)
    e = fm.erf(np.array([3.93, -3.93, 1e4, np.inf, -np.inf, -0.0], np.float32))
    np.testing.assert_array_equal(e, [1, -1, 1, 1, -1, 0])
    assert np.signbit(e[-1])


@pytest.mark.parametrize("name", ["exp", "tanh", "sigmoid", "erf"])
def test_nan_propagates(name):
    for dt in (np.float32, np.float64):
        assert np.isnan(getattr(fm, name)(np.array([np.nan], dt))).all()


def _extended():
    if np.finfo(np.longdouble).nmant < 63:
        pytest.skip("no 80-bit long double here for a float64 reference")
    return np.longdouble


@pytest.mark.parametrize("name,bound,ref", [
    ("exp", 1.0, lambda x: np.exp(x)),
    ("tanh", 2.0, lambda x: np.tanh(x)),
    ("sigmoid", 2.0, lambda x: np.where(x >= 0, 1, np.exp(-np.abs(x))) / (1 + np.exp(-np.abs(x)))),
])
def test_float64_versions_against_extended_precision(name, bound, ref):
    ld = _extended()
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-750.0, 710.0, 200_001), rng.uniform(-20, 20, 200_000),
                        np.geomspace(5e-324, 700, 20_000), -np.geomspace(5e-324, 700, 20_000)])
    got = getattr(fm, name)(x)
    assert got.dtype == np.float64
    want = ref(x.astype(ld))
    finite = np.abs(want) <= np.finfo(np.float64).max
    assert np.all(got[~finite] == np.inf)
    err = ulp_error(got[finite], want[finite], np.float64)
    assert err.max() <= bound, f"max {err.max():.3f} ulp at x = {x[finite][np.argmax(err)]!r}"


def test_float32_is_computed_in_float32_and_ints_as_float64():
    assert fm.exp(np.float32(1.0)).dtype == np.float32
    assert fm.tanh(np.arange(3)).dtype == np.float64


@pytest.mark.parametrize("name", ["exp", "tanh", "sigmoid", "erf"])
def test_loops_are_simd_code(name):
    """On an x86 CPU with AVX2 the float32 loops must compile to 8- or 16-wide vector code."""
    import llvmlite.binding as ll

    if "+avx2" not in ll.get_host_cpu_features().flatten():
        pytest.skip("no AVX2 on this CPU")
    assert fm.vector_width(name, np.float32) >= 8
