"""The wider search space (issue 17): residual blocks anywhere in a segment, and LayerMerge conv pruning -- what is
prunable, plans that prune (schema 2; version-1 plans keep their meaning), the planner's pruned variants against the
exact DP and against evaluate, merging pruned plans, and `dsa plan --prune-convs`."""

from __future__ import annotations

import json

import pytest
import torch

from dsa.errors import PlanError, PlanFileError
from dsa.formats.plan import load_plan, make_plan, plan_from_json, remove_all_plan
from dsa.graph import analyze
from dsa.ir import PRUNE_BLOCK, PRUNE_CONV, Kind, prunable
from dsa.latency.evaluate import evaluate
from dsa.planner.dp import solve_dp
from dsa.planner.planner import Planner
from dsa.transform.merge import apply_plan, conv_count, merge, merge_record
from tests import tiny_models as tm
from tests.cli_helpers import dsa, ok, user_error

TINY = "tests.tiny_models:tiny_mbv2"
SIZE = 32

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return analyze(tm.tiny_mbv2().eval(), TINY, SIZE)


def test_what_is_prunable(tiny) -> None:
    kinds = prunable(tiny)
    for name, kind in kinds.items():
        op = tiny.by_name[name]
        if kind == PRUNE_CONV:
            c = op.conv
            assert not c.strided and c.in_channels == c.out_channels
            assert tiny.ops[op.inputs[0]].shape == op.shape
        else:
            assert kind == PRUNE_BLOCK and op.kind == Kind.ADD
    convs = [op for op in tiny.ops.values() if op.kind == Kind.CONV]
    assert any(c.conv.strided and c.conv.depthwise and c.name not in kinds for c in convs)  # strided dw: no
    assert any(c.conv.in_channels != c.conv.out_channels and c.name not in kinds for c in convs)  # expand: no
    assert PRUNE_BLOCK in kinds.values() and PRUNE_CONV in kinds.values()


def test_a_plan_refuses_what_it_cannot_prune(tiny) -> None:
    kinds = prunable(tiny)
    expand = next(op.name for op in tiny.ops.values() if op.kind == Kind.CONV and op.name not in kinds)
    with pytest.raises(PlanError, match=r"pruned\[0\].*not prunable"):
        make_plan(tiny, pruned=[expand])
    with pytest.raises(PlanError, match=r"pruned\[0\].*not an op"):
        make_plan(tiny, pruned=["nope"])
    block = next(n for n, k in kinds.items() if k == PRUNE_BLOCK)
    inside = next(n for n, k in kinds.items() if k == PRUNE_CONV and tiny.by_name[n].block == tiny.by_name[block].block)
    with pytest.raises(PlanError, match=r"pruned\[1\].*prunes whole"):
        make_plan(tiny, pruned=[block, inside])


class _Res(torch.nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
            torch.nn.BatchNorm2d(c),
            torch.nn.ReLU6(),
            torch.nn.Conv2d(c, c, 1, bias=False),
            torch.nn.BatchNorm2d(c),
        )

    def forward(self, x):
        return x + self.conv(x)


def _conv_then_blocks() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU6(),
        torch.nn.Conv2d(8, 8, 1),
        torch.nn.BatchNorm2d(8),
        _Res(8),
        _Res(8),
        torch.nn.ReLU6(),
        torch.nn.AdaptiveAvgPool2d(1),
    )
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def test_version_1_plans_keep_their_segments() -> None:
    """A version-1 plan was made when a residual block only started a segment: it loads with that rule, so it
    induces the segments it records; the same removals under version 2's rule merge further."""
    net = _conv_then_blocks()
    tiny = analyze(net, "conv-then-blocks", 16)
    new = remove_all_plan(tiny)
    doc = new.to_json()
    doc["schema_version"] = 1
    del doc["segment_rule"], doc["pruned"], doc["segments"]
    old = plan_from_json(doc)
    assert old.segment_rule == "units-first" and old.pruned == ()
    old_segs = [s.convs for s in old.induced_segments(tiny)]
    new_segs = [s.convs for s in new.induced_segments(tiny)]
    assert len(new_segs) < len(old_segs)  # units after other elements merge now
    assert any(not u.first for s in new.induced_segments(tiny) for u in s.units)
    assert all(u.first for s in old.induced_segments(tiny) for u in s.units)
    merged_new = merge(net, new, verify_sizes=[16, 21])  # blocks after a conv: shortcuts cropped, exact
    assert merge_record(merged_new).max_rel_error <= 1e-9
    assert conv_count(merge(net, old)) > conv_count(merged_new) == 1
    with pytest.raises(PlanFileError, match=r"'pruned' is not part of schema version 1"):
        plan_from_json({**doc, "pruned": []})
    with pytest.raises(PlanFileError, match=r"'segment_rule' is 'sideways'"):
        plan_from_json({**new.to_json(), "segment_rule": "sideways"})


def test_a_pruned_plan_merges_and_saves(tiny, tmp_path) -> None:
    kinds = prunable(tiny)
    block = next(n for n, k in kinds.items() if k == PRUNE_BLOCK)
    dw = [n for n, k in kinds.items() if k == PRUNE_CONV and tiny.by_name[n].block != tiny.by_name[block].block]
    plan = make_plan(tiny, tiny.removable, pruned=[block, *dw[:1]])
    plan.save(tmp_path / "p.json")
    again = load_plan(tmp_path / "p.json")
    assert again == plan and again.pruned == (block, dw[0])
    net = tm.tiny_mbv2().eval()
    ready = apply_plan(net, plan, tiny)
    names = dict(ready.named_modules())
    assert isinstance(names[dw[0]], torch.nn.Identity)
    merged = merge(ready)
    assert merge_record(merged).max_rel_error <= 1e-9
    # the pruned block's branch is gone from the merge-ready network
    branch_convs = [
        op.name for op in tiny.ops.values() if op.kind == Kind.CONV and op.block == tiny.by_name[block].block
    ]
    assert branch_convs and not any(n in names for n in branch_convs)


