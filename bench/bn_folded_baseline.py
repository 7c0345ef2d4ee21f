"""What BN folding alone gives, next to each plan's speed-up: predicted (V100 roofline, uncalibrated) and
measured on this CPU (eager PyTorch, interleaved), for a plan that removes nothing and DepthShrinker's A-F.

    python bench/bn_folded_baseline.py --out bench/results/bn_folded_baseline.md

"Nothing removed" is the DepthShrinker keep list of all ones (every activation kept): any speed-up it shows
is BN folding, which every deployment gets anyway; a plan's gain is its speed-up over BN folding alone.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from dsa.formats.plan import bn_folded_plan, ds_pattern_act_list, plan_from_act_list
from dsa.graph import analyze
from dsa.io import atomic_write_bytes
from dsa.latency.evaluate import evaluate
from dsa.measure.timing import measure
from dsa.models import create_model
from dsa.transform.merge import merge


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--gpu", default="v100")
    p.add_argument("--batch-size", type=int, default=32, help="measured batch on this CPU")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--patterns", default="A,D,F")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    name = "mobilenet_v2_140"
    model = create_model(name)
    a = analyze(model, name)
    plans = {"nothing removed": plan_from_act_list(a, [1] * len(a.blocks()))}
    plans |= {f"DS-{x}": plan_from_act_list(a, ds_pattern_act_list(x)) for x in args.patterns.split(",")}

    rows = ["| plan | predicted speed-up | BN folding alone | over BN folding | measured speed-up | BN folding alone "
            "| over BN folding |", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    nets = {"original": model, "BN folded": merge(copy.deepcopy(model), bn_folded_plan(a))}
    nets |= {k: merge(copy.deepcopy(model), v) for k, v in plans.items()}
    res = measure(nets, args.batch_size, a.input_size, "cpu", False, warmup=2, repeats=args.repeats)
    orig, folded = res["original"].images_per_s, res["BN folded"].images_per_s
    for k, plan in plans.items():
        ev = evaluate(a, plan, args.gpu, 128, "fp32")
        m = res[k].images_per_s
        rows.append(
            f"| {k} | {ev.speedup:.2f}x | {ev.bn_folded_speedup:.2f}x | {ev.speedup_over_bn_folded:.2f}x "
            f"| {m / orig:.2f}x | {folded / orig:.2f}x | {m / folded:.2f}x |"
        )
    head = (
        f"{name}; predicted on {args.gpu} (batch 128, fp32, uncalibrated roofline); measured on this CPU: eager "
        f"PyTorch, NCHW, batch {args.batch_size}, {torch.get_num_threads()} threads, median of {args.repeats} "
        f"interleaved runs in one process (original {orig:.1f} img/s, BN folded {folded:.1f} img/s).\n\n"
    )
    atomic_write_bytes(args.out, (head + "\n".join(rows) + "\n").encode())
    print(head + "\n".join(rows))


if __name__ == "__main__":
    main()
