"""Calibrate the roofline model on a measured profile, and report how well it predicts.

The measured items of a profile (every op of the original network, every candidate merged segment) are
split deterministically: an item is held out when the CRC32 of its name is divisible by 4 (about 25%).
The roofline efficiencies and launch floor are fitted on the rest (``roofline.fit_calibration``) and
judged on the held-out items, before and after calibration: median absolute % error, share within
+-10%, Spearman and Kendall rank correlation. End to end, the predicted latency of the whole original
network (the sum of its predicted ops), and of the merged one when the profile timed it, is compared with
its measured latency.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
from scipy import stats

import roofline as rl
from dsa.errors import ArtifactError
from dsa.formats.plan import plan_from_json
from dsa.formats.profile import Profile
from dsa.ir import Analysis, act_after
from dsa.latency.costs import ProfileCosts, RooflineCosts, conv_policy_of
from dsa.latency.measured import MeasuredItem, entry_conv_spec, measured_items, with_calibration
from dsa.latency.ops import CostedOp, baseline_ops, dtype_bytes, op_spec, planned_ops


def is_heldout(key: str) -> bool:
    return zlib.crc32(key.encode()) % 4 == 0


def split(items: Sequence[MeasuredItem]) -> tuple[list[MeasuredItem], list[MeasuredItem]]:
    train = [it for it in items if not is_heldout(it.key)]
    held = [it for it in items if is_heldout(it.key)]
    return train, held


def calibrate(a: Analysis, p: Profile) -> tuple[rl.Calibration, Profile]:
    """Fit the roofline efficiencies of the profile's device on the training split of its items."""
    train, _ = split(measured_items(a, p))
    if len(train) < 3:
        raise ArtifactError(f"profile of {p.model} has only {len(train)} training items; profile more ops first")
    env = p.environment
    notes = (
        f"{p.model}, batch {p.batch_size}, {p.precision}, {p.layout}, {env.get('threads')} threads, "
        f"cudnn.benchmark={env.get('cudnn_benchmark')}, tf32={env.get('tf32_cudnn')}; "
        f"{len(train)} training items (ops and merged segments)"
    )
    cal = rl.fit_calibration(
        p.device().with_calibration(None),
        [it.specs[0] for it in train],
        [it.measured_ms for it in train],
        p.precision,
        notes=notes,
        per_class_memory=True,
        large_thresholds_mb=None,
        time_weighted=True,
        conv_algorithms=conv_policy_of(p.runtime_name),
    )
    return cal, with_calibration(p, cal)


def _metrics(pred: Sequence[float], meas: Sequence[float]) -> dict:
    pred_a, meas_a = np.asarray(pred, float), np.asarray(meas, float)
    if pred_a.size == 0:
        return {"n": 0}
    err = np.abs(pred_a - meas_a) / meas_a * 100
    out = {
        "n": int(pred_a.size),
        "median_abs_pct_err": float(np.median(err)),
        "within_10pct": float(np.mean(err <= 10.0)),
    }
    if pred_a.size >= 3:
        out["spearman"] = float(stats.spearmanr(pred_a, meas_a).statistic)
        out["kendall"] = float(stats.kendalltau(pred_a, meas_a).statistic)
    return out


def _predict(
    items: Sequence[MeasuredItem], device: rl.DeviceSpec, precision: str, policy: str | None = None
) -> list[float]:
    cal = device.calibration
    return [sum(rl.predict_op(s, device, precision, cal, policy).total_ms for s in it.specs) for it in items]


def validate(a: Analysis, p: Profile, calibration: rl.Calibration | None = None) -> dict:
    """Prediction quality on held-out items and end to end, before and after calibration."""
    if calibration is None:
        calibration = rl.Calibration.from_dict(p.calibration, "profile") if p.calibration else calibrate(a, p)[0]
    items = measured_items(a, p)
    _, held = split(items)
    before = p.device().with_calibration(None)
    after = before.with_calibration(calibration)
    report: dict = {
        "model": p.model,
        "device": p.device_name,
        "batch_size": p.batch_size,
        "precision": p.precision,
        "layout": p.layout,
        "runtime": p.runtime,
        "complete": p.complete,
    }
    for label, dev in (("uncalibrated", before), ("calibrated", after)):
        part = {}
        for kind in ("segment", "op"):
            sel = [it for it in held if it.kind == kind]
            part[kind] = _metrics(
                _predict(sel, dev, p.precision, conv_policy_of(p.runtime_name)), [it.measured_ms for it in sel]
            )
        report[label] = part
    report["heldout"] = report["calibrated"]["segment"]
    report["heldout_ops"] = report["calibrated"]["op"]
    report["end_to_end"] = _end_to_end(a, p, before, after)
    report["merge_decisions"] = merge_decisions(a, p, after)
    return report


