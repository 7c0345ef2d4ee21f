"""Issue 17 measured on this CPU under OpenVINO: the planner's plans in version 1's segment space (a residual block
only starts a segment), in the wider one (blocks anywhere), and in the wider one with --prune-convs -- the fastest
plan of each (everything removable removed; with pruning, everything prunable pruned too) and the plan for one
predicted speed-up target -- merged and timed under OpenVINO, interleaved with the original and its BN-folded
copy (the baseline a user has without dsa). Priced by the committed OpenVINO profiles (with the wider space's
merged convs and the pruned variants added by bench/wider_segments.py). Random weights (speed does not depend on
them); the fastest pruned plans prune every prunable conv, which no finetuning recovers: they bound speed only.

    python bench/wider_space_speedups.py --out bench/results/wider_space_speedups.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
from pathlib import Path

import torch

from dsa.formats.profile import load_profile, profile_path
from dsa.graph import analyze
from dsa.io import atomic_write_bytes, atomic_write_json
from dsa.latency.costs import ProfileCosts
from dsa.latency.evaluate import evaluate
from dsa.measure.timing import measure
from dsa.models import create_model, input_size
from dsa.planner.planner import Planner
from dsa.transform.merge import bn_folded_network, merge

SPACES = {
    "units first (v1)": {"units_anywhere": False},
    "units anywhere": {},
    "units anywhere + --prune-convs": {"prune_convs": True},
}


def _runs(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}x" for v in values)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", default="mobilenet_v2_140,efficientnet_lite0")
    p.add_argument("--runtime", default="openvino")
    p.add_argument("--target", type=float, default=1.3, help="predicted speed-up target over the original")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed repeats per run")
    p.add_argument("--runs", type=int, default=3, help="runs (each interleaves every network); the median is shown")
    p.add_argument("--profiles", type=Path, default=Path("profiles"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows, results = [], []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = create_model(name).eval()
        size = input_size(name)
        a = analyze(model, name, size)
        prof = load_profile(profile_path("local-cpu", name, args.batch, "fp32", "nchw", args.profiles, args.runtime))
        costs = ProfileCosts(a, prof)
        plans = {}
        for space, options in SPACES.items():
            planner = Planner(a, costs=costs, **options)
            plans[f"fastest, {space}"] = planner.fastest()
            plans[f"{args.target:g}x, {space}"] = planner.for_target(target_speedup=args.target)
        nets = {"original": model, "BN folded": bn_folded_network(model, name, size)}
        nets |= {k: merge(model, r.plan) for k, r in plans.items()}
        runs = [
            measure(nets, args.batch, size, "cpu", False, 1, args.repeats, runtime=args.runtime, threads=args.threads)
            for _ in range(args.runs)
        ]
        speedups = {k: [res[k].images_per_s / res["original"].images_per_s for res in runs] for k in nets}
        over_folded = {k: [res[k].images_per_s / res["BN folded"].images_per_s for res in runs] for k in nets}
        folded = speedups["BN folded"]
        rows.append(
            f"| {name} | BN folded | - | - | - | 1.00x | {_runs(folded)} | {statistics.median(folded):.2f}x | - |"
        )
        for label, r in plans.items():
            pred = evaluate(a, r.plan, costs=costs, bn_folded=False).speedup
            meas = statistics.median(speedups[label])
            rows.append(
                f"| {name} | {label} | {len(r.plan.removed)} | {len(r.plan.pruned)} | {r.accuracy_cost:g} | "
                f"{pred:.2f}x | {_runs(speedups[label])} | {meas:.2f}x | {statistics.median(over_folded[label]):.2f}x |"
            )
            results.append({"model": name, "network": label, "removed": len(r.plan.removed),
                            "pruned": list(r.plan.pruned), "accuracy_cost": r.accuracy_cost,
                            "predicted_speedup": pred, "measured_speedup": meas, "measured_runs": speedups[label],
                            "measured_over_bn_folded": statistics.median(over_folded[label]),
                            "plan": r.plan.to_json(), "timing": [res[label].to_json() for res in runs],
                            "original": [res["original"].to_json() for res in runs]})  # fmt: skip
        print(f"{name}: done", flush=True)
    header = [
        "# The wider search space, measured under OpenVINO (issue 17)",
        "",
        f"`python bench/wider_space_speedups.py --out {args.out} --models {args.models} --target {args.target:g} "
        f"--runs {args.runs} --repeats {args.repeats}`",
        "",
        f"CPU ({platform.processor() or platform.machine()}), {args.runtime}, {args.threads} threads, batch "
        f"{args.batch}, fp32, NCHW; priced by the committed {args.runtime} profiles; {args.runs} runs, each the median "
        f"of {args.repeats} interleaved repeats of every network; random weights. Accuracy cost: the default proxy "
        "(1 per removed activation or pruned conv, a pruned block its convs).",
        "",
        "| model | plan | removed activations | pruned | accuracy cost | predicted | measured (vs original), per run "
        "| median | median vs BN folded |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    atomic_write_bytes(args.out, ("\n".join(header + rows) + "\n").encode())
    atomic_write_json(args.out.with_suffix(".json"), results)
    print("\n".join(header + rows))


if __name__ == "__main__":
    main()
