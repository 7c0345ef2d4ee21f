"""Profiles taken under ONNX Runtime and OpenVINO (dsa.measure.runtime_profile) and pricing with them: nodes are
charged to the ops they come from, fused ops cost nothing of their own, a profile of one runtime never prices
another, and the profile round-trips through its file."""

from __future__ import annotations

import json

import pytest

import roofline as rl
from dsa.errors import ArtifactError
from dsa.formats.plan import bn_folded_plan, plan_from_act_list, remove_all_plan
from dsa.formats.profile import load_profile, profile_path
from dsa.graph import analyze
from dsa.ir import Kind, fused_into
from dsa.latency.costs import ProfileCosts, RooflineCosts, plan_ms
from dsa.latency.evaluate import evaluate
from dsa.latency.resolve import resolve
from dsa.measure.calibrate import calibrate, validate
from dsa.measure.runtime_profile import attribute, original_subgraph, profile_runtime, scope_of
from dsa.measure.runtimes import NodeTime
from tests import tiny_models as tm
from tests.cli_helpers import dsa, ok, user_error

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["--model", "tests.tiny_models:tiny_mbv2", "--input-size", "32"]
SPEC = rl.load_device("local-cpu") if any(d.name == "local-cpu" for d in rl.list_devices()) else rl.load_device("v100")


@pytest.fixture(scope="module")
def tiny():
    model = tm.tiny_mbv2().eval()
    return model, analyze(model, "tiny", 32)


@pytest.fixture(scope="module", params=["onnxruntime", "openvino"])
def runtime_profile(request, tiny):
    model, a = tiny
    plan = plan_from_act_list(a, [1, 0, 0, 1, 1])
    return profile_runtime(
        model, a, request.param, batch_size=2, threads=1, warmup=1, repeats=2, plan=plan, device_spec=SPEC
    )


def test_onnx_node_names_give_the_module_path() -> None:
    assert scope_of("/features/features.3/conv/conv.1/conv.1.2/Clip_output_0_nchwc") == "features.3.conv.1.2"
    assert scope_of("/blocks/blocks.1/blocks.1.0/bn1/act/Clip") == "blocks.1.0.bn1.act"
    assert scope_of("/conv_stem/Conv/WithoutBiases") == "conv_stem.Conv"
    assert scope_of("input_abcd_acdb_/conv_stem/Conv") == ""  # a layout conversion the runtime added


def test_a_node_ending_in_an_activation_is_charged_to_its_conv(tiny) -> None:
    _, a = tiny
    act = next(op for op in a.ops.values() if op.kind == Kind.ACT)
    conv = fused_into(a, act)
    assert conv.kind == Kind.CONV
    scope = "/" + "/".join(act.name.split(".")) + "/Clip_output_0"
    runs, fused, other = attribute(
        a,
        [
            NodeTime(scope, "Conv", 2.0, (2.0, 2.0)),
            NodeTime("input_nchw_nChw8c", "ReorderInput", 0.5, (0.5, 0.5)),
        ],
    )
    assert runs == {conv.name: [2.0, 2.0]}
    assert fused[act.name] == conv.name and other == {"input_nchw_nChw8c": 0.5}


def test_a_runtime_profile_measures_what_the_runtime_runs(runtime_profile, tiny) -> None:
    _, a = tiny
    p = runtime_profile
    assert p.complete and p.runtime_name in ("onnxruntime", "openvino") and p.runtime["threads"] == 1
    convs = {op.name for op in a.ops.values() if op.kind == Kind.CONV}
    assert convs <= set(p.ops)  # every conv ran as a node of its own
    bns = {op.name for op in a.ops.values() if op.kind == Kind.BN}
    assert bns <= set(p.fused) and set(p.fused.values()) <= convs  # BN folded into its conv
    assert p.segments and all(s["original"].median_ms > 0 and s["conv"].median_ms > 0 for s in p.segments.values())
    assert {"original", "merged", "sum_of_ops_ms", "unattributed_ms"} <= set(p.end_to_end)


