"""Are merged convs as fast inside the merged network as standalone? The runtime profiles time every candidate
segment's merged conv as a standalone graph; this runs the merged network under the runtime's own profiler and
compares each merged segment's node with its standalone time from the committed profile (same batch, threads).

    python bench/segments_in_network.py --out bench/results/segments_in_network.md

The merged network's nodes are matched to the planned network's convs by execution order (one conv node per
merged segment or kept conv, as the ONNX export of the merged network has them).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from dsa.formats.plan import load_plan
from dsa.formats.profile import load_profile, profile_path
from dsa.graph import analyze
from dsa.io import atomic_write_bytes
from dsa.ir import signature_of
from dsa.latency.ops import planned_ops
from dsa.measure.runtimes import node_times
from dsa.models import create_model, input_size
from dsa.transform.merge import merge

PLANS = {
    "mobilenet_v2_140": "profiles/local-cpu/mobilenet_v2_140_ds-f.plan.json",
    "efficientnet_lite0": "profiles/local-cpu/efficientnet_lite0_all-blocks.plan.json",
}
CONV_NODES = {"Conv", "Convolution", "GroupConvolution"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        "# Merged convs inside the merged network vs standalone",
        "",
        f"`python bench/segments_in_network.py --out {args.out}` (batch {args.batch}, {args.threads} threads, median "
        f"of {args.repeats} profiled runs; standalone times from the committed profiles)",
        "",
        "| model | plan | runtime | merged segments | in-network / standalone: median (min-max) | sum in-network ms | "
        "sum standalone ms |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    for name, plan_path in PLANS.items():
        model = create_model(name).eval()
        a = analyze(model, name, input_size(name))
        plan = load_plan(plan_path)
        merged = merge(model, plan)
        _, planned, _ = planned_ops(a, plan, args.batch)
        convs = [c for c in planned if c.kind == "segment" or (c.op is not None and c.op.kind == "conv")]
        x = torch.randn(args.batch, 3, a.input_size, a.input_size)
        for rt in ("onnxruntime", "openvino"):
            prof = load_profile(profile_path("local-cpu", name, args.batch, "fp32", "nchw", "profiles", rt))
            nodes = [n for n in node_times(rt, merged, x, args.repeats, args.threads) if n.op_type in CONV_NODES]
            if len(nodes) != len(convs):
                lines.append(
                    f"| {name} | {Path(plan_path).name} | {rt} | node count {len(nodes)} != {len(convs)} | | | |"
                )
                continue
            ratios, inside, alone = [], 0.0, 0.0
            for c, n in zip(convs, nodes, strict=True):
                entry = prof.segments.get(signature_of(c.seg)) if c.kind == "segment" and c.seg.merged else None
                if entry is None:
                    continue
                ratios.append(n.median_ms / entry["conv"].median_ms)
                inside += n.median_ms
                alone += entry["conv"].median_ms
            lines.append(
                f"| {name} | {Path(plan_path).name} | {rt} | {len(ratios)} | {statistics.median(ratios):.2f} "
                f"({min(ratios):.2f}-{max(ratios):.2f}) | {inside:.1f} | {alone:.1f} |"
            )
            print(lines[-1], flush=True)
    atomic_write_bytes(args.out, ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
