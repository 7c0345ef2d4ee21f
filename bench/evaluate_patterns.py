"""Predicted V100 throughput of mobilenet_v2_140 and DepthShrinker patterns A-F (roofline, uncalibrated),
what dominates before and after, and how long `dsa evaluate` takes cold.

    python bench/evaluate_patterns.py --gpu v100 --batch-size 128 --precision fp32
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dsa.formats.plan import DS_PATTERNS, ds_pattern_act_list, plan_from_act_list
from dsa.graph import analyze
from dsa.latency.evaluate import evaluate
from dsa.models import create_model


def by_class(ops, times) -> dict[str, float]:
    out: dict[str, float] = collections.Counter()
    for c, t in zip(ops, times, strict=True):
        out[c.spec.op_class.value] += t.total_ms
    return dict(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", default="v100")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--repeats", type=int, default=3, help="cold `dsa evaluate` runs to time")
    args = p.parse_args()
    model = create_model("mobilenet_v2_140")
    a = analyze(model, "mobilenet_v2_140")
    print(
        f"| plan | convs | predicted img/s | latency ms | speed-up | conv ms | BN/act/add ms | (model {args.gpu}, "
        f"{args.precision}, batch {args.batch_size}) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    evals = {}
    for letter in ["original", *DS_PATTERNS]:
        keep = [1] * 19 if letter == "original" else ds_pattern_act_list(letter)
        ev = evaluate(a, plan_from_act_list(a, keep), args.gpu, args.batch_size, args.precision)
        evals[letter] = ev
        net, ops = (ev.baseline, ev.baseline_ops) if letter == "original" else (ev.planned, ev.planned_ops)
        cls = by_class(ops, net.op_times)
        conv = sum(v for k, v in cls.items() if k.endswith("conv"))
        n_convs = sum(c.spec.kind == "conv" for c in ops)
        print(
            f"| {letter if letter == 'original' else 'DS-' + letter} | {n_convs} | {net.throughput_img_s:.0f} | "
            f"{net.latency_ms:.2f} | {ev.baseline.latency_ms / net.latency_ms:.2f}x | {conv:.2f} | "
            f"{cls.get('elementwise', 0):.2f} | |"
        )
    f = evals["F"]
    print(
        "\nop classes, original ->", {k: round(v, 2) for k, v in by_class(f.baseline_ops, f.baseline.op_times).items()}
    )
    print("op classes, DS-F     ->", {k: round(v, 2) for k, v in by_class(f.planned_ops, f.planned.op_times).items()})
    top = sorted(zip(f.planned_ops, f.planned.op_times, strict=True), key=lambda ct: -ct[1].total_ms)[:5]
    print(
        "DS-F slowest ops:",
        [(c.spec.name, c.spec.kernel, c.spec.c_in, c.spec.c_out, round(t.total_ms, 2), t.bound) for c, t in top],
    )
    top = sorted(zip(f.baseline_ops, f.baseline.op_times, strict=True), key=lambda ct: -ct[1].total_ms)[:5]
    print(
        "original slowest ops:", [(c.spec.name, c.spec.op_class.value, round(t.total_ms, 2), t.bound) for c, t in top]
    )

    with tempfile.TemporaryDirectory() as tmp:
        plan = Path(tmp) / "f.json"
        plan_from_act_list(a, ds_pattern_act_list("F")).save(plan)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "cli", "evaluate", "--plan", str(plan), "--gpu", args.gpu, "--format", "json"],
                check=True,
                capture_output=True,
            )
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(20):
            evaluate(a, plan_from_act_list(a, ds_pattern_act_list("F")), args.gpu, args.batch_size, args.precision)
        warm = (time.perf_counter() - t0) / 20
    print(json.dumps({"cold_dsa_evaluate_s": [round(t, 2) for t in times], "warm_evaluate_call_s": round(warm, 4)}))


if __name__ == "__main__":
    main()
