"""Predicted vs measured speed-ups under a runtime, with merged convs priced standalone or inside merged networks.

The networks and measured speed-ups are earlier benchmarks': issue 15's INT8 runs (`bench/results/int8_speedups.json`:
original, DS-F and planned networks, median of three interleaved runs, batch 32 and 1) and issue 14's float32 runs
(`bench/results/runtime_plans.json`: DepthShrinker's patterns and the planned networks, batch 32). Each network is
priced with the committed profile of its runtime, precision and batch: once with every merged conv's standalone
time (`segments.<sig>.conv`, what the profiles had), once with its time inside a merged network
(`segments.<sig>.in_network`, added by `bench/in_network_segments.py`). The measured runs are of other networks
(random weights, other processes) than the in-network timings: nothing here is fitted to them.

    python bench/in_network_predictions.py --out bench/results/in_network_predictions.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from dsa.formats.plan import plan_from_json
from dsa.formats.profile import load_profile, profile_path
from dsa.graph import analyze
from dsa.io import atomic_write_bytes, atomic_write_json
from dsa.latency.costs import ProfileCosts
from dsa.latency.evaluate import evaluate
from dsa.models import create_model


def _int8_cases(path: Path):
    for r in json.loads(path.read_text()):
        runs = r["runs_images_per_s"]
        for net, plan_json in r["plans"].items():
            measured = statistics.median(run[f"{net} int8"] / run["original int8"] for run in runs)
            yield r["model"], r["runtime"]["name"], r["batch_size"], "int8", net, plan_json, measured


def _fp32_cases(path: Path):
    for r in json.loads(path.read_text()):
        yield r["model"], r["runtime"], 32, "fp32", r["network"], r["plan"], r["measured_speedup"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--int8-runs", type=Path, default=Path("bench/results/int8_speedups.json"))
    p.add_argument("--fp32-runs", type=Path, default=Path("bench/results/runtime_plans.json"))
    p.add_argument("--out", type=Path, default=Path("bench/results/in_network_predictions.md"))
    args = p.parse_args()
    analyses: dict = {}
    profiles: dict = {}
    rows, out = [], []
    cases = [*_int8_cases(args.int8_runs), *_fp32_cases(args.fp32_runs)]
    for name, runtime, batch, precision, net, plan_json, measured in cases:
        path = profile_path("local-cpu", name, batch, precision, "nchw", "profiles", runtime)
        if path not in profiles:
            profiles[path] = load_profile(path) if path.exists() else None
        prof = profiles[path]
        if prof is None or not any(s.get("in_network") for s in prof.segments.values()):
            continue
        if name not in analyses:
            analyses[name] = analyze(create_model(name), name)
        a = analyses[name]
        plan = plan_from_json(plan_json)
        pred = {}
        for how, inside in (("standalone", False), ("in network", True)):
            ev = evaluate(a, plan, costs=ProfileCosts(a, prof, in_network=inside))
            pred[how] = ev.baseline.latency_ms / ev.planned.latency_ms
        rows.append(
            {
                "model": name,
                "runtime": runtime,
                "precision": precision,
                "batch": batch,
                "network": net,
                "removed": len(plan.removed),
                "measured": measured,
                "predicted_standalone": pred["standalone"],
                "predicted_in_network": pred["in network"],
            }
        )
    lines = [
        "# Speed-ups under a runtime: predicted (standalone vs in-network segment times) against measured",
        "",
        f"`python bench/in_network_predictions.py --out {args.out}`; measured: `{args.int8_runs}` (INT8: merged INT8 "
        f"over original INT8) and `{args.fp32_runs}` (float32), medians of three interleaved runs; predicted: the "
        "committed profile of the runtime, precision and batch.",
        "",
        "| model | runtime | precision | batch | network | removed | measured | predicted, standalone (meas/pred) | "
        "predicted, in network (meas/pred) |",
        "|---|---|---|---:|---|---:|---:|---|---|",
    ]
    for x in rows:
        lines.append(
            f"| {x['model']} | {x['runtime']} | {x['precision']} | {x['batch']} | {x['network']} | {x['removed']} | "
            f"{x['measured']:.2f}x | "
            f"{x['predicted_standalone']:.2f}x ({x['measured'] / x['predicted_standalone']:.2f}) | "
            f"{x['predicted_in_network']:.2f}x ({x['measured'] / x['predicted_in_network']:.2f}) |"
        )
    for precision in ("int8", "fp32"):
        for how in ("standalone", "in_network"):
            errs = [abs(x["measured"] / x[f"predicted_{how}"] - 1) for x in rows if x["precision"] == precision]
            if errs:
                out.append(
                    f"- {precision}, {how.replace('_', ' ')}: median |measured / predicted - 1| "
                    f"{statistics.median(errs):.1%}, worst {max(errs):.1%}, within 10%: "
                    f"{sum(e <= 0.10 for e in errs)} of {len(errs)}"
                )
    text = "\n".join([*lines, "", *out]) + "\n"
    atomic_write_bytes(args.out, text.encode())
    atomic_write_json(args.out.with_suffix(".json"), rows)
    print(text)


if __name__ == "__main__":
    main()
