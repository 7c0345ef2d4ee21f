"""Op costs of a network and of its planned (merged) form, and their predicted latency on a device.

The analysed IR is turned into roofline :class:`~roofline.OpSpec` s at a batch size and precision:
every conv, BN, activation, add, pad, pooling, linear and gate of the original network (``baseline``),
and for a plan the network as it will run after merging (``planned``): one conv per segment with the
merged shape, the kept and added activations, and everything outside the segments. No weights are built,
so predicting a plan takes milliseconds. MACs follow fvcore's convention (one multiply-add = one MAC;
FLOPs = 2 x MACs, in roofline.ops); a test checks the conv and linear MACs against fvcore.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import roofline as rl
from dsa.errors import DsaError
from dsa.graph import Analysis, Kind, Op, Segment, signature_of
from dsa.plan import Plan, bn_folded_plan
from dsa.vocab import DEFAULT_DEVICE, PRECISION_BYTES

DTYPE_BYTES = PRECISION_BYTES
_POOL_TYPES = {
    "AdaptiveAvgPool2d": "avg",
    "AvgPool2d": "avg",
    "MaxPool2d": "max",
    "adaptive_avg_pool2d": "avg",
    "avg_pool2d": "avg",
    "max_pool2d": "max",
    "mean": "avg",
    "adaptive_max_pool2d": "max",
}
_NO_KERNEL = {
    "flatten",
    "view",
    "reshape",
    "size",
    "getattr",
    "getitem",
    "contiguous",
    "Flatten",
    "squeeze",
    "unsqueeze",
    "Identity",
    "Dropout",
    "Dropout2d",
}
_GATES = {"Sigmoid", "Hardsigmoid", "HardSigmoid", "sigmoid", "hardsigmoid"}


@dataclass(frozen=True)
class CostedOp:
    spec: rl.OpSpec
    block: str  # the op's block, or its own name for ops outside any block (global pooling, ...)
    segment: int | None  # index into the plan's segments, for ops a segment covers


def dtype_bytes(precision: str) -> int:
    if precision not in DTYPE_BYTES:
        raise DsaError(f"unknown precision {precision!r}; choose one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[precision]


def _numel(shape: tuple[int, ...] | None, batch: int) -> int:
    return batch * math.prod(shape[1:]) if shape else 0


def op_spec(a: Analysis, op: Op, batch: int, nbytes: int) -> rl.OpSpec | None:
    """The roofline op of one IR op at ``batch`` (None for ops that launch no kernel)."""
    if op.kind in (Kind.INPUT, Kind.OUTPUT, Kind.IDENTITY) or not op.shape:
        return None
    shape = op.shape
    src = a.ops[op.inputs[0]].shape if op.inputs else None
    numel = _numel(shape, batch)
    if op.kind == Kind.CONV:
        c = op.conv
        return rl.conv2d_op(
            op.name,
            batch,
            c.in_channels,
            c.out_channels,
            src[2],
            src[3],
            shape[2],
            shape[3],
            kernel=c.kernel,
            groups=c.groups,
            bias=c.bias,
            dtype_bytes=nbytes,
        )
    if op.kind == Kind.BN:
        return rl.elementwise_op(op.name, "bn", numel, dtype_bytes=nbytes, batch=batch, channels=shape[1])
    if op.kind == Kind.ACT or op.module_type in _GATES:
        return rl.elementwise_op(op.name, "act", numel, dtype_bytes=nbytes, batch=batch)
    if op.kind == Kind.ADD:
        return rl.elementwise_op(op.name, "add", numel, n_inputs=2, dtype_bytes=nbytes, batch=batch)
    if op.kind == Kind.PAD:
        return rl.elementwise_op(op.name, "other", numel, dtype_bytes=nbytes, batch=batch)
    kind = op.module_type
    if kind in _NO_KERNEL:
        return None
    if kind in _POOL_TYPES and src is not None and len(src) == 4:
        h_out, w_out = (shape[2], shape[3]) if len(shape) == 4 else (1, 1)
        k = (max(1, src[2] // h_out), max(1, src[3] // w_out))
        return rl.pooling_op(op.name, batch, src[1], src[2], src[3], h_out, w_out, k, _POOL_TYPES[kind], nbytes)
    if kind == "Linear" and src is not None:
        return rl.linear_op(op.name, batch * math.prod(src[1:-1]), src[-1], shape[-1], dtype_bytes=nbytes)
    if kind in ("mul", "matmul", "cat", "add", "sub", "truediv"):
        n_in = max(1, len(op.inputs))
        return rl.elementwise_op(
            op.name, "mul" if kind == "mul" else "other", numel, n_inputs=n_in, dtype_bytes=nbytes, batch=batch
        )
    return rl.elementwise_op(op.name, "other", numel, dtype_bytes=nbytes, batch=batch)


def baseline_ops(a: Analysis, batch: int, precision: str = "fp32") -> list[CostedOp]:
    """Every kernel of the original network, in execution order."""
    nbytes = dtype_bytes(precision)
    out = []
    for op in a.ops.values():
        spec = op_spec(a, op, batch, nbytes)
        if spec is not None:
            out.append(CostedOp(spec, op.block or op.name, None))
    return out


def segment_conv_spec(seg: Segment, batch: int, nbytes: int) -> rl.OpSpec:
    """The merged conv of a segment (bias included: BN and earlier biases fold into it)."""
    groups = seg.groups
    name = seg.convs[0] if len(seg.convs) == 1 else f"{seg.convs[0]}+{len(seg.convs) - 1}"
    return rl.conv2d_op(
        name,
        batch,
        seg.in_channels,
        seg.out_channels,
        seg.in_shape[1],
        seg.in_shape[2],
        seg.out_shape[1],
        seg.out_shape[2],
        kernel=seg.kernel,
        groups=groups,
        bias=True,
        dtype_bytes=nbytes,
    )


def planned_ops(
    a: Analysis, plan: Plan, batch: int, precision: str = "fp32", segments: Sequence[Segment] | None = None
) -> tuple[list[CostedOp], list[CostedOp], list[Segment]]:
    """(baseline ops tagged with the segment that covers them, planned ops, segments) for ``plan``."""
    nbytes = dtype_bytes(precision)
    segments = list(segments) if segments is not None else plan.induced_segments(a)
    covered = {mid: i for i, s in enumerate(segments) for mid in s.member_ids}
    removed_ids = {a.by_name[n].id for n in plan.removed}
    first_of = {s.member_ids[0]: i for i, s in enumerate(segments)}
    added_after = {a.by_name[x.after].id: x for x in plan.added}
    base: list[CostedOp] = []
    planned: list[CostedOp] = []
    for op in a.ops.values():
        spec = op_spec(a, op, batch, nbytes)
        seg = covered.get(op.id)
        block = op.block or op.name
        if spec is not None:
            base.append(CostedOp(spec, block, seg))
        if op.id in first_of:
            i = first_of[op.id]
            planned.append(CostedOp(segment_conv_spec(segments[i], batch, nbytes), segments[i].blocks[0], i))
        elif seg is None and op.id not in removed_ids and spec is not None:
            planned.append(CostedOp(spec, block, None))
        if op.id in added_after:
            name = f"{op.block}.ds_act" if op.block else "ds_act"
            act = rl.elementwise_op(name, "act", _numel(op.shape, batch), dtype_bytes=nbytes, batch=batch)
            planned.append(CostedOp(act, block, None))
    return base, planned, segments


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
) -> dict:
    """The ``prediction`` a plan carries in its metadata (also for plans made from keep lists): the original,
    the planned network and the original with only its BNs folded, so that no speed-up is read against an
    unfolded baseline."""
    return {
        "device": device,
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


def _measured(name: str, ms: float, op_class: str) -> rl.OpTime:
    return rl.OpTime(name, op_class, "measured", 0.0, 0.0, 0.0, ms, "measured")


def _network(times: list[rl.OpTime], spec: rl.DeviceSpec, precision: str, batch: int) -> rl.NetworkTime:
    latency = math.fsum(t.total_ms for t in times)
    return rl.NetworkTime(spec.name, precision, batch, latency, batch / (latency / 1e3), tuple(times))


def evaluate(
    a: Analysis,
    plan: Plan,
    device: str | rl.DeviceSpec | None = DEFAULT_DEVICE,
    batch: int = 128,
    precision: str = "fp32",
    fuse_elementwise: bool = False,
    profile=None,
    bn_folded: bool = True,
) -> Evaluation:
    """Predicted latency and throughput of the original and the planned network on ``device``.

    With a matching measured ``profile`` (a :class:`dsa.profile.Profile` of this model at this batch and
    precision), its device (and calibration) is used, and every op or merged segment it measured takes its
    measured time; the rest comes from the (calibrated) roofline. Each op records its source. With
    ``bn_folded``, the network with only its BNs folded (the plan that removes nothing) is priced too: the
    baseline a plan's speed-up must beat to be a gain."""
    if profile is not None:
        if not profile.matches(a.fingerprint, batch, precision, a.input_size):
            raise DsaError(
                f"the profile is of {profile.model} at {profile.input_size} px, batch {profile.batch_size}, "
                f"{profile.precision} (fingerprint {profile.fingerprint}); this evaluation is of {a.model_name} at "
                f"{a.input_size} px, batch {batch}, {precision} (fingerprint {a.fingerprint}): profile it with "
                "those settings, or drop --profile"
            )
        spec = profile.device()
    else:
        spec = rl.load_device(device)
    cal = spec.calibration if spec.calibration is not None and spec.calibration.precision == precision else None

    def priced(p: Plan):
        base, planned, segments = planned_ops(a, p, batch, precision)
        b_times = rl.predict_ops([c.spec for c in base], spec, precision, cal, fuse_elementwise)
        p_times = rl.predict_ops([c.spec for c in planned], spec, precision, cal, fuse_elementwise)
        b_src = ["roofline"] * len(base)
        p_src = ["roofline"] * len(planned)
        if profile is not None:
            for i, c in enumerate(base):
                if c.spec.name in profile.ops:
                    b_times[i] = _measured(c.spec.name, profile.ops[c.spec.name].median_ms, c.spec.op_class.value)
                    b_src[i] = "measured"
            last_seg = None
            for i, c in enumerate(planned):
                stat = None
                if c.segment is not None:
                    seg = segments[c.segment]
                    last_seg = profile.segments.get(signature_of(seg)) if seg.merged else None
                    stat = last_seg["conv"] if last_seg else (profile.ops.get(seg.convs[0]) if not seg.merged else None)
                elif c.spec.name.endswith("ds_act") and last_seg is not None and last_seg.get("act") is not None:
                    stat = last_seg["act"]
                else:
                    stat = profile.ops.get(c.spec.name)
                if stat is not None:
                    p_times[i] = _measured(c.spec.name, stat.median_ms, c.spec.op_class.value)
                    p_src[i] = "measured"
        return base, planned, segments, b_times, p_times, b_src, p_src

    base, planned, segments, b_times, p_times, b_src, p_src = priced(plan)
    b = _network(b_times, spec, precision, batch)
    p = _network(p_times, spec, precision, batch)
    folded = None
    if bn_folded:
        folded = _network(priced(bn_folded_plan(a))[4], spec, precision, batch)
    source = f"roofline ({'calibrated' if cal else 'datasheet, uncalibrated'})"
    if profile is not None:
        source = f"profile of {profile.device_name} ({profile.layout}) + {source}"
    return Evaluation(
        spec.name,
        precision,
        batch,
        b,
        p,
        tuple(base),
        tuple(planned),
        tuple(segments),
        source,
        tuple(b_src),
        tuple(p_src),
        folded,
    )


def activation_savings(
    a: Analysis,
    device: str | rl.DeviceSpec | None = DEFAULT_DEVICE,
    batch: int = 128,
    precision: str = "fp32",
    profile=None,
) -> dict[str, float]:
    """Predicted milliseconds saved by removing each removable activation on its own (negative where the
    merged conv is slower than the pair it replaces); the latency term of the ``gates`` accuracy proxy."""
    from dsa.plan import make_plan

    base = None
    out = {}
    for name in a.removable:
        ev = evaluate(a, make_plan(a, [name]), device, batch, precision, profile=profile, bn_folded=False)
        base = ev.baseline.latency_ms if base is None else base
        out[name] = base - ev.planned.latency_ms
    return out
