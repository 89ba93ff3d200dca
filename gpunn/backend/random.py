"""One seed for every generator gpunn uses (Python's, NumPy's, CuPy's).

The library never draws from global NumPy state: it asks `generator()` for the process-wide
`numpy.random.Generator`, which `manual_seed(n)` replaces. CPU results are therefore a function
of the seed alone. Random arrays that live on a GPU (dropout masks) come from `generator_for(a)`:
one CuPy Generator per device, made on first use from the last `manual_seed` and the device index,
so GPU draws are a function of the seed too and never move the host generator.
"""
from __future__ import annotations

import random as _pyrandom
import sys

import numpy as np

_generator = np.random.default_rng()
_seed = None              # the last manual_seed (None: fresh entropy)
_device_generators = {}   # CuPy device index -> cupy.random.Generator


def manual_seed(seed: int) -> np.random.Generator:
    """Seed gpunn's generators, Python's `random`, NumPy's legacy global state and (if loaded) CuPy."""
    global _generator, _seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"manual_seed expects a non-negative integer, got {seed!r}")
    seed = int(seed)
    _generator = np.random.default_rng(seed)
    _seed = seed
    _device_generators.clear()
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


def generator_for(array):
    """The generator that draws random arrays on `array`'s device: `generator()` for a NumPy array,
    else this device's CuPy Generator (both have `random(size, dtype)`)."""
    if isinstance(array, (np.ndarray, np.generic)):
        return _generator
    index = int(array.device.id)
    g = _device_generators.get(index)
    if g is None:
        import cupy

        entropy = [_seed, index] if _seed is not None else [np.random.SeedSequence().entropy, index]
        state = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)
        with cupy.cuda.Device(index):
            g = _device_generators[index] = cupy.random.default_rng(state)
    return g