def _segment_items(a: Analysis, p: Profile, entry: dict) -> tuple[list[CostedOp], CostedOp]:
    """The original ops a profiled segment replaces (with the activation it keeps) and its merged conv, as the
    cost models price them."""
    nbytes = dtype_bytes(p.precision)
    ops = [a.by_name[m] for m in entry["members"] if m in a.by_name]
    after = act_after(a, ops[-1].id) if entry.get("act") or entry.get("act_fused") else None
    if after is not None:
        ops.append(after)
    original = []
    for op in ops:
        spec = op_spec(a, op, p.batch_size, nbytes)
        if spec is not None:
            original.append(CostedOp(spec, op.block or op.name, None, "op", op))
    conv = entry_conv_spec("merged", entry, p.batch_size, nbytes)
    return original, CostedOp(conv, ops[0].block, None, "segment")


def merge_decisions(a: Analysis, p: Profile, device: rl.DeviceSpec) -> dict:
    """For every candidate segment the profile timed both ways as standalone graphs (``original`` and merged
    ``conv``, runtime profiles): does merging it pay off, measured, and as predicted by the calibrated roofline
    (under the profile's runtime) and by the profile's own in-network op times (what the planner uses)? Reported
    over all such segments, the held-out ones, and the segments that merge one whole block (DepthShrinker's unit)."""
    roof = RooflineCosts(a, device, p.batch_size, p.precision, device.calibration, runtime=p.runtime_name)
    prof = ProfileCosts(a, p)
    rows = []
    for sig, entry in p.segments.items():
        if entry.get("original") is None or not all(m in a.by_name for m in entry["members"]):
            continue
        original, merged = _segment_items(a, p, entry)
        blocks = {a.by_name[m].block for m in entry["members"]}
        block_convs = {op.name for op in a.ops.values() if op.kind == "conv" and op.block in blocks}
        rows.append(
            {
                "segment": sig,
                "heldout": is_heldout(sig),
                "whole_block": len(blocks) == 1 and block_convs <= set(entry["members"]),
                "measured_pays": entry["conv"].median_ms < entry["original"].median_ms,
                "measured_ratio": entry["original"].median_ms / entry["conv"].median_ms,
                "roofline_pays": roof.price(merged)[0].total_ms < _priced_ms(roof, original),
                "profile_pays": entry["conv"].median_ms < _priced_ms(prof, original),
            }
        )

    def agreement(sel: list[dict]) -> dict:
        if not sel:
            return {"n": 0}
        out = {"n": len(sel), "merging_pays_measured": sum(r["measured_pays"] for r in sel)}
        for by in ("roofline", "profile"):
            out[f"{by}_right"] = sum(r[f"{by}_pays"] == r["measured_pays"] for r in sel) / len(sel)
        return out

    return {
        "all": agreement(rows),
        "heldout": agreement([r for r in rows if r["heldout"]]),
        "whole_block": agreement([r for r in rows if r["whole_block"]]),
        "rows": rows,
    }


def _priced_ms(costs, items: Sequence[CostedOp]) -> float:
    return math.fsum(costs.price(c)[0].total_ms for c in items)


def _end_to_end(a: Analysis, p: Profile, before: rl.DeviceSpec, after: rl.DeviceSpec) -> dict:
    """Whole networks, measured vs predicted: by the roofline (under the profile's runtime: fused elementwise ops
    in a fused runtime) before and after calibration, and by the profile's own per-op and per-segment times
    (what the planner adds up)."""
    out: dict = {}
    e2e = p.end_to_end
    nets: dict[str, list[CostedOp]] = {"original": baseline_ops(a, p.batch_size, p.precision)}
    if "merged" in e2e and isinstance(e2e["merged"].get("plan"), dict):
        plan = plan_from_json(e2e["merged"]["plan"], "profile end_to_end.merged.plan")
        nets["merged"] = planned_ops(a, plan, p.batch_size, p.precision)[1]
    models = {
        label: RooflineCosts(a, dev, p.batch_size, p.precision, dev.calibration, runtime=p.runtime_name)
        for label, dev in (("uncalibrated", before), ("calibrated", after))
    }
    models["profile"] = ProfileCosts(a, p)
    worst = 0.0
    for name, items in nets.items():
        if name not in e2e:
            continue
        measured = float(e2e[name]["median_ms"])
        row = {"measured_ms": measured}
        for label, costs in models.items():
            pred = _priced_ms(costs, items)
            row[f"predicted_ms_{label}"] = pred
            row[f"abs_pct_err_{label}"] = abs(pred - measured) / measured * 100
        worst = max(worst, row["abs_pct_err_calibrated"])
        out[name] = row
    if "sum_of_ops_ms" in e2e and "original" in e2e:
        out["sum_of_measured_ops_ms"] = e2e["sum_of_ops_ms"]
    out["abs_pct_err"] = worst
    return out
