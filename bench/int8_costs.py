"""Issue 15: INT8 costs per candidate segment as a planner accuracy cost -- how well the emulated costs rank what the
runtime's own quantizer does, and whether planning with them picks networks that lose less in INT8.

    python bench/int8_costs.py --checkpoint runs/elpv_runtimes/baseline/last.pt --out bench/results/int8_costs

1. ``dsa importance --method removal-kl --int8 R`` in library form on the checkpoint (calibration: the first
   ``--samples`` images of a seeded permutation of ELPV train): every candidate segment's emulated INT8 cost.
2. Against the runtime: the runtime's own per-layer sensitivity (:func:`dsa.quantize.sensitivity`: the network with
   only that layer quantized by NNCF / ONNX Runtime, calibrated on the images the emulation takes its ranges
   from (the first half of the calibration images; the emulation's KL is over the other half), compared with float32 on
   ``--check-images`` val images: KL and relative RMS error of the outputs), for the original network (every conv
   alone; the BN folded by the runtime) and for the merged network of ``--plan`` (its merged convs in place).
   Spearman of the emulated cost against the runtime's KL, per network.
3. Planning for INT8 under R at ``--target`` from ``--profile`` with the removal-kl scores alone and with the INT8
   costs added: each plan's merged network (not finetuned: this measures what INT8 adds, not what removal costs)
   quantized by the runtime and compared with its own float32 form on the ELPV test split: KL, top-1 agreement,
   top-1 of both forms.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def spearman(xs, ys) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(xs, ys).statistic)


def emulated_in_place(net, batches, runtime: str, only: str | None = None) -> dict[str, float]:
    """Each conv of ``net`` alone in emulated INT8 (:func:`dsa.quantize.emulate_conv`, ranges per channel from the
    first half of ``batches``, the KL over the other half), in ``net`` itself: {module path: KL}."""
    import torch

    from dsa.importance import _kl
    from dsa.quantize import emulate_conv

    half = max(1, len(batches) // 2)
    held = batches[half:] or batches
    with torch.no_grad():
        ref = [net(x) for x in held]
    out = {}
    for name, conv in net.named_modules():
        if not isinstance(conv, torch.nn.Conv2d) or (only is not None and name != only):
            continue
        seen = []
        h = conv.register_forward_pre_hook(lambda m, args, seen=seen: seen.append(args[0]))
        with torch.no_grad():
            for x in batches[:half]:
                net(x)
        h.remove()
        lo = torch.stack([v.amin((0, 2, 3)) for v in seen]).amin(0)
        hi = torch.stack([v.amax((0, 2, 3)) for v in seen]).amax(0)
        q = emulate_conv(conv, lo, hi, runtime)
        h = conv.register_forward_hook(lambda m, args, y, q=q: q(args[0]))
        with torch.no_grad():
            out[name] = sum(_kl(r.double(), net(x).double()) for r, x in zip(ref, held, strict=True)) / len(held)
        h.remove()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="runs/elpv_runtimes/baseline/last.pt")
    ap.add_argument("--data", default="elpv")
    ap.add_argument("--runtime", default="openvino", choices=["openvino", "onnxruntime"])
    ap.add_argument("--plan", default="bench/results/elpv_int8/plan_int8_2.0.json")
    ap.add_argument(
        "--profile",
        default="bench/results/elpv_int8/efficientnet_lite0_b32_160px_int8_openvino.json",
        help="INT8 profile of the runtime at the checkpoint's resolution for step 3 ('' skips step 3)",
    )
    ap.add_argument("--targets", default="2.0,2.5")
    ap.add_argument("--importance", help="reuse the importance file of an earlier run (skips step 1)")
    ap.add_argument("--samples", type=int, default=64)  # half for the ranges, half for the emulated KL
    ap.add_argument("--check-images", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--segments", type=int, default=12, help="single merged segments checked across the cost range")
    ap.add_argument("--out", default="bench/results/int8_costs")
    args = ap.parse_args()

    import numpy as np
    import torch

    from dsa.formats.importance import load_importance_file
    from dsa.formats.plan import load_plan, make_plan
    from dsa.formats.profile import load_profile
    from dsa.graph import analyze
    from dsa.importance import calibration_batches, removal_kl, segment_candidates, with_int8_costs
    from dsa.io import atomic_write_bytes, atomic_write_json
    from dsa.ir import Kind, segment_key
    from dsa.latency.costs import ProfileCosts, RooflineCosts
    from dsa.networks import load_for_eval
    from dsa.planner.candidates import SEGMENT, build_candidates
    from dsa.planner.planner import Planner
    from dsa.quantize import check, quantize, sensitivity
    from dsa.transform.merge import apply_plan, merge, merge_ready_record

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_for_eval(args.checkpoint)
    model, size = loaded.module.eval(), loaded.image_size
    a = analyze(model, loaded.model, size)
    calib, meta = calibration_batches(args.data, size, args.samples, 16, seed=0)
    check_batches, _ = calibration_batches(args.data, size, args.check_images, args.check_images, seed=1, split="val")
    check_x = check_batches[0]
    log = lambda *m: print(f"[{time.strftime('%H:%M:%S')}]", *m, file=sys.stderr, flush=True)  # noqa: E731

    # 1. importance: removal-kl and emulated INT8 costs
    if args.importance:
        imp = kl = load_importance_file(args.importance)
    else:
        t0 = time.perf_counter()
        kl = removal_kl(model, a, calib, blocks=False)
        log(f"removal-kl: {time.perf_counter() - t0:.0f} s")
        imp = with_int8_costs(kl, model, a, args.runtime, calib)
        log(f"int8 costs: {len(imp.int8)} segments in {imp.metadata['int8_seconds']:.0f} s")
        imp.save(out / f"importance_removal-kl_int8_{args.runtime}.json")

    candidates = {k: (m, p, len({x for x in m if a.by_name[x].kind == Kind.CONV}) > 1) for k, (m, p) in
                  segment_candidates(a).items()}  # fmt: skip

    # 2. against the runtime's own per-layer sensitivity
    def runtime_rows(net) -> list[dict]:
        t = time.perf_counter()
        rows = sensitivity(net, args.runtime, calib[: max(1, len(calib) // 2)], check_x)  # the ranges' images
        log(f"runtime sensitivity: {len(rows)} layers in {time.perf_counter() - t:.0f} s")
        return rows

    validation = {}
    rows = runtime_rows(model)
    singles = {}  # conv -> the key of its lone segment with its BN (as the runtime runs it: BN folded)
    cands = build_candidates(a, RooflineCosts(a, "v100"), "activation")
    for e in cands.edges:
        seg = e.segment
        if e.kind != SEGMENT or seg is None or len(seg.convs) != 1:
            continue
        rank = (len(seg.members) != 2 or a.by_name[seg.members[1]].kind != Kind.BN, len(seg.members))
        if seg.convs[0] not in singles or rank < singles[seg.convs[0]][0]:
            singles[seg.convs[0]] = (rank, segment_key(seg))
    singles = {conv: key for conv, (_, key) in singles.items()}
    pairs = [
        (imp.int8[singles[r["layer"]]], r["kl"], r["relative_rms_error"], r["layer"])
        for r in rows
        if r["layer"] in singles
    ]
    validation["original"] = {
        "layers": len(pairs),
        "spearman_kl": spearman([p[0] for p in pairs], [p[1] for p in pairs]),
        "spearman_rms": spearman([p[0] for p in pairs], [p[2] for p in pairs]),
        "rows": [{"layer": p[3], "emulated": p[0], "runtime_kl": p[1], "runtime_rms": p[2]} for p in pairs],
    }
    log("original:", {k: v for k, v in validation["original"].items() if k != "rows"})

    def for_head(p):  # a plan of the ImageNet-headed network, for this checkpoint's head (as dsa train derives it)
        return make_plan(a, p.removed, p.added, p.boundaries, pruned=p.pruned, segment_rule=p.segment_rule)

    plan = for_head(load_plan(args.plan))
    merged = merge(model, plan)
    segs = {s.convs[0]: s for s in merge_ready_record(apply_plan(model, plan, a)).segments}
    rows = runtime_rows(merged)
    in_place = emulated_in_place(merged, calib, args.runtime)
    pairs = []
    for r in rows:
        seg = segs.get(r["layer"])
        if seg is not None:
            pairs.append(
                (
                    imp.int8[segment_key(seg)],
                    r["kl"],
                    in_place[r["layer"]],
                    r["layer"],
                    seg.merged,
                    r["relative_rms_error"],
                )
            )
    merged_only = [p for p in pairs if p[4]]
    validation["plan"] = {
        "plan": args.plan,
        "layers": len(pairs),
        "merged_layers": len(merged_only),
        # the planner's costs (emulated in the original network) against the runtime in the merged network
        "spearman_kl": spearman([p[0] for p in pairs], [p[1] for p in pairs]),
        "spearman_kl_merged": spearman([p[0] for p in merged_only], [p[1] for p in merged_only]),
        # the same emulation in the merged network itself (each conv alone), against the runtime there
        "spearman_in_place": spearman([p[2] for p in pairs], [p[1] for p in pairs]),
        "spearman_in_place_merged": spearman([p[2] for p in merged_only], [p[1] for p in merged_only]),
        "rows": [
            {"layer": p[3], "merged": p[4], "emulated": p[0], "emulated_in_place": p[2], "runtime_kl": p[1],
             "runtime_rms": p[5]}
            for p in pairs
        ],
    }  # fmt: skip
    log("plan:", {k: v for k, v in validation["plan"].items() if k != "rows"})

    # 2b. single merged segments across the range of emulated costs, each in the network that merges just it
    merged_keys = sorted((k for k in imp.int8 if k in candidates and candidates[k][2]), key=lambda k: imp.int8[k])
    picks = sorted({merged_keys[round(q * (len(merged_keys) - 1))] for q in np.linspace(0, 1, args.segments)})
    singles_rows = []
    for key in picks:
        members, seg_plan, _ = candidates[key]
        net = merge(model, seg_plan)
        seg = next(s for s in merge_ready_record(apply_plan(model, seg_plan, a)).segments if s.members == members)
        layer = seg.convs[0]
        row = sensitivity(net, args.runtime, calib[: max(1, len(calib) // 2)], check_x, layers=[layer])[0]
        emu = emulated_in_place(net, calib, args.runtime, only=layer)[layer]
        conv = net.get_submodule(layer)
        singles_rows.append(
            {
                "segment": key,
                "kernel": list(conv.kernel_size),
                "channels": [conv.in_channels, conv.out_channels],
                "emulated": imp.int8[key],
                "emulated_in_place": emu,
                "runtime_kl": row["kl"],
                "runtime_rms": row["relative_rms_error"],
            }
        )
        log("segment", {k: v for k, v in singles_rows[-1].items()})
    validation["segments"] = {
        "segments": len(singles_rows),
        "spearman_kl": spearman([r["emulated"] for r in singles_rows], [r["runtime_kl"] for r in singles_rows]),
        "spearman_in_place": spearman(
            [r["emulated_in_place"] for r in singles_rows], [r["runtime_kl"] for r in singles_rows]
        ),
        "rows": singles_rows,
    }
    log("segments:", {k: v for k, v in validation["segments"].items() if k != "rows"})

    # 3. planning for INT8 with and without the INT8 costs
    plans = []
    targets = [float(t) for t in args.targets.split(",")] if args.profile else []
    # of the ImageNet-headed network (the head is not a candidate)
    profile = load_profile(args.profile) if args.profile else None
    from dsa.models import create_model

    a_plan = analyze(create_model(loaded.model), loaded.model, size)
    costs = ProfileCosts(a_plan, profile, profile.batch_size, "int8") if profile else None
    test_batches, _ = calibration_batches(args.data, size, 394, 64, seed=0, split="test")
    for target in targets:
        for label, extra in [
            ("removal-kl", {}),
            ("removal-kl + INT8", {"int8_costs": imp.int8, "int8_runtime": args.runtime}),
        ]:
            r = Planner(a_plan, costs=costs, importance=kl.scores, **extra).for_target(target_speedup=target)
            net = merge(model, for_head(r.plan))
            q = quantize(net, args.runtime, calib)
            got = check(q, net, torch.cat(test_batches))
            predicted = sum(imp.int8[f"{row.members[0]}..{row.members[-1]}"] for row in r.segments if row.convs)
            plans.append(
                {
                    "target": target,
                    "costs": label,
                    "removed": len(r.removed),
                    "predicted_speedup": r.speedup,
                    "removal_kl": sum(kl.scores[n] for n in r.removed),
                    "int8_cost": predicted,
                    "runtime_kl": got["kl"],
                    "top1_agreement": got["top1_agreement"],
                    "relative_rms_error": got["relative_rms_error"],
                    "plan": r.plan.to_json(),
                }
            )
            log(label, target, {k: v for k, v in plans[-1].items() if k != "plan"})
    results = {"runtime": args.runtime, "checkpoint": args.checkpoint, "validation": validation, "plans": plans}
    atomic_write_json(out / f"results_{args.runtime}.json", results)
    v_o, v_p = validation["original"], validation["plan"]
    lines = [
        f"| network | layers | Spearman (emulated cost vs {args.runtime} per-layer KL) |",
        "|---|---:|---:|",
        f"| original (lone convs) | {v_o['layers']} | {v_o['spearman_kl']:.3f} |",
        f"| merged plan, all layers | {v_p['layers']} | {v_p['spearman_kl']:.3f} |",
        f"| merged plan, merged convs | {v_p['merged_layers']} | {v_p['spearman_kl_merged']:.3f} |",
        f"| merged plan, all layers, emulated in the merged network | {v_p['layers']} "
        f"| {v_p['spearman_in_place']:.3f} |",
        f"| merged plan, merged convs, emulated in the merged network | {v_p['merged_layers']} "
        f"| {v_p['spearman_in_place_merged']:.3f} |",
        f"| single merged segments (planner's cost) | {validation['segments']['segments']} "
        f"| {validation['segments']['spearman_kl']:.3f} |",
        f"| single merged segments, emulated in their network | {validation['segments']['segments']} "
        f"| {validation['segments']['spearman_in_place']:.3f} |",
    ]
    lines += [
        "",
        "| single merged segment | kernel | channels | planner's cost (emulated, original network) "
        "| emulated in its network | runtime KL in its network |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in validation["segments"]["rows"]:
        lines.append(
            f"| `{r['segment']}` | {r['kernel'][0]}x{r['kernel'][1]} | {r['channels'][0]}->{r['channels'][1]} "
            f"| {r['emulated']:.2e} | {r['emulated_in_place']:.2e} | {r['runtime_kl']:.2e} |"
        )
    lines += [
        "",
        "| target | accuracy costs | removed | predicted speed-up | INT8 cost (emulated) | KL INT8 vs fp32 "
        "| top-1 agreement |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for p in plans:
        lines.append(
            f"| {p['target']:g}x | {p['costs']} | {p['removed']} | {p['predicted_speedup']:.2f}x "
            f"| {p['int8_cost']:.4f} | {p['runtime_kl']:.4f} | {100 * p['top1_agreement']:.1f}% |"
        )
    atomic_write_bytes(out / f"table_{args.runtime}.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
