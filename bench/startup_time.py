"""Start-up cost of the CLI: wall time of cold processes and `python -X importtime` totals, for this checkout and
optionally an older one (``--before PATH``, e.g. a `git worktree` of an earlier commit), interleaved.

    git worktree add /tmp/dsa-before 01224ca
    python bench/startup_time.py --before /tmp/dsa-before --out bench/results/startup_time.md

Each command runs in a fresh process (the way a user runs it) ``--repeats`` times, variants round-robin.
``plan (cold cache)`` starts from an empty analysis cache (``DSA_CACHE_DIR`` a new temp folder each run, so the
model is built, traced and the entry written); ``plan (warm cache)`` reuses one filled by a first, untimed run.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dsa.io import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
PLAN = [
    "plan",
    "--gpu",
    "v100",
    "--target-throughput",
    "4000",
    "--format",
    "json",
    "-o",
    str(Path(tempfile.gettempdir()) / "dsa-startup-plan.json"),
]
HEAVY = ("torch", "torchvision", "scipy", "matplotlib", "onnx", "timm")
RUN = (
    "import sys; sys.argv = ['dsa'] + sys.argv[1:]\n"
    "from cli import app\n"
    "try:\n    app()\nexcept SystemExit:\n    pass\n"
    f"print('IMPORTED', ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
)


def _run(tree: Path, args: list[str], env: dict, importtime: bool = False) -> tuple[float, str, float | None]:
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", RUN, *args]
    env = {**env, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{args} failed in {tree}:\n{r.stderr[-2000:]}")
    imported = next(ln for ln in r.stderr.splitlines() if ln.startswith("IMPORTED")).removeprefix("IMPORTED").strip()
    total = None
    if importtime:  # the sum of the top-level imports' cumulative times
        total = sum(int(m[1]) for m in re.finditer(r"import time:\s+\d+ \|\s+(\d+) \| {1}(\S+)$", r.stderr, re.M)) / 1e6
    return wall, imported, total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, help="an older checkout to compare with")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    trees = {"this checkout": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    base_env = {k: v for k, v in os.environ.items() if k not in ("DSA_CACHE_DIR", "DSA_NO_CACHE")}
    warm_dir = Path(tempfile.mkdtemp(prefix="dsa-warm-"))
    variants = []  # (label, tree, args, env maker)
    for name, tree in trees.items():
        variants += [
            (f"{name}: dsa --help", tree, ["--help"], lambda: {**base_env, "DSA_CACHE_DIR": str(warm_dir)}),
            (f"{name}: dsa models", tree, ["models"], lambda: {**base_env, "DSA_CACHE_DIR": str(warm_dir)}),
            (
                f"{name}: dsa plan (cold cache)",
                tree,
                PLAN,
                lambda: {**base_env, "DSA_CACHE_DIR": tempfile.mkdtemp(prefix="dsa-cold-")},
            ),
        ]
    warm = lambda: {**base_env, "DSA_CACHE_DIR": str(warm_dir)}  # noqa: E731
    variants.append(("this checkout: dsa plan (warm cache)", ROOT, PLAN, warm))
    _run(ROOT, PLAN, {**base_env, "DSA_CACHE_DIR": str(warm_dir)})  # fill the warm cache
    walls: dict[str, list[float]] = {v[0]: [] for v in variants}
    for r in range(args.repeats):
        for label, tree, a, env in variants:
            walls[label].append(_run(tree, a, env())[0])
        print(f"round {r + 1}/{args.repeats}", file=sys.stderr)
    rows = []
    for label, tree, a, env in variants:
        _, imported, total = _run(tree, a, env(), importtime=True)
        w = walls[label]
        rows.append(
            f"| {label} | {statistics.median(w):.2f} | {min(w):.2f}-{max(w):.2f} | {total:.2f} | {imported or 'none'} |"
        )
    text = "\n".join(
        [
            "# CLI start-up time",
            "",
            f"`python bench/startup_time.py{' --before ' + str(args.before) if args.before else ''} --repeats "
            f"{args.repeats}`: each command a fresh process, {args.repeats} runs per row, rows interleaved; "
            f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}. Import total: the sum of the top-level "
            "imports' cumulative times from one `python -X importtime` run.",
            "",
            "| command | wall s (median) | min-max | import total s | heavy modules imported |",
            "|---|---:|---:|---:|---|",
            *rows,
            "",
        ]
    )
    atomic_write_bytes(args.out, text.encode())
    print(text)


if __name__ == "__main__":
    main()
