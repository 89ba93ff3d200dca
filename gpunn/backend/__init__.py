"""Array backends and device choice: NumPy on the CPU, CuPy on an NVIDIA GPU.

This is the lowest layer of gpunn. It knows which array module (`xp`) a device
uses, whether a GPU is usable and, if not, why. Importing it never imports CuPy:
that happens the first time a GPU is asked for.
"""
from gpunn.backend.device import (
    Device,
    DeviceError,
    cpu,
    device,
    get_array_module,
    gpu_status,
    device_of,
)
from gpunn.backend.random import generator, manual_seed

__all__ = ["Device", "DeviceError", "cpu", "device", "get_array_module", "gpu_status", "device_of", "generator", "manual_seed"]
