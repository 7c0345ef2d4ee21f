"""Time every candidate segment's merged conv inside merged networks, and add those times to committed runtime
profiles (``segments.<sig>.in_network``; what `dsa profile --runtime R --in-network` records while profiling).

Standalone graphs make a merged conv pay its own edges: under INT8, a quantize and a dequantize around every
conv, which inside a network run once per tensor, fused with their neighbours. The covering plans
(dsa.measure.runtime_profile.covering_plans) hold every candidate segment between them; each merged network is
run whole under the runtime's own profiler (random weights, BN statistics settled for INT8; speed does not depend
on the weights), at the profile's batch, threads and repeats.

    python bench/in_network_segments.py profiles/local-cpu/mobilenet_v2_140_b32_int8_openvino.json ...
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from dsa.formats.profile import Stat, load_profile
from dsa.graph import analyze
from dsa.measure.runtime_profile import covering_plans, in_network_times
from dsa.models import create_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profiles", type=Path, nargs="+")
    args = p.parse_args()
    for path in args.profiles:
        prof = load_profile(path)
        threads = int(prof.runtime.get("threads") or prof.environment.get("threads") or 2)
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = create_model(prof.model).eval()
        int8 = prof.precision == "int8"
        if int8:
            from dsa.quantize import settle_random_weights

            settle_random_weights(model, prof.input_size)
        a = analyze(model, prof.model, prof.input_size)
        if a.fingerprint != prof.fingerprint:
            raise SystemExit(f"{path}: the profile is of another network ({prof.fingerprint} vs {a.fingerprint})")
        t0 = time.perf_counter()
        plans = covering_plans(a, list(prof.segments))
        times = in_network_times(
            a,
            model,
            prof.runtime_name,
            plans,
            batch_size=prof.batch_size,
            threads=threads,
            repeats=max(prof.repeats, 3),
            int8=int8,
            tick=lambda what: print(f"  {what}", flush=True),
        )
        ratios = []
        for sig, entry in prof.segments.items():
            if sig in times:
                entry["in_network"] = Stat.of(times[sig])
                ratios.append(entry["in_network"].median_ms / entry["conv"].median_ms)
        prof.save(path)
        print(
            f"{path}: {len(plans)} merged networks, {len(ratios)} of {len(prof.segments)} segments timed inside one "
            f"(in-network / standalone: median {statistics.median(ratios):.2f}, {min(ratios):.2f}-{max(ratios):.2f}); "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
