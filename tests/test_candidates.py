"""The planner's decision structure (dsa.planner.candidates): every start-to-end path of every run's DAG is a valid plan
that induces exactly the segments the path claims, and the path's summed edge times are the plan's predicted
latency (the same number `dsa evaluate` gives)."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import roofline as rl
from dsa.errors import ArtifactError, DsaError, PlanError
from dsa.formats.plan import AddedActivation, ds_pattern_act_list, make_plan, plan_from_act_list
from dsa.graph import analyze
from dsa.ir import signature_of
from dsa.latency.costs import ProfileCosts, RooflineCosts, plan_ms
from dsa.latency.evaluate import evaluate
from dsa.planner.candidates import CUT, KEEP, SEGMENT, build_candidates
from tests import tiny_models as tm

SIZE = 32
DEVICE = rl.load_device("v100")


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------- test-local edge-case networks


class _Basic(nn.Module):
    """ResNet's BasicBlock with an identity shortcut and its own ReLUs (an activation between residual units)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(x + self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer = nn.Sequential(_Basic(8), _Basic(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layer(self.stem(x)), 1), 1))


class TinyChain(nn.Module):
    """Zero padding, dropout, a strided conv followed by two more convs (stride rule), a linear bottleneck
    (conv + BN straight into conv) and 5x5 kernels (for --max-kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 5, 1, 2, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU6(),
            nn.ZeroPad2d((1, 1, 1, 1)),
            nn.Conv2d(8, 8, 3, 2, 0, groups=8, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU6(),
            nn.Dropout(0.1),
            nn.Conv2d(8, 12, 1, bias=False),
            nn.BatchNorm2d(12),
            nn.Conv2d(12, 16, 5, 1, 2, bias=True),
            nn.BatchNorm2d(16),
            nn.ReLU6(),
            nn.Conv2d(16, 16, 1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.body(x), 1), 1))


NETS = {
    "tiny_mbv2": tm.tiny_mbv2,
    "tiny_se": tm.tiny_se,
    "tiny_projection_resnet": tm.tiny_projection_resnet,
    "tiny_concat": tm.tiny_concat,
    "tiny_reflect": tm.tiny_reflect,
    "tiny_resnet": lambda: tm._init(TinyResNet()),
    "tiny_chain": lambda: tm._init(TinyChain()),
}


@pytest.fixture(scope="module")
def analyses():
    return {name: analyze(build(), name, SIZE) for name, build in NETS.items()}


def _random_path(cands, rng: random.Random):
    out = cands.out_edges()
    chosen = []
    for r in range(cands.n_runs):
        v = cands.starts[r]
        while v != cands.ends[r]:
            e = rng.choice(out[v])
            chosen.append(e)
            v = e.dst
    return chosen


def _check_path(a, cands, chosen, costs) -> None:
    removed, added, boundaries = cands.path_plan_parts(chosen)
    plan = make_plan(a, removed, [AddedActivation(x, t) for x, t in added], boundaries)
    segs = plan.induced_segments(a)
    claimed = [e.segment for e in chosen if e.segment is not None]
    assert sorted(s.convs for s in segs) == sorted(s.convs for s in claimed)
    by_convs = {s.convs: s for s in segs}
    for s in claimed:  # same shapes, not just the same convs
        got = by_convs[s.convs]
        assert (got.kernel, got.stride, got.in_shape, got.out_shape, got.residual) == (
            s.kernel,
            s.stride,
            s.in_shape,
            s.out_shape,
            s.residual,
        )
    assert set(plan.removed) == {n for e in chosen for n in e.removes}
    path_ms = cands.fixed_ms + sum(e.time_ms for e in chosen)
    ev = evaluate(a, plan, DEVICE, costs.batch, costs.precision)
    assert path_ms == pytest.approx(ev.planned.latency_ms, rel=1e-9)
    assert cands.baseline_ms == pytest.approx(ev.baseline.latency_ms, rel=1e-9)
    assert plan_ms(a, plan, costs) == pytest.approx(path_ms, rel=1e-9)


# ------------------------------------------------------------------------------------------ enumeration


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(NETS)), seed=st.integers(0, 2**32 - 1), batch=st.sampled_from([1, 8, 128]))
def test_random_paths_induce_exactly_the_claimed_segments(analyses, name, seed, batch) -> None:
    a = analyses[name]
    costs = RooflineCosts(a, DEVICE, batch, "fp32")
    cands = build_candidates(a, costs)
    _check_path(a, cands, _random_path(cands, random.Random(seed)), costs)


def _path_through(cands, edge, rng: random.Random):
    """A random start-to-end path of every run, through ``edge`` in its run."""
    into: dict[int, list] = {}
    for e in cands.edges:
        into.setdefault(e.dst, []).append(e)
    back = []  # walk backwards from the edge to its run's start
    v = edge.src
    while v not in cands.starts:
        e = rng.choice(into[v])
        back.append(e)
        v = e.src
    out = cands.out_edges()
    chosen = [*reversed(back), edge]
    v = edge.dst
    while v not in cands.ends:
        e = rng.choice(out[v])
        chosen.append(e)
        v = e.dst
    others = [e for e in _random_path(cands, rng) if e.run != edge.run]
    return chosen + others


@pytest.mark.parametrize("name", ["tiny_mbv2", "tiny_resnet", "tiny_chain"])
def test_every_edge_lies_on_a_valid_path(analyses, name) -> None:
    a = analyses[name]
    costs = RooflineCosts(a, DEVICE, 8, "fp16")
    cands = build_candidates(a, costs)
    rng = random.Random(0)
    for edge in cands.edges:
        _check_path(a, cands, _path_through(cands, edge, rng), costs)


def test_structure_of_a_residual_unit_with_activations(analyses) -> None:
    """tiny_mbv2's block 1 is a residual unit: its merged edge, and the alternative through its branch."""
    a = analyses["tiny_mbv2"]
    cands = build_candidates(a, RooflineCosts(a, DEVICE, 8, "fp32"))
    unit_edges = [e for e in cands.edges if e.segment is not None and e.segment.residual]
    assert unit_edges and all(e.segment.convs[0] == "features.1.conv.0" for e in unit_edges)
    kinds = {e.kind for e in cands.edges}
    assert kinds == {SEGMENT, KEEP, CUT, "enter", "add"}
    (add,) = {e for e in cands.edges if e.kind == "add"}
    assert [a.ops[o].name for o in add.ops] == ["features.1.add"]
    # keep edges leave the first layer of the branch; the add edge only leaves its second layer
    assert add.time_ms > 0 and add.removes == ()
    # a path through the branch that removes both activations does not exist (it would be the unit again)
    out = cands.out_edges()
    enter = next(e for e in cands.edges if e.kind == "enter")

    def all_removed_paths(v, removed_all: bool):
        if v == add.src:
            yield removed_all
            return
        for e in out[v]:
            if e.kind != "add":
                yield from all_removed_paths(e.dst, removed_all and e.kind != KEEP)

    assert not any(all_removed_paths(enter.dst, True))


