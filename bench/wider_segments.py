"""Add the merged convs of issue 17's wider space to runtime profiles: every candidate segment with residual blocks
anywhere in it, and (``--pruned``) every pruned variant the planner offers with ``--prune-convs``, that a profile
does not time yet, timed the way `dsa profile --runtime R` times segments (the merged conv, with the activation
after it fused, and the original ops it replaces), at the profile's batch, threads and repeats. Entries already
in the profile (and their in-network times) are kept.

    python bench/wider_segments.py profiles/local-cpu/mobilenet_v2_140_b32_fp32_openvino.json ... [--pruned]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from dsa.formats.profile import load_profile
from dsa.graph import analyze
from dsa.ir import signature_of
from dsa.measure.profiler import candidate_segments
from dsa.measure.runtime_profile import profile_runtime
from dsa.models import create_model


def wanted(a, prof, pruned: bool) -> list:
    """(segment, activation after it) of every candidate the profile lacks, deduplicated by shape."""
    return [(seg, act) for seg, act in candidate_segments(a, pruned=pruned) if signature_of(seg) not in prof.segments]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profiles", type=Path, nargs="+")
    p.add_argument("--pruned", action="store_true", help="also the pruned variants of --prune-convs")
    args = p.parse_args()
    for path in args.profiles:
        prof = load_profile(path)
        threads = int(prof.runtime.get("threads") or prof.environment.get("threads") or 2)
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = create_model(prof.model).eval()
        a = analyze(model, prof.model, prof.input_size)
        missing = wanted(a, prof, args.pruned)
        t0 = time.perf_counter()
        new = profile_runtime(
            model,
            a,
            prof.runtime_name,
            batch_size=prof.batch_size,
            threads=threads,
            warmup=prof.warmup,
            repeats=prof.repeats,
            segments=missing,
            device_spec=prof.device(),
        )
        segs = {**prof.segments, **{k: v for k, v in new.segments.items() if k not in prof.segments}}
        env = {**prof.environment, "wider_segments": {"added": len(missing), "pruned_variants": args.pruned}}
        dataclasses.replace(prof, segments=segs, environment=env).save(path)
        print(f"{path}: {len(missing)} segments added in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
