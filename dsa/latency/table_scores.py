"""How well a cost model predicts a measured segment table (:mod:`dsa.formats.segment_table`): each row's merged conv
rebuilt from its shape columns and priced on a device under a runtime, then scored the way a planner uses
latency (docs/results.md, issue 16):

- rank correlation (Spearman) over all rows, and within one-conv and multi-conv rows;
- median ``|predicted / measured - 1|``;
- **merge decisions**: for every triple of rows (i, k], (k, j], (i, j], whether "merging pays off"
  (T(i, j) < T(i, k) + T(k, j)) comes out the same predicted as measured;
- **plan regret**: the fastest split of the whole chain into rows (a shortest path), chosen on predicted times
  and timed with the measured ones, against the measured optimum.

A row is timed as its conv and a ReLU (``nn.Sequential(conv, ReLU)``, as Kim et al. timed them): under a fused
runtime the ReLU rides in the conv's kernel. ``call_floor_ms`` is what the measurement protocol adds per row
beyond its kernels (a TensorRT engine called from Python per row pays its enqueue, binding and synchronisation
once per call): it is not a datasheet figure; :func:`table_floor_ms` reads it off the table without a model.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

import roofline as rl
from dsa.errors import DsaError
from dsa.formats.segment_table import SegmentTable, TableRow
from dsa.latency.costs import conv_policy_of
from dsa.vocab import FUSED_RUNTIMES, PRECISION_BYTES


def row_spec(row: TableRow, batch: int, precision: str = "fp32") -> rl.OpSpec:
    """The merged conv a row was timed as (bias included, as a merged conv has one)."""
    return rl.conv2d_op(
        f"({row.st},{row.end}]",
        batch,
        row.c_in,
        row.c_out,
        row.h_in,
        row.w_in,
        row.h_out,
        row.w_out,
        kernel=row.kernel,
        groups=row.groups,
        bias=True,
        dtype_bytes=PRECISION_BYTES[precision],
        stride=row.stride,
    )


def relu_ms(
    row: TableRow,
    device: rl.DeviceSpec,
    batch: int,
    precision: str = "fp32",
    fused: bool = False,
    calibration: rl.Calibration | None = None,
) -> float:
    """The predicted time of the ReLU a row was timed with: inside the conv's kernel (``fused``) or its own."""
    numel = batch * row.c_out * row.h_out * row.w_out
    act = rl.elementwise_op("relu", "act", numel, dtype_bytes=PRECISION_BYTES[precision], batch=batch)
    return (rl.predict_fused_op if fused else rl.predict_op)(act, device, precision, calibration).total_ms


def price_rows(
    table: SegmentTable,
    device: str | rl.DeviceSpec,
    batch: int,
    runtime: str = "eager",
    precision: str = "fp32",
    calibration: rl.Calibration | None = None,
    call_floor_ms: float = 0.0,
    conv_algorithms: str | None = None,
) -> list[tuple[float, str]]:
    """(predicted ms, conv algorithm) per row, in table order: the conv at the algorithm ``runtime`` picks (or
    ``conv_algorithms``' choice, e.g. ``direct``), its ReLU (fused under a fused runtime) and ``call_floor_ms``."""
    spec = device if isinstance(device, rl.DeviceSpec) else rl.load_device(device)
    policy = conv_algorithms or conv_policy_of(runtime)
    fused = runtime in FUSED_RUNTIMES
    out = []
    for row in table.rows:
        conv = rl.predict_op(row_spec(row, batch, precision), spec, precision, calibration, policy)
        act = relu_ms(row, spec, batch, precision, fused, calibration)
        out.append((conv.total_ms + act + call_floor_ms, conv.algorithm))
    return out


def table_floor_ms(table: SegmentTable) -> float:
    """The table's per-call floor, read without a model: its fastest row (an upper bound: that row's kernels
    take some time too)."""
    return min(r.time_ms for r in table.rows)


def fit_table_calibration(
    table: SegmentTable,
    device: str | rl.DeviceSpec,
    batch: int,
    runtime: str = "eager",
    precision: str = "fp32",
    call_floor_ms: float = 0.0,
) -> rl.Calibration:
    """Per-class efficiencies fitted to the table's rows (the conv of each; its ReLU's predicted time and the
    call floor taken off first; the device's launch cost kept, since a floor per call is not one per kernel)."""
    spec = device if isinstance(device, rl.DeviceSpec) else rl.load_device(device)
    fused = runtime in FUSED_RUNTIMES
    ops, measured = [], []
    for row in table.rows:
        act = relu_ms(row, spec, batch, precision, fused)
        ops.append(row_spec(row, batch, precision))
        measured.append(max(row.time_ms - act - call_floor_ms, 0.05 * row.time_ms))
    return rl.fit_calibration(
        spec,
        ops,
        measured,
        precision,
        fit_launch=False,
        large_thresholds_mb=(),
        conv_algorithms=conv_policy_of(runtime),
        notes=f"fitted to {table.path} ({len(ops)} rows, {runtime}, batch {batch})",
    )