def test_stride_rule_and_max_kernel(analyses) -> None:
    a = analyses["tiny_chain"]
    costs = RooflineCosts(a, DEVICE, 8, "fp32")
    free = build_candidates(a, costs)
    segs = [e.segment for e in free.edges if e.segment is not None]
    for s in segs:  # after the strided depthwise conv at most one more conv
        names = list(s.convs)
        if "body.4" in names:
            assert len(names[names.index("body.4") + 1 :]) <= 1
    assert max(max(s.kernel) for s in segs) > 5
    capped = build_candidates(a, costs, max_kernel=5)
    capped_segs = [e.segment for e in capped.edges if e.segment is not None]
    assert all(max(s.kernel) <= 5 for s in capped_segs if s.merged)
    assert any(s.kernel == (5, 5) and not s.merged for s in capped_segs)  # a lone 5x5 conv is no merge
    rng = random.Random(1)
    for _ in range(10):
        _check_path(a, capped, _random_path(capped, rng), costs)


def test_plain_junctions_are_free_boundaries(analyses) -> None:
    """The linear bottleneck (conv + BN into conv, no activation) can stay unmerged at no accuracy cost."""
    a = analyses["tiny_chain"]
    cands = build_candidates(a, RooflineCosts(a, DEVICE, 8, "fp32"))
    free_nodes = [n for n in cands.nodes if n.boundary == "body.9"]
    assert len(free_nodes) == 1
    into = [e for e in cands.edges if e.dst == free_nodes[0].index]
    assert into and all(e.removes == () or e.kind == SEGMENT for e in into)


def test_block_granularity_structure(analyses) -> None:
    a = analyses["tiny_mbv2"]
    cands = build_candidates(a, RooflineCosts(a, DEVICE, 8, "fp32"), granularity="block")
    assert cands.block_acts["features.1"] == ("features.1.conv.2", "features.1.conv.5")
    assert "features.4" in cands.block_locked or cands.block_acts["features.4"] == ()
    added = [e for e in cands.edges if e.added_after]
    assert {e.added_after for e in added} == {"features.1.add", "features.2.conv.7", "features.3.conv.7"}
    for e in added:  # an added copy costs the same plus the ReLU6
        twin = next(
            f
            for f in cands.edges
            if not f.added_after and (f.src, f.dst, f.ops, f.kind) == (e.src, e.dst, e.ops, e.kind)
        )
        assert e.time_ms > twin.time_ms
    # no segment crosses a middle block's output (the stem, first, is not cut: it may merge into block 1)
    for e in cands.edges:
        if e.segment is not None:
            assert len(set(e.segment.blocks) - {"features.0"}) <= 1, e.segment.blocks


def test_invalid_arguments(analyses) -> None:
    a = analyses["tiny_mbv2"]
    costs = RooflineCosts(a, DEVICE, 8, "fp32")
    with pytest.raises(PlanError, match="granularity"):
        build_candidates(a, costs, granularity="layer")
    with pytest.raises(PlanError, match="max-kernel"):
        build_candidates(a, costs, max_kernel=0)


