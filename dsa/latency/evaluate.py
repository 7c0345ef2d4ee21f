"""Predicted latency of a network and of its planned form, per op and end to end, from a cost model (roofline, or
roofline with measured times substituted); BN folding alone as the honest baseline."""

from __future__ import annotations

import math
from dataclasses import dataclass

import roofline as rl
from dsa.formats.plan import Plan, bn_folded_plan
from dsa.ir import Analysis, Segment
from dsa.latency.costs import CostModel, ProfileCosts, RooflineCosts
from dsa.latency.ops import CostedOp, planned_ops
from dsa.vocab import DEFAULT_DEVICE, DEFAULT_RUNTIME


@dataclass(frozen=True)
class Evaluation:
    device: str
    precision: str
    batch: int
    baseline: rl.NetworkTime
    planned: rl.NetworkTime
    baseline_ops: tuple[CostedOp, ...]
    planned_ops: tuple[CostedOp, ...]
    segments: tuple[Segment, ...]
    source: str  # the model behind the roofline numbers
    baseline_sources: tuple[str, ...] = ()  # per op: "measured" or "roofline"
    planned_sources: tuple[str, ...] = ()
    bn_folded: rl.NetworkTime | None = None  # the original with only its BNs folded
    runtime: str = "eager"  # what the times are of

    @property
    def speedup(self) -> float:
        return self.baseline.latency_ms / self.planned.latency_ms

    @property
    def bn_folded_speedup(self) -> float | None:
        """What BN folding alone gives over the original."""
        return None if self.bn_folded is None else self.baseline.latency_ms / self.bn_folded.latency_ms

    @property
    def speedup_over_bn_folded(self) -> float | None:
        return None if self.bn_folded is None else self.bn_folded.latency_ms / self.planned.latency_ms

    def sources(self) -> dict:
        count = lambda xs: {k: xs.count(k) for k in sorted(set(xs))}  # noqa: E731
        return {
            "roofline_model": self.source,
            "baseline_ops": count(list(self.baseline_sources)),
            "planned_ops": count(list(self.planned_sources)),
        }

    def prediction(self) -> dict:
        """The ``prediction`` record a plan carries (see :func:`prediction_record`)."""
        return prediction_record(
            self.device,
            self.precision,
            self.batch,
            self.source,
            self.baseline.latency_ms,
            self.planned.latency_ms,
            None if self.bn_folded is None else self.bn_folded.latency_ms,
            self.runtime,
        )

    def segment_rows(self) -> list[dict]:
        rows = []
        for i, seg in enumerate(self.segments):
            b = sum(
                t.total_ms for c, t in zip(self.baseline_ops, self.baseline.op_times, strict=True) if c.segment == i
            )
            planned = [
                (t, src)
                for c, t, src in zip(self.planned_ops, self.planned.op_times, self.planned_sources, strict=True)
                if c.segment == i
            ]
            rows.append(
                {
                    "members": list(seg.members),
                    "convs": len(seg.convs),
                    "kernel": list(seg.kernel),
                    "stride": list(seg.stride),
                    "channels": [seg.in_channels, seg.out_channels],
                    "depthwise": seg.depthwise,
                    "baseline_ms": b,
                    "planned_ms": sum(t.total_ms for t, _ in planned),
                    "planned_source": planned[0][1] if planned else "roofline",
                }
            )
        return rows

    def by_block(self) -> tuple[list[str], list[float], list[float]]:
        blocks: list[str] = []
        before: dict[str, float] = {}
        after: dict[str, float] = {}
        for c, t in zip(self.baseline_ops, self.baseline.op_times, strict=True):
            if c.block not in before:
                blocks.append(c.block)
            before[c.block] = before.get(c.block, 0.0) + t.total_ms
        for c, t in zip(self.planned_ops, self.planned.op_times, strict=True):
            after[c.block] = after.get(c.block, 0.0) + t.total_ms
        return blocks, [before[b] for b in blocks], [after.get(b, 0.0) for b in blocks]

    def to_json(self) -> dict:
        return {
            "device": self.device,
            "runtime": self.runtime,
            "precision": self.precision,
            "batch_size": self.batch,
            "source": self.source,
            "sources": self.sources(),
            "baseline": {"latency_ms": self.baseline.latency_ms, "throughput": self.baseline.throughput_img_s},
            "planned": {"latency_ms": self.planned.latency_ms, "throughput": self.planned.throughput_img_s},
            "speedup": self.speedup,
            "bn_folded": None
            if self.bn_folded is None
            else {"latency_ms": self.bn_folded.latency_ms, "throughput": self.bn_folded.throughput_img_s},
            "bn_folded_speedup": self.bn_folded_speedup,
            "speedup_over_bn_folded": self.speedup_over_bn_folded,
            "segments": self.segment_rows(),
        }


