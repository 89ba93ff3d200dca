"""A FunctionTestCase-style harness (after Chainer's `chainer.testing.FunctionTestCase`).

A test declares only
    inputs(self)            -> tuple of NumPy arrays: float ones in float64 (the harness casts them to
                               the dtype under test), integer ones (labels, indices) as they are;
                               use `self.rng` and `self.batch` (the leading batch size) to build them;
    forward(self, *tensors) -> gpunn Tensor, the op under test;
    reference(self, *arrays)-> NumPy array: the expected output, computed from float64 arrays;
and the harness checks, on every backend that is present (see BACKENDS):
    test_forward              forward vs the reference, float32 (float32 tolerances) and float64 (tight),
                              output shape and dtype exact (no silent broadcast or promotion)
    test_gradcheck            backward vs float64 central differences (gn.gradcheck)
    test_backward_float32     float32 gradients: float32 dtype, close to the float64 gradients
    test_inputs_not_mutated   forward + backward leave inputs and the upstream gradient untouched
    test_noncontiguous        strided and Fortran-ordered inputs give the contiguous results (and grads)
    test_batch_sizes          size-1 and empty (0-row) batches, where `batch_sizes` says they are meaningful

Switch what a case checks with class attributes (see FunctionTestCase). Parameterise a case over
several settings with `@parameterize(...)` / `@product(...)` (Chainer's testing.parameterize), which
generate one subclass per setting into the test module.

Backends are listed in BACKENDS: the reference `Ops` and `CpuOps` on NumPy, and the same on CuPy
when a GPU is usable. A new backend (a GPU kernel set) is added by listing it there.
"""
from __future__ import annotations

import contextlib
import itertools
import re
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import pytest

import gpunn as gn
from gpunn.kernels import ops_for, use_kernels

# ----------------------------------------------------------------------------------------- backends


@dataclass(frozen=True)
class Backend:
    """One kernel set on one device: `kernels` is the use_kernels() choice, `device` "cpu" or "gpu"."""

    name: str
    kernels: str
    device: str

    def available(self) -> tuple[bool, str]:
        if self.device == "cpu":
            return True, "NumPy"
        return gn.gpu_status()

    @property
    def xp(self):
        if self.device == "cpu":
            return np
        import cupy

        return cupy

    @contextlib.contextmanager
    def activate(self):
        with use_kernels(self.kernels):
            yield self

    def ops(self):
        """The Ops instance this backend dispatches to."""
        with self.activate():
            return ops_for(self.asarray(np.zeros(1)))

    def asarray(self, a):
        """A NumPy array on this backend's device: same dtype and the same kind of layout (C-contiguous,
        Fortran-ordered or strided), so layout checks mean the same on every device."""
        if self.device == "cpu" or not isinstance(a, (np.ndarray, np.generic)):
            return a
        a = np.asarray(a)
        xp = self.xp
        if a.flags.c_contiguous:
            return xp.asarray(a)
        if a.flags.f_contiguous:
            return xp.asfortranarray(xp.asarray(np.ascontiguousarray(a)))
        return strided(xp.asarray(np.ascontiguousarray(a)))

    def to_numpy(self, a):
        if isinstance(a, gn.Tensor):
            a = a.data
        if isinstance(a, (np.ndarray, np.generic)):
            return np.asarray(a)
        return a.get()

    def __str__(self) -> str:
        return self.name


class SimulatorBackend(Backend):
    """CudaOps (gpunn's Numba CUDA kernels) on NumPy arrays under Numba's CUDA simulator. Opt-in with
    GPUNN_TEST_CUDASIM_BACKEND=1 (slow: one Python thread per CUDA thread), to run the backend tests
    through the GPU kernels on a machine without a GPU; "gpu" is the real thing."""

    def available(self) -> tuple[bool, str]:
        import os

        from gpunn.backend.numba_cuda import is_simulator

        if os.environ.get("GPUNN_TEST_CUDASIM_BACKEND", "") in ("", "0"):
            return False, "opt-in: GPUNN_TEST_CUDASIM_BACKEND=1"
        return (True, "Numba CUDA simulator") if is_simulator() else (False, "NUMBA_ENABLE_CUDASIM is off")

    @contextlib.contextmanager
    def activate(self):
        from gpunn.kernels import ops as ops_mod
        from gpunn.kernels.cuda_ops import CudaOps

        old = ops_mod._cpu_ops
        ops_mod._cpu_ops = CudaOps()
        try:
            with use_kernels("fused"):
                yield self
        finally:
            ops_mod._cpu_ops = old