def fastest_split(table: SegmentTable, times: Sequence[float]) -> tuple[float, list[tuple[int, int]]]:
    """The split of the chain 0..L into rows with the least total of ``times`` (a shortest path over the rows), and
    its rows; a :class:`DsaError` if the rows do not cover the chain."""
    length = table.chain_length
    best = [math.inf] * (length + 1)
    best[0] = 0.0
    times = [float(t) for t in times]
    arg: list[int | None] = [None] * (length + 1)
    ends: dict[int, list[int]] = {}
    for i, r in enumerate(table.rows):
        ends.setdefault(r.end, []).append(i)
    for e in range(1, length + 1):
        for i in ends.get(e, []):
            r = table.rows[i]
            if best[r.st] + times[i] < best[e]:
                best[e], arg[e] = best[r.st] + times[i], i
    if math.isinf(best[length]):
        raise DsaError(f"table {table.path}: its rows do not cover the chain 0..{length}; no split exists")
    path, e = [], length
    while e > 0:
        i = arg[e]
        path.append(table.rows[i].span)
        e = table.rows[i].st
    return best[length], path[::-1]


def merge_triples(table: SegmentTable) -> list[tuple[int, int, int]]:
    """Index triples (i, k], (k, j], (i, j] of rows that all exist: one merge decision each."""
    idx = {r.span: n for n, r in enumerate(table.rows)}
    out = []
    for (i, j), whole in idx.items():
        for k in range(i + 1, j):
            if (i, k) in idx and (k, j) in idx:
                out.append((idx[(i, k)], idx[(k, j)], whole))
    return out


@dataclass(frozen=True)
class TableScores:
    """What :func:`score` reports (errors as fractions, times in ms)."""

    n_rows: int
    spearman: float
    spearman_single: float
    spearman_multi: float
    median_abs_error: float
    median_ratio: float  # median predicted / measured
    merge_triples: int
    merge_right: float  # share of the merge decisions predicted as measured
    merges_missed: int  # merges that pay off, predicted not to
    merges_false: int  # merges that do not pay off, predicted to
    plan_ms: float  # measured time of the split chosen on predictions
    optimum_ms: float  # the measured optimum
    regret: float  # plan_ms / optimum_ms - 1

    def to_json(self) -> dict:
        """JSON-ready (a Spearman over fewer than 3 rows, NaN here, is null there)."""
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else round(v, 4) if isinstance(v, float) else v)
            for k, v in self.__dict__.items()
        }


def _spearman(pred: np.ndarray, meas: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(pred, meas)[0]) if len(pred) >= 3 else float("nan")


def score(table: SegmentTable, predicted: Sequence[float]) -> TableScores:
    """Score ``predicted`` (ms per row, in table order) against the table's measured times."""
    if len(predicted) != len(table.rows):
        raise DsaError(f"got {len(predicted)} predictions for the {len(table.rows)} rows of {table.path}")
    pred = np.asarray(predicted, dtype=float)
    meas = np.array([r.time_ms for r in table.rows])
    single = np.array([r.convs == 1 for r in table.rows])
    triples = merge_triples(table)
    missed = false = 0
    for a, b, whole in triples:
        m = bool(meas[whole] < meas[a] + meas[b])
        p = bool(pred[whole] < pred[a] + pred[b])
        missed += m and not p
        false += p and not m
    _, chosen = fastest_split(table, pred)
    by_span = {r.span: n for n, r in enumerate(table.rows)}
    plan_ms = math.fsum(float(meas[by_span[s]]) for s in chosen)
    optimum_ms, _ = fastest_split(table, meas)
    return TableScores(
        n_rows=len(pred),
        spearman=_spearman(pred, meas),
        spearman_single=_spearman(pred[single], meas[single]),
        spearman_multi=_spearman(pred[~single], meas[~single]),
        median_abs_error=float(statistics.median(np.abs(pred / meas - 1))),
        median_ratio=float(statistics.median(pred / meas)),
        merge_triples=len(triples),
        merge_right=float(1 - (missed + false) / len(triples)) if triples else float("nan"),
        merges_missed=missed,
        merges_false=false,
        plan_ms=plan_ms,
        optimum_ms=float(optimum_ms),
        regret=float(plan_ms / optimum_ms - 1),
    )
