"""Finetuned networks on ELPV in float32 and INT8: test accuracy of each form and its measured speed under a runtime.

    python bench/elpv_int8.py --baseline RUN/baseline/last.pt --merged "label=RUN/plan/merged.pt" ... \\
        --runtime openvino --out bench/results/elpv_int8

Each network (the finetuned baseline and every merged network) is quantized post-training with the runtime's own
tooling (dsa.train.evaluate.quantize_checkpoint: 300 ELPV train images for calibration, checked on 64 val
images), and both forms are evaluated on the ELPV test split. Then all of them, float32 and INT8, are timed under
the runtime at the networks' image size, batch ``--batch``, interleaved, in three runs; ratios are within a run
(median and range over runs). Run with nothing else on the machine. Writes OUT/table.md and OUT/results.json.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from dsa.io import atomic_write_bytes, atomic_write_json
from dsa.measure.runtimes import prepare, prepare_quantized, runtime_info
from dsa.measure.timing import round_robin
from dsa.networks import load_for_eval
from dsa.train.evaluate import quantize_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", type=Path, required=True)
    p.add_argument("--merged", action="append", default=[], help="label=path of a merged checkpoint (repeatable)")
    p.add_argument("--runtime", default="openvino")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    nets = {"baseline": args.baseline} | {m.split("=", 1)[0]: Path(m.split("=", 1)[1]) for m in args.merged}
    rows, runners = {}, {}
    size = None
    for label, path in nets.items():
        q, report = quantize_checkpoint(path, args.runtime, "elpv")
        size = report["image_size"]
        module = load_for_eval(path).module.float().eval()
        x = torch.randn(args.batch, 3, size, size)
        runners[f"{label} fp32"] = prepare(args.runtime, module, x, args.threads)
        runners[f"{label} int8"] = prepare_quantized(q, args.threads)
        rows[label] = report
        print(f"{label}: fp32 {report['fp32']['top1']:.2f}% / INT8 {report['int8']['top1']:.2f}%", flush=True)
    x = torch.randn(args.batch, 3, size, size)
    runs = []
    dev = torch.device("cpu")
    with torch.inference_mode():
        for _ in range(args.runs):
            samples = round_robin(runners, x, dev, 1, args.repeats)
            runs.append({k: statistics.median(v) for k, v in samples.items()})

    def ratio(num: str, den: str) -> str:
        r = [run[num] / run[den] for run in runs]
        return f"{statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})"

    base = rows["baseline"]["fp32"]["top1"]
    lines = [
        f"# ELPV networks in float32 and INT8 under {args.runtime}",
        "",
        f"`python bench/elpv_int8.py --baseline {args.baseline} "
        + " ".join(f"--merged {m}" for m in args.merged)
        + f" --runtime {args.runtime} --out {args.out}`",
        "",
        f"efficientnet_lite0 finetuned on ELPV, {size} px, test split ({rows['baseline']['fp32']['n']} images). "
        f"INT8: {rows['baseline']['quantization']['tool']} {rows['baseline']['quantization']['version']}, "
        f"calibrated on {rows['baseline']['quantization']['calibration_images']} train images. Speed: "
        f"{args.runtime} {runtime_info(args.runtime, args.threads).version}, batch {args.batch}, {args.threads} "
        f"threads, every network in both forms interleaved, {args.runs} runs of {args.repeats} passes (median of "
        "a run; ratios within a run, median and range over runs).",
        "",
        "| network | removed | test top-1 fp32 | test top-1 INT8 | INT8 vs fp32 (points) | vs baseline fp32 "
        "(points): fp32 / INT8 | speed vs baseline fp32: fp32 / INT8 | INT8 vs baseline INT8 |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for label, r in rows.items():
        f32, i8 = r["fp32"]["top1"], r["int8"]["top1"]
        lines.append(
            f"| {label} | {r['plan_removed'] or 0} | {f32:.2f}% | {i8:.2f}% | {i8 - f32:+.2f} | "
            f"{f32 - base:+.2f} / {i8 - base:+.2f} | {ratio(f'{label} fp32', 'baseline fp32')} / "
            f"**{ratio(f'{label} int8', 'baseline fp32')}** | "
            + ("-" if label == "baseline" else f"**{ratio(f'{label} int8', 'baseline int8')}**")
            + " |"
        )
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "results.json", {"networks": rows, "runs_images_per_s": runs})
    atomic_write_bytes(args.out / "table.md", table.encode())
    print(table)


if __name__ == "__main__":
    main()
