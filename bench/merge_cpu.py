"""Measured CPU throughput of mobilenet_v2_140: original vs merged DepthShrinker patterns A-F.

Each layout is one run in which all seven networks are timed round-robin on the same input (so machine
noise hits them alike); figures are medians of --repeats timed forward passes.

    python bench/merge_cpu.py --batch-size 32 --repeats 5 --out bench/results/merge_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from dsa.bench import measure
from dsa.graph import analyze
from dsa.merge import conv_count, merge
from dsa.models import create_model
from dsa.plan import DS_PATTERNS, ds_pattern_act_list, plan_from_act_list


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenet_v2_140")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--layouts", default="nchw,channels_last")
    p.add_argument("--out", type=Path, default=Path("bench/results/merge_cpu.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = create_model(args.model)
    analysis = analyze(model, args.model)
    nets = {"original": model}
    convs = {"original": conv_count(model)}
    for letter in DS_PATTERNS:
        nets[f"DS-{letter}"] = merge(model, plan_from_act_list(analysis, ds_pattern_act_list(letter)))
        convs[f"DS-{letter}"] = conv_count(nets[f"DS-{letter}"])
    report = {
        "model": args.model,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "convs": convs,
        "layouts": {},
    }
    for layout in args.layouts.split(","):
        t0 = time.time()
        res = measure(nets, args.batch_size, 224, "cpu", layout == "channels_last", args.warmup, args.repeats)
        base = res["original"].images_per_s
        report["layouts"][layout] = {k: {**v.to_json(), "speedup": v.images_per_s / base} for k, v in res.items()}
        print(f"{layout}: {time.time() - t0:.0f} s", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    layouts = list(report["layouts"])
    print("| network | convs | " + " | ".join(f"{lay} img/s (min-max) | {lay} speed-up" for lay in layouts) + " |")
    print("|---|---:|" + "---:|---:|" * len(layouts))
    for name in nets:
        cells = []
        for lay in layouts:
            r = report["layouts"][lay][name]
            cells += [
                f"{r['images_per_s']:.1f} ({r['images_per_s_min']:.1f}-{r['images_per_s_max']:.1f})",
                f"{r['speedup']:.2f}x",
            ]
        print(f"| {name} | {convs[name]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