@pytest.mark.parametrize("granularity", ["activation", "block"])
def test_pruning_planner_agrees_with_dp_and_evaluate(tiny, granularity) -> None:
    plain = Planner(tiny, "v100", 32, "fp32", granularity=granularity)
    pruning = Planner(tiny, "v100", 32, "fp32", granularity=granularity, prune_convs=True)
    assert len(pruning.candidates.edges) > len(plain.candidates.edges)
    assert any(e.prunes for e in pruning.candidates.edges)
    fastest = pruning.fastest()
    assert fastest.planned_ms <= plain.fastest().planned_ms
    for speedup in (1.2, 0.5 * (1 + pruning.baseline_ms / fastest.planned_ms)):
        r = pruning.for_target(target_speedup=speedup)
        ev = evaluate(tiny, r.plan, "v100", 32, "fp32")
        assert r.planned_ms == pytest.approx(ev.planned.latency_ms, rel=1e-9)
        acc, t = solve_dp(pruning.problem, budget_ms=pruning.baseline_ms / speedup * (1 + 1e-9))
        assert (r.accuracy_cost, r.planned_ms) == (pytest.approx(acc), pytest.approx(t))
        # the default proxy: a pruned conv costs what a removed activation does, a block its convs together
        kinds = prunable(tiny)
        n_convs = {
            n: (1 if k == PRUNE_CONV else sum(pruning.analysis.ops[b].kind == Kind.CONV for b in _branch(tiny, n)))
            for n, k in kinds.items()
        }
        assert r.accuracy_cost == len(r.plan.removed) + sum(n_convs[n] for n in r.plan.pruned) - _gone_acts(tiny, r)
        merged = merge(tm.tiny_mbv2().eval(), r.plan)
        assert merge_record(merged).max_rel_error <= 1e-9


def _branch(a, add_name):
    from dsa.ir import pruned_ops

    return pruned_ops(a, [add_name])[1]


def _gone_acts(a, r) -> int:
    """Removed activations a plan lists inside pruned branches (charged nowhere: they go with the branch)."""
    gone = (
        set().union(*[_branch(a, n) for n in r.plan.pruned if prunable(a)[n] == PRUNE_BLOCK])
        if r.plan.pruned
        else set()
    )
    return sum(a.by_name[n].id in gone for n in r.plan.removed)


def test_cli_plan_prune_convs(tmp_path) -> None:
    out = tmp_path / "plan.json"
    T = ["--model", TINY, "--input-size", str(SIZE)]
    doc = json.loads(
        ok(dsa("plan", *T, "--max-accuracy-cost", "40", "--prune-convs", "--out", out, "--format", "json"))
    )
    assert doc["schema_version"] == 2 and doc["pruned"] and doc["segment_rule"] == "units-anywhere"
    ok(dsa("merge", "--plan", out, "--out", tmp_path / "m.pt"))
    err = user_error(dsa("plan", *T, "--max-accuracy-cost", "4", "--prune-convs", "--units-first", "--out", out))
    assert "--units-first" in err
    narrow = json.loads(
        ok(
            dsa(
                "plan",
                *T,
                "--max-accuracy-cost",
                "40",
                "--units-first",
                "--out",
                tmp_path / "n.json",
                "--format",
                "json",
            )
        )
    )
    assert narrow["segment_rule"] == "units-first" and not narrow["pruned"]


def test_removal_kl_scores_pruning_and_the_planner_charges_it(tiny, tmp_path) -> None:
    from dsa.importance import removal_kl
    from dsa.planner.planner import solve_plan

    torch.manual_seed(0)
    net = tm.tiny_mbv2().eval()
    imp = removal_kl(net, tiny, [torch.randn(4, 3, SIZE, SIZE)], blocks=False, pruned=True)
    assert set(imp.pruned) == set(prunable(tiny)) and all(v >= 0 for v in imp.pruned.values())
    assert any(v > 0 for v in imp.pruned.values())
    path = tmp_path / "imp.json"
    imp.save(path)
    planner_costs = Planner(tiny, "v100", 32, prune_convs=True, prune_costs=imp.pruned).prune_cost
    assert planner_costs == pytest.approx(imp.pruned)
    r = solve_plan(tiny, "v100", 32, max_accuracy_cost=1e9, importance_file=path, prune_convs=True)
    expected = sum(imp.scores.get(n, imp.default) for n in r.plan.removed) + sum(imp.pruned[n] for n in r.plan.pruned)
    assert r.accuracy_cost == pytest.approx(expected - _gone_scores(tiny, r, imp))


def _gone_scores(a, r, imp) -> float:
    gone = (
        set().union(*[_branch(a, n) for n in r.plan.pruned if prunable(a)[n] == PRUNE_BLOCK])
        if r.plan.pruned
        else set()
    )
    return sum(imp.scores.get(n, imp.default) for n in r.plan.removed if a.by_name[n].id in gone)
