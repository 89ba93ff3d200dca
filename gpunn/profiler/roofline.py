"""The roofline of a profile: each kernel (per layer) as a point, arithmetic intensity (FLOPs per
byte) against achieved GFLOP/s, under the device's compute roof and memory-bandwidth slope.

Needs matplotlib (the `plot` extra). Drawn on a matplotlib Figure with the Agg canvas, so it
neither needs a display nor touches pyplot's global state.
"""
from __future__ import annotations

import math

__all__ = ["draw_roofline", "roofline_points"]

_COLORS = {"forward": "tab:blue", "loss": "tab:purple", "backward": "tab:orange", "optimizer": "tab:green",
           "other": "tab:gray"}


def roofline_points(prof) -> list[dict]:
    """One point per (kernel, layer, phase) with FLOPs: {label, phase, intensity, gflops, flops, bytes, ns}."""
    groups = {}
    for ev in prof.events:
        if not ev.flops or not ev.bytes or ev.duration_ns <= 0:
            continue  # no cost model, or a copy (no FLOPs): not on a log-log roofline
        key = (ev.name, ev.layer, ev.phase)
        g = groups.setdefault(key, [0, 0, 0])
        g[0] += ev.flops
        g[1] += ev.bytes
        g[2] += ev.duration_ns
    points = []
    for (name, layer, phase), (flops, nbytes, ns) in groups.items():
        points.append({"label": name if layer is None else f"{name} [{layer}]", "phase": phase,
                       "intensity": flops / nbytes, "gflops": flops / ns, "flops": flops, "bytes": nbytes, "ns": ns})
    return sorted(points, key=lambda p: p["intensity"])


def _place_labels(ax, points, to_px, fontsize=7) -> None:
    """Greedy placement: the first of a few spots around each point whose box (estimated from the
    label's length) overlaps no label placed so far and no other point; else the least-covered one."""
    char_w, line_h = fontsize * 0.62 * ax.figure.dpi / 72, fontsize * 1.3 * ax.figure.dpi / 72
    dots = [tuple(to_px((p["intensity"], p["gflops"]))) for p in points]
    placed = []

    def overlap(a, b):
        return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))

    for p, (px, py) in zip(points, dots):
        w = len(p["label"]) * char_w
        best = None
        for dx, dy, ha in ((6, 3, "left"), (6, -3 - line_h, "left"), (-6, 3, "right"), (-6, -3 - line_h, "right"),
                           (6, 3 + line_h, "left"), (6, -3 - 2 * line_h, "left")):
            x0 = px + dx if ha == "left" else px + dx - w
            box = (x0, py + dy, x0 + w, py + dy + line_h)
            cost = sum(overlap(box, q) for q in placed) + sum(
                overlap(box, (qx - 4, qy - 4, qx + 4, qy + 4)) for qx, qy in dots)
            if best is None or cost < best[0]:
                best = (cost, dx, dy, ha, box)
            if cost == 0:
                break
        _, dx, dy, ha, box = best
        placed.append(box)
        ax.annotate(p["label"], (p["intensity"], p["gflops"]), textcoords="offset pixels", xytext=(dx, dy),
                    ha=ha, va="bottom", fontsize=fontsize, color="#222222")


def draw_roofline(prof, path: str, title: str | None = None) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError('the roofline plot needs matplotlib: pip install "gpunn[plot]"') from err

    points = roofline_points(prof)
    if not points:
        raise ValueError("the profile has no kernel with a FLOP count to draw (did anything run inside it?)")
    peaks = prof.peaks()
    if peaks is None or not peaks.gbps:
        raise ValueError("a roofline needs the device's peaks: profile(peaks=None) looks them up or measures them")
    dtypes = {ev.dtype for ev in prof.events if ev.flops}
    dtype = "float64" if dtypes == {"float64"} else "float32"
    peak_flops = peaks.flops_for(dtype)
    ridge = peak_flops / peaks.gbps
    xs = [p["intensity"] for p in points]
    x_lo = min(min(xs), ridge) / 4
    x_hi = max(max(xs), ridge) * 4
    ys = [p["gflops"] for p in points]

    fig = Figure(figsize=(8.5, 5.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    roof_x = [x_lo, ridge, x_hi]
    roof_y = [x_lo * peaks.gbps, peak_flops, peak_flops]
    ax.plot(roof_x, roof_y, color="black", linewidth=1.6, zorder=1)
    ax.text(x_hi, peak_flops * 1.08, f"peak {peak_flops:,.0f} GFLOP/s ({dtype})", ha="right", va="bottom", fontsize=8)
    seen = set()
    for p in points:
        color = _COLORS.get(p["phase"], "tab:gray")
        ax.scatter([p["intensity"]], [p["gflops"]], s=36, color=color, zorder=3, edgecolors="black", linewidths=0.4,
                   label=p["phase"] if p["phase"] not in seen else None)
        seen.add(p["phase"])
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(min(min(ys), x_lo * peaks.gbps) / 3, peak_flops * 3)
    ax.set_xlabel("arithmetic intensity (FLOP / byte, compulsory traffic)")
    ax.set_ylabel("achieved GFLOP/s")
    ax.grid(True, which="major", linewidth=0.4, alpha=0.5)
    ax.legend(loc="upper left", fontsize=8, title="phase", title_fontsize=8)  # above the roof: always empty
    ax.set_title(title or f"gpunn roofline: {peaks.name}", fontsize=10)
    fig.text(0.01, 0.01, f"peaks: {peaks.source}", fontsize=6, color="#555555")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    # Placed once the layout is final (display coordinates): the memory roof's label along its
    # slope, and each kernel's label beside its point where it overlaps no other label or point.
    to_px = ax.transData.transform
    (x0, y0), (x1, y1) = to_px([(x_lo, x_lo * peaks.gbps), (ridge, peak_flops)])
    mid = (x_lo * ridge) ** 0.5
    ax.text(mid, mid * peaks.gbps * 1.25, f"memory {peaks.gbps:,.1f} GB/s", fontsize=8, ha="center", va="bottom",
            rotation=math.degrees(math.atan2(y1 - y0, x1 - x0)), rotation_mode="anchor")
    _place_labels(ax, points, to_px)
    fig.savefig(path)
