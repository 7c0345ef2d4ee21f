"""Calibrate and validate the roofline model on measured CPU profiles, and check whether it predicts
correctly, block by block, if merging a block pays off on this machine.

    python bench/validate_cpu.py profiles/local-cpu/mobilenet_v2_140_b32_fp32_nchw.json ...

For each profile: `dsa calibrate` (stored in the profile) and `dsa validate` figures, then per block the
measured and predicted time of the block's original ops vs its merged conv (+ the added ReLU6).
"""

from __future__ import annotations

import argparse
import json

import roofline as rl
from dsa.formats.plan import plan_from_act_list
from dsa.formats.profile import load_profile
from dsa.graph import analyze
from dsa.ir import signature_of
from dsa.latency.measured import entry_conv_spec
from dsa.latency.ops import dtype_bytes, op_spec
from dsa.measure.calibrate import calibrate, validate
from dsa.models import create_model


def block_rows(a, prof, device):
    nbytes = dtype_bytes(prof.precision)
    cal = device.calibration
    rows = []
    blocks = a.blocks()
    for i in range(1, len(blocks) - 1):
        keep = [1] * len(blocks)
        keep[i] = 0
        segs = [s for s in plan_from_act_list(a, keep).induced_segments(a) if s.merged]
        if len(segs) != 1 or signature_of(segs[0]) not in prof.segments:
            continue
        seg = segs[0]
        entry = prof.segments[signature_of(seg)]
        members = [a.ops[m] for m in seg.member_ids]
        meas_before = sum(prof.ops[m.name].median_ms for m in members if m.name in prof.ops)
        meas_after = entry["conv"].median_ms + (entry["act"].median_ms if entry["act"] else 0.0)
        specs = [op_spec(a, m, prof.batch_size, nbytes) for m in members]
        pred_before = sum(rl.predict_op(s, device, prof.precision, cal).total_ms for s in specs if s is not None)
        merged = entry_conv_spec("m", entry, prof.batch_size, nbytes)
        act = rl.elementwise_op(
            "a",
            "act",
            prof.batch_size * entry["c_out"] * entry["out_shape"][1] * entry["out_shape"][2],
            dtype_bytes=nbytes,
            batch=prof.batch_size,
        )
        pred_after = sum(rl.predict_op(s, device, prof.precision, cal).total_ms for s in (merged, act))
        rows.append(
            (
                blocks[i],
                seg.kernel[0],
                seg.in_channels,
                seg.out_channels,
                meas_before,
                meas_after,
                pred_before,
                pred_after,
            )
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profiles", nargs="+")
    args = p.parse_args()
    for path in args.profiles:
        prof = load_profile(path)
        model = create_model(prof.model)
        a = analyze(model, prof.model, prof.input_size)
        _, prof = calibrate(a, prof)
        prof.save(path)
        rep = validate(a, prof)
        print(f"\n### {prof.model}, batch {prof.batch_size}, {prof.precision}, {prof.layout} ({path})\n")
        print("| held-out | roofline | n | median abs err % | within 10% | Spearman | Kendall |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for label in ("uncalibrated", "calibrated"):
            for kind in ("segment", "op"):
                m = rep[label][kind]
                print(
                    f"| {kind}s | {label} | {m['n']} | {m['median_abs_pct_err']:.1f} | {m['within_10pct']:.0%} | "
                    f"{m.get('spearman', float('nan')):.3f} | {m.get('kendall', float('nan')):.3f} |"
                )
        print("\n| network | measured ms | predicted ms (uncalibrated) | err % | predicted ms (calibrated) | err % |")
        print("|---|---:|---:|---:|---:|---:|")
        for name in ("original", "merged"):
            r = rep["end_to_end"].get(name)
            if r:
                print(
                    f"| {name} | {r['measured_ms']:.1f} | {r['predicted_ms_uncalibrated']:.1f} | "
                    f"{r['abs_pct_err_uncalibrated']:.1f} | {r['predicted_ms_calibrated']:.1f} | "
                    f"{r['abs_pct_err_calibrated']:.1f} |"
                )
        print(f"\nsum of the measured per-op times: {rep['end_to_end'].get('sum_of_measured_ops_ms', 0):.1f} ms")
        rows = block_rows(a, prof, prof.device())
        agree = sum((mb > ma) == (pb > pa) for _, _, _, _, mb, ma, pb, pa in rows)
        print(f"\nmerging a block pays off (measured) vs predicted (calibrated): agree on {agree} of {len(rows)}\n")
        print(
            "| block | merged kernel | channels | measured before ms | measured after ms | predicted before | "
            "predicted after |"
        )
        print("|---|---:|---|---:|---:|---:|---:|")
        for b, k, ci, co, mb, ma, pb, pa in rows:
            flag = "" if (mb > ma) == (pb > pa) else " (disagree)"
            print(f"| {b}{flag} | {k}x{k} | {ci}->{co} | {mb:.2f} | {ma:.2f} | {pb:.2f} | {pa:.2f} |")
        print(
            "\n" + json.dumps({"heldout": rep["heldout"], "end_to_end_abs_pct_err": rep["end_to_end"]["abs_pct_err"]})
        )


if __name__ == "__main__":
    main()