# ------------------------------------------------------------------------------------- costs of plans


def test_plan_ms_matches_evaluate_for_keep_lists(analyses) -> None:
    a = analyses["tiny_mbv2"]
    costs = RooflineCosts(a, DEVICE, 32, "fp16")
    for keep in ([1, 0, 0, 1, 1], [0, 0, 0, 0, 1], [1, 1, 0, 1, 1]):
        plan = plan_from_act_list(a, keep)
        assert plan_ms(a, plan, costs) == pytest.approx(evaluate(a, plan, DEVICE, 32, "fp16").planned.latency_ms)


def test_profile_costs_follow_evaluate_with_the_same_profile(analyses) -> None:
    """Measured times (a synthetic profile) price ops, merged segments and added ReLU6s as `dsa evaluate
    --profile` does."""
    profile_mod = pytest.importorskip("dsa.formats.profile")
    a = analyses["tiny_mbv2"]
    rng = random.Random(3)
    segs = {}
    for keep in ([1, 0, 0, 1, 1], [0, 0, 0, 0, 1]):
        for s in plan_from_act_list(a, keep).induced_segments(a):
            if s.merged:
                segs[signature_of(s)] = {"conv": {"median_ms": rng.uniform(0.1, 1)}, "act": None}
                segs[signature_of(s)]["act"] = {"median_ms": rng.uniform(0.01, 0.1)}
    doc = {
        "schema_version": profile_mod.SCHEMA_VERSION,
        "kind": "dsa.profile",
        "model": a.model_name,
        "fingerprint": a.fingerprint,
        "input_size": SIZE,
        "batch_size": 8,
        "precision": "fp32",
        "layout": "nchw",
        "environment": {},
        "device_spec": DEVICE.to_dict(),
        "ops": {op.name: {"median_ms": rng.uniform(0.01, 1)} for op in list(a.ops.values())[1:-1]},
        "segments": segs,
        "end_to_end": {},
    }
    prof = profile_mod.profile_from_json(json.loads(json.dumps(doc)))
    costs = ProfileCosts(a, prof)
    for keep in ([1, 0, 0, 1, 1], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]):
        plan = plan_from_act_list(a, keep)
        ev = evaluate(a, plan, None, 8, "fp32", profile=prof)
        assert plan_ms(a, plan, costs) == pytest.approx(ev.planned.latency_ms, rel=1e-9)
    cands = build_candidates(a, costs)
    for _ in range(10):
        chosen = _random_path(cands, rng)
        removed, added, boundaries = cands.path_plan_parts(chosen)
        plan = make_plan(a, removed, [], boundaries)
        ev = evaluate(a, plan, None, 8, "fp32", profile=prof)
        assert cands.fixed_ms + sum(e.time_ms for e in chosen) == pytest.approx(ev.planned.latency_ms, rel=1e-9)
    with pytest.raises(ArtifactError, match="field 'batch_size' is 8, but batch 16 was asked for"):
        ProfileCosts(a, prof, batch=16)
    # measured times are per shape: a profile taken at another input size does not apply
    other = analyze(tm.tiny_mbv2().eval(), a.model_name, a.input_size * 2)
    assert other.fingerprint == a.fingerprint
    with pytest.raises(ArtifactError, match=f"give --input-size {a.input_size} "):
        ProfileCosts(other, prof)
    with pytest.raises(DsaError, match=f"field .input_size. is {a.input_size} px"):
        evaluate(other, plan_from_act_list(other, [1, 1, 1, 1, 1]), None, 8, "fp32", profile=prof)


# ------------------------------------------------------------------------------------ mobilenet_v2_140


@pytest.fixture(scope="module")
def mbv2():
    from dsa.models import create_model

    return analyze(create_model("mobilenet_v2_140"), "mobilenet_v2_140", 224)


@pytest.mark.slow
def test_mobilenet_v2_140_random_paths(mbv2) -> None:
    costs = RooflineCosts(mbv2, DEVICE, 128, "fp32")
    cands = build_candidates(mbv2, costs)
    assert cands.n_runs == 2 and len(cands.edges) > 300
    rng = random.Random(0)
    for _ in range(12):
        _check_path(mbv2, cands, _random_path(cands, rng), costs)


@pytest.mark.slow
def test_mobilenet_v2_140_ds_patterns_are_paths_of_the_block_dag(mbv2) -> None:
    """Each DepthShrinker pattern is priced by plan_ms exactly as evaluate prices it."""
    costs = RooflineCosts(mbv2, DEVICE, 128, "fp32")
    for letter in "ABCDEF":
        plan = plan_from_act_list(mbv2, ds_pattern_act_list(letter))
        assert plan_ms(mbv2, plan, costs) == pytest.approx(evaluate(mbv2, plan, DEVICE).planned.latency_ms)
