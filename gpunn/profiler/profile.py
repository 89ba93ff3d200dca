"""`gpunn.profiler.profile`: the context manager users hold, and its text table.

    with gn.profiler.profile() as prof:
        for xb, yb in batches:
            opt.zero_grad(); loss_fn(model(xb), yb).backward(); opt.step()
    print(prof.table(group_by="layer"))
    prof.export_chrome_trace("trace.json")     # Perfetto (ui.perfetto.dev) or chrome://tracing
    prof.roofline("roofline.png")              # needs matplotlib: pip install "gpunn[plot]"

What is counted, and how (see also recorder.py):
- a *kernel* is one call of a gpunn kernel (an `Ops` method: dense_forward, adam_update, ...), a
  leaf's gradient copy ("accumulate_grad"), or a graph node that ran plain array expressions and no
  gpunn kernel ("MatMul.forward"); each is also one *launch* in `launches_per_step()` (a fused
  primitive is one call however many passes it makes: on the CPU a dense layer is one NumPy GEMM
  plus one Numba epilogue);
- a *part* is one such pass inside a fused CPU kernel (the dense layer's bias+activation epilogue,
  "dense_forward / bias+gelu", and its backward, "dense_backward / gelu'+db"): kept in `parts`,
  shown in the kernel table indented under its kernel, never counted twice in totals or launches;
- a *step* ends with every `Optimizer.step()`;
- FLOPs and bytes come from the cost model beside each kernel (`COSTS` in gpunn/kernels/*.py);
  achieved GFLOP/s = FLOPs / time, GB/s = bytes / time, and "% peak" is the share of the roofline
  at the kernel's arithmetic intensity: max(GFLOP/s / peak GFLOP/s, GB/s / peak GB/s).
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass

from gpunn.kernels import dense as _kdense
from gpunn.kernels import ops as _kops
from gpunn.profiler.peaks import Peaks, device_peaks
from gpunn.profiler.recorder import KernelEvent, Recorder, Span

__all__ = ["profile", "Row", "GROUP_BY", "SORT_BY", "PHASES"]

GROUP_BY = ("kernel", "layer", "phase")
SORT_BY = ("total", "mean", "calls", "gflops", "gbps", "name")
PHASES = ("forward", "loss", "backward", "optimizer", "other")


@dataclass
class Row:
    """One line of `profile.table`: the kernels of one kernel name, layer or phase together."""

    key: str
    calls: int
    total_ns: int
    pct_time: float                # of the profiled wall time
    flops: int | None              # None when no event of the row has a cost model
    bytes: int | None
    gflops: float | None           # achieved, over the events with counts
    gbps: float | None
    pct_peak: float | None
    backend: str = ""

    @property
    def mean_ns(self) -> float:
        return self.total_ns / self.calls if self.calls else 0.0

    @property
    def intensity(self) -> float | None:
        """Arithmetic intensity, FLOPs per byte."""
        return self.flops / self.bytes if self.flops and self.bytes else None


def _peaks_from(value, device: str):
    """profile(peaks=...) as a Peaks: a Peaks, or a dict {"gflops": number or {dtype: number}, "gbps": number}."""
    if value is None or isinstance(value, Peaks):
        return value
    if isinstance(value, dict):
        gflops = value.get("gflops")
        if not isinstance(gflops, dict):
            gflops = {"float32": gflops} if gflops else {}
        return Peaks(device, value.get("name", device), {k: float(v) for k, v in gflops.items()},
                     float(value["gbps"]) if value.get("gbps") else None, "given")
    raise TypeError("peaks must be None, False, a Peaks or a dict with 'gflops' and 'gbps', "
                    f"got {type(value).__name__}")


def _wait_for_gpu() -> None:
    """Synchronise the current CUDA device when CuPy is in use (never imports CuPy itself)."""
    if "cupy" not in sys.modules:
        return
    from gpunn.backend import gpu_status

    if gpu_status()[0]:
        sys.modules["cupy"].cuda.runtime.deviceSynchronize()


class profile:
    """Records every gpunn kernel that runs while it is active (see the module doc).

    peaks: None (look the device up or measure it once, see gpunn.profiler.peaks), False (no
        "% peak"), a Peaks, or {"gflops": ..., "gbps": ...}.
    nvtx: emit NVTX ranges on a GPU (default: when CuPy or the nvtx package provides them).
    sync: on a GPU, wait for each range's kernels before it ends (ranges then last until their
        kernels finish, as with CuPy's time_range(sync=True)); off by default.
    Profiles do not nest, and one profile records every thread of the process.
    """

    def __init__(self, *, peaks=None, nvtx: bool | None = None, sync: bool = False):
        if peaks is not False:
            _peaks_from(peaks, "cpu")  # a TypeError now rather than after the run
        self._peaks_arg = peaks
        self._nvtx, self._sync = nvtx, sync
        self._rec = None
        self._peaks = {}
        self._remeasured = set()
        self.events: list[KernelEvent] = []
        self.parts: list[KernelEvent] = []
        self.spans: list[Span] = []
        self.step_ends: list[int] = []
        self.wall_ns = 0

    # ------------------------------------------------------------------ start / stop
    def __enter__(self) -> "profile":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if _kops._recorder is not None:
            raise RuntimeError("a gpunn profiler is already active; profiles do not nest")
        if self._rec is not None:
            raise RuntimeError("this profile has already run; start a new gpunn.profiler.profile()")
        _wait_for_gpu()  # work queued before the profile must not land in it
        self._rec = Recorder(nvtx=self._nvtx, sync=self._sync)
        _kops._recorder = self._rec
        _kdense.part_hook = self._rec.part

    def stop(self) -> None:
        rec = self._rec
        if rec is None or rec.t1 is not None:
            return
        if _kops._recorder is rec:
            _kops._recorder = None
        if _kdense.part_hook == rec.part:
            _kdense.part_hook = None
        rec.finish()
        t0 = rec.t0
        for ev in rec.parts:
            ev.start_ns -= t0
            ev.end_ns -= t0
        for ev in rec.events:  # times relative to the profile's start
            ev.start_ns -= t0
            ev.end_ns -= t0
            if ev.device_start_ns is not None:
                ev.device_start_ns -= t0
                ev.device_end_ns -= t0
        for sp in rec.spans:
            sp.start_ns -= t0
            sp.end_ns -= t0
        self.events = rec.events
        self.parts = rec.parts
        self.spans = sorted(rec.spans, key=lambda s: (s.start_ns, -s.end_ns))
        self.step_ends = [e - t0 for e in rec.step_ends]
        self.wall_ns = rec.t1 - t0

    # ------------------------------------------------------------------ what was recorded
    @property
    def steps(self) -> int:
        """Training steps profiled: the number of Optimizer.step() calls."""
        return len(self.step_ends)

    @property
    def kernel_ns(self) -> int:
        """Total time of the recorded kernels (GPU time from CUDA events on a GPU)."""
        return sum(ev.duration_ns for ev in self.events)

    @property
    def device(self) -> str:
        """The device that ran most of the kernel time ("cpu" or "gpu:N")."""
        per = Counter()
        for ev in self.events:
            per[ev.device] += ev.duration_ns
        return per.most_common(1)[0][0] if per else "cpu"

    def peaks(self, device: str | None = None) -> Peaks | None:
        """The peaks "% peak" and the roofline use for `device` (default: the profile's device)."""
        device = device or self.device
        if self._peaks_arg is False:
            return None
        if device not in self._peaks:
            given = _peaks_from(self._peaks_arg, device)
            self._peaks[device] = given if given is not None else device_peaks(device)
        return self._peaks[device]

    def launches_per_step(self) -> dict:
        """Kernel launches per training step by phase, and "total" (totals when no step was taken)."""
        steps = max(self.steps, 1)
        counts = Counter(ev.phase for ev in self.events)
        out = {ph: counts[ph] / steps for ph in PHASES if counts[ph]}
        out["total"] = len(self.events) / steps
        return out

    # ------------------------------------------------------------------ aggregation
    def key_averages(self, group_by: str = "kernel", sort_by: str = "total") -> list[Row]:
        """The table's rows: kernels grouped by kernel name, layer or phase."""
        if group_by not in GROUP_BY:
            raise ValueError(f"group_by must be one of {GROUP_BY}, got {group_by!r}")
        if sort_by not in SORT_BY:
            raise ValueError(f"sort_by must be one of {SORT_BY}, got {sort_by!r}")
        groups: dict[tuple, list[KernelEvent]] = {}
        for ev in self.events:
            if group_by == "kernel":
                key = (ev.name, ev.backend)  # a kernel name run by two implementations: two rows
            elif group_by == "layer":
                key = (ev.layer if ev.layer is not None else f"({ev.phase})",)
            else:
                key = (ev.phase,)
            groups.setdefault(key, []).append(ev)
        rows = [self._row(key[0], evs) for key, evs in groups.items()]
        if self._remeasure_exceeded_peaks(rows):
            rows = [self._row(key[0], evs) for key, evs in groups.items()]
        keyf = {"total": lambda r: -r.total_ns, "mean": lambda r: -r.mean_ns, "calls": lambda r: -r.calls,
                "gflops": lambda r: -(r.gflops or 0.0), "gbps": lambda r: -(r.gbps or 0.0),
                "name": lambda r: r.key}[sort_by]
        return sorted(rows, key=keyf)

    def _row(self, key: str, evs: list) -> Row:
        total = sum(ev.duration_ns for ev in evs)
        counted = [ev for ev in evs if ev.flops is not None and ev.bytes is not None]
        flops = nbytes = gflops = gbps = pct_peak = None
        if counted:
            flops = sum(ev.flops for ev in counted)
            nbytes = sum(ev.bytes for ev in counted)
            ns = sum(ev.duration_ns for ev in counted)
            if ns > 0:
                gflops, gbps = flops / ns, nbytes / ns  # per nanosecond = giga per second
                pct_peak = self._pct_peak(counted, gflops, gbps)
        backends = sorted({ev.backend for ev in evs})
        return Row(key, len(evs), total, 100.0 * total / self.wall_ns if self.wall_ns else 0.0,
                   flops, nbytes, gflops, gbps, pct_peak, ",".join(backends))

    def _remeasure_exceeded_peaks(self, rows) -> bool:
        """More than 100% of a peak read from the cache means that figure was measured while the
        machine was busy: measure it again now (once per device per profile) and cache the result."""
        if not any(r.pct_peak is not None and r.pct_peak > 100.0 for r in rows):
            return False
        stale = [d for d, p in self._peaks.items() if p is not None and p.cached and d not in self._remeasured]
        for d in stale:
            self._remeasured.add(d)
            self._peaks[d] = device_peaks(d, recalibrate=True)
        return bool(stale)

    def _pct_peak(self, evs, gflops, gbps):
        devices = {ev.device for ev in evs}
        if len(devices) != 1:
            return None
        peaks = self.peaks(devices.pop())
        if peaks is None:
            return None
        by_dtype = Counter()
        for ev in evs:
            by_dtype[ev.dtype or "float32"] += ev.duration_ns
        p = peaks.flops_for(by_dtype.most_common(1)[0][0])
        shares = [gflops / p if p else None, gbps / peaks.gbps if peaks.gbps else None]
        shares = [s for s in shares if s is not None]
        return 100.0 * max(shares) if shares else None

    # ------------------------------------------------------------------ outputs
    def table(self, sort_by: str = "total", group_by: str = "kernel", row_limit: int | None = None) -> str:
        """A text table: calls, total and mean time, % of the profiled time, achieved GFLOP/s and
        GB/s, and % of the device's peak, one row per kernel name, layer or phase."""
        rows = self.key_averages(group_by, sort_by)
        shown = rows if row_limit is None else rows[:row_limit]
        parts = {}  # kernel name -> the rows of its parts (kernel table only), shown under it
        if group_by == "kernel":
            groups = {}
            for ev in self.parts:
                groups.setdefault(ev.name, []).append(ev)
            for name, evs in sorted(groups.items()):
                parts.setdefault(name.split(" / ")[0], []).append(self._row("  " + name, evs))
        width = max([len(group_by)] + [len(r.key) for r in shown]
                    + [len(r.key) for rs in parts.values() for r in rs]) + 2
        head = (f"{group_by:<{width}}{'backend':<11}{'calls':>7}{'total ms':>11}{'mean us':>10}{'% time':>8}"
                f"{'GFLOP/s':>10}{'GB/s':>9}{'% peak':>8}")
        rule = "-" * len(head)

        def num(v, fmt):
            return "-" if v is None else format(v, fmt)

        steps = self.steps
        per = f" ({self.wall_ns / 1e6 / steps:.3f} ms/step)" if steps else ""
        lines = [f"gpunn profile: {steps} step{'s' if steps != 1 else ''}, {self.wall_ns / 1e6:.2f} ms profiled"
                 f"{per}, device {self.device}", head, rule]
        for r in shown:
            for r in [r] + (parts.get(r.key, []) if r.backend == "cpu" else []):
                lines.append(f"{r.key:<{width}}{r.backend:<11}{r.calls:>7}{r.total_ns / 1e6:>11.3f}"
                             f"{r.mean_ns / 1e3:>10.1f}{r.pct_time:>8.1f}{num(r.gflops, '10.2f')}"
                             f"{num(r.gbps, '9.2f')}{num(r.pct_peak, '8.1f')}")
        if len(shown) < len(rows):
            lines.append(f"... {len(rows) - len(shown)} more rows")
        lines.append(rule)
        kern = self.kernel_ns
        lines.append(f"{'kernels':<{width}}{'':<11}{len(self.events):>7}{kern / 1e6:>11.3f}{'':>10}"
                     f"{(100.0 * kern / self.wall_ns if self.wall_ns else 0.0):>8.1f}")
        other = self.wall_ns - kern
        lines.append(f"{'other':<{width}}{'':<11}{'':>7}{other / 1e6:>11.3f}{'':>10}"
                     f"{(100.0 * other / self.wall_ns if self.wall_ns else 0.0):>8.1f}"
                     "   (Python, graph and untracked array work)")
        lps = self.launches_per_step()
        parts = ", ".join(f"{ph} {lps[ph]:g}" for ph in PHASES if ph in lps)
        lines.append(f"kernel launches per {'step' if steps else 'profile'}: {lps['total']:g} ({parts})")
        peaks = self.peaks() if self.events else None
        if peaks is not None:
            lines.append(f"peaks: {peaks.describe()}")
        return "\n".join(lines)

    def export_chrome_trace(self, path: str) -> None:
        """Write a Chrome trace-event JSON file (open it in https://ui.perfetto.dev or chrome://tracing)."""
        import json

        from gpunn.profiler.trace import chrome_trace

        with open(path, "w") as f:
            json.dump(chrome_trace(self), f)

    def roofline(self, path: str, title: str | None = None) -> None:
        """Draw every kernel as a point (arithmetic intensity, achieved GFLOP/s) under the device's
        compute and memory roofs, and save the figure (PNG, SVG, PDF by the file name)."""
        from gpunn.profiler.roofline import draw_roofline

        draw_roofline(self, path, title)

    def __repr__(self) -> str:
        state = "recording" if self._rec is not None and self._rec.t1 is None else f"{len(self.events)} kernels"
        return f"<gpunn.profiler.profile {state}>"
