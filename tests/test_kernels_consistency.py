"""Every backend is the same interface (after Thinc's test_ops_consistency): each Ops subclass has
exactly the base class's public methods, with the same parameter names, kinds, defaults and (where
both are annotated) annotations. A GPU backend that subclasses Ops is checked the moment it is
imported; the ones present here are imported below."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import gpunn.kernels
from gpunn.kernels import CpuOps, Ops, ops_for, use_kernels


def _import_backends():
    """Import every gpunn.kernels submodule so that all Ops subclasses exist (skipping ones that
    need CuPy where it is missing)."""
    for mod in pkgutil.iter_modules(gpunn.kernels.__path__):
        try:
            importlib.import_module(f"gpunn.kernels.{mod.name}")
        except ImportError as err:
            if "cupy" not in str(err).lower() and "cuda" not in str(err).lower():
                raise


def _all_subclasses(cls):
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


_import_backends()
SUBCLASSES = [c for c in _all_subclasses(Ops) if c.__module__.startswith("gpunn.")]


def _public(cls):
    return sorted(n for n in dir(cls) if not n.startswith("_"))


def test_cpu_ops_is_a_subclass():
    assert CpuOps in SUBCLASSES


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: c.__name__)
def test_subclass_has_exactly_the_base_methods(cls):
    extra = set(_public(cls)) - set(_public(Ops))
    assert not extra, f"{cls.__name__} defines methods the base Ops lacks: {sorted(extra)}"
    missing = set(_public(Ops)) - set(_public(cls))
    assert not missing, f"{cls.__name__} lacks {sorted(missing)}"


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: c.__name__)
def test_subclass_signatures_equal_the_base(cls):
    ops, base = cls(), Ops()
    for name in _public(Ops):
        mine, theirs = getattr(ops, name), getattr(base, name)
        if not callable(theirs):
            assert not callable(mine), name
            continue
        sig, base_sig = inspect.signature(mine), inspect.signature(theirs)
        params, base_params = list(sig.parameters.values()), list(base_sig.parameters.values())
        assert [p.name for p in params] == [p.name for p in base_params], f"{cls.__name__}.{name}: {sig} != {base_sig}"
        assert [p.kind for p in params] == [p.kind for p in base_params], f"{cls.__name__}.{name}: kinds differ"
        assert [p.default for p in params] == [p.default for p in base_params], \
            f"{cls.__name__}.{name}: defaults {sig} != {base_sig}"
        for p, q in zip(params, base_params):
            if p.annotation is not inspect.Parameter.empty and q.annotation is not inspect.Parameter.empty:
                assert str(p.annotation) == str(q.annotation), f"{cls.__name__}.{name}({p.name}): annotations differ"


def test_base_methods_are_static_and_paired():
    """Kernels are pure functions (no hidden state on the Ops object); every *_forward has a *_backward."""
    names = _public(Ops)
    for name in names:
        if name == "name":
            continue
        assert isinstance(inspect.getattr_static(Ops, name), staticmethod), name
    for name in names:
        if name.endswith("_forward"):
            assert name.replace("_forward", "_backward") in names, name


def test_backend_names_are_unique():
    names = [Ops.name] + [c.name for c in SUBCLASSES]
    assert len(names) == len(set(names)), names


def test_ops_for_and_use_kernels():
    import numpy as np

    a = np.zeros(2, np.float32)
    assert type(ops_for(a)) is CpuOps
    with use_kernels("reference"):
        assert type(ops_for(a)) is Ops
        with use_kernels("fused"):
            assert type(ops_for(a)) is CpuOps
        assert type(ops_for(a)) is Ops
    assert type(ops_for(a)) is CpuOps
    assert type(ops_for(np.float32(1))) is CpuOps
    with pytest.raises(ValueError, match="fused.*reference.*'gpu'"):
        with use_kernels("gpu"):
            pass
    assert "CpuOps" in repr(ops_for(a)) and "'cpu'" in repr(ops_for(a))
