"""The planner against DepthShrinker's released MobileNetV2-1.4 patterns A-F, with the same cost model and the
same accuracy proxy (each removed activation costs 1): at each pattern's predicted speed-up, how many
activations does the planner need to remove, per activation and per block?

    python bench/plan_vs_ds.py --gpu v100 --batch-size 128 --precision fp32
"""

from __future__ import annotations

import argparse

from dsa.formats.plan import DS_PATTERNS, ds_pattern_act_list, plan_from_act_list
from dsa.graph import analyze
from dsa.latency.costs import plan_ms
from dsa.models import create_model
from dsa.planner.planner import Planner


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", default="v100")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", default="fp32")
    args = p.parse_args()
    a = analyze(create_model("mobilenet_v2_140"), "mobilenet_v2_140", 224)
    planners = {
        g: Planner(a, args.gpu, args.batch_size, args.precision, granularity=g) for g in ("activation", "block")
    }
    base = planners["activation"]
    print(
        f"mobilenet_v2_140 on {base.device}, {args.precision}, batch {args.batch_size}, {base.costs.source}; "
        f"original {base.baseline_ms:.2f} ms = {args.batch_size / base.baseline_ms * 1e3:.0f} img/s"
    )
    print()
    print(
        "| pattern | pattern removes | predicted speed-up | planner removes, per activation (speed-up) "
        "| planner removes, per block (speed-up) | planner's keep list (per block) |"
    )
    print("|---|---:|---:|---:|---:|---|")
    for letter in DS_PATTERNS:
        plan = plan_from_act_list(a, ds_pattern_act_list(letter))
        speedup = base.baseline_ms / plan_ms(a, plan, base.costs)
        act = planners["activation"].for_target(target_speedup=speedup)
        blk = planners["block"].for_target(target_speedup=speedup)
        print(
            f"| {letter} | {len(plan.removed)} | {speedup:.2f}x | {len(act.removed)} ({act.speedup:.2f}x) "
            f"| {len(blk.removed)} ({blk.speedup:.2f}x) | {''.join(map(str, blk.act_list))} |"
        )
    top = {g: pl.fastest() for g, pl in planners.items()}
    print(
        f"| fastest plan | | | {len(top['activation'].removed)} ({top['activation'].speedup:.2f}x) "
        f"| {len(top['block'].removed)} ({top['block'].speedup:.2f}x) | {''.join(map(str, top['block'].act_list))} |"
    )


if __name__ == "__main__":
    main()
