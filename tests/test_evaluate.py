"""Op costs of networks and plans, `dsa evaluate`, `dsa roofline`, `dsa report`, `dsa devices`."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import roofline as rl
from cli import app
from dsa.formats.plan import make_plan, plan_from_act_list
from dsa.graph import analyze
from dsa.latency.evaluate import evaluate
from dsa.latency.ops import baseline_ops, planned_ops
from dsa.transform.merge import merge
from tests import tiny_models as tm

TINY = "tests.tiny_models:tiny_mbv2"
SIZE = 32


@pytest.fixture(scope="module")
def tiny():
    model = tm.tiny_mbv2()
    return model, analyze(model, TINY, SIZE)


@pytest.fixture(scope="module")
def tiny_plan(tiny):
    _, a = tiny
    return plan_from_act_list(a, [0, 0, 0, 1, 1])


def test_conv_and_linear_macs_match_fvcore_and_flop_counter(tiny):
    from fvcore.nn import FlopCountAnalysis
    from torch.utils.flop_counter import FlopCounterMode

    model, a = tiny
    x = torch.randn(1, 3, SIZE, SIZE)
    fv = FlopCountAnalysis(model, x)
    fv.unsupported_ops_warnings(False)
    fv.uncalled_modules_warnings(False)
    by_module = fv.by_module()
    ours = {c.spec.name: c.spec.macs for c in baseline_ops(a, 1) if c.spec.kind in ("conv", "linear")}
    assert len(ours) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    for name, macs in ours.items():
        assert macs == by_module[name], name  # fvcore's "flops" are MACs
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert counter.get_total_flops() == 2 * sum(ours.values())  # FlopCounterMode counts 2 per MAC


def test_planned_convs_are_the_merged_networks_convs(tiny, tiny_plan):
    model, a = tiny
    _, planned, segments = planned_ops(a, tiny_plan, batch=4)
    merged = merge(model, tiny_plan, verify_sizes=[SIZE])
    real = [
        (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.groups)
        for m in merged.modules()
        if isinstance(m, nn.Conv2d)
    ]
    predicted = [
        (c.spec.c_in, c.spec.c_out, c.spec.kernel, None, c.spec.groups) for c in planned if c.spec.kind == "conv"
    ]
    assert [r[:3] + r[4:] for r in real] == [p[:3] + p[4:] for p in predicted]
    # each removed block is one conv, and the added ReLU6s are priced as activations
    assert sum(c.spec.name.endswith("ds_act") for c in planned) == len(tiny_plan.added) == 2
    assert all(c.spec.batch == 4 for c in planned)


def test_evaluation_sums_and_speedup(tiny, tiny_plan):
    _, a = tiny
    ev = evaluate(a, tiny_plan, "v100", batch=64, precision="fp32")
    assert ev.baseline.latency_ms == pytest.approx(sum(t.total_ms for t in ev.baseline.op_times))
    assert ev.baseline.throughput_img_s == pytest.approx(64 / (ev.baseline.latency_ms / 1000))
    assert ev.speedup == pytest.approx(ev.baseline.latency_ms / ev.planned.latency_ms)
    rows = ev.segment_rows()
    merged_rows = [r for r in rows if r["convs"] > 1]
    assert len(merged_rows) == 2 and all(r["planned_ms"] > 0 and r["baseline_ms"] > 0 for r in rows)
    # every segment's baseline covers its convs, BNs and removed activations: more kernels than the merged op
    assert all(r["baseline_ms"] > r["planned_ms"] for r in merged_rows)
    # no removals: the only change is BN folding, never slower
    ev0 = evaluate(a, make_plan(a), "v100", batch=64)
    assert 1.0 <= ev0.speedup < ev.speedup


def test_fp16_uses_tensor_cores_for_merged_dense_convs(tiny, tiny_plan):
    _, a = tiny
    ev = evaluate(a, tiny_plan, "v100", batch=64, precision="fp16")
    units = {c.spec.op_class.value: t.unit for c, t in zip(ev.planned_ops, ev.planned.op_times, strict=True)}
    assert units["dense_conv"] == "tensor_fp16"
    assert all(c.spec.dtype_bytes == 2 for c in ev.planned_ops)


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory, tiny_plan):
    path = tmp_path_factory.mktemp("plans") / "tiny.json"
    tiny_plan.save(path)
    return path


def test_evaluate_json(plan_file):
    r = run("evaluate", "--model", TINY, "--plan", plan_file, "--gpu", "v100", "--batch-size", 128, "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    for key in ("latency_ms", "throughput"):
        assert doc["baseline"][key] > 0 and doc["planned"][key] > 0
    assert doc["speedup"] == pytest.approx(doc["baseline"]["latency_ms"] / doc["planned"]["latency_ms"])
    assert {"members", "baseline_ms", "planned_ms"} <= set(doc["segments"][0])
    assert doc["device"] == "v100-sxm2" and doc["batch_size"] == 128


def test_evaluate_unknown_gpu_is_one_line_with_known_names(plan_file):
    r = run("evaluate", "--model", TINY, "--plan", plan_file, "--gpu", "v1000")
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown device 'v1000'") and "v100-sxm2" in lines[0]


@pytest.mark.parametrize("command", ["roofline", "report"])
def test_plots_render(tmp_path, plan_file, command):
    out = tmp_path / f"{command}.png"
    r = run(command, "--model", TINY, "--plan", plan_file, "--gpu", "a100", "--out", out)
    assert r.exit_code == 0, r.output
    with Image.open(out) as img:
        assert img.size == (1600, 1000)
        colors = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # not blank


def test_roofline_svg_without_plan(tmp_path):
    out = tmp_path / "r.svg"
    r = run("roofline", "--model", TINY, "--gpu", "h100", "--out", out, "--precision", "fp16")
    assert r.exit_code == 0, r.output
    assert out.read_text().lstrip().startswith("<?xml")


def test_devices_list_and_measure(tmp_path):
    r = run("devices", "--format", "json")
    assert r.exit_code == 0
    names = {d["name"] for d in json.loads(r.stdout)}
    assert {"v100-sxm2", "a100-40gb-sxm", "h100-sxm", "h200", "t4"} <= names
    out = tmp_path / "cpu.json"
    r = run("devices", "--measure", "--seconds", "0.5", "--out", out, "--format", "json")
    assert r.exit_code == 0, r.output
    spec = rl.load_device(out)
    assert spec.kind == "cpu" and spec.measured.copy_bandwidth_gbps > 0
