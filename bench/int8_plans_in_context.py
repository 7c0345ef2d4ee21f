"""INT8 plans checked in their own network: the planner's 2x INT8 plan (priced with in-network times), its merged
network timed under the runtime's profiler and its merged convs' times recorded, re-planned until the plan stops
changing (dsa.measure.runtime_profile.plan_in_context); then the first and the last plan measured against the
original INT8 network, interleaved, three runs (as bench/int8_speedups.py: random weights with BN statistics
settled, INT8 by the runtime's own tool, calibrated on 32 random images, batch 32, 2 threads).

    python bench/int8_plans_in_context.py --out bench/results/int8_plans_in_context.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from dsa.formats.profile import load_profile, profile_path
from dsa.graph import analyze
from dsa.io import atomic_write_bytes, atomic_write_json
from dsa.measure.runtime_profile import plan_in_context
from dsa.measure.runtimes import prepare
from dsa.measure.timing import round_robin
from dsa.models import create_model, input_size
from dsa.planner.planner import solve_plan
from dsa.quantize import settle_random_weights
from dsa.transform.merge import merge


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", default="mobilenet_v2_140,efficientnet_lite0")
    p.add_argument("--runtimes", default="openvino,onnxruntime")
    p.add_argument("--target", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    batch = 32
    cases = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = create_model(name).eval()
        size = input_size(name)
        settle_random_weights(model, size)
        a = analyze(model, name, size)
        for runtime in args.runtimes.split(","):
            t0 = time.perf_counter()
            prof = load_profile(profile_path("local-cpu", name, batch, "int8", "nchw", "profiles", runtime))

            def solve(costs, a=a):
                return solve_plan(a, target_speedup=args.target, costs=costs)

            result, _, history = plan_in_context(a, model, prof, solve, threads=args.threads, repeats=prof.repeats)
            first = history[0]["result"]
            nets = {
                "original": model,
                "first plan": merge(model, first.plan),
                "plan in context": merge(model, result.plan),
            }
            x = torch.randn(batch, 3, size, size)
            calib = torch.randn(32, 3, size, size, generator=torch.Generator().manual_seed(1))
            fns = {k: prepare(runtime, n, x, args.threads, int8=True, calibration=calib) for k, n in nets.items()}
            runs = []
            with torch.inference_mode():
                for _ in range(args.runs):
                    samples = round_robin(fns, x, torch.device("cpu"), 1, args.repeats)
                    runs.append({k: statistics.median(v) for k, v in samples.items()})
            case = {
                "model": name,
                "runtime": runtime,
                "target": args.target,
                "rounds": [{k: v for k, v in r.items() if k != "result"} for r in history],
                "first": {"removed": len(first.plan.removed), "predicted": first.speedup, "plan": first.plan.to_json()},
                "in_context": {
                    "removed": len(result.plan.removed),
                    "predicted": result.speedup,
                    "plan": result.plan.to_json(),
                },
                "runs_images_per_s": runs,
                "seconds": time.perf_counter() - t0,
            }
            for key, label in (("first", "first plan"), ("in_context", "plan in context")):
                case[key]["measured"] = statistics.median(r[label] / r["original"] for r in runs)
            cases.append(case)
            print(name, runtime, {k: case[k]["measured"] for k in ("first", "in_context")}, case["rounds"], flush=True)
    lines = [
        "# INT8 plans checked in their own network",
        "",
        f"`python bench/int8_plans_in_context.py --out {args.out}` (target {args.target}x over the original INT8, "
        f"batch {batch}, {args.threads} threads, {args.runs} runs of {args.repeats} interleaved samples; measured = "
        "median over runs of merged INT8 / original INT8 images/s within a run)",
        "",
        "| model | runtime | first plan: removed, predicted, measured (meas/pred) | rounds (removed: predicted) | "
        "plan in context: removed, predicted, measured (meas/pred) |",
        "|---|---|---|---|---|",
    ]
    for c in cases:
        f, g = c["first"], c["in_context"]
        rounds = "; ".join(f"{r['removed']}: {r['predicted_speedup']:.2f}x" for r in c["rounds"])
        lines.append(
            f"| {c['model']} | {c['runtime']} | {f['removed']}, {f['predicted']:.2f}x, {f['measured']:.2f}x "
            f"({f['measured'] / f['predicted']:.2f}) | {rounds} | {g['removed']}, {g['predicted']:.2f}x, "
            f"{g['measured']:.2f}x ({g['measured'] / g['predicted']:.2f}) |"
        )
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(args.out, text.encode())
    atomic_write_json(args.out.with_suffix(".json"), cases)
    print(text)


if __name__ == "__main__":
    main()
