"""End to end (issue 7): at one speed-up target on this CPU, the default plan (every removed activation costs 1)
against a plan guided by an accuracy proxy (``dsa importance`` file), both finetuned the same way from the same
ELPV baseline (``dsa train --plan ... --distill``), merged, and timed together with the baseline in one
interleaved run (same batch, threads and input). The guided plan's target is the default plan's predicted
speed-up (which may exceed the asked target), so the guided plan is at least as fast by prediction.

    python bench/proxy_plan_e2e.py --baseline RUN/baseline --importance imp.json --target-speedup 3 \\
        --out bench/results/proxy_e2e
    python bench/proxy_plan_e2e.py ... --smoke      # 2 steps per finetune: checks the pipeline

Plans are made as ``dsa plan`` makes them: on the registry model at the profile's input size (224) with the
measured CPU profile; the finetunes run at ``--image-size`` (160, as the baseline). Restartable: finished runs
are reused. Prints a markdown table; writes e2e.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from elpv_finetune import finetune_plan

from dsa.formats.importance import load_importance
from dsa.formats.plan import load_plan
from dsa.formats.profile import load_profile
from dsa.graph import analyze
from dsa.io import atomic_write_json
from dsa.latency.evaluate import evaluate
from dsa.measure.timing import measure
from dsa.models import create_model
from dsa.networks import load_for_eval
from dsa.planner.planner import Planner


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", required=True, help="the baseline run directory (last.pt, result.json)")
    p.add_argument("--importance", required=True, nargs="+", help="one or more proxies' importance files")
    p.add_argument("--target-speedup", type=float, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--profile", default="profiles/local-cpu/efficientnet_lite0_b32_fp32_nchw.json")
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument(
        "--compare-targets",
        type=float,
        nargs="*",
        default=[3.0, 3.5, 4.0],
        help="also list the default and guided plans at these targets (planning only)",
    )
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out, baseline = Path(args.out), Path(args.baseline)
    (out / "plans").mkdir(parents=True, exist_ok=True)
    prof = load_profile(args.profile)
    model = "efficientnet_lite0"
    a = analyze(create_model(model), model, prof.input_size)
    costs = {}  # method -> (scores, default cost)
    for path in args.importance:
        method = json.loads(Path(path).read_text()).get("method", Path(path).stem)
        costs[method] = load_importance(path)
    kw = {"batch": prof.batch_size, "precision": prof.precision, "profile": prof}
    default_planner = Planner(a, **kw)
    planners = {m: Planner(a, **kw, importance=scores, default_cost=d) for m, (scores, d) in costs.items()}

    def speedup(plan) -> float:
        return evaluate(a, plan, batch=prof.batch_size, precision=prof.precision, profile=prof).speedup

    def plan_pair(target: float):
        """The default plan for ``target``, and each guided plan for the default plan's predicted speed-up: the
        default plan removes the fewest activations and may overshoot the target, and the guided plans must be
        at least as fast."""
        base = default_planner.for_target(target_speedup=target).plan
        matched = max(target, speedup(base) * (1 - 1e-9))
        return base, {m: pl.for_target(target_speedup=matched).plan for m, pl in planners.items()}

    if args.compare_targets:  # which targets give plans that differ at all (a planning-only table)
        lines = ["| target | plan | predicted speed-up | removed |", "|---:|---|---:|---|"]
        for t in args.compare_targets:
            base, guided = plan_pair(t)
            for name, plan in [("default", base), *((f"guided ({m})", g) for m, g in guided.items())]:
                same = name != "default" and plan.removed == base.removed
                lines.append(
                    f"| {t} | {name} | {speedup(plan):.2f}x | "
                    f"{'same as default' if same else f'{len(plan.removed)}: ' + ', '.join(plan.removed)} |"
                )
        (out / "plans_at_targets.md").write_text("\n".join(lines) + "\n")
    plans = {"default": out / "plans" / "default.json"}
    plans.update({f"guided ({m})": out / "plans" / f"guided_{m}.json" for m in costs})
    if not all(path.exists() for path in plans.values()):
        base, guided = plan_pair(args.target_speedup)
        for name, plan in [("default", base), *((f"guided ({m})", g) for m, g in guided.items())]:
            if not plans[name].exists():
                plan.save(plans[name])
    nets = {"baseline": load_for_eval(baseline / "last.pt").module}
    results = {}
    for name, path in plans.items():
        run = out / plans[name].stem
        if not (run / "result.json").exists():
            finetune_plan(
                run,
                baseline / "last.pt",
                path,
                model=model,
                epochs=args.epochs,
                lr=args.lr,
                image_size=args.image_size,
                smoke=args.smoke,
            )
        results[name] = json.loads((run / "result.json").read_text())
        nets[name] = load_for_eval(run / "merged.pt").module
    repeats = 2 if args.smoke else args.repeats
    timing = measure(nets, 32, args.image_size, "cpu", False, warmup=2, repeats=repeats)
    base = json.loads((baseline / "result.json").read_text())
    b_ips = timing["baseline"].images_per_s
    rows = []
    for name, path in plans.items():
        plan = json.loads(path.read_text())
        predicted = evaluate(a, load_plan(path), batch=prof.batch_size, precision=prof.precision, profile=prof)
        acc = results[name]["accuracy"]
        rows.append(
            {
                "plan": name,
                "removed": plan["removed"],
                "predicted_speedup": predicted.speedup,
                "measured_speedup": timing[name].images_per_s / b_ips,
                "images_per_s": timing[name].images_per_s,
                "test_top1": acc["test"]["merged"]["top1"],
                "val_top1": acc["val"]["merged"]["top1"],
                "proxy_costs": {m: sum(sc.get(r, d) for r in plan["removed"]) for m, (sc, d) in costs.items()},
            }
        )
    atomic_write_json(
        out / "e2e.json",
        {
            "target_speedup": args.target_speedup,
            "importance": args.importance,
            "methods": list(costs),
            "epochs": args.epochs,
            "image_size": args.image_size,
            "timing": {"batch": 32, "threads": args.threads, "layout": "NCHW", "repeats": repeats},
            "baseline": {
                "images_per_s": b_ips,
                "test_top1": base["accuracy"]["test"]["top1"],
                "val_top1": base["accuracy"]["val"]["top1"],
            },
            "plans": rows,
        },
    )
    print(
        f"efficientnet_lite0 on ELPV ({args.image_size} px), target {args.target_speedup}x on this CPU; each plan "
        f"finetuned {args.epochs} epochs with KD (lr {args.lr}); timed in one interleaved run: batch 32, "
        f"{args.threads} threads, NCHW, median of {repeats}\n"
    )
    print("| network | removed activations | predicted | measured speed-up | test top-1 | val top-1 |")
    print("|---|---|---:|---:|---:|---:|")
    print(
        f"| baseline | - | 1.00x | 1.00x ({b_ips:.1f} img/s) | {base['accuracy']['test']['top1']:.2f}% | "
        f"{base['accuracy']['val']['top1']:.2f}% |"
    )
    for r in rows:
        print(
            f"| {r['plan']} | {len(r['removed'])}: {', '.join(r['removed'])} | {r['predicted_speedup']:.2f}x | "
            f"{r['measured_speedup']:.2f}x | {r['test_top1']:.2f}% | {r['val_top1']:.2f}% |"
        )


if __name__ == "__main__":
    main()
