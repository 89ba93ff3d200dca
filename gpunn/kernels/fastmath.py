"""Vectorisable exp, tanh, erf and sigmoid for Numba CPU kernels, in float32 and float64.

Why: `math.exp`, `math.tanh` and `math.erf` compile to scalar libm calls, which LLVM cannot
vectorise (and PyPI's llvmlite has no SVML), so a Numba loop over them runs one element at a
time (~16 ns per tanh). The functions here are straight-line arithmetic: range reduction, a
polynomial, exponent bits set through integer views, IEEE division without numba's zero test,
and selects instead of branches. Called in a Numba loop, LLVM inlines them and turns the loop into
SIMD code (AVX2: <8 x float>, AVX-512: <16 x float>; see `vector_width`), as Eigen, Sleef and XLA do.

Use inside `@njit` code as `exp(x)`, `tanh(x)`, `erf(x)`, `sigmoid(x)`: a float32 argument is
computed in float32 (float32 constants, float32 polynomials), a float64 one in float64; `like(c, x)`
is the constant c in x's type, for formulas built on top. Called from Python (scalars or arrays)
they run an njit loop, which is what the tests use.

Accuracy (max error in ulps of the result's precision; each function's docstring has its
figure, measured as in tests/test_fastmath.py: ~10 million float32 points through +-0, the
denormals, the saturation and overflow edges, +-inf and NaN against NumPy's float64 or math.erf;
float64 against 80-bit long double): float32 <= 1.54 ulp, float64 <= 1.47 ulp (erf: libm).
Specials as PyTorch: exp(-inf) = 0, exp(x > 88.72f / 709.78) = inf, tanh(+-inf) = +-1,
erf(+-inf) = +-1, sigmoid(+-1000) = 1 / 0 exactly, NaN in -> NaN out, denormal results kept.

The polynomial coefficients come from kernels/fit_fastmath.py (float32: minimax by Lawson's
algorithm, each coefficient rounded to float32 and the rest refitted; float64: Taylor or
mpmath's Chebyshev fits). Mul+add pairs use llvm.fmuladd (one FMA where the CPU has FMA).
Nothing here relies on fast-math flags: the rounding steps are intrinsics, so a caller compiled
with fastmath=True cannot reassociate them away.

Cost: a vectorised loop over these is bound by vector-op throughput, not memory (Zen 4 retires one
16-lane FMA per cycle; measured there, each FMA in a loop body costs ~2.4 us per 131072 float32
elements and a division ~5-8 us), so each op counts: exp is ~19 vector ops per 16 elements (16
when LLVM can see that x <= 0, see _exp), tanh ~28, erf ~33. Rational approximations with one
division (Eigen's, XLA's tanh and erf) take about half the ops, but their three roundings (numerator,
denominator, quotient) break the 2-ulp bound in float32: measured for tanh = x P(x^2)/Q(x^2) fits of
degree 11/8, 13/6 and 13/8 on [0, 9] (fit errors 1e-10 to 9e-9), 2.2 ulp near 0 and 4.8-5.9 ulp
towards saturation; so does tanh = expm1(2x)/(expm1(2x) + 2) (2.36 ulp, for 35 us instead of 54).
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

__all__ = ["exp", "tanh", "erf", "sigmoid", "like", "vector_width"]

f32, f64 = np.float32, np.float64


# ---------------------------------------------------------------------------------- intrinsics

def _float_intrinsic(name):
    """The typer+codegen of an njit-callable LLVM float intrinsic llvm.<name>.f32 / .f64 over
    arguments of one float type."""

    def typer(typingctx, *args):
        if not isinstance(args[0], types.Float) or any(a != args[0] for a in args):
            return None

        def codegen(context, builder, sig, llargs):
            lty = llargs[0].type
            suffix = "f32" if args[0] == types.float32 else "f64"
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(lty, [lty] * len(llargs)),
                                                f"llvm.{name}.{suffix}")
            return builder.call(fn, llargs)

        return args[0](*args), codegen

    return typer


_fmuladd, _round, _sign = _float_intrinsic("fmuladd"), _float_intrinsic("rint"), _float_intrinsic("copysign")


@intrinsic
def _fma(typingctx, a, b, c):
    """a*b + c, one fused multiply-add where the CPU has FMA (llvm.fmuladd)."""
    return _fmuladd(typingctx, a, b, c)


@intrinsic
def _rint(typingctx, x):
    """x rounded to the nearest integer, ties to even (vroundps / vrndscaleps)."""
    return _round(typingctx, x)


@intrinsic
def _copysign(typingctx, mag, sgn):
    return _sign(typingctx, mag, sgn)


@intrinsic
def _div(typingctx, a, b):
    """a / b as IEEE division: numba's `/` tests for a zero divisor (to raise ZeroDivisionError,
    unless the caller has error_model="numpy"), and that branch stops LLVM from vectorising."""
    if not isinstance(a, types.Float) or a != b:
        return None
    return a(a, b), lambda context, builder, sig, args: builder.fdiv(*args)


def _pow2_offset(offsets):
    """An intrinsic for 2**(k + offset) (offset: an integer constant per precision, offsets = (float32's,
    float64's), folded into the bias) for a float k with k + offset in the normal exponent range ([-126, 127] in float32, [-1022, 1023] in
    float64), built from its bits: k + 1.5*2**p puts k in the low mantissa bits (no float-to-int
    conversion, so NaN gives a NaN-free garbage power, never poison). Three integer/float ops."""

    def typer(typingctx, k):
        if not isinstance(k, types.Float):
            return None
        single = k == types.float32
        ity = ir.IntType(32 if single else 64)
        mbits, bias = (23, 127) if single else (52, 1023)
        offset = offsets[0] if single else offsets[1]
        magic = 1.5 * 2.0 ** mbits
        magic_bits = int(np.array(magic, f32 if single else f64).view(np.int32 if single else np.int64))

        def codegen(context, builder, sig, args):
            t = builder.fadd(args[0], ir.Constant(args[0].type, magic))
            i = builder.sub(builder.bitcast(t, ity), ir.Constant(ity, magic_bits - bias - offset))
            return builder.bitcast(builder.shl(i, ir.Constant(ity, mbits)), args[0].type)

        return k(k), codegen

    typer.__name__ = f"_pow2_plus_{offsets[0]}_{offsets[1]}"
    return intrinsic(typer)


_pow2 = _pow2_offset((0, 0))
# Results below the normal range: 2^k = 2^(k + OFF) * 2^-OFF, both factors normal for every k the
# callers produce; the product rounds once (into the denormals), as one correct scaling would.
_OFF32, _OFF64 = 64, 512
_pow2_up = _pow2_offset((_OFF32, _OFF64))
_DOWN32, _DOWN64 = f32(2.0 ** -_OFF32), f64(2.0 ** -_OFF64)
_UP32, _UP64 = f32(2.0 ** _OFF32), f64(2.0 ** _OFF64)


# ---------------------------------------------------------------------------------- exp

_LOG2E = 1.4426950408889634
# Cody-Waite split of ln 2: the high part has few bits, so k*hi is exact for every k that occurs.
_LN2_HI32, _LN2_LO32 = f32(0.693359375), f32(-2.12194440e-4)
_LN2_HI64, _LN2_LO64 = f64(0.6931471804855391), f64(7.440617110012397e-11)
# e^r = 1 + r + r^2 (c2 + c3 r + ... ) on |r| <= ln2/2: float32 minimax (rel. error 3.4e-9)
_E32 = tuple(f32(c) for c in (0.4999999403953552, 0.16666516661643982, 0.04166828468441963,
                              0.008369251154363155, 0.001382047077640891))
# float64: Taylor to r^13 (truncation < 5e-18 relative)
_E64 = tuple(f64(1.0 / math.factorial(k)) for k in range(2, 14))


def _exp_consts(x):
    """(log2 e, ln 2 high part, ln 2 low part, the polynomial's coefficients) in x's precision."""


@overload(_exp_consts)
def _exp_consts_ov(x):
    if x == types.float32:
        return lambda x: (f32(_LOG2E), _LN2_HI32, _LN2_LO32, _E32)
    return lambda x: (f64(_LOG2E), _LN2_HI64, _LN2_LO64, _E64)


@njit(inline="always")
def _horner(c, r):
    """c[0] + c[1] r + c[2] r^2 + ... (c a tuple of constants: the loop unrolls)."""
    p = c[len(c) - 1]
    for i in range(len(c) - 2, -1, -1):
        p = _fma(p, r, c[i])
    return p


@njit(inline="always")
def _expm(x):
    """e^x = p * 2^k for x already clamped to the range its precision needs (or NaN): (p, k)."""
    log2e, hi, lo, c = _exp_consts(x)
    k = _rint(x * log2e)
    r = _fma(k, -hi, x)
    r = _fma(k, -lo, r)
    one = type(x)(1.0)
    return _fma(_fma(_horner(c, r), r, one), r, one), k


def _exp_limits(x):
    """(upper clamp, lower clamp, OFF, 2^OFF, 2^-OFF) of exp in x's precision (see _exp)."""


@overload(_exp_limits)
def _exp_limits_ov(x):
    if x == types.float32:
        return lambda x: (f32(89.0), f32(-104.0), f32(_OFF32), _UP32, _DOWN32)
    return lambda x: (f64(710.0), f64(-746.0), f64(_OFF64), _UP64, _DOWN64)


@njit(inline="always")
def _exp(x):
    # Clamp (NaN passes: both tests are false) so k stays in range: exp(89) = inf, exp(-104) = 0
    # (float64: 710, -746).
    top, bottom, off, up_scale, down_scale = _exp_limits(x)
    x = top if x > top else x
    x = bottom if x < bottom else x
    p, k = _expm(x)
    # 2^k = 2^(k -+ OFF) * 2^(+-OFF): both factors are normal for every k that occurs ([-150, 128];
    # float64 [-1076, 1024]), and denormal and overflowing results round once, in the last multiply.
    # A select, not a branch, on k > 0 (false for NaN): where LLVM can tell that x is never positive
    # (exp(-abs(z)); not exp(-z*z)), it folds the select and the upper clamp away: float32, 32 us
    # per 131072 elements against _exp_nonpos's 28 and 36 unfolded.
    up = k > type(k)(0.0)
    return p * _pow2(k + (-off if up else off)) * (up_scale if up else down_scale)


@njit(inline="always")
def _exp_pos32(x):
    """e^x for 0 <= x (or NaN), capped at e^88 = 1.65e38: one power of two suffices (tanh's use)."""
    p, k = _expm(f32(88.0) if x > f32(88.0) else x)
    return p * _pow2(k)


@njit(inline="always")
def _exp_nonpos(x):
    """e^x for x <= 0 (or NaN): k in [-150, 0] (float64 [-1076, 0]), so one offset power of two and
    one scaling (sigmoid's use)."""
    _, bottom, _, _, down_scale = _exp_limits(x)
    p, k = _expm(bottom if x < bottom else x)
    return p * _pow2_up(k) * down_scale


# ---------------------------------------------------------------------------------- tanh

# |x| < 0.55: tanh x = x + x^3 Q(x^2); float32 minimax (rel. error 1.1e-9), float64 mpmath
# Chebyshev fit (rel. error 2.6e-18). |x| >= 0.55: tanh|x| = 1 - 2/(e^{2|x|} + 1), which never
# cancels badly there (the result is >= 0.5) and saturates to exactly 1 (e = inf -> 2/inf = 0).
_T32 = tuple(f32(c) for c in (-0.33333316445350647, 0.13332544267177582, -0.0538475476205349,
                              0.02105071395635605, -0.0062428489327430725))
_T64 = tuple(f64(c) for c in (-0.3333333333333333, 0.13333333333332711, -0.05396825396743151,
                              0.021869488493552625, -0.008863234395177999, 0.003592110343931255,
                              -0.0014556615522767396, 0.00058893468259176, -0.00023463067524526733,
                              8.510647287642557e-05, -2.0598135435770385e-05))


@njit(inline="always")
def _tanh32(x):
    # Both branches on |x|, one copysign at the end (which also keeps tanh(-0) = -0).
    a = abs(x)
    e = _exp_pos32(a + a)  # capped at 1.65e38: 1 - 2/(e + 1) is then exactly 1
    big = f32(1.0) - _div(f32(2.0), e + f32(1.0))
    s = a * a
    c = _T32
    q = _fma(_fma(_fma(_fma(c[4], s, c[3]), s, c[2]), s, c[1]), s, c[0])
    small = _fma(a * s, q, a)
    return _copysign(small if a < f32(0.55) else big, x)  # NaN: the big branch, NaN


@njit(inline="always")
def _tanh64(x):
    a = abs(x)
    e = _exp(a + a)
    big = _copysign(f64(1.0) - _div(f64(2.0), e + f64(1.0)), x)
    s = x * x
    c = _T64
    q = _fma(c[10], s, c[9])
    q = _fma(q, s, c[8])
    q = _fma(q, s, c[7])
    q = _fma(q, s, c[6])
    q = _fma(q, s, c[5])
    q = _fma(q, s, c[4])
    q = _fma(q, s, c[3])
    q = _fma(q, s, c[2])
    q = _fma(q, s, c[1])
    q = _fma(q, s, c[0])
    small = _copysign(_fma(x * s, q, x), x)
    return small if a < f64(0.55) else big


# ---------------------------------------------------------------------------------- sigmoid

@njit(inline="always")
def _ratio_1pe(num, e):
    """num / (1 + e) for 0 <= e <= 1, to within half an ulp plus e's own error: 1 + e = d + c exactly
    (Fast2Sum), r = 1/d (the one division), and one Newton step on the exact denominator d + c
    corrects the roundings of 1 + e, of r and of num * r."""
    one = type(e)(1.0)
    d = e + one
    c = (one - d) + e
    r = _div(one, d)
    q = num * r
    rem = _fma(-q, c, _fma(-q, d, num))  # num - q (d + c), the residual of q
    return _fma(rem, r, q)


@njit(inline="always")
def _sigmoid(x):
    # e = exp(-|x|) <= 1 never overflows; x >= 0: 1/(1+e), x < 0: e/(1+e)
    e = _exp_nonpos(-abs(x))
    return _ratio_1pe((type(x)(1.0) if x >= type(x)(0.0) else e), e)


# ---------------------------------------------------------------------------------- erf

# |x| < 0.92: erf x = x + x Q(x^2) (minimax, rel. error 1.8e-8). |x| >= 0.92: erf|x| = 1 - erfc|x|,
# erfc t = exp(P(t)) with P a degree-6 fit of log(erfc t) on [0.9, 4] weighted by erfc(t): the
# error that reaches erf is erfc(t) times P's error, < 0.03 ulp. t is clamped to 4, where the
# float32 erf is already exactly 1. (Each a degree lower than the first fit, whose errors were
# 30x smaller than needed: 2 of ~35 vector ops per element fewer, the same 1.05 ulp worst case.)
_ERF_S32 = tuple(f32(c) for c in (0.12837915122509003, -0.37612488865852356, 0.11281730979681015,
                                  -0.026762964203953743, 0.0049873474054038525, -0.0005959548871032894))
_ERF_L32 = tuple(f32(c) for c in (-0.00017755421868059784, -1.1277493238449097, -0.6370601654052734,
                                  -0.10403696447610855, 0.0222768671810627, -0.0030555413104593754,
                                  0.00019717344548553228))


@njit(inline="always")
def _erf32(x):
    a = abs(x)
    s = x * x
    c = _ERF_S32
    q = _fma(_fma(_fma(_fma(_fma(c[5], s, c[4]), s, c[3]), s, c[2]), s, c[1]), s, c[0])
    small = _fma(x, q, x)
    t = f32(4.0) if a > f32(4.0) else a
    d = _ERF_L32
    p = _fma(_fma(_fma(_fma(_fma(_fma(d[6], t, d[5]), t, d[4]), t, d[3]), t, d[2]), t, d[1]), t, d[0])
    e, k = _expm(p)  # p in [-17.9, -1.6]: no clamps, one power of two
    big = _copysign(f32(1.0) - e * _pow2(k), x)
    return small if a < f32(0.92) else big  # NaN: big, NaN


@njit(inline="always")
def _erf64(x):
    # No vectorisable float64 erf yet: libm's (glibc: within 1 ulp). float64 is the gradcheck
    # precision, not the training one.
    return math.erf(x)


# ---------------------------------------------------------------------------------- dispatch

def _dispatch(f32_impl, f64_impl):
    def choose(x):
        if x == types.float32:
            return lambda x: f32_impl(x)
        if isinstance(x, (types.Float, types.Integer, types.Boolean)):
            return lambda x: f64_impl(f64(x))
        return None

    return choose


# A hash of this file: the kernels made from the registry's formulas carry it in their names
# (registry._fingerprint reads `fingerprint`), since the overloads' code is not reachable from the
# Python fronts and Numba's disk cache only watches the kernel's own source file.
with open(__file__, "rb") as _f:  # closed at once: a module import leaves no open file behind
    _SOURCE_HASH = hashlib.sha1(_f.read()).hexdigest()[:12]


def _python_entry(name, doc):
    """A Python-callable front (scalars or arrays, run through an njit loop) that njit code calls
    through its overload, inlined, in the argument's precision."""

    def fn(x):
        return _apply(_SCALARS[name], x)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    fn.fingerprint = _SOURCE_HASH
    return fn


exp = _python_entry("exp", """e**x. float32: max error 0.90 ulp (10 million points on [-110, 95] and
+-[1e-45, 110]: tests/test_fastmath.py), denormal results kept, x > 88.7228 -> inf, x < -103.98 -> 0.
float64: max 0.84 ulp against 80-bit long double (1.5 million points on [-750, 710]).""")
tanh = _python_entry("tanh", """tanh(x). float32: max error 1.54 ulp (10 million points on [-12, 12]
and +-[1e-45, 12]); tanh(+-x) = +-1 exactly for |x| > 9.02; tanh(-0) = -0. float64: max 1.47 ulp
against 80-bit long double.""")
sigmoid = _python_entry("sigmoid", """1 / (1 + e**-x) = e/(1 + e) for x < 0 (e = exp(-|x|) never
overflows), with the roundings of 1 + e, of 1/(1 + e) and of the product corrected by one Newton
step (one division). float32: max error 1.46 ulp (10 million points on [-110, 40] and
+-[1e-45, 110]); sigmoid(+-1000) = 1 / 0 exactly, tails relative-accurate down into the denormals,
no floating-point warnings. float64: max 1.40 ulp against 80-bit long double. The CPU kernels'
`sigmoid` primitive (the sigmoid activation, BCE-with-logits' gradient).""")
erf = _python_entry("erf", """erf(x). float32: max error 1.09 ulp (every 7th float32 in [0, 5], 155
million points, against scipy's float64 erf; 1.02 on tests/test_fastmath.py's 1.1 million points
against math.erf); erf(+-x) = +-1 for |x| >= 3.92, erf(-0) = -0. float64:
libm's math.erf (glibc: within 1 ulp; not vectorised).""")

overload(exp)(_dispatch(_exp, _exp))
overload(tanh)(_dispatch(_tanh32, _tanh64))
overload(sigmoid)(_dispatch(_sigmoid, _sigmoid))
overload(erf)(_dispatch(_erf32, _erf64))


def like(c, x):
    """The constant c in x's float type (float32 for a float32 x, else float64), for formulas
    written once for both precisions (a bare Python float would promote float32 to float64)."""
    return type(x)(c) if isinstance(x, np.floating) else float(c)


@overload(like)
def _like_ov(c, x):
    if x == types.float32:
        return lambda c, x: f32(c)
    if isinstance(x, (types.Float, types.Integer)):
        return lambda c, x: f64(c)
    return None


# ---------------------------------------------------------------------------------- Python side

@njit(cache=True)
def _map(fn, x, out):
    """out[i] = fn(x[i]): specialised (and inlined, vectorised) per scalar function fn."""
    for i in range(x.size):
        out[i] = fn(x[i])


_SCALARS = {"exp": njit(lambda x: exp(x)), "tanh": njit(lambda x: tanh(x)),
            "sigmoid": njit(lambda x: sigmoid(x)), "erf": njit(lambda x: erf(x))}


def _apply(fn, x):
    """fn mapped over x (a float32/float64 array or scalar; other input is taken as float64)."""
    a = np.asarray(x)
    shape = a.shape
    a = np.ascontiguousarray(a, dtype=a.dtype if a.dtype in (np.float32, np.float64) else np.float64).reshape(-1)
    out = np.empty_like(a)
    _map(fn, a, out)
    return out.reshape(shape)[()]  # [()]: a 0-d result as a NumPy scalar


def vector_width(name: str = "tanh", dtype=np.float32) -> int:
    """The widest SIMD vector (in elements) in the machine code of `name`'s float loop here:
    16 with AVX-512 (zmm), 8 with AVX2 (ymm), 4 with SSE (xmm), 1 if it did not vectorise."""
    loop = njit(_map.py_func)  # uncached: numba cannot inspect code loaded from its cache
    arr = types.Array(types.float32 if dtype == np.float32 else types.float64, 1, "C")
    sig = (types.Dispatcher(_SCALARS[name]), arr, arr)
    loop.compile(sig)
    asm = loop.inspect_asm(sig)
    per = 4 if dtype == np.float32 else 8
    regs = {"zmm": 64, "ymm": 32, "xmm": 16}
    # a vector loop does packed arithmetic: vfmadd...ps / vmulps on a register of that width
    packed = "ps" if dtype == np.float32 else "pd"
    for reg, nbytes in regs.items():
        for op in ("vfmadd", "vmul", "vadd"):
            if any(op in line and packed in line.split()[0] and f"%{reg}" in line for line in asm.splitlines()
                   if line.strip().startswith("v")):
                return nbytes // per
    return 1
