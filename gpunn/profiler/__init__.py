"""gpunn's profiler: which kernels run, where in the training step, how fast, and how close to
the device's peak (after torch.profiler).

    import gpunn as gn
    with gn.profiler.profile() as prof:
        for _ in range(50):
            opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
    print(prof.table(sort_by="total", group_by="kernel"))   # or group_by="layer" / "phase"
    prof.export_chrome_trace("trace.json")                  # Perfetto / chrome://tracing
    prof.roofline("roofline.png")                           # pip install "gpunn[plot]"
    prof.launches_per_step()                                # {"forward": 3.0, ..., "total": 16.0}

Works on the CPU and on the GPU backend alike: CPU kernels are timed with perf_counter_ns, GPU
kernels with CUDA events read after a synchronisation, inside NVTX ranges named after gpunn's
kernels and layers. With no profile active, gpunn pays one `is None` test per kernel dispatch
and per graph node (kernels/bench_profiler_overhead.py measures it).
"""
from gpunn.profiler.peaks import KNOWN_DEVICES, Peaks, calibrate, cache_path, device_peaks
from gpunn.profiler.profile import GROUP_BY, PHASES, SORT_BY, Row, profile
from gpunn.profiler.recorder import COSTS, KernelEvent, Span

__all__ = ["profile", "Row", "KernelEvent", "Span", "Peaks", "device_peaks", "calibrate", "cache_path",
           "KNOWN_DEVICES", "COSTS", "GROUP_BY", "SORT_BY", "PHASES"]