BACKENDS = (
    Backend("reference", "reference", "cpu"),
    Backend("cpu", "fused", "cpu"),
    Backend("gpu-reference", "reference", "gpu"),
    Backend("gpu", "fused", "gpu"),  # CudaOps: gpunn's Numba CUDA kernels on CuPy arrays
    SimulatorBackend("cuda-sim", "fused", "cpu"),
)


def present_backends():
    """The backends that can run here (the GPU ones only where CuPy runs on a device)."""
    return [b for b in BACKENDS if b.available()[0]]


# ----------------------------------------------------------------------------------------- tolerances

# float32 results are compared with the float64 reference computed from the same (rounded) inputs.
FWD_TOL = {
    np.dtype(np.float32): dict(rtol=1.3e-6, atol=1e-5),  # torch.testing.assert_close defaults
    np.dtype(np.float64): dict(rtol=1e-9, atol=1e-11),
}
GRAD_TOL = dict(eps=1e-6, atol=1e-5, rtol=1e-3)      # PyTorch's gradcheck defaults
GRAD32_TOL = dict(rtol=1e-3, atol=1e-4)              # float32 gradients vs float64 gradients
FP_ERRORS = dict(over="raise", divide="raise", invalid="raise")  # underflow to 0 is fine


def assert_allclose(actual, expected, rtol, atol, what=""):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != expected {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True, err_msg=what)


