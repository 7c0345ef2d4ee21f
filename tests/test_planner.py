"""The planner: the MILP (HiGHS) against an independent exact DP, on random DAGs and on mobilenet_v2_140; plans
against DepthShrinker's patterns; options, errors and the `dsa plan` / `dsa pareto` commands."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dsa import load_plan
from dsa.errors import ArtifactError, PlanError, PlanFileError
from dsa.formats.importance import load_importance
from dsa.formats.plan import ds_pattern_act_list, plan_from_act_list
from dsa.graph import analyze
from dsa.latency.costs import plan_ms
from dsa.latency.evaluate import evaluate
from dsa.planner.dp import dp_frontier, solve_dp
from dsa.planner.planner import Planner, fastest_plan, plan_for_target
from dsa.planner.solver import PathProblem, Tie, dominated_edges, quiet_fd1, solve_milp
from tests import tiny_models as tm
from tests.cli_helpers import dsa, ok, user_error

TINY = "tests.tiny_models:tiny_mbv2"
SIZE = 32


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------- MILP vs DP on random instances


@st.composite
def instances(draw):
    """Random DAGs (nodes in topological order, one or more runs), integer times, integer or quarter costs."""
    src, dst, times, accs, starts, ends = [], [], [], [], [], []
    node = 0
    quarter = draw(st.booleans())
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(1, 7))
        starts.append(node)
        ends.append(node + k)
        pairs = [(i, i + 1) for i in range(k) if draw(st.integers(0, 9)) > 0]  # sometimes a gap: dead ends
        pairs += draw(st.lists(st.tuples(st.integers(0, k - 1), st.integers(1, k)), max_size=14))
        for i, j in pairs:
            if i < j:
                src.append(node + i)
                dst.append(node + j)
                times.append(draw(st.integers(1, 30)))
                acc = draw(st.integers(0, 4))
                accs.append(acc + (draw(st.integers(0, 3)) / 4 if quarter else 0))
        node += k + 1
    fixed = draw(st.integers(0, 10))
    problem = PathProblem(
        node, tuple(src), tuple(dst), tuple(map(float, times)), tuple(accs), tuple(starts), tuple(ends), float(fixed)
    )
    if draw(st.booleans()):
        return problem, {"budget_ms": fixed + draw(st.integers(0, 120)) + 0.5}
    return problem, {"max_acc": draw(st.integers(0, 12)) + 0.125}


def _check_paths(p: PathProblem, edges) -> float:
    """The chosen edges form one start-to-end path per run; returns their time."""
    by_src = {}
    for e in edges:
        assert p.src[e] not in by_src
        by_src[p.src[e]] = e
    total = p.fixed_ms
    used = 0
    for s, t in zip(p.starts, p.ends, strict=True):
        v = s
        while v != t:
            e = by_src[v]
            total += p.time_ms[e]
            used += 1
            v = p.dst[e]
    assert used == len(edges)
    return total


@settings(max_examples=220, deadline=None)
@given(instances())
def test_milp_and_dp_agree_on_random_instances(inst) -> None:
    p, kw = inst
    sol = solve_milp(p, **kw)
    acc, t = solve_dp(p, **kw)
    if math.isnan(acc):
        assert not sol.found and sol.status == "infeasible"
        return
    assert sol.found and sol.status == "optimal"
    assert sol.accuracy_cost == pytest.approx(acc, abs=1e-6)
    assert sol.time_ms == pytest.approx(t, abs=1e-6)
    assert _check_paths(p, sol.edges) == pytest.approx(sol.time_ms)
    if "budget_ms" in kw:
        assert sol.time_ms <= kw["budget_ms"]
    else:
        assert sol.accuracy_cost <= kw["max_acc"]


@settings(max_examples=150, deadline=None)
@given(instances())
def test_the_presolve_keeps_the_optimum(inst) -> None:
    p, kw = inst
    full = solve_milp(p, presolve=False, **kw)
    reduced = solve_milp(p, **kw)
    assert reduced.status == full.status
    if full.found:
        assert reduced.accuracy_cost == pytest.approx(full.accuracy_cost, abs=1e-9)
        assert reduced.time_ms == pytest.approx(full.time_ms, abs=1e-9)
        assert _check_paths(p, reduced.edges) == pytest.approx(reduced.time_ms)  # indices into p, not the reduced
        assert reduced.variables == p.n_edges - len(dominated_edges(p)) <= full.variables


def test_dominated_edges_of_a_hand_made_instance() -> None:
    # 0 -> 1 -> 2 costs (2+2 ms, 1+0); the direct edges 0 -> 2: (5 ms, 1) is dominated by the path, (3 ms, 1) is not,
    # (3 ms, 1) again is a tie (the lower index stays), (3 ms, 2) is dominated by its parallel edge
    p = PathProblem(
        3, (0, 1, 0, 0, 0, 0), (1, 2, 2, 2, 2, 2), (2.0, 2.0, 5.0, 3.0, 3.0, 3.0), (1, 0, 1, 1, 1, 2), (0,), (2,)
    )
    assert dominated_edges(p) == {2, 4, 5}
    sol = solve_milp(p, budget_ms=3.5)
    assert sol.edges == (3,) and sol.variables == 3
    # an edge a block tie couples to others is never dropped, nor used to drop another
    p = PathProblem(3, (0, 1, 0), (1, 2, 2), (1.0, 1.0, 5.0), (0, 0, 1), (0,), (2,))
    assert dominated_edges(p) == {2}
    assert dominated_edges(replace(p, ties=(Tie("b", ((2,),), (), (), ()),))) == set()
    assert dominated_edges(replace(p, ties=(Tie("b", ((0,),), (), (), ()),))) == set()  # the path uses tied edge 0


def test_dp_frontier_of_a_hand_made_instance() -> None:
    # run 0: 0 -> 1 -> 2 (times 5+5, free) or 0 -> 2 (time 3, cost 1); run 1: 3 -> 4 (2) or (1, cost 2)
    p = PathProblem(
        5, (0, 1, 0, 3, 3), (1, 2, 2, 4, 4), (5.0, 5.0, 3.0, 2.0, 1.0), (0, 0, 1, 0, 2), (0, 3), (2, 4), 1.0
    )
    assert dp_frontier(p) == [(0.0, 13.0), (1.0, 6.0), (3.0, 5.0)]
    assert solve_dp(p, budget_ms=6.5) == (1.0, 6.0)
    assert solve_milp(p, budget_ms=6.5).edges == (2, 3)
    assert solve_dp(p, budget_ms=4.0)[0] != solve_dp(p, budget_ms=4.0)[0]  # nan: infeasible
    assert solve_milp(p, budget_ms=4.0).status == "infeasible"
    assert solve_milp(p, max_acc=0.5).time_ms == 13.0


def test_highs_output_never_reaches_fd_1(capfd) -> None:
    print("before", flush=True)
    with quiet_fd1():
        os.write(1, b"solver chatter\n")  # what HiGHS does: straight to file descriptor 1
    os.write(1, b"after\n")
    assert capfd.readouterr().out == "before\nafter\n"


# -------------------------------------------------------------------------------------- tiny network


@pytest.fixture(scope="module")
def tiny():
    return analyze(tm.tiny_mbv2(), TINY, SIZE)


def test_plan_for_target_meets_it_and_agrees_with_evaluate(tiny) -> None:
    planner = Planner(tiny, "v100", 32, "fp32")
    fastest = planner.fastest()
    for speedup in (
        1.0,
        0.5 * (1 + planner.baseline_ms / fastest.planned_ms),
        planner.baseline_ms / fastest.planned_ms,
    ):
        r = planner.for_target(target_speedup=speedup)
        ev = evaluate(tiny, r.plan, "v100", 32, "fp32")
        assert r.planned_ms == pytest.approx(ev.planned.latency_ms, rel=1e-9)
        assert r.speedup >= speedup * (1 - 1e-9)
        assert r.accuracy_cost == len(r.plan.removed)  # the default proxy: each removed activation costs 1
        acc, t = solve_dp(planner.problem, budget_ms=planner.baseline_ms / speedup * (1 + 1e-9))
        assert (r.accuracy_cost, r.planned_ms) == (pytest.approx(acc), pytest.approx(t))
        meta = r.plan.metadata
        assert meta["prediction"]["speedup"] == pytest.approx(r.speedup)
        assert meta["solver"]["status"] == "optimal" and meta["solver"]["name"].startswith("scipy.optimize.milp")
        assert {"objective_value", "mip_gap", "solve_s"} <= set(meta["solver"])
    # throughput and latency targets are the same budget
    thr = planner.for_target(target_throughput=0.9 * fastest.planned_throughput)
    lat = planner.for_target(target_latency_ms=32e3 / (0.9 * fastest.planned_throughput))
    assert thr.plan.removed == lat.plan.removed


def test_unreachable_target_says_the_best_achievable(tiny) -> None:
    best = fastest_plan(tiny, "v100", 32)
    with pytest.raises(PlanError, match=f"best achievable is {best.planned_throughput:.0f} img/s") as e:
        plan_for_target(tiny, "v100", 32, target_throughput=2 * best.planned_throughput)
    assert not isinstance(e.value, ArtifactError)  # nothing is wrong with a file


def test_a_malformed_plan_file_is_a_plan_error_and_an_artifact_error(tmp_path) -> None:
    (tmp_path / "p.json").write_text('{"schema_version": 1, "kind": "dsa.plan"}')
    with pytest.raises(PlanFileError, match="field '[a-z_]+' is missing") as e:
        load_plan(tmp_path / "p.json")
    assert isinstance(e.value, PlanError) and isinstance(e.value, ArtifactError)


def test_keep_and_remove_are_honoured(tiny) -> None:
    planner = Planner(tiny, "v100", 32, "fp32", keep=["features.1"], remove=["features.2.conv.2"])
    r = planner.fastest()
    assert "features.2.conv.2" in r.removed
    assert not {"features.1.conv.2", "features.1.conv.5"} & set(r.removed)
    free = Planner(tiny, "v100", 32, "fp32").fastest()
    assert {"features.1.conv.2", "features.1.conv.5"} <= set(free.removed)
    assert r.planned_ms >= free.planned_ms


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"keep": ["features.1.conv.2"], "remove": ["features.1.conv.2"]}, "both --keep and --remove"),
        ({"keep": ["nope"]}, "--keep 'nope' is neither an activation nor a block"),
        ({"remove": ["features.4.2"]}, "cannot be removed: it feeds"),
        ({"keep": ["features.1"], "remove": ["features.1.conv.5"]}, "is kept by --keep features.1"),
        (
            {"keep": ["features.1.conv.2"], "remove": ["features.1.conv.5"], "granularity": "block"},
            "a block is kept or removed as a whole",
        ),
        ({"granularity": "layer"}, "granularity must be one of"),
        ({"importance": {"nope": 1.0}}, "importance: 'nope' is not an activation"),
        ({"importance": {"features.1.conv.2": -1}}, "finite number >= 0"),
    ],
)
def test_contradictory_or_unknown_options_are_refused(tiny, kw, message) -> None:
    with pytest.raises(PlanError, match=message.replace("(", r"\(")):
        Planner(tiny, "v100", 32, **kw)


def test_importance_scores_steer_the_plan(tiny, tmp_path) -> None:
    target = 0.5 * (1 + Planner(tiny, "v100", 32).fastest().speedup)
    plain = plan_for_target(tiny, "v100", 32, target_speedup=target)
    assert plain.removed
    costly = {n: 100.0 for n in plain.removed}
    path = tmp_path / "importance.json"
    path.write_text(json.dumps({"scores": costly, "default": 0.5}))
    scores, default = load_importance(path)
    assert (scores, default) == (costly, 0.5)
    r = plan_for_target(tiny, "v100", 32, target_speedup=target, importance=scores, default_cost=default)
    assert r.accuracy_cost == pytest.approx(sum(scores.get(n, default) for n in r.removed))
    assert r.accuracy_cost < sum(scores.get(n, default) for n in plain.removed)  # it avoids the costly ones
    assert r.accuracy_proxy == "importance scores"
    planner = Planner(tiny, "v100", 32, importance=scores, default_cost=default)
    assert solve_dp(planner.problem, budget_ms=r.target["budget_ms"] * (1 + 1e-9))[0] == pytest.approx(r.accuracy_cost)
    (tmp_path / "bad.json").write_text(json.dumps({"features.1.conv.2": 1}))
    with pytest.raises(PlanError, match="expected an object"):
        load_importance(tmp_path / "bad.json")


def test_block_granularity_gives_keep_lists(tiny) -> None:
    planner = Planner(tiny, "v100", 32, "fp32", granularity="block")
    frontier = dp_frontier(planner.problem)
    for acc, t in frontier:
        r = planner.fastest(acc)
        assert (r.accuracy_cost, r.planned_ms) == (pytest.approx(acc), pytest.approx(t))
        keep = list(r.act_list)
        ds = plan_from_act_list(tiny, keep)
        assert set(ds.removed) == set(r.plan.removed)
        assert ds.added == r.plan.added
        assert r.planned_ms == pytest.approx(evaluate(tiny, r.plan, "v100", 32).planned.latency_ms, rel=1e-9)


def test_max_kernel_caps_merged_kernels(tiny) -> None:
    r = Planner(tiny, "v100", 32, max_kernel=3).fastest()
    assert all(max(s["kernel"]) <= 3 for s in r.plan.segments)
    assert max(max(s["kernel"]) for s in Planner(tiny, "v100", 32).fastest().plan.segments) > 3


# -------------------------------------------------------------------------------------- the CLI


def test_cli_plan_solves_for_a_target_and_writes_valid_json(tmp_path) -> None:
    out = tmp_path / "p.json"
    doc = json.loads(
        ok(
            dsa(
                "plan",
                "--model",
                TINY,
                "--input-size",
                SIZE,
                "--batch-size",
                32,
                "--target-speedup",
                "1.5",
                "--out",
                out,
                "--format",
                "json",
            )
        )
    )
    assert doc == load_plan(out).to_json()
    assert doc["source"]["kind"] == "planner"
    assert doc["metadata"]["prediction"]["speedup"] >= 1.5 * (1 - 1e-9)
    table = ok(
        dsa(
            "plan",
            "--model",
            TINY,
            "--input-size",
            SIZE,
            "--batch-size",
            32,
            "--target-speedup",
            "1.5",
            "--granularity",
            "block",
            "--out",
            out,
        )
    )
    for fragment in (
        "merged segments",
        "removed",
        "speed-up",
        "solver scipy.optimize.milp (HiGHS): optimal",
        "DepthShrinker keep list (--act-list):",
        f"wrote {out}",
    ):
        assert fragment in " ".join(table.split())


def test_cli_unreachable_target_exits_1_with_the_best_throughput(tiny, tmp_path) -> None:
    best = fastest_plan(tiny, "v100", 32)
    line = user_error(
        dsa(
            "plan",
            "--model",
            TINY,
            "--input-size",
            SIZE,
            "--batch-size",
            32,
            "--target-throughput",
            f"{2 * best.planned_throughput:.0f}",
            "--out",
            tmp_path / "p.json",
        ),
        "is unreachable",
        f"the best achievable is {best.planned_throughput:.0f} img/s",
    )
    assert not (tmp_path / "p.json").exists(), line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--act-list", "1,0,0,1,1", "--target-speedup", "2"], "--act-list makes a plan without the solver"),
        (["--remove-all", "--keep", "features.1"], "it cannot be combined with --keep"),
        (["--target-speedup", "2", "--target-latency", "3"], "give one target for the solver"),
        ([], "give exactly one of --act-list, --ds-pattern, --remove-all, or a target"),
        (["--target-speedup", "2", "--keep", "features.1", "--remove", "features.1"], "both --keep and --remove"),
        (["--target-speedup", "2", "--keep", "nope"], "is neither an activation nor a block"),
        (["--target-speedup", "2", "--precision", "fp8"], "Invalid value for '--precision'"),
        (["--target-speedup", "2", "--granularity", "layer"], "Invalid value for '--granularity'"),
        (["--target-speedup", "-1"], "must be a positive number"),
    ],
)
def test_cli_refuses_contradictory_options(tmp_path, args, message) -> None:
    user_error(dsa("plan", "--model", TINY, "--input-size", SIZE, *args, "--out", tmp_path / "p.json"), message)


def test_cli_act_list_with_gpu_adds_a_prediction(tmp_path) -> None:
    out = tmp_path / "p.json"
    text = ok(dsa("plan", "--model", TINY, "--input-size", SIZE, "--act-list", "1,0,0,1,1", "--gpu", "v100", "-o", out))
    assert "speed-up" in text
    assert load_plan(out).metadata["prediction"]["device"] == "v100-sxm2"


def test_cli_pareto_png_and_json(tmp_path) -> None:
    png = tmp_path / "pareto.png"
    doc = json.loads(
        ok(
            dsa(
                "pareto",
                "--model",
                TINY,
                "--input-size",
                SIZE,
                "--batch-size",
                32,
                "--points",
                5,
                "--out",
                png,
                "--format",
                "json",
            )
        )
    )
    with Image.open(png) as im:
        assert im.size == (1600, 1000)
    assert set(doc["frontiers"]) == {"activation", "block"}
    for pts in doc["frontiers"].values():
        speeds = [p["speedup"] for p in pts]
        assert speeds == sorted(speeds) and pts[0]["accuracy_cost"] == 0
    assert doc["ds_patterns"] == []  # tiny_mbv2 is not MobileNetV2-shaped
    user_error(dsa("pareto", "--model", TINY, "--input-size", SIZE, "--out", tmp_path / "p.txt"), "use a .png or .svg")


# ---------------------------------------------------------------------------------- mobilenet_v2_140


@pytest.fixture(scope="module")
def mbv2():
    from dsa.models import create_model

    return analyze(create_model("mobilenet_v2_140"), "mobilenet_v2_140", 224)


@pytest.fixture(scope="module")
def planners(mbv2):
    return {g: Planner(mbv2, "v100", 128, "fp32", granularity=g) for g in ("activation", "block")}


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["activation", "block"])
def test_mobilenet_v2_140_milp_agrees_with_dp(planners, granularity) -> None:
    planner = planners[granularity]
    front = dp_frontier(planner.problem)
    assert len(front) > 15
    for throughput in (3000, 4000, 5000, 6000, 7000, 8000):
        budget = 128e3 / throughput
        r = planner.for_target(target_throughput=throughput)
        acc, t = solve_dp(planner.problem, budget_ms=budget * (1 + 1e-9))
        assert r.accuracy_cost == acc and r.planned_ms == pytest.approx(t, rel=1e-9)
        assert r.planned_throughput >= throughput * (1 - 1e-9)
        assert r.solver["solve_s"] < 1.0
    for max_acc in (0, 5, 13, 22):
        r = planner.fastest(max_acc)
        best = min(t for acc, t in front if acc <= max_acc)
        assert r.planned_ms == pytest.approx(best, rel=1e-9)


@pytest.mark.slow
def test_mobilenet_v2_140_pruning_milp_agrees_with_dp(mbv2) -> None:
    planner = Planner(mbv2, "v100", 128, "fp32", prune_convs=True)
    assert len(dominated_edges(planner.problem)) > planner.problem.n_edges / 2  # the presolve's work
    for speedup in (1.3, 2.0, 3.0, 6.0):
        r = planner.for_target(target_speedup=speedup)
        acc, t = solve_dp(planner.problem, budget_ms=planner.baseline_ms / speedup * (1 + 1e-9))
        assert r.accuracy_cost == acc and r.planned_ms == pytest.approx(t, rel=1e-9)
    front = dp_frontier(planner.problem)
    for max_acc in (0, 5, 20):
        assert planner.fastest(max_acc).planned_ms == pytest.approx(min(t for a, t in front if a <= max_acc), rel=1e-9)


@pytest.mark.slow
def test_mobilenet_v2_140_planner_beats_depthshrinker_patterns(mbv2, planners) -> None:
    """At each pattern's predicted speed-up, the planner removes no more activations than the pattern does."""
    for letter in "ABCDEF":
        plan = plan_from_act_list(mbv2, ds_pattern_act_list(letter))
        speedup = evaluate(mbv2, plan, "v100", 128, "fp32").speedup
        assert planners["block"].baseline_ms / plan_ms(mbv2, plan, planners["block"].costs) == pytest.approx(speedup)
        for granularity, planner in planners.items():
            r = planner.for_target(target_speedup=speedup)
            assert r.accuracy_cost <= len(plan.removed), (letter, granularity)
            assert r.speedup >= speedup * (1 - 1e-9)


