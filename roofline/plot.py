"""Roofline and latency-bar plots (matplotlib, object API only: no pyplot state is touched).

Both functions write ``.png`` or ``.svg`` (chosen by the suffix) atomically and return the path.
Figures are :data:`FIGSIZE_IN` inches at :data:`DPI` dots per inch, so a PNG is exactly
:data:`PNG_SIZE_PX` = 1600 x 1000 pixels.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from roofline.devices import DeviceSpec, _file_mode, load_device
from roofline.errors import RooflineError
from roofline.model import DEFAULT_MEMORY_EFFICIENCY, MEASURED_MEMORY_EFFICIENCY, OpTime
from roofline.ops import OpSpec

__all__ = [
    "DPI",
    "FIGSIZE_IN",
    "PNG_SIZE_PX",
    "RooflinePoint",
    "plot_latency_bars",
    "plot_roofline",
    "points_from_ops",
]

FIGSIZE_IN = (16.0, 10.0)
DPI = 100
PNG_SIZE_PX = (1600, 1000)
#: Marker area in pt^2 of the slowest point; others scale linearly with time, min 10 pt^2.
MAX_MARKER_AREA = 900.0
MIN_MARKER_AREA = 10.0

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_GROUP_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_ROOF_COLORS = ("#222222", "#7f7f7f", "#555555", "#999999")
_UNITS_FOR_PRECISION = {
    "fp32": ("cuda_fp32",),
    "tf32": ("tensor_tf32", "cuda_fp32"),
    "fp16": ("tensor_fp16", "cuda_fp16"),
    "bf16": ("tensor_bf16", "cuda_fp32"),
}


class RooflinePoint(NamedTuple):
    """One op on a roofline plot. Plain tuples in this order work too."""

    label: str
    intensity_flop_per_byte: float
    achieved_tflops: float
    time_ms: float
    group: str


def points_from_ops(ops: Sequence[OpSpec], times: Sequence[float | OpTime], group: str) -> list[RooflinePoint]:
    """Roofline points from ops and their measured (ms) or predicted (:class:`OpTime`) times.

    Achieved TFLOP/s = flops / time. Ops with no FLOPs are skipped (they cannot sit on a log axis).
    """
    if len(ops) != len(times):
        raise RooflineError(f"got {len(ops)} ops but {len(times)} times; pass one time per op")
    points = []
    for op, t in zip(ops, times, strict=True):
        ms = t.total_ms if isinstance(t, OpTime) else float(t)
        if ms <= 0:
            raise RooflineError(f"op {op.name!r}: time must be positive milliseconds, got {ms!r}")
        if op.flops == 0 or op.bytes_total == 0:
            continue
        points.append(RooflinePoint(op.name, op.intensity, op.flops / (ms * 1e-3) / 1e12, ms, group))
    return points


def _check_suffix(out_path: str | os.PathLike[str]) -> tuple[Path, str]:
    path = Path(out_path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise RooflineError(f"cannot write {path}: use a .png or .svg file name")
    if not path.parent.is_dir():
        raise RooflineError(f"cannot write {path}: folder {path.parent} does not exist; create it first")
    return path, fmt


def _save(fig: Figure, path: Path, fmt: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".{fmt}")
    os.close(fd)
    try:
        fig.savefig(tmp, format=fmt, dpi=DPI)
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _new_figure() -> tuple[Figure, FigureCanvasAgg]:
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, layout="constrained")
    return fig, FigureCanvasAgg(fig)


def _compute_roofs(device: DeviceSpec, precision: str) -> list[tuple[str, float]]:
    """(label, peak TFLOP/s) of the compute ceilings relevant at ``precision``."""
    if precision not in _UNITS_FOR_PRECISION:
        raise RooflineError(f"unknown precision {precision!r}; use one of {', '.join(_UNITS_FOR_PRECISION)}")
    if device.kind == "cpu":
        matmul = device.measured.matmul_tflops or {}
        peak = matmul.get(precision, matmul.get("fp32"))
        if not peak:
            raise RooflineError(f"CPU device {device.name!r} has no measured matmul FLOP/s to draw")
        return [("measured matmul", peak)]
    roofs = []
    for unit in _UNITS_FOR_PRECISION[precision]:
        peak = device.peaks_tflops.get(unit)
        if peak:
            roofs.append((unit, peak))
    if not roofs:
        roofs.append(("cuda_fp32", device.peaks_tflops.cuda_fp32 or 0.0))
    return roofs


def _overlaps(box, boxes) -> bool:  # type: ignore[no-untyped-def]
    return any(box.overlaps(other) for other in boxes)


def plot_roofline(
    device: DeviceSpec | str,
    precision: str,
    points: Sequence[RooflinePoint | tuple[str, float, float, float, str]],
    out_path: str | os.PathLike[str],
    *,
    title: str | None = None,
    max_labels: int = 8,
) -> Path:
    """Roofline of ``device`` at ``precision`` with ``points`` on it; writes ``out_path``.

    Draws the memory roof (datasheet bandwidth, and the achievable fraction dashed), one compute
    roof per unit used at this precision (e.g. tensor and CUDA-core FP16), their ridge points
    (annotated with the ridge intensity), and the points: one marker shape and colour per group,
    marker area proportional to time. The ``max_labels`` slowest points are labelled where a
    label fits without overlapping another.
    """
    spec = load_device(device)
    path, fmt = _check_suffix(out_path)
    pts = [RooflinePoint(*p) for p in points]
    for p in pts:
        if not (p.intensity_flop_per_byte > 0 and p.achieved_tflops > 0 and p.time_ms > 0):
            raise RooflineError(f"point {p.label!r}: intensity, TFLOP/s and time must be positive to sit on log axes")
    roofs = _compute_roofs(spec, precision)
    bw = spec.measured.copy_bandwidth_gbps if spec.kind == "cpu" else spec.mem_bandwidth_gbps
    bw = bw or spec.mem_bandwidth_gbps
    measured_bw = spec.kind == "cpu" or spec.peaks_source == "measured"
    mem_eff = MEASURED_MEMORY_EFFICIENCY if measured_bw else DEFAULT_MEMORY_EFFICIENCY
    ridges = [peak * 1e3 / bw for _, peak in roofs]  # FLOP/byte where roof meets memory line

    xs = [p.intensity_flop_per_byte for p in pts] + ridges
    ys = [p.achieved_tflops for p in pts] + [peak for _, peak in roofs]
    x_lo, x_hi = min(xs) / 2.5, max(xs) * 4.0
    y_lo, y_hi = min(ys) / 3.0, max(ys) * 3.0

    fig, canvas = _new_figure()
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    ax.set_xlabel("Arithmetic intensity (FLOP/byte)", fontsize=14)
    fast = "; above the roof: Winograd or FFT" if spec.kind == "gpu" else ""
    ax.set_ylabel(f"Performance (TFLOP/s, direct-conv FLOPs{fast})", fontsize=14)
    ax.tick_params(labelsize=12)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.set_title(title or f"Roofline: {spec.name}, {precision}", fontsize=17)

    top = max(peak for _, peak in roofs)
    legend_handles: list[Line2D] = []
    # memory roofs, drawn up to the highest compute roof
    for eff, style, text in (
        (1.0, "-", f"DRAM {bw:,.4g} GB/s ({'measured' if measured_bw else 'datasheet'})"),
        (mem_eff, "--", f"achievable {bw * mem_eff:,.4g} GB/s ({mem_eff:.0%})"),
    ):
        if eff == 1.0 and style == "--":
            continue
        x_end = top * 1e3 / (bw * eff)
        (line,) = ax.plot([x_lo, x_end], [x_lo * bw * eff / 1e3, top], style, color="#1b9e77", lw=2.2)
        line.set_label(text)
        legend_handles.append(line)
    # compute roofs and ridge points
    obstacles = []
    for i, ((unit, peak), ridge) in enumerate(zip(roofs, ridges, strict=True)):
        color = _ROOF_COLORS[i % len(_ROOF_COLORS)]
        (line,) = ax.plot([ridge, x_hi], [peak, peak], "-", color=color, lw=2.2 if i == 0 else 1.6)
        line.set_label(f"{unit} peak {peak:,.4g} TFLOP/s")
        legend_handles.append(line)
        ax.plot([ridge], [peak], "o", color=color, ms=8, zorder=5)
        note = ax.annotate(
            f"ridge {ridge:.3g} FLOP/B",
            (ridge, peak),
            xytext=(-10, 10),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=11,
            color=color,
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": color, "alpha": 0.85},
        )
        obstacles.append(note)

    # points
    groups = list(dict.fromkeys(p.group for p in pts))
    t_max = max((p.time_ms for p in pts), default=1.0)
    for g_i, group in enumerate(groups):
        members = [p for p in pts if p.group == group]
        color = _GROUP_COLORS[g_i % len(_GROUP_COLORS)]
        ax.scatter(
            [p.intensity_flop_per_byte for p in members],
            [p.achieved_tflops for p in members],
            s=[max(MIN_MARKER_AREA, MAX_MARKER_AREA * p.time_ms / t_max) for p in members],
            marker=_MARKERS[g_i % len(_MARKERS)],
            color=color,
            alpha=0.55,
            edgecolors="black",
            linewidths=0.6,
            zorder=4,
        )
        legend_handles.append(
            Line2D(
                [],
                [],
                ls="",
                marker=_MARKERS[g_i % len(_MARKERS)],
                color=color,
                ms=11,
                markeredgecolor="black",
                label=f"{group} ({len(members)} ops)",
            )
        )

    size_handles = []
    for frac in (1.0, 0.25, 0.05):
        area = max(MIN_MARKER_AREA, MAX_MARKER_AREA * frac)
        size_handles.append(
            Line2D(
                [],
                [],
                ls="",
                marker="o",
                color="#bbbbbb",
                markeredgecolor="black",
                ms=math.sqrt(area),
                label=f"{t_max * frac:.3g} ms",
            )
        )
    size_legend = ax.legend(
        handles=size_handles,
        title="op time (marker area)",
        loc="lower right",
        fontsize=11,
        title_fontsize=11,
        labelspacing=1.3,
        borderpad=1.0,
        framealpha=0.9,
    )
    ax.add_artist(size_legend)
    main_legend = ax.legend(handles=legend_handles, loc="upper left", fontsize=11, framealpha=0.9)
    obstacles += [size_legend, main_legend]

    # labels on the slowest points, skipping any that would overlap
    canvas.draw()  # final layout, so extents below are where things end up
    renderer = canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    placed = [artist.get_window_extent(renderer) for artist in obstacles]
    offsets = [(12, 12), (12, -18), (-12, 12), (-12, -18), (20, 0), (-20, 0), (0, 22), (0, -26)]
    for p in sorted(pts, key=lambda q: q.time_ms, reverse=True)[: max(0, max_labels)]:
        for dx, dy in offsets:
            text = ax.annotate(
                f"{p.label} ({p.time_ms:.3g} ms)",
                (p.intensity_flop_per_byte, p.achieved_tflops),
                xytext=(dx, dy),
                textcoords="offset points",
                ha="left" if dx >= 0 else "right",
                va="bottom" if dy >= 0 else "top",
                fontsize=10,
                arrowprops={"arrowstyle": "-", "color": "#444444", "lw": 0.7},
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
                zorder=6,
            )
            box = text.get_window_extent(renderer)
            inside = box.x0 >= axes_box.x0 and box.x1 <= axes_box.x1 and box.y0 >= axes_box.y0 and box.y1 <= axes_box.y1
            if inside and not _overlaps(box, placed):
                placed.append(box)
                break
            text.remove()

    return _save(fig, path, fmt)


def plot_latency_bars(
    labels: Sequence[str],
    before_ms: Sequence[float | None],
    after_ms: Sequence[float | None],
    out_path: str | os.PathLike[str],
    title: str = "Latency per layer",
    *,
    before_label: str = "before",
    after_label: str = "after",
) -> Path:
    """Grouped bars of per-layer (or per-block) latency before and after; writes ``out_path``.

    ``None`` (or NaN) leaves a bar out, e.g. for a layer merged away. Totals and the speed-up go
    into the legend.
    """
    path, fmt = _check_suffix(out_path)
    n = len(labels)
    if n == 0 or len(before_ms) != n or len(after_ms) != n:
        raise RooflineError(
            f"got {n} labels, {len(before_ms)} before and {len(after_ms)} after values; "
            "pass one value (or None) per label, at least one label"
        )

    def clean(values: Sequence[float | None], which: str) -> list[float]:
        out = []
        for label, v in zip(labels, values, strict=True):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                out.append(math.nan)
            elif v < 0:
                raise RooflineError(f"{which} time of {label!r} is negative ({v}); times are milliseconds")
            else:
                out.append(float(v))
        return out

    before = clean(before_ms, "before")
    after = clean(after_ms, "after")
    total_before = math.fsum(v for v in before if not math.isnan(v))
    total_after = math.fsum(v for v in after if not math.isnan(v))

    fig, _ = _new_figure()
    ax = fig.add_subplot()
    width = 0.4
    xs = range(n)
    ax.bar(
        [x - width / 2 for x in xs],
        [0 if math.isnan(v) else v for v in before],
        width,
        color="#1f77b4",
        label=f"{before_label} (total {total_before:.3g} ms)",
    )
    speedup = f", {total_before / total_after:.2f}x faster" if total_after > 0 else ""
    if all(math.isnan(v) for v in after):
        speedup = ", no values"
    ax.bar(
        [x + width / 2 for x in xs],
        [0 if math.isnan(v) else v for v in after],
        width,
        color="#d62728",
        label=f"{after_label} (total {total_after:.3g} ms{speedup})",
    )
    fontsize = 11 if n <= 20 else 9 if n <= 40 else 7
    rotation = 45 if n <= 60 else 90
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=rotation, ha="right", rotation_mode="anchor", fontsize=fontsize)
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_ylabel("Latency (ms)", fontsize=14)
    ax.set_xlabel("Layer / block", fontsize=14)
    ax.tick_params(axis="y", labelsize=12)
    ax.grid(True, axis="y", alpha=0.35)
    ax.set_axisbelow(True)
    ax.set_title(title, fontsize=17)
    ax.legend(fontsize=12, loc="upper right", framealpha=0.9)
    return _save(fig, path, fmt)