def prediction_record(
    device: str,
    precision: str,
    batch: int,
    source: str,
    baseline_ms: float,
    planned_ms: float,
    bn_folded_ms: float | None,
    runtime: str = "eager",
) -> dict:
    """The ``prediction`` a plan carries in its metadata (also for plans made from keep lists): the original,
    the planned network and the original with only its BNs folded, so that no speed-up is read against an
    unfolded baseline."""
    return {
        "device": device,
        "runtime": runtime,
        "precision": precision,
        "batch_size": batch,
        "source": source,
        "baseline_latency_ms": baseline_ms,
        "planned_latency_ms": planned_ms,
        "baseline_throughput_img_s": batch / (baseline_ms / 1e3),
        "planned_throughput_img_s": batch / (planned_ms / 1e3),
        "speedup": baseline_ms / planned_ms,
        "bn_folded_latency_ms": bn_folded_ms,
        "bn_folded_speedup": None if bn_folded_ms is None else baseline_ms / bn_folded_ms,
        "speedup_over_bn_folded": None if bn_folded_ms is None else bn_folded_ms / planned_ms,
    }


def _network(times: list[rl.OpTime], spec: rl.DeviceSpec, precision: str, batch: int) -> rl.NetworkTime:
    latency = math.fsum(t.total_ms for t in times)
    return rl.NetworkTime(spec.name, precision, batch, latency, batch / (latency / 1e3), tuple(times))


def cost_model(
    a: Analysis,
    device: str | rl.DeviceSpec | None = DEFAULT_DEVICE,
    batch: int = 128,
    precision: str = "fp32",
    profile=None,
    runtime: str = DEFAULT_RUNTIME,
) -> CostModel:
    """The cost model of ``device`` under ``runtime`` (roofline), or of a measured ``profile`` (its device,
    calibration, runtime and times)."""
    if profile is not None:
        return ProfileCosts(a, profile, batch, precision)
    return RooflineCosts(a, device, batch, precision, runtime=runtime)


def evaluate(
    a: Analysis,
    plan: Plan,
    device: str | rl.DeviceSpec | None = DEFAULT_DEVICE,
    batch: int = 128,
    precision: str = "fp32",
    *,
    profile=None,
    bn_folded: bool = True,
    costs: CostModel | None = None,
) -> Evaluation:
    """Predicted latency and throughput of the original and the planned network.

    The kernels of both (:func:`~dsa.latency.ops.planned_ops`) are priced by one :class:`CostModel` -- the one the
    planner uses: ``costs`` if given (it fixes device, batch and precision), else the roofline of ``device``, or
    with a matching measured ``profile`` (a :class:`~dsa.formats.profile.Profile` of this model at this batch and
    precision) its device and calibration, every op or merged segment it measured taking its measured time. Each
    op records its source. With ``bn_folded``, the network with only its BNs folded (the plan that removes
    nothing) is priced too: the baseline a plan's speed-up must beat to be a gain."""
    costs = costs if costs is not None else cost_model(a, device, batch, precision, profile)
    spec, batch, precision = costs.device, costs.batch, costs.precision

    def priced(p: Plan):
        base, planned, segments = planned_ops(a, p, batch, precision)
        b = [costs.price(c) for c in base]
        q = [costs.price(c) for c in planned]
        return base, planned, segments, b, q

    base, planned, segments, b, q = priced(plan)
    folded = None
    if bn_folded:
        folded = _network([t for t, _ in priced(bn_folded_plan(a))[4]], spec, precision, batch)
    return Evaluation(
        spec.name,
        precision,
        batch,
        _network([t for t, _ in b], spec, precision, batch),
        _network([t for t, _ in q], spec, precision, batch),
        tuple(base),
        tuple(planned),
        tuple(segments),
        costs.source,
        tuple(src for _, src in b),
        tuple(src for _, src in q),
        folded,
        costs.runtime,
    )


def activation_savings(
    a: Analysis,
    device: str | rl.DeviceSpec | None = DEFAULT_DEVICE,
    batch: int = 128,
    precision: str = "fp32",
    profile=None,
    runtime: str = DEFAULT_RUNTIME,
) -> dict[str, float]:
    """Predicted milliseconds saved by removing each removable activation on its own (negative where the
    merged conv is slower than the pair it replaces); the latency term of the ``gates`` accuracy proxy."""
    from dsa.formats.plan import make_plan

    costs = cost_model(a, device, batch, precision, profile, runtime)
    base = None
    out = {}
    for name in a.removable:
        ev = evaluate(a, make_plan(a, [name]), bn_folded=False, costs=costs)
        base = ev.baseline.latency_ms if base is None else base
        out[name] = base - ev.planned.latency_ms
    return out
