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
from dsa.formats.plan import Plan
from dsa.ir import GATE_TYPES, NO_KERNEL_TYPES, POOL_TYPES, Analysis, Kind, Op, Segment
from dsa.vocab import PRECISION_BYTES

DTYPE_BYTES = PRECISION_BYTES


@dataclass(frozen=True)
class CostedOp:
    """One kernel of a network as it will run, with what it comes from (what a cost model prices)."""

    spec: rl.OpSpec
    block: str  # the op's block, or its own name for ops outside any block (global pooling, ...)
    segment: int | None  # index into the plan's segments: the segment that covers it (baseline) or that it is
    kind: str = "op"  # "op" (an op of the original network), "segment" (a merged conv), "act" (an added activation)
    op: Op | None = None  # kind "op": the op; kind "act": the op it follows
    seg: Segment | None = None  # kind "segment": the segment; kind "act": the segment ending at that op, if any


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
            stride=c.stride,
        )
    if op.kind == Kind.BN:
        return rl.elementwise_op(op.name, "bn", numel, dtype_bytes=nbytes, batch=batch, channels=shape[1])
    if op.kind == Kind.ACT or op.module_type in GATE_TYPES:
        return rl.elementwise_op(op.name, "act", numel, dtype_bytes=nbytes, batch=batch)
    if op.kind == Kind.ADD:
        return rl.elementwise_op(op.name, "add", numel, n_inputs=2, dtype_bytes=nbytes, batch=batch)
    if op.kind == Kind.PAD:
        return rl.elementwise_op(op.name, "other", numel, dtype_bytes=nbytes, batch=batch)
    kind = op.module_type
    if kind in NO_KERNEL_TYPES:
        return None
    if kind in POOL_TYPES and src is not None and len(src) == 4:
        h_out, w_out = (shape[2], shape[3]) if len(shape) == 4 else (1, 1)
        k = (max(1, src[2] // h_out), max(1, src[3] // w_out))
        return rl.pooling_op(op.name, batch, src[1], src[2], src[3], h_out, w_out, k, POOL_TYPES[kind], nbytes)
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
            out.append(CostedOp(spec, op.block or op.name, None, "op", op))
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
        stride=seg.stride,
    )


def added_act(after: Op, seg: Segment | None, batch: int, nbytes: int) -> CostedOp:
    """The activation a plan adds after ``after`` (``seg``: the segment that ends there, if any)."""
    name = f"{after.block}.ds_act" if after.block else "ds_act"
    spec = rl.elementwise_op(name, "act", _numel(after.shape, batch), dtype_bytes=nbytes, batch=batch)
    return CostedOp(spec, after.block or after.name, None, "act", after, seg)


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
        if spec is not None:
            base.append(CostedOp(spec, op.block or op.name, covered.get(op.id), "op", op))
    view = plan.view(a)  # the pruned network: pruned convs are identities, pruned branches gone
    for op in view.ops.values():
        spec = op_spec(view, op, batch, nbytes)
        seg = covered.get(op.id)
        block = op.block or op.name
        if op.id in first_of:
            i = first_of[op.id]
            s = segments[i]
            planned.append(CostedOp(segment_conv_spec(s, batch, nbytes), s.blocks[0], i, "segment", None, s))
        elif seg is None and op.id not in removed_ids and spec is not None:
            planned.append(CostedOp(spec, block, None, "op", op))
        if op.id in added_after:
            planned.append(added_act(op, segments[seg] if seg is not None else None, batch, nbytes))
    return base, planned, segments
