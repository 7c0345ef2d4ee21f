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

import zlib
from collections.abc import Sequence

import numpy as np
from scipy import stats

import roofline as rl
from dsa.errors import ArtifactError
from dsa.formats.plan import plan_from_json
from dsa.formats.profile import Profile
from dsa.ir import Analysis
from dsa.latency.measured import MeasuredItem, measured_items, with_calibration
from dsa.latency.ops import baseline_ops, planned_ops


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


def _predict(items: Sequence[MeasuredItem], device: rl.DeviceSpec, precision: str) -> list[float]:
    cal = device.calibration
    return [sum(rl.predict_op(s, device, precision, cal).total_ms for s in it.specs) for it in items]


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
        "complete": p.complete,
    }
    for label, dev in (("uncalibrated", before), ("calibrated", after)):
        part = {}
        for kind in ("segment", "op"):
            sel = [it for it in held if it.kind == kind]
            part[kind] = _metrics(_predict(sel, dev, p.precision), [it.measured_ms for it in sel])
        report[label] = part
    report["heldout"] = report["calibrated"]["segment"]
    report["heldout_ops"] = report["calibrated"]["op"]
    report["end_to_end"] = _end_to_end(a, p, before, after)
    return report


def _end_to_end(a: Analysis, p: Profile, before: rl.DeviceSpec, after: rl.DeviceSpec) -> dict:
    out: dict = {}
    e2e = p.end_to_end
    nets: dict[str, list[rl.OpSpec]] = {"original": [c.spec for c in baseline_ops(a, p.batch_size, p.precision)]}
    if "merged" in e2e and isinstance(e2e["merged"].get("plan"), dict):
        plan = plan_from_json(e2e["merged"]["plan"], "profile end_to_end.merged.plan")
        _, planned, _ = planned_ops(a, plan, p.batch_size, p.precision)
        nets["merged"] = [c.spec for c in planned]
    worst = 0.0
    for name, specs in nets.items():
        if name not in e2e:
            continue
        measured = float(e2e[name]["median_ms"])
        row = {"measured_ms": measured}
        for label, dev in (("uncalibrated", before), ("calibrated", after)):
            pred = rl.predict_network(specs, dev, p.precision, p.batch_size, dev.calibration).latency_ms
            row[f"predicted_ms_{label}"] = pred
            row[f"abs_pct_err_{label}"] = abs(pred - measured) / measured * 100
        worst = max(worst, row["abs_pct_err_calibrated"])
        out[name] = row
    if "sum_of_ops_ms" in e2e and "original" in e2e:
        out["sum_of_measured_ops_ms"] = e2e["sum_of_ops_ms"]
    out["abs_pct_err"] = worst
    return out
