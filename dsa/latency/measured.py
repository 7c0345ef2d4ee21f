"""Measured times of a profile, paired with the ops and segments of an analysis (what calibration fits and
evaluation looks up)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import roofline as rl
from dsa.errors import ArtifactError
from dsa.formats.profile import Profile
from dsa.ir import Analysis
from dsa.latency.ops import dtype_bytes, op_spec


@dataclass
class MeasuredItem:
    """One measured op or segment, with the roofline op(s) that model it."""

    key: str
    kind: str  # "op" or "segment"
    specs: list[rl.OpSpec] = field(default_factory=list)
    measured_ms: float = 0.0


def measured_items(a: Analysis, p: Profile) -> list[MeasuredItem]:
    """Pair every measured op and segment of a profile with its roofline ops."""
    if p.fingerprint != a.fingerprint:
        raise ArtifactError(
            f"profile of {p.model!r} (fingerprint {p.fingerprint}) does not match {a.model_name!r} "
            f"(fingerprint {a.fingerprint}); profile this model first"
        )
    nbytes = dtype_bytes(p.precision)
    items = []
    for op in a.ops.values():
        if op.name in p.ops:
            spec = op_spec(a, op, p.batch_size, nbytes)
            if spec is not None:
                items.append(MeasuredItem(op.name, "op", [spec], p.ops[op.name].median_ms))
    for sig, s in p.segments.items():
        items.append(MeasuredItem(sig, "segment", [entry_conv_spec(sig, s, p.batch_size, nbytes)], s["conv"].median_ms))
    return items


def entry_conv_spec(name: str, entry: dict, batch: int, nbytes: int) -> rl.OpSpec:
    """The merged conv of a profile's segment entry (its recorded shape), as a roofline op."""
    return rl.conv2d_op(
        name,
        batch,
        entry["c_in"],
        entry["c_out"],
        entry["in_shape"][1],
        entry["in_shape"][2],
        entry["out_shape"][1],
        entry["out_shape"][2],
        kernel=tuple(entry["kernel"]),
        groups=entry["groups"],
        bias=True,
        dtype_bytes=nbytes,
        stride=tuple(entry["stride"]),
    )


def with_calibration(p: Profile, calibration: rl.Calibration) -> Profile:
    return replace(p, calibration=calibration.to_dict())
