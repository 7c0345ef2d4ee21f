"""dsa's GPU cost model against public measured tables (../shared/data/measured-gpu/, Kim et al., ICML 2023).

Each row's merged conv is rebuilt from the CSV's shape columns, priced on the RTX 2080 Ti (datasheet figures
only) under the table's runtime, and scored as a planner uses latency (dsa.latency.table_scores): Spearman
(all / one-conv / multi-conv rows), median |error|, merge-decision agreement, plan regret. Variants:

- direct convolution only (algorithms off: the conv cost dsa used before, with the depthwise lane share of the new
  model), and algorithm-aware (the runtime's policy: TensorRT = fastest algorithm, eager = cuDNN heuristics);
- with and without the table's per-call floor (TensorRT rows only: one engine call per row; the floor is the
  table's fastest row, read without a model);
- cross-fitted: per-class efficiencies fitted on one table, scored on the other.

    python bench/validate_measured_gpu.py --out bench/results/validate_measured_gpu.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dsa.formats.segment_table import load_table
from dsa.io import atomic_write_bytes, atomic_write_json
from dsa.latency import table_scores as ts

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "measured-gpu"
TABLES = (  # file, batch, runtime (what the rows were measured under)
    ("mbv2_1.0_rtx2080ti_tensorrt_b128.csv", 128, "tensorrt"),
    ("vgg19_rtx2080ti_eager_b64.csv", 64, "eager"),
)
DEVICE = "rtx2080ti"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA, help="folder of the measured tables")
    p.add_argument("--out", type=Path, default=Path("bench/results/validate_measured_gpu.md"))
    args = p.parse_args()

    tables = {f: (load_table(args.data / f), b, rt) for f, b, rt in TABLES}
    floors = {f: (ts.table_floor_ms(t) if rt == "tensorrt" else 0.0) for f, (t, b, rt) in tables.items()}
    results: dict = {"device": DEVICE, "tables": {}, "rows": {}}
    lines = [
        "# dsa's GPU cost model against measured tables (issue 16)",
        "",
        "`python bench/validate_measured_gpu.py --out bench/results/validate_measured_gpu.md`; device "
        f"`{DEVICE}` (datasheet peaks, 616 GB/s, default efficiencies), fp32. Floor: the table's per-call floor "
        "(TensorRT rows, one engine call each: the table's fastest row, read without a model).",
        "",
        "| table | model | floor ms | Spearman all / single / multi | median err | median pred/meas "
        "| merge decisions right (missed, false) | plan regret (plan ms, optimum ms) |",
        "|---|---|---:|---|---:|---:|---|---|",
    ]

    def row(name, model, floor, s: ts.TableScores):
        lines.append(
            f"| {name} | {model} | {floor:.3f} | {s.spearman:.3f} / {s.spearman_single:.3f} / {s.spearman_multi:.3f} | "
            f"{s.median_abs_error:.1%} | {s.median_ratio:.2f} | {s.merge_right:.1%} of {s.merge_triples} "
            f"({s.merges_missed}, {s.merges_false}) | {s.regret:+.1%} ({s.plan_ms:.2f}, {s.optimum_ms:.2f}) |"
        )
        results["tables"].setdefault(name, {})[f"{model}, floor {floor:.3f}"] = s.to_json()

    calibrations = {}
    for f, (table, batch, runtime) in tables.items():
        name = f"{f} ({runtime}, batch {batch})"
        for floor in sorted({0.0, floors[f]}):
            direct = ts.price_rows(table, DEVICE, batch, runtime, call_floor_ms=floor, conv_algorithms="direct")
            row(name, "direct conv only, uncalibrated", floor, ts.score(table, [t for t, _ in direct]))
            priced = ts.price_rows(table, DEVICE, batch, runtime, call_floor_ms=floor)
            row(name, "algorithm-aware, uncalibrated", floor, ts.score(table, [t for t, _ in priced]))
        priced = ts.price_rows(table, DEVICE, batch, runtime, call_floor_ms=floors[f])
        results["rows"][f] = [
            {"st": r.st, "end": r.end, "measured_ms": r.time_ms, "predicted_ms": round(t, 4), "algorithm": alg}
            for r, (t, alg) in zip(table.rows, priced, strict=True)
        ]
        calibrations[f] = ts.fit_table_calibration(table, DEVICE, batch, runtime, call_floor_ms=floors[f])
    for f, (table, batch, runtime) in tables.items():
        for g, cal in calibrations.items():
            if g == f:
                continue
            name = f"{f} ({runtime}, batch {batch})"
            priced = ts.price_rows(table, DEVICE, batch, runtime, calibration=cal, call_floor_ms=floors[f])
            row(
                name,
                f"algorithm-aware, calibrated on {g.split('_')[0]}",
                floors[f],
                ts.score(table, [t for t, _ in priced]),
            )
            results.setdefault("calibrations", {})[g] = cal.to_dict()
    lines += ["", "Calibrations (fitted on one table, scored on the other):", ""]
    for g, cal in calibrations.items():
        eff = ", ".join(f"{k} {v:.2f}" for k, v in sorted(cal.compute_efficiency.items()))
        lines.append(f"- on `{g}`: compute efficiency {eff}; memory {next(iter(cal.memory_efficiency.values())):.2f}")
    lines += ["", "Algorithms chosen (algorithm-aware, uncalibrated):", ""]
    for f, rows in results["rows"].items():
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["algorithm"]] = counts.get(r["algorithm"], 0) + 1
        lines.append(f"- `{f}`: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, text.encode())
    atomic_write_json(args.out.with_suffix(".json"), results)
    print(text)


if __name__ == "__main__":
    main()
