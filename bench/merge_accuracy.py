"""How exactly merged networks match their merge-ready form, for every registry model.

For each model (random weights, randomised BN statistics) and "remove everything removable", and for
mobilenet_v2_140 with DepthShrinker patterns A-F: max relative error of the merged network against the
merge-ready network's exact (float64) output, merged run in float64 and in float32, at two resolutions.

    python bench/merge_accuracy.py
"""

from __future__ import annotations

import time

import torch

from dsa.formats.plan import DS_PATTERNS, ds_pattern_act_list, plan_from_act_list, remove_all_plan
from dsa.graph import analyze
from dsa.models import REGISTRY, create_model
from dsa.testing import randomize_bn
from dsa.transform.merge import apply_plan, conv_count, merge, merge_record, verify

SIZES = (160, 97)  # as tests/test_models.py


def row(name: str, label: str, model, plan) -> None:
    t0 = time.perf_counter()
    ready = apply_plan(model, plan)
    merged = merge(ready, verify_sizes=SIZES)
    seconds = time.perf_counter() - t0
    e64 = verify(ready, merged, SIZES, torch.float64, seed=1)
    e32 = verify(ready, merged, SIZES, torch.float32, seed=1)
    own32 = verify(ready, ready, SIZES, torch.float32, seed=1)
    print(
        f"| {name} | {label} | {len(plan.removed)} | {conv_count(model)} -> {conv_count(merged)} | "
        f"{merge_record(merged).max_rel_error:.1e} | {e64:.1e} | {e32:.1e} | {own32:.1e} | {seconds:.1f} |",
        flush=True,
    )


def main() -> None:
    torch.manual_seed(0)
    print(
        f"inputs: 2 random images at {SIZES[0]} and {SIZES[1]} px; errors are max|merged - exact| / max|exact|, "
        "exact = merge-ready network in float64"
    )
    print(
        "| model | plan | removed | convs | merge math (fp64 weights) | merged fp32 weights, run fp64 | "
        "merged, run fp32 | merge-ready, run fp32 | apply+merge+verify s |"
    )
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for name in REGISTRY:
        model = randomize_bn(create_model(name))
        row(name, "remove all removable", model, remove_all_plan(analyze(model, name)))
    model = randomize_bn(create_model("mobilenet_v2_140"))
    analysis = analyze(model, "mobilenet_v2_140")
    for letter in DS_PATTERNS:
        row("mobilenet_v2_140", f"DS-{letter}", model, plan_from_act_list(analysis, ds_pattern_act_list(letter)))


if __name__ == "__main__":
    main()