def test_the_runtime_profile_round_trips_and_keeps_its_runtime(runtime_profile, tmp_path) -> None:
    path = tmp_path / "p.json"
    runtime_profile.save(path)
    back = load_profile(path)
    assert back.runtime == runtime_profile.runtime and back.fused == runtime_profile.fused
    assert back.to_json() == runtime_profile.to_json()
    assert profile_path("local-cpu", "m", 32, "fp32", "nchw", runtime="openvino").name == "m_b32_fp32_openvino.json"
    doc = json.loads(path.read_text())
    doc["fused"] = {"features.0.1": 3}
    path.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="field 'fused'"):
        load_profile(path)


def test_fused_ops_cost_nothing_of_their_own(runtime_profile, tiny) -> None:
    _, a = tiny
    costs = ProfileCosts(a, runtime_profile)
    assert costs.runtime == runtime_profile.runtime_name and costs.fused
    ev = evaluate(a, bn_folded_plan(a), costs=costs)
    measured_ops = sum(s.median_ms for s in runtime_profile.ops.values())
    assert ev.baseline.latency_ms == pytest.approx(measured_ops, rel=1e-9)  # every op measured; fused ones are 0
    assert ev.bn_folded_speedup == pytest.approx(1.0)  # the runtime folds BNs itself: no gain to report
    assert ev.runtime == runtime_profile.runtime_name
    assert plan_ms(a, remove_all_plan(a), costs) > 0


def test_the_roofline_under_a_fused_runtime_charges_only_extra_operands(tiny) -> None:
    _, a = tiny
    eager, fused = RooflineCosts(a, "v100", 8), RooflineCosts(a, "v100", 8, runtime="openvino")
    plan = bn_folded_plan(a)
    assert plan_ms(a, plan, fused) < plan_ms(a, plan, eager)
    bn = next(op for op in a.ops.values() if op.kind == Kind.BN)
    assert fused.op_ms(bn) < eager.op_ms(bn) / 10
    with pytest.raises(rl.RooflineError, match="only elementwise ops fuse"):
        rl.predict_fused_op(rl.conv2d_op("c", 1, 8, 8, 4, 4, 4, 4, kernel=(3, 3)), "v100")


def test_calibration_and_validation_per_runtime(runtime_profile, tiny) -> None:
    _, a = tiny
    cal, p = calibrate(a, runtime_profile)
    rep = validate(a, p, cal)
    assert rep["runtime"]["name"] == runtime_profile.runtime_name
    md = rep["merge_decisions"]
    assert md["all"]["n"] == len(md["rows"]) > 0 and 0 <= md["all"]["roofline_right"] <= 1
    row = rep["end_to_end"]["original"]
    assert row["predicted_ms_profile"] == pytest.approx(runtime_profile.end_to_end["sum_of_ops_ms"], rel=1e-6)


def test_the_original_ops_of_a_segment_run_on_their_own(tiny) -> None:
    import torch

    model, a = tiny
    seg = next(s for s in remove_all_plan(a).induced_segments(a) if s.merged)
    sub = original_subgraph(a, seg, act=False)
    x = torch.randn(2, *seg.in_shape)
    assert tuple(sub(x).shape[1:]) == tuple(seg.out_shape)


def test_a_profile_of_one_runtime_never_prices_another(runtime_profile, tiny, tmp_path) -> None:
    _, a = tiny
    other = "openvino" if runtime_profile.runtime_name == "onnxruntime" else "onnxruntime"
    with pytest.raises(ArtifactError, match=f"field 'runtime' is {runtime_profile.runtime_name}, but {other}"):
        resolve(a, profile=runtime_profile, runtime=other)
    with pytest.raises(ArtifactError, match="the roofline models eager PyTorch"):
        resolve(a, gpu="v100", runtime=other, profiles_dir=tmp_path)
    folder = tmp_path / SPEC.name
    folder.mkdir()
    runtime_profile.save(folder / "p.json")
    pricing = resolve(a, gpu=SPEC.name, batch=2, runtime=runtime_profile.runtime_name, profiles_dir=tmp_path)
    assert pricing.profile is not None and pricing.runtime == runtime_profile.runtime_name


