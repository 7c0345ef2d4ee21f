"""Plans made for a runtime, measured in it: for ONNX Runtime and OpenVINO, the planner (priced by the committed
profile taken under that runtime) solves three targets -- two speed-ups over the original as that runtime runs
it, and the fastest plan -- and every plan is merged and timed under the runtime, interleaved with the original
and DepthShrinker's patterns (mobilenet_v2_140: A-F; efficientnet_lite0: all blocks, remove all).

    python bench/runtime_plans.py --out bench/results/runtime_plans.md

Reports predicted vs measured speed-up per plan, and the removed activations of each plan against the cheapest
DepthShrinker pattern that reaches at least the plan's measured speed-up in the same run. The accuracy proxy is
the default one (every removed activation costs 1), so "least accuracy cost" = "fewest activations removed".
Random weights (speed does not depend on them). Run with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from dsa.formats.plan import ds_pattern_act_list, plan_from_act_list, remove_all_plan
from dsa.formats.profile import load_profile, profile_path
from dsa.graph import analyze
from dsa.io import atomic_write_bytes, atomic_write_json
from dsa.latency.costs import ProfileCosts
from dsa.latency.evaluate import evaluate
from dsa.measure.runtimes import runtime_info
from dsa.measure.timing import measure
from dsa.models import create_model, input_size
from dsa.planner.planner import solve_plan
from dsa.transform.merge import merge


def patterns(a) -> dict:
    if len(a.blocks()) == 19:  # MobileNetV2-shaped: DepthShrinker's keep lists
        return {f"DS-{p}": plan_from_act_list(a, ds_pattern_act_list(p)) for p in "ABCDEF"}
    return {
        "DS all blocks": plan_from_act_list(a, [1] + [0] * (len(a.blocks()) - 2) + [1]),
        "remove all": remove_all_plan(a),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", default="mobilenet_v2_140,efficientnet_lite0")
    p.add_argument("--runtimes", default="onnxruntime,openvino")
    p.add_argument("--targets", default="1.2,1.35", help="speed-up targets; the fastest plan is always added")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed runs per network")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--profiles", type=Path, default=Path("profiles"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows, results = [], []
    for name in args.models.split(","):
        model = create_model(name)
        size = input_size(name)
        a = analyze(model, name, size)
        for rt in args.runtimes.split(","):
            prof = load_profile(profile_path("local-cpu", name, args.batch, "fp32", "nchw", args.profiles, rt))
            costs = ProfileCosts(a, prof)
            plans = dict(patterns(a))
            for t in map(float, args.targets.split(",")):
                plans[f"plan {t:g}x"] = solve_plan(a, target_speedup=t, costs=costs).plan
            plans["plan fastest"] = solve_plan(a, max_accuracy_cost=float(len(a.removable)), costs=costs).plan
            nets = {"original": model, **{k: merge(model, v) for k, v in plans.items()}}
            res = measure(
                nets, args.batch, size, "cpu", False, args.warmup, args.repeats, runtime=rt, threads=args.threads
            )
            orig = res["original"].images_per_s
            measured = {k: res[k].images_per_s / orig for k in plans}
            for label, plan in plans.items():
                pred = evaluate(a, plan, costs=costs, bn_folded=False).speedup
                n = len(plan.removed)
                cheapest = ""
                if label.startswith("plan"):
                    reach = [(len(plans[d].removed), d) for d in plans if not d.startswith("plan")]
                    reach = [(k, d) for k, d in reach if measured[d] >= measured[label]]
                    cheapest = f"{min(reach)[1]} ({min(reach)[0]})" if reach else "none reaches it"
                rows.append(
                    f"| {name} | {rt} | {label} | {n} | {pred:.2f}x | {measured[label]:.2f}x | "
                    f"{measured[label] / pred:.2f} | {cheapest} |"
                )
                results.append({"model": name, "runtime": rt, "runtime_info": runtime_info(rt, args.threads).to_json(),
                                "network": label, "removed": n, "predicted_speedup": pred,
                                "measured_speedup": measured[label], "plan": plan.to_json(),
                                "timing": res[label].to_json(), "original": res["original"].to_json()})  # fmt: skip
            print(f"{name} {rt}: done", flush=True)
    header = [
        "# Plans for a runtime, measured in it",
        "",
        f"`python bench/runtime_plans.py --out {args.out} --models {args.models} --runtimes {args.runtimes} "
        f"--targets {args.targets} --batch {args.batch} --repeats {args.repeats}`",
        "",
        f"CPU ({platform.processor() or platform.machine()}), {args.threads} threads, batch {args.batch}; priced by "
        f"the profiles under {args.profiles}/local-cpu/ taken under each runtime; measured under the same runtime, "
        f"median of {args.repeats} interleaved runs per network after {args.warmup} warm-up; random weights.",
        "",
        "| model | runtime | network | removed activations | predicted | measured | measured / predicted | "
        "cheapest DS pattern reaching it (removed) |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    atomic_write_bytes(args.out, ("\n".join(header + rows) + "\n").encode())
    atomic_write_json(args.out.with_suffix(".json"), results)
    print("\n".join(header + rows))


if __name__ == "__main__":
    main()
