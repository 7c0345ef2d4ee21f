"""A measured segment table (:mod:`dsa.formats.segment_table`) as a profile the planner prices with.

The table's positions count a chain of the network's convs (Kim et al.: MobileNetV2's convs without the stem and
the head, ``features[1:-1]``). Row (st, end] is convs st+1..end of the chain merged into one conv. Each row is
matched to the network: a one-conv row to its conv (``ops``), a longer one to the candidate segment with exactly
those convs (``segments``, by shape signature); the shape the row claims (channels, kernel, stride, groups,
output map) must be the one dsa merges those convs into, or the import is refused (or, with ``drop_mismatched``,
the row left out and reported). Rows for segments dsa does not offer are reported too. The profile records the
table's runtime; under a fused runtime every BN, activation and residual add runs inside its conv (``fused``), so
the row's time (conv and ReLU, timed together) is the whole cost. Everything the table lacks (stem, head,
pooling, classifier) is priced by the roofline of the profile's device under that runtime. Under an unfused runtime
(eager), where the network's own activation is a kernel of its own, each row's ReLU is split off at its roofline
time (a conv keeps the rest; a merged segment records the ReLU as its ``act``), so that no ReLU is counted twice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import roofline as rl
from dsa.errors import ArtifactError, DsaError
from dsa.formats.profile import Profile, Stat, segment_entry
from dsa.formats.segment_table import SegmentTable, TableRow
from dsa.ir import FUSABLE_KINDS, Analysis, Kind, Segment, fused_into, signature_of
from dsa.latency.table_scores import relu_ms
from dsa.vocab import FUSED_RUNTIMES, RUNTIMES


@dataclass
class ImportReport:
    """What an import matched, and what it left out (rows as (st, end) spans)."""

    offset: int  # chain position 0 is after this many of the network's convs
    chain: list[str]
    ops: int = 0
    segments: int = 0
    not_offered: list[tuple[int, int]] = field(default_factory=list)  # rows dsa has no candidate segment for
    mismatched: list[tuple[tuple[int, int], str]] = field(default_factory=list)  # rows whose shape disagrees

    def to_json(self) -> dict:
        return {
            "offset": self.offset,
            "ops": self.ops,
            "segments": self.segments,
            "not_offered": [list(s) for s in self.not_offered],
            "mismatched": [{"row": list(s), "why": why} for s, why in self.mismatched],
        }


def _convs(a: Analysis) -> list[str]:
    return [op.name for op in a.ops.values() if op.kind == Kind.CONV]


def _candidates_by_convs(a: Analysis) -> dict[tuple[str, ...], Segment]:
    """Every merged segment the planner may choose (both granularities), by its convs."""
    from dsa.planner.candidates import merged_segments

    out: dict[tuple[str, ...], Segment] = {}
    for seg in merged_segments(a):
        out.setdefault(tuple(seg.convs), seg)
    return out


def _mismatch(row: TableRow, c_in, c_out, kernel, stride, groups, out_hw) -> str:
    claimed = (
        row.c_in,
        row.c_out,
        (row.kernel, row.kernel),
        (row.stride, row.stride),
        row.groups,
        (row.h_out, row.w_out),
    )
    actual = (c_in, c_out, tuple(kernel), tuple(stride), groups, tuple(out_hw))
    if claimed == actual:
        return ""
    names = ("c_in", "c_out", "kernel", "stride", "groups", "output map")
    diffs = [f"{n} {c} (network: {v})" for n, c, v in zip(names, claimed, actual, strict=True) if c != v]
    return "; ".join(diffs)


def _conv_shape(a: Analysis, name: str):
    op = a.by_name[name]
    c = op.conv
    return c.in_channels, c.out_channels, c.kernel, c.stride, c.groups, op.shape[2:4]


def find_offset(table: SegmentTable, a: Analysis) -> int:
    """The number of the network's leading convs the table's chain skips: the one offset at which every one-conv
    row's shape is the network's conv's; a :class:`DsaError` when none or several fit."""
    convs = _convs(a)
    singles = [r for r in table.rows if r.convs == 1]
    if not singles:
        raise DsaError(f"table {table.path} has no one-conv rows to align with {a.model_name}; give --offset")
    fits = []
    for k in range(len(convs) - table.chain_length + 1):
        if all(not _mismatch(r, *_conv_shape(a, convs[k + r.st])) for r in singles):
            fits.append(k)
    if len(fits) != 1:
        what = "no offset" if not fits else f"offsets {fits}"
        raise DsaError(
            f"table {table.path}: {what} of its {table.chain_length}-conv chain into {a.model_name}'s {len(convs)} "
            f"convs fits the shapes of its one-conv rows; is it a table of {a.model_name} at {a.input_size} px? "
            "(give --offset to choose)"
        )
    return fits[0]


