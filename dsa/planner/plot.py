"""The Pareto figure (matplotlib): predicted speed-up against accuracy cost, with DepthShrinker's patterns."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib.transforms import Bbox

from dsa.errors import DsaError
from dsa.io import atomic_write_bytes
from dsa.planner.pareto import Frontier, PatternPoint

_COLORS = {"activation": "#1f77b4", "block": "#2ca02c"}


_LABELS = {
    "activation": "planner, per activation",
    "block": "planner, per block (DepthShrinker granularity, ReLU6 added)",
}


def _label_patterns(fig, ax, patterns: Sequence[PatternPoint], obstacles: list) -> None:
    """A bold letter beside each pattern's star, where it overlaps no other letter, star or the legend; the
    figures go into a box in the empty upper-left corner."""
    if not patterns:
        return
    lines = ["DepthShrinker patterns", "(removed activations, predicted speed-up):"]
    lines += [f"{p.name}: {p.removed} removed, {p.speedup:.2f}x" for p in patterns]
    box = ax.text(
        0.015,
        0.975,
        "\n".join(lines),
        transform=ax.transAxes,
        va="top",
        ha="left",
        fontsize=12,
        color="#7f0000",
        bbox={"boxstyle": "round,pad=0.4", "fc": "white", "ec": "#d62728", "alpha": 0.95},
    )
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed = [o.get_window_extent(renderer) for o in [*obstacles, box]]
    for p in patterns:  # the stars themselves, ~20 pt wide
        x, y = ax.transData.transform((p.accuracy_cost, p.speedup))
        r = 14 * fig.dpi / 72
        placed.append(Bbox.from_extents(x - r, y - r, x + r, y + r))
    offsets = [(-12, 10), (12, 10), (-12, -12), (12, -12), (0, 18), (0, -22), (-22, 0), (22, 0)]
    for p in sorted(patterns, key=lambda p: p.accuracy_cost):
        for k, (dx, dy) in enumerate(offsets):
            text = ax.annotate(
                p.name,
                (p.accuracy_cost, p.speedup),
                xytext=(dx, dy),
                textcoords="offset points",
                ha="right" if dx < 0 else "left" if dx > 0 else "center",
                va="bottom" if dy > 0 else "top" if dy < 0 else "center",
                fontsize=15,
                fontweight="bold",
                color="#7f0000",
                zorder=6,
            )
            ext = text.get_window_extent(renderer)
            if not any(ext.overlaps(o) for o in placed) or k == len(offsets) - 1:
                placed.append(ext)
                break
            text.remove()


def plot_frontier(f: Frontier, out_path: str | os.PathLike[str]) -> Path:
    """Speed-up vs accuracy cost, one step curve per granularity, DS patterns as labelled stars; PNG 1600x1000
    (or SVG), written atomically like :mod:`roofline.plot`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from roofline.plot import DPI, FIGSIZE_IN

    path = Path(out_path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise DsaError(f"cannot write {path}: use a .png or .svg file name")
    if not path.parent.is_dir():
        raise DsaError(f"cannot write {path}: folder {path.parent} does not exist; create it first")
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    top = 1.0
    for g, pts in f.curves.items():
        xs = [p.accuracy_cost for p in pts]
        ys = [p.speedup for p in pts]
        top = max(top, *ys)
        color = _COLORS.get(g, "#555555")
        ax.plot(xs, ys, "o-", drawstyle="steps-post", color=color, lw=2.2, ms=7, label=_LABELS.get(g, g))
    if f.patterns:
        ax.plot(
            [p.accuracy_cost for p in f.patterns],
            [p.speedup for p in f.patterns],
            "*",
            color="#d62728",
            markersize=20,
            markeredgecolor="#7f0000",
            label="DepthShrinker patterns A-F (block granularity, ReLU6 added)",
            zorder=5,
        )
        top = max(top, *(p.speedup for p in f.patterns))
    ax.axhline(1.0, color="#888888", linestyle="--", linewidth=1)
    ax.annotate("original network", (0, 1.0), xytext=(4, 4), textcoords="offset points", fontsize=11, color="#555555")
    ax.set_ylim(0, top * 1.08)
    ax.set_xlim(left=-0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    xlabel = (
        "accuracy cost (number of removed activations)"
        if f.accuracy_proxy.startswith("removed")
        else "accuracy cost (sum of importance scores of removed activations)"
    )
    ax.set_xlabel(xlabel, fontsize=14)
    ax.set_ylabel("predicted speed-up over the original network (x)", fontsize=14)
    base_thr = f.batch / (f.baseline_ms / 1e3)
    sec = ax.secondary_yaxis("right", functions=(lambda s: s * base_thr, lambda t: t / base_thr))
    sec.set_ylabel("predicted throughput (images/s)", fontsize=14)
    sec.tick_params(labelsize=12)
    ax.tick_params(labelsize=12)
    ax.grid(True, alpha=0.35)
    ax.set_axisbelow(True)
    ax.set_title(
        f"{f.model} on {f.device} ({f.precision}, batch {f.batch}): fastest plan per accuracy cost\n"
        f"times: {f.source}; original {f.baseline_ms:.2f} ms = {base_thr:.0f} images/s",
        fontsize=16,
    )
    legend = ax.legend(fontsize=12, loc="lower right", framealpha=0.95)
    _label_patterns(fig, ax, f.patterns, [legend])
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())
    return path
