"""Measured throughput of a network and its merged forms (DepthShrinker patterns A-F for MobileNetV2,
every block merged otherwise), on the CPU or a CUDA GPU.

For each layout (and precision) all networks are timed round-robin on the same input in one run, so
machine noise hits them alike; figures are medians of --repeats timed forward passes.

    python bench/merge_throughput.py --batch-size 32 --repeats 5 --out bench/results/merge_cpu.json
    python bench/merge_throughput.py --device cuda --batch-size 128 --precisions fp32,fp16 \\
        --protocol paper --out OUT/throughput_paper.json      # eager, NCHW, 50 warm-up + 30 timed passes
    python bench/merge_throughput.py --device cuda --batch-size 128 --precisions fp32,fp16 \\
        --protocol tuned --out OUT/throughput_tuned.json      # cudnn.benchmark and channels_last
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from dsa.formats.plan import DS_PATTERNS, ds_pattern_act_list, plan_from_act_list
from dsa.graph import analyze
from dsa.measure.profiler import TORCH_DTYPES
from dsa.measure.timing import measure
from dsa.models import create_model
from dsa.models import input_size as default_size
from dsa.transform.merge import conv_count, merge


def merged_networks(name: str, model, size: int) -> dict:
    analysis = analyze(model, name, size)
    nets = {"original": model}
    blocks = analysis.blocks()
    if len(blocks) == 19:  # MobileNetV2: DepthShrinker's released patterns
        plans = {f"DS-{k}": ds_pattern_act_list(k) for k in DS_PATTERNS}
    else:  # every block merged (stem and head kept)
        plans = {"all-blocks": [1] + [0] * (len(blocks) - 2) + [1]}
    for label, keep in plans.items():
        nets[label] = merge(model, plan_from_act_list(analysis, keep))
    return nets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenet_v2_140")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None, help="timed passes (default 5; 30 with a protocol)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up passes (default 1; 50 with a protocol)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--precisions", default="fp32")
    p.add_argument("--layouts", default="nchw,channels_last")
    p.add_argument(
        "--protocol",
        choices=["custom", "paper", "tuned"],
        default="custom",
        help="paper: NCHW, cudnn.benchmark off, 50 warm-up + 30 timed; tuned: cudnn.benchmark on, "
        "channels_last, 50 + 30",
    )
    p.add_argument("--out", type=Path, default=Path("bench/results/merge_cpu.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    paper_like = args.protocol != "custom"
    args.warmup = args.warmup if args.warmup is not None else (50 if paper_like else 1)
    args.repeats = args.repeats if args.repeats is not None else (30 if paper_like else 5)
    if paper_like:
        args.layouts = "nchw" if args.protocol == "paper" else "channels_last"
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = args.protocol == "tuned"

    size = args.input_size or default_size(args.model)
    model = create_model(args.model)
    nets = merged_networks(args.model, model, size)
    report = {
        "model": args.model,
        "device": args.device,
        "batch_size": args.batch_size,
        "input_size": size,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "protocol": args.protocol,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.machine(),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "convs": {k: conv_count(v) for k, v in nets.items()},
        "runs": {},
    }
    rows = []
    for precision in args.precisions.split(","):
        for layout in args.layouts.split(","):
            t0 = time.time()
            res = measure(
                nets,
                args.batch_size,
                size,
                args.device,
                layout == "channels_last",
                args.warmup,
                args.repeats,
                dtype=TORCH_DTYPES[precision],
            )
            base = res["original"].images_per_s
            key = f"{precision}/{layout}"
            report["runs"][key] = {k: {**v.to_json(), "speedup": v.images_per_s / base} for k, v in res.items()}
            rows.append(key)
            print(f"{key}: {time.time() - t0:.0f} s", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print("| network | convs | " + " | ".join(f"{k} img/s (min-max) | {k} speed-up" for k in rows) + " |")
    print("|---|---:|" + "---:|---:|" * len(rows))
    for name in nets:
        cells = []
        for k in rows:
            r = report["runs"][k][name]
            cells += [
                f"{r['images_per_s']:.1f} ({r['images_per_s_min']:.1f}-{r['images_per_s_max']:.1f})",
                f"{r['speedup']:.2f}x",
            ]
        print(f"| {name} | {report['convs'][name]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
