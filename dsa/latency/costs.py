"""Cost models: the time of one op, one merged segment and one added activation, from the roofline model or from a
measured profile. The planner and ``dsa evaluate`` price plans through the same :class:`CostModel`."""

from __future__ import annotations

import math
from typing import Protocol

import roofline as rl
from dsa.ir import FUSABLE_KINDS, Analysis, Op, Segment, fused_into, signature_of
from dsa.latency.ops import CostedOp, added_act, dtype_bytes, op_spec, planned_ops, segment_conv_spec
from dsa.vocab import DEFAULT_RUNTIME, FUSED_RUNTIMES, TACTIC_RUNTIMES

Priced = tuple[rl.OpTime, str]  # the time, and where it comes from: "roofline" or "measured"


def conv_policy_of(runtime: str) -> str | None:
    """The roofline's conv-algorithm policy under ``runtime``: ``fastest`` for a runtime that times its tactics
    (:data:`dsa.vocab.TACTIC_RUNTIMES`: TensorRT), else None (the device's default: cuDNN's heuristics on GPUs,
    direct convolution on CPUs)."""
    return "fastest" if runtime in TACTIC_RUNTIMES else None


class CostModel(Protocol):
    """Prices the kernels of a network as it will run (at a fixed device, batch and precision). The planner's
    candidate edges and ``dsa evaluate`` both go through :meth:`price`, so the two cannot disagree."""

    device: rl.DeviceSpec
    batch: int
    precision: str
    runtime: str  # what the times are of: "eager", or a profile's runtime

    @property
    def source(self) -> str:
        """What the times come from, for reports (e.g. "roofline (calibrated)")."""

    def price(self, item: CostedOp) -> Priced:
        """The time of one kernel: an op of the original network, a merged segment or an added activation."""

    def op_ms(self, op: Op) -> float:
        """An op of the original network run as it is (0 for ops that launch no kernel)."""

    def segment_ms(self, seg: Segment) -> float:
        """The conv a segment merges into."""

    def added_act_ms(self, after: Op, seg: Segment | None) -> float:
        """An activation added after ``after`` (``seg``: the segment that ends there, if any)."""


def _measured(item: CostedOp, ms: float) -> rl.OpTime:
    return rl.OpTime(item.spec.name, item.spec.op_class.value, "measured", 0.0, 0.0, 0.0, ms, "measured")


class RooflineCosts:
    """Times from the roofline model (:func:`roofline.predict_op`) on ``device``, with its calibration when it
    was calibrated at ``precision`` (or the given ``calibration``). Under a fused ``runtime``
    (:data:`dsa.vocab.FUSED_RUNTIMES`) a BN, activation, identity or residual add that a conv produces runs inside
    that conv's kernel (:func:`dsa.ir.fused_into`), and an added activation inside the merged conv before it: they
    cost what :func:`roofline.predict_fused_op` says (the extra operands they read), no kernel of their own."""

    def __init__(
        self,
        analysis: Analysis,
        device: str | rl.DeviceSpec,
        batch: int = 128,
        precision: str = "fp32",
        calibration: rl.Calibration | None = None,
        runtime: str = DEFAULT_RUNTIME,
    ) -> None:
        self.analysis = analysis
        self.runtime = runtime
        self.fused = runtime in FUSED_RUNTIMES
        self.conv_algorithms = conv_policy_of(runtime)
        self.device = device if isinstance(device, rl.DeviceSpec) else rl.load_device(device)
        self.batch = batch
        self.precision = precision
        self.nbytes = dtype_bytes(precision)
        cal = self.device.calibration
        if calibration is None and cal is not None and cal.precision == precision:
            calibration = cal
        self.calibration = calibration
        self._op_cache: dict[str, float] = {}
        self._spec_cache: dict[tuple[rl.OpSpec, bool], Priced] = {}  # an item priced again (the planner's edges)
        self._inside: dict[str, bool] = {}  # op id -> runs inside another op's kernel (fused runtimes)

    @property
    def source(self) -> str:
        fused = f", {self.runtime}: elementwise ops fused" if self.fused else ""
        return f"roofline ({'calibrated' if self.calibration else 'datasheet, uncalibrated'}{fused})"

    def runs_fused(self, item: CostedOp) -> bool:
        """Whether ``item`` runs inside another op's kernel in this runtime."""
        if not self.fused:
            return False
        if item.kind == "act":
            return True
        op = item.op
        if item.kind != "op" or op is None or op.kind not in FUSABLE_KINDS:
            return False
        if op.id not in self._inside:
            self._inside[op.id] = fused_into(self.analysis, op) is not op
        return self._inside[op.id]

    def price(self, item: CostedOp) -> Priced:
        fused = self.runs_fused(item)
        key = (item.spec, fused)
        if key not in self._spec_cache:
            if fused:
                priced = rl.predict_fused_op(item.spec, self.device, self.precision, self.calibration), "fused"
            else:
                t = rl.predict_op(item.spec, self.device, self.precision, self.calibration, self.conv_algorithms)
                priced = t, "roofline"
            self._spec_cache[key] = priced
        return self._spec_cache[key]

    def _ms(self, item: CostedOp) -> float:
        return self.price(item)[0].total_ms

    def op_ms(self, op: Op) -> float:
        if op.id not in self._op_cache:
            spec = op_spec(self.analysis, op, self.batch, self.nbytes)
            self._op_cache[op.id] = 0.0 if spec is None else self._ms(CostedOp(spec, op.block, None, "op", op))
        return self._op_cache[op.id]

    def segment_ms(self, seg: Segment) -> float:
        return self._ms(
            CostedOp(segment_conv_spec(seg, self.batch, self.nbytes), seg.blocks[0], None, "segment", None, seg)
        )

    def added_act_ms(self, after: Op, seg: Segment | None) -> float:
        return self._ms(added_act(after, seg, self.batch, self.nbytes))