def test_cli_profile_plan_and_evaluate_under_a_runtime(tmp_path) -> None:
    prof = tmp_path / "ort.json"
    args = ["--batch-size", "2", "--repeats", "2", "--warmup", "1", "--threads", "1"]
    ok(dsa("profile", *TINY, "--runtime", "onnxruntime", *args, "-o", prof))
    assert load_profile(prof).runtime_name == "onnxruntime"
    plan = tmp_path / "plan.json"
    ok(dsa("plan", *TINY, "--runtime", "onnxruntime", "--profile", prof, "--max-accuracy-cost", "2", "-o", plan))
    pred = json.loads(plan.read_text())["metadata"]["prediction"]
    assert pred["runtime"] == "onnxruntime" and pred["speedup"] > 0
    doc = json.loads(
        ok(dsa("evaluate", "--plan", plan, "--runtime", "onnxruntime", "--profile", prof, "--format", "json"))
    )
    assert doc["runtime"] == "onnxruntime"
    user_error(
        dsa("evaluate", "--plan", plan, "--runtime", "openvino", "--profile", prof),
        "field 'runtime' is onnxruntime, but openvino was asked for",
    )
    user_error(dsa("validate", "--profile", prof, "--runtime", "openvino"), "field 'runtime' is onnxruntime")
    user_error(dsa("profile", *TINY, "--runtime", "openvino", "--channels-last"), "chooses its own layout")
    user_error(dsa("profile", *TINY, "--runtime", "compile"), "no per-node profiler")


def test_covering_plans_hold_every_candidate_segment(tiny) -> None:
    from dsa.ir import signature_of
    from dsa.measure.profiler import candidate_segments
    from dsa.measure.runtime_profile import covering_plans

    _, a = tiny
    want = {signature_of(s) for s, _ in candidate_segments(a)}
    plans = covering_plans(a, sorted(want))
    held = {signature_of(s) for p in plans for s in p.induced_segments(a) if s.merged}
    assert want <= held
    assert len(plans) < len(want)  # several segments per merged network


def test_in_network_segment_times_price_the_segment(tiny) -> None:
    """`--in-network`: each candidate merged conv also timed inside a merged network; costs prefer that time."""
    model, a = tiny
    prof = profile_runtime(
        model, a, "onnxruntime", batch_size=2, threads=1, warmup=1, repeats=2, device_spec=SPEC, in_network=True
    )
    inside = [s for s in prof.segments.values() if s.get("in_network") is not None]
    assert len(inside) == len(prof.segments)
    costs = ProfileCosts(a, prof, in_network=True)  # (float32 profiles price standalone times by default)
    plan = plan_from_act_list(a, [1, 0, 0, 1, 1])
    seg = next(s for s in plan.induced_segments(a) if s.merged)
    from dsa.ir import signature_of
    from dsa.latency.ops import CostedOp, segment_conv_spec

    item = CostedOp(segment_conv_spec(seg, 2, 4), seg.blocks[0], None, "segment", None, seg)
    assert costs.price(item)[0].total_ms == prof.segments[signature_of(seg)]["in_network"].median_ms
    assert load_profile_roundtrip(prof)["in_network"] is not None
    standalone = ProfileCosts(a, prof).price(item)[0].total_ms
    assert standalone == prof.segments[signature_of(seg)]["conv"].median_ms


def load_profile_roundtrip(prof):
    from dsa.formats.profile import profile_from_json

    back = profile_from_json(json.loads(json.dumps(prof.to_json())))
    return next(iter(back.segments.values()))


def test_in_network_needs_a_runtime(tmp_path) -> None:
    user_error(dsa("profile", *TINY, "--in-network", "--out", tmp_path / "p.json"), "--in-network", "--runtime")


def test_a_plan_checked_in_its_own_network(tiny) -> None:
    """plan_in_context: the chosen plan's merged convs get their times from that plan's own network, and planning
    stops once the plan no longer changes."""
    from dsa.measure.runtime_profile import plan_in_context
    from dsa.planner.planner import solve_plan

    model, a = tiny
    prof = profile_runtime(model, a, "onnxruntime", batch_size=2, threads=1, warmup=1, repeats=2, device_spec=SPEC)

    def solve(costs):
        return solve_plan(a, max_accuracy_cost=2.0, costs=costs)

    result, updated, history = plan_in_context(a, model, prof, solve, threads=1, repeats=2, rounds=3)
    assert 1 <= len(history) <= 3
    merged = {s for s in result.plan.induced_segments(a) if s.merged}
    from dsa.ir import signature_of

    timed = {k for k, e in updated.segments.items() if e.get("in_network") is not None}
    assert {signature_of(s) for s in merged} & set(prof.segments) <= timed
    assert not any(e.get("in_network") for e in prof.segments.values())  # the given profile is left as it was
