"""The analysis cache: an exact round trip of the analysis, keys that change when the network can, a corrupt or
mismatching entry is a miss, and a warm `dsa plan` imports neither torch nor torchvision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsa import cache
from dsa.formats.plan import make_plan
from dsa.graph import analyze
from tests import tiny_models as tm

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "build", [tm.tiny_mbv2, tm.tiny_se, tm.tiny_projection_resnet, tm.tiny_concat, tm.tiny_reflect]
)
def test_the_analysis_round_trips_exactly(build) -> None:
    a = analyze(build().eval(), "tiny", 32)
    back = cache.analysis_from_json(json.loads(json.dumps(cache.analysis_to_json(a))))
    assert back == a and back.graph_module is None
    assert back.fingerprint == a.fingerprint and back.removable == a.removable
    plan = make_plan(a, a.removable)
    assert plan.induced_segments(back) == plan.induced_segments(a)


def test_keys_follow_what_can_change_the_network(tmp_path, monkeypatch) -> None:
    base = cache.cache_key("mobilenet_v2_140", None)
    assert base["dsa"] and set(base["packages"]) == {"torch", "torchvision", "timm"}
    assert cache.cache_key("mobilenet_v2_140", 160) != base
    ckpt = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(2)}, ckpt)
    k1 = cache.cache_key("mobilenet_v2_140", None, ckpt)
    torch.save({"w": torch.ones(2)}, ckpt)
    assert cache.cache_key("mobilenet_v2_140", None, ckpt) != k1 != base
    assert cache.cache_key("mobilenet_v2_140", None, tmp_path / "missing.pt") is None  # loading it says why
    assert cache.cache_key("tests.tiny_models:tiny_mbv2", None) is None  # user code: never cached
    monkeypatch.setenv("DSA_NO_CACHE", "1")
    assert cache.cache_dir() is None
    monkeypatch.setenv("DSA_NO_CACHE", "false")
    assert cache.cache_dir() is not None


def test_editing_the_analysis_code_invalidates_entries(tmp_path, monkeypatch) -> None:
    source = tmp_path / "graph.py"
    source.write_text("RULES = 1\n")
    monkeypatch.setattr(cache, "_SOURCES", (str(source),))
    before = cache.cache_key("mobilenet_v2_140", None)
    source.write_text("RULES = 2\n")
    assert cache.cache_key("mobilenet_v2_140", None)["sources"] != before["sources"]


def test_a_corrupt_or_mismatching_entry_is_a_miss(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DSA_CACHE_DIR", str(tmp_path))
    a = analyze(tm.tiny_mbv2().eval(), "tiny", 32)
    key = cache.cache_key("mobilenet_v2_140", 32)
    built = []
    assert cache.cached_analysis("mobilenet_v2_140", 32, None, lambda: built.append(1) or a) == a
    assert cache.cached_analysis("mobilenet_v2_140", 32, None, lambda: built.append(1) or a) == a
    assert built == [1]  # the second call was a hit
    (entry,) = (tmp_path / "analysis").glob("*.json")
    for garbage in ("{not json", "[1, 2]", '{"kind": "dsa.analysis-cache", "schema_version": 1, "key": 3}'):
        entry.write_text(garbage)
        assert cache.load(key) is None
    doc = {"kind": cache.KIND, "schema_version": cache.SCHEMA_VERSION, "key": {**key, "dsa": "0"}, "analysis": {}}
    entry.write_text(json.dumps(doc))
    assert cache.load(key) is None
    assert cache.cached_analysis("mobilenet_v2_140", 32, None, lambda: built.append(1) or a) == a
    assert built == [1, 1] and cache.load(key) == a  # rebuilt and written anew


def test_an_unwritable_cache_is_skipped(monkeypatch) -> None:
    monkeypatch.setenv("DSA_CACHE_DIR", "/sys/dsa-cache")
    a = analyze(tm.tiny_mbv2().eval(), "tiny", 32)
    assert cache.cached_analysis("mobilenet_v2_140", 32, None, lambda: a) == a


_RUN = (
    "import sys; sys.argv = ['dsa'] + sys.argv[1:]\n"
    "from cli import app\n"
    "try:\n    app()\nexcept SystemExit:\n    pass\n"
    "print('IMPORTED', ','.join(m for m in ('torch', 'torchvision') if m in sys.modules), file=sys.stderr)"
)


@pytest.mark.slow
def test_a_warm_plan_imports_no_torch_and_plans_the_same(tmp_path) -> None:
    env = {**os.environ, "DSA_CACHE_DIR": str(tmp_path / "cache")}
    runs = []
    for i in range(2):
        out = tmp_path / f"plan{i}.json"
        args = ["plan", "--gpu", "v100", "--target-throughput", "4000", "-o", str(out), "--format", "json"]
        r = subprocess.run(
            [sys.executable, "-c", _RUN, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, r.stderr
        runs.append((json.loads(out.read_text()), r.stderr.strip().splitlines()[-1]))
    (cold, cold_imports), (warm, warm_imports) = runs
    assert cold_imports == "IMPORTED torch,torchvision" and warm_imports == "IMPORTED"
    for doc in (cold, warm):
        doc["metadata"]["solver"].pop("solve_s")  # wall time
    assert warm == cold