def profile_from_table(
    table: SegmentTable,
    a: Analysis,
    device: str | rl.DeviceSpec,
    runtime: str,
    batch_size: int,
    precision: str = "fp32",
    *,
    offset: int | None = None,
    drop_mismatched: bool = False,
) -> tuple[Profile, ImportReport]:
    """The profile of ``a`` on ``device`` under ``runtime`` at ``batch_size`` that the table measures."""
    if runtime not in RUNTIMES:
        raise DsaError(f"unknown --runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    spec = device if isinstance(device, rl.DeviceSpec) else rl.load_device(device)
    convs = _convs(a)
    if offset is None:
        offset = find_offset(table, a)
    if not 0 <= offset <= len(convs) - table.chain_length:
        raise DsaError(
            f"--offset {offset}: the table's chain of {table.chain_length} convs does not fit in {a.model_name}'s "
            f"{len(convs)} convs from there; give an offset from 0 to {len(convs) - table.chain_length}"
        )
    chain = convs[offset : offset + table.chain_length]
    report = ImportReport(offset, chain)
    fused_runtime = runtime in FUSED_RUNTIMES
    candidates = _candidates_by_convs(a)
    ops: dict[str, Stat] = {}
    segments: dict[str, dict] = {}
    for row in table.rows:
        members = tuple(chain[row.st : row.end])
        if len(members) == 1:
            why = _mismatch(row, *_conv_shape(a, members[0]))
        else:
            seg = candidates.get(members)
            if seg is None:
                report.not_offered.append(row.span)
                continue
            why = _mismatch(
                row, seg.in_channels, seg.out_channels, seg.kernel, seg.stride, seg.groups, seg.out_shape[1:3]
            )
        if why:
            if not drop_mismatched:
                raise ArtifactError(
                    f"table {table.path}: row ({row.st}, {row.end}] ({', '.join(members)}) claims {why}; the table is "
                    f"not of this network at {a.input_size} px (or its offset), or pass --drop-mismatched to leave "
                    "such rows out"
                )
            report.mismatched.append((row.span, why))
            continue
        act_ms = 0.0 if fused_runtime else relu_ms(row, spec, batch_size, precision)
        stat = Stat(max(row.time_ms - act_ms, 0.5 * row.time_ms), 0.0, 1)
        if len(members) == 1:
            ops[members[0]] = stat
            report.ops += 1
        else:
            segments[signature_of(seg)] = {
                "conv": stat,
                "act": None if fused_runtime else Stat(act_ms, 0.0, 1),
                **segment_entry(seg),
                "table_row": [row.st, row.end],
            }
            report.segments += 1
    fused: dict[str, str] = {}
    if fused_runtime:
        for op in a.ops.values():
            if op.kind in FUSABLE_KINDS:
                into = fused_into(a, op)
                if into is not op:
                    fused[op.name] = into.name
    profile = Profile(
        model=a.model_name,
        fingerprint=a.fingerprint,
        input_size=a.input_size,
        batch_size=batch_size,
        precision=precision,
        layout="nchw",
        environment={
            "source": "measured segment table",
            "table": table.path,
            "table_notes": list(table.comments),
            "imported": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "activation": "in the row's time" if fused_runtime else "split off: its roofline time is the 'act' entry",
            "import": report.to_json(),
        },
        device_spec=spec.to_dict(),
        ops=ops,
        segments=segments,
        end_to_end={},
        complete=True,
        runtime={"name": runtime, "version": "as measured (see environment.table_notes)"},
        fused=fused,
    )
    return profile, report
