"""PyTorch for the parity tests when it is installed: `torch` (None without it) and
`requires_torch`, a per-test skip, so that a module's torch-free tests still run without it."""
from __future__ import annotations

import pytest

try:
    import torch
except ImportError:
    torch = None

requires_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed (the parity tests compare "
                                                          "with torch==2.13.0 on the CPU)")
