"""Array backends and device choice: NumPy on the CPU, CuPy on an NVIDIA GPU.

This is the lowest layer of gpunn. It knows which array module (`xp`) a device
uses, whether a GPU is usable and, if not, why. Importing it never imports CuPy:
that happens the first time a GPU is asked for.
"""
from gpunn.backend.device import (
    FLOAT_DTYPES,
    Device,
    DeviceError,
    cpu,
    device,
    device_of,
    get_array_module,
    gpu_status,
    is_array,
    is_cupy_array,
    on_host,
)
from gpunn.backend.random import generator, generator_for, manual_seed

__all__ = ["FLOAT_DTYPES", "Device", "DeviceError", "cpu", "device", "device_of", "generator", "generator_for",
           "get_array_module", "gpu_status", "is_array", "is_cupy_array", "manual_seed", "on_host"]
