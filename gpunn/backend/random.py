"""One seed for every generator gpunn uses (Python's, NumPy's, CuPy's).

The library never draws from global NumPy state: it asks `generator()` for the process-wide
`numpy.random.Generator`, which `manual_seed(n)` replaces. CPU results are therefore a function
of the seed alone.
"""
from __future__ import annotations

import random as _pyrandom
import sys

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Seed gpunn's generator, Python's `random`, NumPy's legacy global state and (if loaded) CuPy."""
    global _generator
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"manual_seed expects a non-negative integer, got {seed!r}")
    seed = int(seed)
    _generator = np.random.default_rng(seed)
    _pyrandom.seed(seed)
    np.random.seed(seed % 2**32)
    cupy = sys.modules.get("cupy")  # seed CuPy only if something already imported it
    if cupy is not None:
        try:
            cupy.random.seed(seed)
        except Exception:  # no usable device: nothing to seed
            pass
    return _generator


def generator() -> np.random.Generator:
    """The generator that parameter initialisation, shuffling and datasets draw from by default."""
    return _generator
