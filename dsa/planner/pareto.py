"""The predicted speed-up vs accuracy-cost frontier of a network (``dsa pareto``; its figure: :mod:`.plot`).

For each granularity, the fastest plan at ``points`` accuracy-cost budgets (:func:`pareto_points`);
for MobileNetV2-shaped networks (19 keep-list entries) DepthShrinker's patterns A-F are placed on the same axes
with the same cost model and accuracy proxy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from dsa.errors import DsaError, PlanError
from dsa.formats.plan import DS_PATTERNS, ds_pattern_act_list, plan_from_act_list
from dsa.latency.costs import plan_ms
from dsa.planner.planner import Planner


@dataclass(frozen=True)
class FrontierPoint:
    granularity: str
    max_accuracy_cost: float
    accuracy_cost: float
    latency_ms: float
    speedup: float
    throughput_img_s: float
    removed: int

    def to_json(self) -> dict:
        return {
            "granularity": self.granularity,
            "max_accuracy_cost": self.max_accuracy_cost,
            "accuracy_cost": self.accuracy_cost,
            "latency_ms": self.latency_ms,
            "speedup": self.speedup,
            "throughput_img_s": self.throughput_img_s,
            "removed": self.removed,
        }


def pareto_points(planner: Planner, points: int = 20) -> list[FrontierPoint]:
    """The predicted speed-up vs accuracy-cost frontier: the fastest plan at ``points`` accuracy-cost budgets
    evenly spaced from 0 to that of the fastest plan overall (deduplicated)."""
    if points < 2:
        raise PlanError(f"--points must be at least 2, got {points}")
    top = planner.fastest(None)
    budgets = sorted({round(top.accuracy_cost * k / (points - 1), 9) for k in range(points)})
    seen: dict[tuple[float, float], FrontierPoint] = {}
    for b in budgets:
        r = top if b >= top.accuracy_cost else planner.fastest(b)
        key = (round(r.accuracy_cost, 9), round(r.planned_ms, 9))
        if key not in seen:
            seen[key] = FrontierPoint(
                planner.granularity, b, r.accuracy_cost, r.planned_ms, r.speedup, r.planned_throughput, len(r.removed)
            )
    return sorted(seen.values(), key=lambda p: (p.accuracy_cost, p.latency_ms))


@dataclass(frozen=True)
class PatternPoint:
    name: str
    accuracy_cost: float
    removed: int
    latency_ms: float
    speedup: float
    throughput_img_s: float

    def to_json(self) -> dict:
        return {
            "pattern": self.name,
            "accuracy_cost": self.accuracy_cost,
            "removed": self.removed,
            "latency_ms": self.latency_ms,
            "speedup": self.speedup,
            "throughput_img_s": self.throughput_img_s,
        }


@dataclass(frozen=True)
class Frontier:
    model: str
    device: str
    precision: str
    batch: int
    source: str
    accuracy_proxy: str
    baseline_ms: float
    curves: dict[str, list[FrontierPoint]]  # by granularity
    patterns: list[PatternPoint]

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "device": self.device,
            "precision": self.precision,
            "batch_size": self.batch,
            "source": self.source,
            "accuracy_proxy": self.accuracy_proxy,
            "baseline_latency_ms": self.baseline_ms,
            "baseline_throughput_img_s": self.batch / (self.baseline_ms / 1e3),
            "frontiers": {g: [p.to_json() for p in pts] for g, pts in self.curves.items()},
            "ds_patterns": [p.to_json() for p in self.patterns],
        }


def ds_pattern_points(planner: Planner) -> list[PatternPoint]:
    """DepthShrinker's patterns A-F under the planner's cost model and accuracy proxy (empty when the network
    does not have MobileNetV2's 19 keep-list entries)."""
    a = planner.analysis
    if len(a.blocks()) != len(ds_pattern_act_list("A")):
        return []
    out = []
    for letter in DS_PATTERNS:
        try:
            plan = plan_from_act_list(a, ds_pattern_act_list(letter))
        except DsaError:
            return []
        ms = plan_ms(a, plan, planner.costs)
        cost = math.fsum(planner.act_cost.get(n, 0.0) for n in plan.removed)
        out.append(
            PatternPoint(letter, cost, len(plan.removed), ms, planner.baseline_ms / ms, planner.batch / ms * 1e3)
        )
    return out


def frontier(planners: Sequence[Planner], points: int = 20) -> Frontier:
    """Frontiers of each planner (one per granularity, same network and costs) and the DS patterns."""
    first = planners[0]
    return Frontier(
        model=first.analysis.model_name,
        device=first.device,
        precision=first.precision,
        batch=first.batch,
        source=getattr(first.costs, "source", ""),
        accuracy_proxy=first.accuracy_proxy,
        baseline_ms=first.baseline_ms,
        curves={p.granularity: pareto_points(p, points) for p in planners},
        patterns=ds_pattern_points(first),
    )
