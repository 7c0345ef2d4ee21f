"""Merge, then quantize: measured images/s of the original and merged networks in float32 and INT8 under ONNX Runtime
and OpenVINO, all networks of a (model, runtime, batch) interleaved in one run, three runs.

    python bench/int8_speedups.py --out bench/results/int8_speedups.md

Networks: the original; DepthShrinker's DS-F (mobilenet_v2_140) or all-blocks pattern (efficientnet_lite0); the
planner's fastest plan for that runtime in float32 (from bench/results/runtime_plans.json); and, where the committed
INT8 profile (batch 32) exists, the planner's plans for INT8 (2x over the original INT8, and the fastest). Each in
float32 and in INT8 quantized post-training with the runtime's own tooling (dsa.quantize: ONNX Runtime static QDQ
U8S8 per channel, NNCF for OpenVINO), calibrated on 32 random images; random weights with BN statistics settled on
random images (dsa.quantize.settle_random_weights: speed does not depend on the weights, INT8 needs
non-degenerate ranges). Each network is quantized once, checked against its float32 form, then timed: per run,
one warm-up pass each, then ``--repeats`` samples round robin; a ratio is taken within a run, the table shows the
median over runs (and the range). Run with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from dsa.errors import PlanError
from dsa.formats.plan import ds_pattern_act_list, plan_from_act_list, plan_from_json
from dsa.formats.profile import load_profile, profile_path
from dsa.graph import analyze
from dsa.io import atomic_write_bytes, atomic_write_json
from dsa.latency.costs import ProfileCosts
from dsa.latency.evaluate import evaluate
from dsa.measure.runtimes import prepare, runtime_info
from dsa.measure.timing import round_robin
from dsa.models import create_model, input_size
from dsa.planner.planner import solve_plan
from dsa.quantize import scheme, settle_random_weights
from dsa.transform.merge import merge

ROOT = Path(__file__).resolve().parents[1]
PLANS = ROOT / "bench/results/runtime_plans.json"


def plans_for(name: str, runtime: str, a) -> tuple[dict, dict]:
    """The DepthShrinker pattern, the planner's fastest fp32 plan for ``runtime`` and, where the committed INT8
    profile (batch 32) exists, its 2x and fastest INT8 plans; and the INT8 plans' predicted speed-ups."""
    if len(a.blocks()) == 19:
        out = {"DS-F": plan_from_act_list(a, ds_pattern_act_list("F"))}
    else:
        out = {"DS all blocks": plan_from_act_list(a, [1] + [0] * (len(a.blocks()) - 2) + [1])}
    for row in json.loads(PLANS.read_text()):
        if row["model"] == name and row["runtime"] == runtime and row["network"] == "plan fastest":
            out["plan (fastest, fp32-planned)"] = plan_from_json(row["plan"], str(PLANS))
    predicted = {}
    path = profile_path("local-cpu", name, 32, "int8", "nchw", ROOT / "profiles", runtime)
    if path.is_file():
        costs = ProfileCosts(a, load_profile(path))
        int8_plans = {"plan for INT8, 2x": None, "plan for INT8 (fastest)": None}
        try:
            int8_plans["plan for INT8, 2x"] = solve_plan(a, target_speedup=2.0, costs=costs).plan
        except PlanError:  # 2x unreachable in INT8 under this runtime: the fastest plan only
            del int8_plans["plan for INT8, 2x"]
        int8_plans["plan for INT8 (fastest)"] = solve_plan(
            a, max_accuracy_cost=float(len(a.removable)), costs=costs
        ).plan
        for label, plan in int8_plans.items():
            out[label] = plan
            predicted[label] = evaluate(a, plan, costs=costs, bn_folded=False).speedup
    return out, predicted


