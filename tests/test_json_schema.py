"""The keys of every command's ``--format json`` output, on tiny models: scripts depend on them, so a change
of schema must be deliberate (update SNAPSHOT and docs/plan-schema.md / the changelog with it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_helpers import dsa, ok
from tests.test_data import write_folder

T = ["--model", "tests.tiny_models:tiny_mbv2", "--input-size", "32"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _shape(obj, depth: int = 2):
    """Sorted keys, one level into nested objects (lists: their first element)."""
    if isinstance(obj, list):
        return ["[]", _shape(obj[0], depth)] if obj and isinstance(obj[0], (dict, list)) else []
    if not isinstance(obj, dict):
        return None
    if depth == 0:
        return sorted(obj)
    return {k: _shape(v, depth - 1) for k, v in sorted(obj.items()) if isinstance(v, (dict, list))} | {
        "_keys": sorted(obj)
    }


def outputs(d: Path) -> dict[str, object]:
    data = write_folder(d / "data", classes=2, per_split={"train": 4, "val": 2})
    plan, prof = d / "plan.json", d / "prof.json"
    docs = {}

    def run(name: str, *args) -> None:
        docs[name] = json.loads(ok(dsa(*map(str, args), "--format", "json")))

    run("models", "models")
    run("analyze", "analyze", *T)
    run("plan-keep-list", "plan", *T, "--act-list", "1,0,0,1,1", "--gpu", "v100", "--out", plan)
    run("plan-solved", "plan", *T, "--target-speedup", "1.05", "--out", d / "solved.json")
    run("pareto", "pareto", *T, "--points", "2", "--out", d / "f.png")
    run("merge", "merge", "--plan", plan, "--out", d / "m.pt")
    run("bench", "bench", "--plan", plan, "--batch-size", "1", "--repeats", "1", "--warmup", "0")
    run("devices", "devices")
    run("evaluate", "evaluate", "--plan", plan)
    ok(dsa("profile", *T, "--batch-size", "2", "--repeats", "1", "--warmup", "0", "--out", prof))
    run("calibrate", "calibrate", "--profile", prof)
    run("validate", "validate", "--profile", prof)
    run("train", "train", *T, "--data", data, "--out", d / "run", "--plan", plan, "--epochs", "1", "--batch-size",
        "2", "--bench-repeats", "1", "--bench-batch-size", "1", "--no-onnx")  # fmt: skip
    run("eval", "eval", "--checkpoint", d / "run" / "merged.pt", "--data", data)
    return {k: _shape(v) for k, v in docs.items()}


SNAPSHOT_PATH = Path(__file__).with_name("json_schema_snapshot.json")


@pytest.mark.slow
def test_every_json_output_keeps_its_keys(tmp_path: Path) -> None:
    got = outputs(tmp_path)
    want = json.loads(SNAPSHOT_PATH.read_text())
    assert set(got) == set(want)
    for command in want:
        assert got[command] == want[command], command
