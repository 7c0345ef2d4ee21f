"""How fast the planner is: candidate building and MILP solve time (HiGHS) on mobilenet_v2_140 and
efficientnet_lite0, and the whole `dsa plan --gpu v100 --target-throughput 4000` command cold.

    python bench/plan_speed.py --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dsa.graph import analyze
from dsa.models import create_model, input_size
from dsa.planner.planner import Planner
from dsa.planner.solver import BUDGET_RTOL, solve_milp

MODELS = ("mobilenet_v2_140", "efficientnet_lite0")
SPACES = {  # issue 17: version 1's segment space, the wider default, and the wider one with pruned variants
    "units first (v1)": {"units_anywhere": False},
    "units anywhere": {},
    "+ --prune-convs": {"prune_convs": True},
}
SPEEDUPS = (1.5, 2.0, 2.5)  # a fraction of each model's reachable range is used instead when it is lower


def solve_times(planner: Planner, repeats: int) -> tuple[list[float], list[float], list[float], int]:
    """(MILP seconds per target, per accuracy-cost budget, per target without the presolve, MILP variables after
    the presolve), every solve repeated ``repeats`` times."""
    top = planner.fastest().speedup
    targets = [min(s, 1 + (top - 1) * f) for s, f in zip(SPEEDUPS, (0.3, 0.6, 0.9), strict=True)]
    by_target, by_budget, unreduced = [], [], []
    for _ in range(repeats):
        for s in targets:
            r = planner.for_target(target_speedup=s)
            by_target.append(r.solver["solve_s"])
            full = solve_milp(planner.problem, budget_ms=r.target["budget_ms"] * (1 + BUDGET_RTOL), presolve=False)
            same_cost = abs(full.accuracy_cost - r.accuracy_cost) <= 1e-6 * max(1.0, abs(r.accuracy_cost))
            if not same_cost or abs(full.time_ms - r.planned_ms) > 1e-9 * r.planned_ms:
                sys.exit(f"the presolve changed the optimum at {s:.2f}x: {full} vs {r.solver}")
            unreduced.append(full.solve_s)
        for budget in (5, 15):
            r = planner.fastest(budget)
            by_budget.append(r.solver["solve_s"])
    return by_target, by_budget, unreduced, r.solver["variables"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print()
    print(
        "| model | granularity | space | candidate edges | MILP variables | build ms | MILP s, for a target "
        "(median / max) | MILP s, fastest within a cost (median / max) | without the presolve: MILP s, for a target "
        "(median) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for name in MODELS:
        a = analyze(create_model(name), name, input_size(name))
        for g in ("activation", "block"):
            for space, options in SPACES.items():
                gc.collect()
                t0 = time.perf_counter()
                planner = Planner(a, "v100", 128, "fp32", granularity=g, **options)
                build_ms = 1e3 * (time.perf_counter() - t0)
                tt, tb, tu, n_vars = solve_times(planner, args.repeats)
                print(
                    f"| {name} | {g} | {space} | {planner.problem.n_edges} | {n_vars} | {build_ms:.0f} "
                    f"| {statistics.median(tt):.3f} / {max(tt):.3f} | {statistics.median(tb):.3f} / {max(tb):.3f} "
                    f"| {statistics.median(tu):.3f} |",
                    flush=True,
                )
    print()
    print(
        "Each MILP time covers the presolve (dominated edges dropped; MILP variables are counted after it) and both "
        "solves (least cost, then the fastest plan at that cost)."
    )
    print()
    cmd = ["dsa", "plan", "--gpu", "v100", "--target-throughput", "4000", "--format", "json"]
    walls = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            r = subprocess.run([*cmd, "--out", str(Path(tmp) / "plan.json")], capture_output=True, text=True)
            walls.append(time.perf_counter() - t0)
            if r.returncode != 0:
                sys.exit(f"`{' '.join(cmd)}` failed: {r.stderr.strip()}")
    print("| command (new process, imports included) | wall s per run | median |")
    print("|---|---|---:|")
    print(f"| `{' '.join(cmd[:6])}` | {', '.join(f'{w:.2f}' for w in walls)} | {statistics.median(walls):.2f} |")


if __name__ == "__main__":
    main()