@pytest.mark.slow
def test_mobilenet_v2_140_unreachable_and_pareto(mbv2, planners) -> None:
    from dsa.planner.pareto import frontier

    with pytest.raises(PlanError, match=r"best achievable is \d+ img/s"):
        planners["activation"].for_target(target_throughput=40000)
    f = frontier(list(planners.values()), points=6)
    assert [p.name for p in f.patterns] == list("ABCDEF")
    assert f.patterns[0].removed == 13 and f.patterns[-1].removed == 33


def test_finetune_example_runs_on_a_tiny_network(capsys) -> None:
    import runpy

    example = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "finetune_plain_pytorch.py"))
    err = example["main"](["--model", TINY, "--classes", "10", "--size", "40", "--steps", "2"])
    assert err < 1e-4
    assert "merged network" in capsys.readouterr().out


def test_cli_plan_with_a_measured_profile(tiny, tmp_path) -> None:
    """--profile: the profile's device, batch and precision, its measured times where it has them."""
    profile_mod = pytest.importorskip("dsa.formats.profile")
    import roofline as rl

    doc = {
        "schema_version": profile_mod.SCHEMA_VERSION,
        "kind": "dsa.profile",
        "model": tiny.model_name,
        "fingerprint": tiny.fingerprint,
        "input_size": SIZE,
        "batch_size": 16,
        "precision": "fp16",
        "layout": "nchw",
        "environment": {},
        "device_spec": rl.load_device("a100").to_dict(),
        "ops": {op.name: {"median_ms": 0.05} for op in list(tiny.ops.values())[1:-1]},
        "segments": {},
        "end_to_end": {},
    }
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(doc))
    out = tmp_path / "p.json"
    ok(dsa("plan", "--model", TINY, "--input-size", SIZE, "--profile", path, "--target-speedup", "1.1", "-o", out))
    pred = load_plan(out).metadata["prediction"]
    assert pred["batch_size"] == 16 and pred["precision"] == "fp16" and pred["device"].startswith("a100")
    assert pred["source"].startswith("profile of")
    prof = profile_mod.load_profile(path)
    assert pred["baseline_latency_ms"] == pytest.approx(
        evaluate(tiny, load_plan(out), None, 16, "fp16", profile=prof).baseline.latency_ms
    )
    user_error(
        dsa(
            "plan",
            "--model",
            TINY,
            "--input-size",
            SIZE,
            "--profile",
            path,
            "--batch-size",
            8,
            "--target-speedup",
            "1.1",
            "-o",
            out,
        ),
        "field 'batch_size' is 16, but batch 8 was asked for",
    )