def one_case(name: str, runtime: str, batch: int, args) -> dict:
    torch.manual_seed(0)
    model = create_model(name).eval()
    size = input_size(name)
    settle_random_weights(model, size)
    a = analyze(model, name, size)
    plans, predicted = plans_for(name, runtime, a)
    nets = {"original": model} | {k: merge(model, p) for k, p in plans.items()}
    removed = {"original": 0} | {k: len(p.removed) for k, p in plans.items()}
    x = torch.randn(batch, 3, size, size)
    calib = torch.randn(32, 3, size, size, generator=torch.Generator().manual_seed(1))
    prepared, quant_s = {}, {}
    for label, net in nets.items():
        for precision in ("fp32", "int8"):
            t0 = time.perf_counter()
            prepared[(label, precision)] = prepare(
                runtime, net, x, args.threads, int8=precision == "int8", calibration=calib
            )
            quant_s[f"{label} {precision}"] = time.perf_counter() - t0
    dev = torch.device("cpu")
    iters = max(1, 32 // batch)  # each timed sample covers 32 images: batch 1 samples are 32 passes
    runs: list[dict] = []
    with torch.inference_mode():
        for _ in range(args.runs):
            samples = round_robin(prepared, x, dev, 1, args.repeats, iters)
            runs.append({f"{k[0]} {k[1]}": statistics.median(v) for k, v in samples.items()})
    return {
        "model": name,
        "runtime": runtime_info(runtime, args.threads).to_json(),
        "quantization": scheme(runtime),
        "batch_size": batch,
        "passes_per_sample": iters,
        "input_size": size,
        "removed": removed,
        "predicted_int8_speedup": predicted,  # INT8 plans: over the original INT8, from the batch-32 INT8 profile
        "plans": {k: p.to_json() for k, p in plans.items()},
        "runs_images_per_s": runs,
        "prepare_s": quant_s,
    }


def ratio(case: dict, num: str, den: str) -> tuple[float, float, float]:
    r = [run[num] / run[den] for run in case["runs_images_per_s"]]
    return statistics.median(r), min(r), max(r)


def table(cases: list[dict], args) -> str:
    lines = [
        "# Merge, then quantize: float32 and INT8 under ONNX Runtime and OpenVINO",
        "",
        f"`python bench/int8_speedups.py --out {args.out}` on {platform.processor() or platform.machine()}, "
        f"{args.threads} threads, {args.runs} runs of {args.repeats} interleaved samples per network (a sample: "
        "32 images, i.e. 1 pass at batch 32, 32 passes at batch 1; median of a run; the table: median over runs "
        "and the range of the run medians). Random weights, BN statistics settled; INT8 calibrated on 32 random "
        "images. Every ratio is within one run.",
        "",
        "| model | runtime | batch | network | removed | fp32 img/s | INT8 img/s | INT8 gain | vs original fp32: "
        "fp32 / INT8 | merged INT8 vs original INT8: measured (predicted) |",
        "|---|---|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for c in cases:
        med = {k: statistics.median(run[k] for run in c["runs_images_per_s"]) for k in c["runs_images_per_s"][0]}
        for label, n in c["removed"].items():
            gain = ratio(c, f"{label} int8", f"{label} fp32")
            fp = ratio(c, f"{label} fp32", "original fp32")
            q = ratio(c, f"{label} int8", "original fp32")
            vs8 = ratio(c, f"{label} int8", "original int8")
            lines.append(
                f"| {c['model']} | {c['runtime']['name']} | {c['batch_size']} | {label} | {n} | "
                f"{med[label + ' fp32']:.1f} | {med[label + ' int8']:.1f} | {gain[0]:.2f}x | "
                f"{fp[0]:.2f}x / **{q[0]:.2f}x** ({q[1]:.2f}-{q[2]:.2f}) | "
                + ("-" if label == "original" else f"**{vs8[0]:.2f}x** ({vs8[1]:.2f}-{vs8[2]:.2f})")
                + (
                    f" (pred. {c['predicted_int8_speedup'][label]:.2f}x)"
                    if label in c["predicted_int8_speedup"]
                    else ""
                )
                + " |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", default="mobilenet_v2_140,efficientnet_lite0")
    p.add_argument("--runtimes", default="openvino,onnxruntime")
    p.add_argument("--batches", default="32,1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed samples per network and run")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cases = []
    for name in args.models.split(","):
        for runtime in args.runtimes.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                t0 = time.perf_counter()
                cases.append(one_case(name, runtime, batch, args))
                print(f"{name} {runtime} batch {batch}: {time.perf_counter() - t0:.0f} s", flush=True)
                atomic_write_json(args.out.with_suffix(".json"), cases)
    atomic_write_bytes(args.out, table(cases, args).encode())
    print(table(cases, args))


if __name__ == "__main__":
    main()
