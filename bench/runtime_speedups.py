"""What merging is worth in the runtime a network is deployed with: measured images/s of the original, the
BN-folded and the merged networks under eager PyTorch (NCHW and channels_last), torch.compile, ONNX Runtime and
OpenVINO, interleaved per runtime and batch size.

    python bench/runtime_speedups.py --out bench/results/runtime_speedups.md

mobilenet_v2_140 with DepthShrinker's patterns (default A, D, F) and efficientnet_lite0 with every interior block
merged DepthShrinker style ("all blocks") and every removable activation removed ("remove all"); random weights
(speed does not depend on them). Every network is checked against eager in each runtime before it is timed
(dsa.measure.runtimes). Run with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from dsa.formats.plan import ds_pattern_act_list, plan_from_act_list, remove_all_plan
from dsa.graph import analyze
from dsa.io import atomic_write_bytes, atomic_write_json
from dsa.measure.runtimes import runtime_info
from dsa.measure.timing import measure
from dsa.models import create_model, input_size
from dsa.transform.merge import bn_folded_network, merge

RUNTIMES = ("eager", "eager-channels_last", "compile", "onnxruntime", "openvino")


def networks(name: str, patterns: list[str]) -> dict[str, torch.nn.Module]:
    model = create_model(name)
    size = input_size(name)
    a = analyze(model, name, size)
    nets = {"original": model, "bn_folded": bn_folded_network(model, name, size)}
    if len(a.blocks()) == 19:  # MobileNetV2-shaped: DepthShrinker's keep lists
        plans = {f"DS-{p}": plan_from_act_list(a, ds_pattern_act_list(p)) for p in patterns}
    else:
        plans = {
            "all blocks": plan_from_act_list(a, [1] + [0] * (len(a.blocks()) - 2) + [1]),
            "remove all": remove_all_plan(a),
        }
    for label, plan in plans.items():
        nets[label] = merge(model, plan)
    return nets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", default="mobilenet_v2_140,efficientnet_lite0")
    p.add_argument("--patterns", default="A,D,F")
    p.add_argument("--batches", default="32,1")
    p.add_argument("--runtimes", default=",".join(RUNTIMES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed runs per network")
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows, results = [], []
    for name in args.models.split(","):
        nets = networks(name, args.patterns.split(","))
        size = input_size(name)
        for batch in map(int, args.batches.split(",")):
            iters = max(1, 32 // batch)  # batch 1: time 32 passes per run
            for rt in args.runtimes.split(","):
                runtime, cl = ("eager", True) if rt == "eager-channels_last" else (rt, False)
                t0 = time.perf_counter()
                res = measure(
                    nets, batch, size, "cpu", cl, args.warmup, args.repeats, iters=iters, runtime=runtime,
                    threads=args.threads,
                )  # fmt: skip
                info = runtime_info(runtime, args.threads).to_json()
                orig, folded = res["original"].images_per_s, res["bn_folded"].images_per_s
                for label, timing in res.items():
                    ips = timing.images_per_s
                    rows.append(
                        f"| {name} | {batch} | {rt} | {label} | {ips:.1f} | {ips / orig:.2f}x | {ips / folded:.2f}x |"
                    )
                    results.append({"model": name, "batch": batch, "runtime": rt, "runtime_info": info,
                                    "network": label, **timing.to_json()})  # fmt: skip
                print(f"{name} b{batch} {rt}: {time.perf_counter() - t0:.0f} s", flush=True)
    versions = {r["runtime"]: r["runtime_info"]["version"] for r in results}
    header = [
        "# Merged vs original under each runtime",
        "",
        f"`python bench/runtime_speedups.py --out {args.out} --models {args.models} --patterns {args.patterns} "
        f"--batches {args.batches} --runtimes {args.runtimes} --repeats {args.repeats}`",
        "",
        f"CPU, {args.threads} threads, {platform.processor() or platform.machine()}; random weights; median of "
        f"{args.repeats} interleaved runs per network (each of 32 images: batch 1 runs 32 passes), after "
        f"{args.warmup} warm-up; versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        "| model | batch | runtime | network | img/s | vs original | vs BN-folded |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    atomic_write_bytes(args.out, ("\n".join(header + rows) + "\n").encode())
    atomic_write_json(args.out.with_suffix(".json"), results)
    print("\n".join(header + rows))


if __name__ == "__main__":
    main()
