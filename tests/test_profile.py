"""Profiles: measure -> save/load -> calibrate -> validate, evaluation from measured times, rejection of bad
or mismatched profiles, Ctrl-C, and the GPU measurement script's CPU dry run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import roofline as rl
from cli import app
from dsa.errors import ArtifactError, DsaError
from dsa.formats.plan import plan_from_act_list
from dsa.formats.profile import load_profile, profile_from_json
from dsa.graph import analyze
from dsa.latency.evaluate import evaluate
from dsa.latency.measured import measured_items
from dsa.measure.calibrate import calibrate, split, validate
from dsa.measure.profiler import profile_model
from tests import tiny_models as tm

TINY = "tests.tiny_models:tiny_mbv2"
SIZE = 32
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cpu_spec():
    return rl.measure_local_device("cpu", seconds=0.5)


@pytest.fixture(scope="module")
def tiny():
    model = tm.tiny_mbv2()
    a = analyze(model, TINY, SIZE)
    return model, a, plan_from_act_list(a, [0, 0, 0, 1, 1])


@pytest.fixture(scope="module")
def prof(tiny, cpu_spec):
    model, a, plan = tiny
    return profile_model(model, a, batch_size=4, warmup=1, repeats=3, plan=plan, device_spec=cpu_spec)


def test_profile_measures_ops_segments_and_end_to_end(tiny, prof):
    _, a, plan = tiny
    measured_ops = {op.name for op in a.ops.values() if op.kind in ("conv", "bn", "act", "add")}
    assert measured_ops - {n for n in measured_ops if n.endswith(".act")} <= set(prof.ops)
    assert all(s.median_ms > 0 and s.iqr_ms >= 0 and s.n == 3 for s in prof.ops.values())
    assert prof.segments and all(s["conv"].median_ms > 0 for s in prof.segments.values())
    # block segments keep an activation after them (the added ReLU6): it is timed too
    assert any(s["act"] is not None for s in prof.segments.values())
    assert {"original", "merged"} <= set(prof.end_to_end)
    assert prof.end_to_end["merged"]["plan"]["removed"] == list(plan.removed)
    env = prof.environment
    assert {"torch", "threads", "layout", "cudnn_benchmark", "tf32_cudnn", "date", "dtype"} <= set(env)
    assert prof.complete and prof.layout == "nchw" and prof.batch_size == 4


def test_save_load_round_trip(prof, tmp_path):
    path = tmp_path / "p.json"
    prof.save(path)
    again = load_profile(path)
    assert again.to_json() == prof.to_json()


def test_calibrate_then_validate(tiny, prof):
    _, a, _ = tiny
    cal, calibrated = calibrate(a, prof)
    assert calibrated.calibration is not None and cal.n_ops == len(split(measured_items(a, prof))[0])
    assert cal.median_abs_pct_error <= cal.median_abs_pct_error_uncalibrated
    rep = validate(a, calibrated)
    for key in ("median_abs_pct_err", "within_10pct"):
        assert key in rep["heldout_ops"]
    assert rep["end_to_end"]["original"]["measured_ms"] > 0
    assert rep["end_to_end"]["abs_pct_err"] >= 0
    # the split is deterministic and disjoint
    train, held = split(measured_items(a, prof))
    assert not {i.key for i in train} & {i.key for i in held} and held


def test_evaluate_uses_measured_times(tiny, prof):
    _, a, plan = tiny
    ev = evaluate(a, plan, batch=4, precision="fp32", profile=prof)
    src = ev.sources()
    assert src["baseline_ops"].get("measured", 0) >= len(ev.baseline_ops) - 2
    assert src["planned_ops"].get("measured", 0) > 0
    assert ev.device == prof.device_name and "profile" in ev.source
    with pytest.raises(DsaError, match="field 'batch_size' is 4, but batch 8 was asked for"):
        evaluate(a, plan, batch=8, precision="fp32", profile=prof)  # another batch size


def test_mismatched_profile_is_rejected(prof):
    other = tm.tiny_se()
    a = analyze(other, "tests.tiny_models:tiny_se", SIZE)
    with pytest.raises(ArtifactError, match="does not match"):
        measured_items(a, prof)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(schema_version=7), "schema_version"),
        (lambda d: d.update(schema_version=True), "schema_version"),
        (lambda d: d.update(kind="dsa.plan"), "kind"),
        (lambda d: d.pop("fingerprint"), "fingerprint"),
        (lambda d: d["ops"].update({"x": {"iqr_ms": 1}}), "ops.x.median_ms"),
        (lambda d: d["ops"].update({"x": {"median_ms": -1}}), "ops.x.median_ms"),
        (lambda d: d["device_spec"].pop("mem_bandwidth_gbps"), "mem_bandwidth_gbps"),
    ],
)
def test_corrupted_profile_is_rejected_naming_the_field(prof, mutate, field):
    d = json.loads(json.dumps(prof.to_json()))
    mutate(d)
    with pytest.raises((ArtifactError, rl.RooflineError), match=field.replace(".", r"\.")):
        profile_from_json(d, "p.json")


def test_malformed_profile_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "dsa.profile",')
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_profile(bad)


def test_ctrl_c_keeps_what_was_measured(tiny, cpu_spec):
    model, a, _ = tiny

    def interrupt(what, step, total):
        if step == 2:
            raise KeyboardInterrupt

    p = profile_model(model, a, batch_size=2, warmup=0, repeats=1, device_spec=cpu_spec, progress=interrupt)
    assert not p.complete
    assert p.ops and len(p.segments) == 1 and not p.end_to_end.get("original")


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_profile_calibrate_validate(tmp_path):
    out = tmp_path / "prof.json"
    r = run(
        "profile", "--model", TINY, "--input-size", SIZE, "--batch-size", 2, "--warmup", 0, "--repeats", 2, "--out", out
    )
    assert r.exit_code == 0, r.output
    assert "ops" in r.stdout and out.is_file()
    r = run("calibrate", "--profile", out, "--model", TINY, "--device-out", tmp_path / "dev.json")
    assert r.exit_code == 0, r.output
    assert load_profile(out).calibration is not None
    assert rl.load_device(tmp_path / "dev.json").calibration is not None
    r = run("validate", "--profile", out, "--model", TINY, "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert "median_abs_pct_err" in doc["heldout_ops"] and "abs_pct_err" in doc["end_to_end"]
    assert "heldout" in doc
    # a profile of another model is refused with one line
    r = run("validate", "--profile", out, "--model", "tests.tiny_models:tiny_se")
    assert r.exit_code == 1 and r.stderr.startswith("error: profile ") and len(r.stderr.strip().splitlines()) == 1
    assert "field 'fingerprint'" in r.stderr


@pytest.mark.slow
def test_gpu_script_dry_run_on_cpu(tmp_path):
    script = ROOT / "bench" / "gpu_profile.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    env = {
        **os.environ,
        "DRY_RUN": "1",
        "LAYOUTS": "nchw",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    res = subprocess.run(
        ["bash", str(script), str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-2000:]
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert "device.json" in files and any(f.endswith("_fp32_nchw.json") for f in files)
    assert any(f.endswith("throughput_paper.json") for f in files)
    prof = load_profile(next((tmp_path / "run").glob("*_fp32_nchw.json")))
    assert prof.end_to_end["merged"]["images_per_s"] > 0
