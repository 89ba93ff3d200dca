"""A profile as Chrome trace-event JSON (what Perfetto and chrome://tracing open).

Every interval is an "X" (complete) event with `ts` and `dur` in microseconds, written with three
decimals so that a viewer reading them back gets the recorded nanoseconds exactly. Tracks:

- one per host thread: "step N" > phase ("forward", "loss", "backward", "optimizer") > graph node
  ("Dense[0]", "Dense[0].backward") > kernel. Backward and optimizer phases and the nodes are
  recorded spans; forward and loss phases and steps are drawn around what they contain;
- on a GPU, one more per CUDA stream: the kernels at their GPU times (from CUDA events), under the
  same step, phase and node spans, each drawn from the first to the last of its kernels on that
  stream. On that track the host's kernel events are the launches (category "launch").

Metadata events name the process and every track.
"""
from __future__ import annotations

import bisect
import os
import threading

from gpunn.profiler.recorder import KernelEvent

__all__ = ["chrome_trace"]


def _us(ns: int) -> float:
    return round(ns / 1000.0, 3)


def _x(name, cat, start_ns, end_ns, pid, tid, args=None) -> dict:
    ev = {"name": name, "cat": cat, "ph": "X", "ts": _us(start_ns), "dur": _us(end_ns - start_ns),
          "pid": pid, "tid": tid}
    if args:
        ev["args"] = args
    return ev


def _kernel_args(ev: KernelEvent) -> dict:
    args = {"backend": ev.backend, "device": ev.device, "phase": ev.phase, "layer": ev.layer,
            "shapes": " ".join("x".join(map(str, s)) for s in ev.shapes), "dtype": ev.dtype}
    if ev.flops is not None:
        ns = ev.duration_ns
        args.update(flops=ev.flops, bytes=ev.bytes)
        if ns > 0:
            args.update({"GFLOP/s": round(ev.flops / ns, 3), "GB/s": round(ev.bytes / ns, 3)})
    return args


def _host_intervals(prof, tid: int) -> list[tuple]:
    """(name, category, start, end, args) of the spans of one host thread: the recorded ones, the
    forward/loss phases drawn around runs of top-level nodes of that phase, and the steps."""
    spans = [s for s in prof.spans if s.tid == tid]
    out = [(s.name, "phase" if s.kind == "phase" else "node", s.start_ns, s.end_ns,
            {"phase": s.phase, "layer": s.layer}) for s in spans]
    top = [s for s in spans if s.depth == 0]
    run = []

    def flush():
        if run:
            out.append((run[0].phase, "phase", run[0].start_ns, run[-1].end_ns, {"phase": run[0].phase}))
            run.clear()

    for s in top:
        if s.kind == "node" and (not run or run[0].phase == s.phase):
            run.append(s)
            continue
        flush()
        if s.kind == "node":
            run.append(s)
    flush()
    steps_here = [s.end_ns for s in top if s.kind == "phase" and s.name == "optimizer"]
    prev = None
    for i, end in enumerate(sorted(steps_here)):
        inside = [s.start_ns for s in top if (prev is None or s.start_ns > prev) and s.end_ns <= end]
        out.append((f"step {i}", "step", min(inside), end, {"step": i}))
        prev = end
    return out


def chrome_trace(prof) -> dict:
    pid = os.getpid()
    main = threading.main_thread().ident
    idents = sorted({s.tid for s in prof.spans} | {ev.tid for ev in prof.events}, key=lambda t: (t != main, t))
    host_tid = {ident: i + 1 for i, ident in enumerate(idents)}
    meta = [{"name": "process_name", "ph": "M", "pid": pid, "args": {"name": f"gpunn ({prof.device})"}}]
    events = []
    gpu = any(ev.device_start_ns is not None for ev in prof.events)
    for ident, tid in host_tid.items():
        label = "host: main thread" if ident == main else f"host: thread {ident}"
        meta.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": label}})
        meta.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
        intervals = _host_intervals(prof, ident)
        for name, cat, s, e, args in intervals:
            events.append(_x(name, cat, s, e, pid, tid, args))
        mine = sorted((ev for ev in prof.events if ev.tid == ident), key=lambda ev: ev.start_ns)
        for ev in mine:
            cat = "launch" if ev.device_start_ns is not None else "kernel"
            events.append(_x(ev.name, cat, ev.start_ns, ev.end_ns, pid, tid, _kernel_args(ev)))
        if gpu:
            events.extend(_stream_tracks(pid, mine, intervals, meta))
    trace = {"traceEvents": meta + events, "displayTimeUnit": "ms",
             "otherData": {"tool": "gpunn.profiler", "device": prof.device, "steps": prof.steps,
                           "wall_ms": round(prof.wall_ns / 1e6, 6)}}
    return trace


def _stream_tracks(pid, mine, intervals, meta) -> list:
    """GPU-only: the kernels of one host thread at their GPU times, one track per stream, with the
    host's spans redrawn around each span's kernels on that stream."""
    by_stream = {}
    for ev in mine:
        if ev.device_start_ns is not None:
            by_stream.setdefault((ev.device, ev.stream), []).append(ev)
    out = []
    for (device, stream), evs in sorted(by_stream.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        tid = 1001 + sum(1 for m in meta if m["name"] == "thread_name" and m["tid"] > 1000)  # after the host tracks
        label = f"{device} stream {'default' if not stream else hex(stream)}"
        meta.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": label}})
        meta.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
        starts = [ev.start_ns for ev in evs]  # host launch times, in order
        for name, cat, s, e, args in intervals:
            lo, hi = bisect.bisect_left(starts, s), bisect.bisect_right(starts, e)
            if lo < hi:
                inside = evs[lo:hi]
                out.append(_x(name, cat, min(ev.device_start_ns for ev in inside),
                              max(ev.device_end_ns for ev in inside), pid, tid, args))
        for ev in evs:
            out.append(_x(ev.name, "kernel", ev.device_start_ns, ev.device_end_ns, pid, tid, _kernel_args(ev)))
    return out