@contextlib.contextmanager
def strict_numerics(errstate=FP_ERRORS):
    """Floating-point overflow/division/invalid raise; any warning is an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(**errstate):
            yield


# ----------------------------------------------------------------------------------------- layouts

def _xp(a):
    return np if isinstance(a, (np.ndarray, np.generic)) else __import__("cupy")


def strided(a):
    """The same values in a non-contiguous view (every other element of a twice-as-long buffer)."""
    if a.ndim == 0:
        return a
    buf = _xp(a).zeros(a.shape + (2,), dtype=a.dtype)
    buf[..., 0] = a
    out = buf[..., 0]
    assert out.size <= 1 or not out.flags.c_contiguous
    return out


def fortran(a):
    """The same values in Fortran (column-major) order: non-C-contiguous for 2-D and up."""
    return _xp(a).asfortranarray(a) if a.ndim >= 2 else a


def is_float(a) -> bool:
    return np.asarray(a).dtype.kind == "f"


# ----------------------------------------------------------------------------------------- the harness

def _cast(arrays, dtype):
    return tuple(a.astype(dtype) if is_float(a) else a for a in arrays)


class FunctionTestCase:
    """Subclass (name it Test...) and define inputs(), forward() and reference().

    Class attributes a case may set:
      dtypes           dtypes to test forward in (default float32 and float64)
      fwd_tol          {dtype: dict(rtol, atol)} overriding FWD_TOL
      grad_tol         gradcheck tolerances (default GRAD_TOL)
      grad32_tol       float32-vs-float64 gradient tolerances (default GRAD32_TOL)
      no_grad_inputs   indices of float inputs that must NOT require grad (default: all float inputs do)
      check_backward   False for ops without a gradient
      batch            the batch size inputs() uses by default
      batch_sizes      extra batch sizes to check (default (1, 0)); () where a batch means nothing
      gradcheck_batch1 also gradcheck at batch size 1 (default True)
      noncontiguous    False to skip the layout check (for inputs that are all 0-d)
      errstate         np.errstate settings for forward and backward (default FP_ERRORS)
      seed             seed of self.rng, reset before every inputs() call
    """

    dtypes = (np.float32, np.float64)
    fwd_tol: dict = {}
    grad_tol = GRAD_TOL
    grad32_tol = GRAD32_TOL
    no_grad_inputs: tuple = ()
    check_backward = True
    batch = 3
    batch_sizes: tuple = (1, 0)
    gradcheck_batch1 = True
    noncontiguous = True
    errstate = FP_ERRORS
    seed = 0

    def __init_subclass__(cls, **kw):
        """Checks that do not apply to a case are removed, not skipped (see generate_tests for the rest)."""
        super().__init_subclass__(**kw)
        if not cls.check_backward or np.float64 not in cls.dtypes:
            cls.test_gradcheck = None
        if not cls.check_backward or np.float32 not in cls.dtypes:
            cls.test_backward_float32 = None
        if not cls.noncontiguous:
            cls.test_noncontiguous = None
        if not cls.batch_sizes:
            cls.test_batch_sizes = None

    # ---- to be defined by the case
    def inputs(self):  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, *tensors):  # pragma: no cover - interface
        raise NotImplementedError

    def reference(self, *arrays):  # pragma: no cover - interface
        raise NotImplementedError

    # ---- helpers
    def make_inputs(self, dtype=np.float64, batch=None):
        self.rng = np.random.default_rng(self.seed)
        old = self.batch
        if batch is not None:
            self.batch = batch
        try:
            arrays = tuple(np.asarray(a) for a in self.inputs())
        finally:
            self.batch = old
        return _cast(arrays, dtype)

    def requires_grad(self, i, a) -> bool:
        return self.check_backward and is_float(a) and i not in self.no_grad_inputs

    def tensors(self, backend, arrays):
        return [gn.Tensor(backend.asarray(a), requires_grad=self.requires_grad(i, a)) for i, a in enumerate(arrays)]

    def expected(self, arrays):
        ref_in = tuple(a.astype(np.float64) if is_float(a) else a for a in arrays)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return np.asarray(self.reference(*ref_in))

    def run_forward(self, backend, arrays):
        ts = self.tensors(backend, arrays)
        with backend.activate(), strict_numerics(self.errstate):
            out = self.forward(*ts)
        assert isinstance(out, gn.Tensor), f"forward returned {type(out).__name__}, not a Tensor"
        return ts, out

    def run_backward(self, backend, arrays, cotangent=None):
        """Forward, then backward with a fixed random cotangent: (output, grads as NumPy or None)."""
        ts, out = self.run_forward(backend, arrays)
        if cotangent is None:
            cotangent = np.random.default_rng(self.seed + 1).standard_normal(out.shape).astype(out.dtype)
        cot = backend.asarray(cotangent)
        grads = [None] * len(ts)
        if any(t.requires_grad for t in ts):
            with backend.activate(), strict_numerics(self.errstate):
                out.backward(cot)
            grads = [backend.to_numpy(t.grad) if t.grad is not None else None for t in ts]
        return out, grads

    def fwd_tolerance(self, dtype):
        dtype = np.dtype(dtype)
        return {**FWD_TOL[dtype], **self.fwd_tol.get(dtype, self.fwd_tol.get(dtype.type, {}))}

    def check_forward(self, backend, dtype, batch=None):
        arrays = self.make_inputs(dtype, batch)
        expected = self.expected(arrays)  # first: an op that (wrongly) writes into its inputs cannot hide it
        _, out = self.run_forward(backend, arrays)
        got = backend.to_numpy(out.data)
        what = f"{type(self).__name__} forward on {backend} in {np.dtype(dtype).name} (batch {batch})"
        assert got.shape == expected.shape, f"{what}: output shape {got.shape}, expected {expected.shape}"
        float_in = [a.dtype for a in arrays if is_float(a)]
        if float_in and expected.dtype.kind == "f":
            assert got.dtype == float_in[0], f"{what}: output dtype {got.dtype}, expected {float_in[0]}"
        assert_allclose(got, expected, what=what, **self.fwd_tolerance(dtype))
        return arrays, out

    def check_gradcheck(self, backend, arrays):
        ts = self.tensors(backend, arrays)
        if not any(t.requires_grad for t in ts):
            return
        with backend.activate(), strict_numerics(self.errstate):
            assert gn.gradcheck(self.forward, ts, **self.grad_tol)

    # ---- the checks
    def test_forward(self, backend, dtype):
        self.check_forward(backend, dtype)

    def test_gradcheck(self, backend):
        self.check_gradcheck(backend, self.make_inputs(np.float64))

    def test_backward_float32(self, backend):
        a32 = self.make_inputs(np.float32)
        a64 = _cast(a32, np.float64)  # the same values: the gradients differ by float32 rounding only
        _, out = self.run_forward(backend, a32)
        cot = np.random.default_rng(self.seed + 1).standard_normal(out.shape).astype(np.float32)
        _, g32 = self.run_backward(backend, a32, cot)
        _, g64 = self.run_backward(backend, a64, cot.astype(np.float64))
        for i, (a, x, y) in enumerate(zip(a32, g32, g64)):
            if not self.requires_grad(i, a):
                assert x is None
                continue
            assert x is not None, f"input {i} got no gradient"
            assert x.dtype == np.float32, f"input {i}: float32 input got a {x.dtype} gradient"
            assert x.shape == a.shape, f"input {i}: gradient shape {x.shape} != input shape {a.shape}"
            assert_allclose(x, y, what=f"float32 gradient of input {i} on {backend}", **self.grad32_tol)

    def test_inputs_not_mutated(self, backend, dtype):
        arrays = self.make_inputs(dtype)
        ts = self.tensors(backend, arrays)
        before = [np.array(backend.to_numpy(t.data), copy=True) for t in ts]
        with backend.activate(), strict_numerics(self.errstate):
            out = self.forward(*ts)
        out_before = np.array(backend.to_numpy(out.data), copy=True)
        if any(t.requires_grad for t in ts):
            cot_np = np.random.default_rng(1).standard_normal(out.shape).astype(out.dtype)
            cot = backend.asarray(cot_np.copy())
            with backend.activate(), strict_numerics(self.errstate):
                out.backward(cot)
            np.testing.assert_array_equal(backend.to_numpy(cot), cot_np, err_msg="backward changed the upstream gradient")
        for i, (t, b) in enumerate(zip(ts, before)):
            np.testing.assert_array_equal(backend.to_numpy(t.data), b, err_msg=f"input {i} was modified")
        np.testing.assert_array_equal(backend.to_numpy(out.data), out_before, err_msg="backward modified the output")

    def test_noncontiguous(self, backend):
        for change, dtype in itertools.product(self.layouts(), self.dtypes):
            layout = change.__name__
            arrays = self.make_inputs(dtype)
            moved = tuple(change(a) for a in arrays)
            out_c, g_c = self.run_backward(backend, arrays)
            out_n, g_n = self.run_backward(backend, moved)
            tol = self.fwd_tolerance(dtype)
            assert_allclose(backend.to_numpy(out_n.data), backend.to_numpy(out_c.data),
                            what=f"{layout} forward ({np.dtype(dtype).name})", **tol)
            for i, (x, y) in enumerate(zip(g_n, g_c)):
                assert (x is None) == (y is None)
                if x is not None:
                    assert_allclose(x, y, what=f"{layout} gradient of input {i}", **tol)
        if self.check_backward and np.float64 in self.dtypes:
            self.check_gradcheck(backend, tuple(strided(a) for a in self.make_inputs(np.float64)))

    def layouts(self):
        """strided always; Fortran order too where an input has 2 or more dimensions."""
        arrays = self.make_inputs()
        return (strided, fortran) if any(a.ndim >= 2 for a in arrays) else (strided,)

    def test_batch_sizes(self, backend, batch):
        for dtype in self.dtypes:
            arrays, _ = self.check_forward(backend, dtype, batch)
            if self.check_backward:
                out, grads = self.run_backward(backend, arrays)
                for i, (a, g) in enumerate(zip(arrays, grads)):
                    if self.requires_grad(i, a):
                        assert g is not None and g.shape == a.shape and g.dtype == a.dtype, \
                            f"input {i}: gradient {None if g is None else (g.shape, g.dtype)} for {a.shape} {a.dtype}"
                        assert np.isfinite(g).all(), f"input {i}: non-finite gradient at batch {batch}"
        if batch == 1 and self.check_backward and self.gradcheck_batch1:
            self.check_gradcheck(backend, self.make_inputs(np.float64, 1))


# ----------------------------------------------------------------------------------------- collection

def generate_tests(metafunc):
    """conftest's pytest_generate_tests: for FunctionTestCase methods, the dtypes and batch sizes
    the case declares (the `backend` fixture in conftest runs every test on every present backend)."""
    names = metafunc.fixturenames
    cls = metafunc.cls
    if cls is not None and issubclass(cls, FunctionTestCase):
        if "dtype" in names:
            metafunc.parametrize("dtype", list(cls.dtypes), ids=[np.dtype(d).name for d in cls.dtypes])
        if "batch" in names:
            metafunc.parametrize("batch", list(cls.batch_sizes), ids=[f"batch{b}" for b in cls.batch_sizes])


# ----------------------------------------------------------------------------------------- parameterize

def _suffix(params: dict) -> str:
    parts = []
    for k, v in params.items():
        s = getattr(v, "__name__", None) or str(v)
        s = re.sub(r"[^0-9a-zA-Z.+-]+", "_", s).strip("_").replace(".", "p").replace("-", "m").replace("+", "p")
        parts.append(f"{k}_{s or 'empty'}")
    return "__".join(parts)


def parameterize(*settings: dict):
    """Class decorator: one subclass per dict of class attributes, added to the test module.

    The decorated class itself is removed from collection (its settings would be missing).
    """
    def decorate(cls):
        module = sys.modules[cls.__module__]
        for params in settings:
            name = f"{cls.__name__}__{_suffix(params)}"
            sub = type(name, (cls,), dict(params, __module__=cls.__module__, __qualname__=name))
            setattr(module, name, sub)
        cls.__test__ = False
        for params in settings:  # subclasses must be collected even though the base is not
            getattr(module, f"{cls.__name__}__{_suffix(params)}").__test__ = True
        return cls
    return decorate


def product(**lists):
    """The cartesian product of attribute lists, for `parameterize(*product(a=[...], b=[...]))`."""
    keys = list(lists)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(lists[k] for k in keys))]
