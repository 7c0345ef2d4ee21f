"""How well dsa predicts under each runtime: every committed runtime profile under profiles/local-cpu/ is
calibrated (the roofline's per-class efficiencies and launch floor fitted on the training split of its items,
stored in the profile) and validated on its held-out items, end to end, and on the merge decisions.

    python bench/validate_runtimes.py --out bench/results/validate_runtimes.md

Also scores each calibration on the other batch size's profile of the same model and runtime (fitted at batch 32,
scored at batch 1 and back): a calibration is only worth something on data it was not fitted to.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dsa.formats.profile import device_profiles
from dsa.graph import analyze
from dsa.io import atomic_write_bytes, atomic_write_json
from dsa.measure.calibrate import calibrate, validate
from dsa.models import create_model, input_size
from dsa.vocab import FUSED_RUNTIMES


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--profiles", type=Path, default=Path("profiles"))
    p.add_argument("--device", default="local-cpu")
    p.add_argument("--precision", default="fp32", help="the profiles' precision: fp32, or int8 (quantized graphs)")
    args = p.parse_args()
    found = [
        (q, path)
        for q, path in device_profiles(args.profiles, args.device)
        if q.runtime_name in FUSED_RUNTIMES and q.precision == args.precision
    ]
    analyses = {}
    fitted = {}
    reports = []
    for q, path in sorted(found, key=lambda x: (x[0].model, x[0].runtime_name, -x[0].batch_size)):
        if q.model not in analyses:
            analyses[q.model] = analyze(create_model(q.model), q.model, input_size(q.model))
        a = analyses[q.model]
        cal, q2 = calibrate(a, q)
        q2.save(path)
        fitted[(q.model, q.runtime_name, q.batch_size)] = (cal, q2)
        rep = validate(a, q2, cal)
        rep["file"] = str(path)
        reports.append(rep)
    cross = []
    for (model, rt, batch), (cal, _) in fitted.items():
        for (m2, rt2, b2), (_, q_other) in fitted.items():
            if (m2, rt2) == (model, rt) and b2 != batch:
                rep = validate(analyses[model], q_other, cal)
                cross.append((model, rt, batch, b2, rep))
    lines = [
        "# Prediction quality under each runtime" + ("" if args.precision == "fp32" else f", {args.precision}"),
        "",
        f"`python bench/validate_runtimes.py --out {args.out}"
        + ("" if args.precision == "fp32" else f" --precision {args.precision}")
        + "`",
        "",
        "Held-out items: a deterministic ~25% of each profile's items (CRC32 of the name). `segments` are the "
        "candidate merged convs timed as standalone graphs in the runtime; `ops` the original network's nodes as "
        "the runtime ran them (an activation, BN or add fused into its conv is charged to the conv). End to end: "
        "the whole network timed under the runtime against the calibrated roofline (fused elementwise ops) and "
        "against the sum of the profile's own op and segment times (what the planner adds up). Merge decisions: "
        "for each candidate segment timed both ways in the runtime (original ops vs merged conv, standalone), "
        "whether merging pays off, predicted vs measured.",
        "",
        "| model | runtime | batch | held-out segments: n, Spearman, median err (uncal -> cal) | held-out ops: "
        "Spearman, median err | e2e original: roofline / profile err | e2e merged: roofline / profile err | "
        "merge decisions right: roofline, profile (n; whole blocks) |",
        "|---|---|---:|---|---|---|---|---|",
    ]
    for rep in reports:
        su, sc = rep["uncalibrated"]["segment"], rep["calibrated"]["segment"]
        oc = rep["calibrated"]["op"]
        e2e = rep["end_to_end"]
        md = rep["merge_decisions"]
        cells = []
        for net in ("original", "merged"):
            r = e2e.get(net)
            cells.append(
                f"{r['abs_pct_err_calibrated']:.1f}% / {r['abs_pct_err_profile']:.1f}%" if isinstance(r, dict) else "-"
            )
        wb = md["whole_block"]
        wb_txt = f"; blocks {wb['roofline_right']:.0%}, {wb['profile_right']:.0%} (n {wb['n']})" if wb.get("n") else ""
        lines.append(
            f"| {rep['model']} | {rep['runtime']['name']} | {rep['batch_size']} | {sc['n']}, "
            f"{su.get('spearman', float('nan')):.3f} -> {sc.get('spearman', float('nan')):.3f}, "
            f"{su['median_abs_pct_err']:.1f}% -> {sc['median_abs_pct_err']:.1f}% | "
            f"{oc.get('spearman', float('nan')):.3f}, {oc['median_abs_pct_err']:.1f}% | {cells[0]} | {cells[1]} | "
            f"{md['all']['roofline_right']:.0%}, {md['all']['profile_right']:.0%} (n {md['all']['n']}){wb_txt} |"
        )
    lines += [
        "",
        "Calibration fitted at one batch size, scored on the other batch's profile (same model and runtime):",
        "",
        "| model | runtime | fitted at | scored at | held-out segments Spearman, median err | e2e original err |",
        "|---|---|---:|---:|---|---|",
    ]
    for model, rt, b, b2, rep in cross:
        sc = rep["calibrated"]["segment"]
        e = rep["end_to_end"]["original"]["abs_pct_err_calibrated"]
        lines.append(
            f"| {model} | {rt} | {b} | {b2} | {sc.get('spearman', float('nan')):.3f}, "
            f"{sc['median_abs_pct_err']:.1f}% | {e:.1f}% |"
        )
    atomic_write_bytes(args.out, ("\n".join(lines) + "\n").encode())
    atomic_write_json(
        args.out.with_suffix(".json"), {"reports": reports, "cross_batch": [c[:4] + (c[4],) for c in cross]}
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