class ProfileCosts(RooflineCosts):
    """Measured times of a :class:`~dsa.formats.profile.Profile` where it has them, else its (calibrated)
    roofline: an op by name, a merged segment by its shape signature (standalone, or with ``in_network`` -- the
    default for INT8 profiles -- its time inside a merged network where the profile has one), a one-conv segment
    by its conv, an added activation by the measured activation after the segment it follows. A profile taken
    under a fused runtime says which ops ran inside another op's node (``fused``): they cost nothing of their own
    (their time is in that node's), and neither does an added activation (the segment was timed with it). The
    profile must fit the analysis (:meth:`~dsa.formats.profile.Profile.check_for`)."""

    def __init__(
        self,
        analysis: Analysis,
        profile,
        batch: int | None = None,
        precision: str | None = None,
        in_network: bool | None = None,
    ) -> None:
        profile.check_for(analysis, batch, precision, allow_incomplete=True)
        # a merged segment's time inside a merged network, where the profile has one: by default for INT8, whose
        # standalone graphs pay a quantize and a dequantize at their edges (docs/results.md: INT8 predictions 30.8%
        # -> 13.1% median error; float32 ones 9.5% -> 11.6%, so float32 keeps the standalone time)
        self.in_network = profile.precision == "int8" if in_network is None else in_network
        super().__init__(
            analysis, profile.device(), profile.batch_size, profile.precision, runtime=profile.runtime_name
        )
        self.profile = profile

    @property
    def source(self) -> str:
        how = self.profile.layout if self.runtime == DEFAULT_RUNTIME else f"under {self.runtime}"
        return f"profile of {self.profile.device_name} ({how}) + {super().source}"

    def _entry(self, seg: Segment | None):
        return self.profile.segments.get(signature_of(seg)) if seg is not None and seg.merged else None

    def measures(self, seg: Segment) -> bool:
        """Whether the profile times this segment's merged conv (a one-conv segment: its conv)."""
        if seg.merged:
            return self._entry(seg) is not None
        return seg.convs[0] in self.profile.ops

    def measured(self, item: CostedOp):
        """The profile's :class:`~dsa.formats.profile.Stat` for ``item``, or None."""
        if item.kind == "segment":
            entry = self._entry(item.seg)
            if entry is not None:
                return (self.in_network and entry.get("in_network")) or entry["conv"]
            return None if item.seg.merged else self.profile.ops.get(item.seg.convs[0])
        if item.kind == "act":
            entry = self._entry(item.seg)
            return entry.get("act") if entry is not None else None
        return self.profile.ops.get(item.op.name) if item.op is not None else None

    def price(self, item: CostedOp) -> Priced:
        if self.fused and (item.kind == "act" or (item.op is not None and item.op.name in self.profile.fused)):
            return _measured(item, 0.0), "measured"  # measured inside the node of the op it runs in
        stat = self.measured(item)
        if stat is None:
            return super().price(item)
        return _measured(item, stat.median_ms), "measured"


def plan_ms(analysis: Analysis, plan, costs: CostModel) -> float:
    """Predicted latency of any plan under ``costs``: its kernels (:func:`~dsa.latency.ops.planned_ops`), each
    priced by the cost model, as :func:`dsa.latency.evaluate.evaluate` does."""
    _, planned, _ = planned_ops(analysis, plan, costs.batch, costs.precision)
    return math.fsum(costs.price(c)[0].total_ms for c in planned)