@pytest.mark.slow
def test_cli_default_model_target_throughput_4000(tmp_path, monkeypatch) -> None:
    """The main job: `dsa plan --gpu v100 --target-throughput 4000` on the default model, plan.json by default."""
    monkeypatch.chdir(tmp_path)
    doc = json.loads(ok(dsa("plan", "--gpu", "v100", "--target-throughput", "4000", "--format", "json")))
    assert doc["model"] == "mobilenet_v2_140" and doc["source"]["kind"] == "planner"
    assert doc["metadata"]["prediction"]["planned_throughput_img_s"] >= 4000
    assert doc["metadata"]["solver"]["status"] == "optimal"
    assert load_plan(tmp_path / "plan.json").to_json() == doc


def test_block_importance_prices_whole_blocks(tmp_path: Path) -> None:
    """At block granularity a file's whole-block scores (dsa importance's "segments") price each block: its
    activations cost that much together, and the planner avoids the expensive ones."""
    a = analyze(tm.tiny_mbv2().eval(), "tests.tiny_models:tiny_mbv2", 32)
    inner = a.blocks()[1:-1]
    cheap = inner[-1]
    members = [s.name for s in a.activations if s.block == cheap and s.removable]
    costly = dict.fromkeys(a.removable, 1e3)
    blocks = {b: (0.0 if b == cheap else 1e3) for b in inner}
    p = Planner(a, "v100", granularity="block", importance=costly, block_importance=blocks)
    assert math.fsum(p.act_cost[m] for m in members) == pytest.approx(0.0)
    assert math.fsum(p.act_cost[m] for m in a.removable if a.site(m).block == inner[0]) == pytest.approx(1e3)
    r = p.fastest(max_accuracy_cost=0.5)
    assert set(r.removed) <= set(members) and "whole-block" in r.accuracy_proxy
    with pytest.raises(PlanError, match="--granularity block only"):
        Planner(a, "v100", block_importance=blocks)
    with pytest.raises(PlanError, match="not a block"):
        Planner(a, "v100", granularity="block", block_importance={"nope": 1.0})
    # the CLI takes them from the importance file at block granularity
    imp = tmp_path / "imp.json"
    imp.write_text(json.dumps({"scores": costly, "default": 1.0, "segments": blocks}))
    out = ok(dsa("plan", "--model", "tests.tiny_models:tiny_mbv2", "--input-size", 32, "--granularity", "block",
                 "--importance", imp, "--max-accuracy-cost", 0.5, "-o", tmp_path / "p.json"))  # fmt: skip
    assert "whole-block scores" in out
