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


def _identity_bn(bn: torch.nn.BatchNorm2d) -> None:
    bn.running_mean.zero_()
    bn.running_var.fill_(1 - bn.eps)
    bn.weight.data.fill_(1.0)
    bn.bias.data.zero_()


def _identity_dw(conv: torch.nn.Conv2d) -> None:
    conv.weight.data.zero_()
    conv.weight.data[:, 0, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = 1.0


def test_linearity_scores_pruning_as_distance_from_the_identity() -> None:
    from dsa.importance import linearity

    torch.manual_seed(0)
    net = tm.tiny_mbv2().eval()
    batches = [torch.randn(4, 3, SIZE, SIZE)]
    a = analyze(net, TINY, SIZE)
    imp = linearity(net, a, batches, blocks=False, pruned=True)
    assert set(imp.pruned) == set(prunable(a)) and all(0 < v <= 1 for v in imp.pruned.values())
    with torch.no_grad():
        _identity_dw(net.features[3].conv[3])  # features.3.conv.3 and its BN: the identity, so pruning changes nothing
        _identity_bn(net.features[3].conv[4])
        net.features[1].conv[7].weight.zero_()  # block 1's branch outputs 0: pruning the block changes nothing
        net.features[1].conv[7].bias.zero_()
    a = analyze(net, TINY, SIZE)
    again = linearity(net, a, batches, blocks=False, pruned=True)
    assert again.pruned["features.3.conv.3"] == pytest.approx(0, abs=1e-6)
    assert again.pruned["features.1.add"] == pytest.approx(0, abs=1e-6)
    # the deviation is measured before the in-place ReLU6 after the BN: compare with hooks
    seen = {}
    conv, bn = net.features[1].conv[3], net.features[1].conv[4]
    hooks = [
        conv.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0].clone())),
        bn.register_forward_hook(lambda m, args, out: seen.__setitem__("y", out.clone())),
    ]
    with torch.no_grad():
        net(batches[0])
    for h in hooks:
        h.remove()
    x, y = seen["x"], seen["y"]
    expected = float((y - x).abs().sum() / (y.abs().sum() + x.abs().sum()))
    assert again.pruned["features.1.conv.3"] == pytest.approx(expected, rel=1e-5)
    assert not linearity(net, a, batches, blocks=False).pruned  # off unless asked


def test_linearity_pruning_keeps_the_act_of_a_timm_bn_act() -> None:
    from timm.layers import BatchNormAct2d

    from dsa.importance import linearity

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.bn0 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), BatchNormAct2d(8)
            self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
            self.bn1 = BatchNormAct2d(8, act_layer=torch.nn.ReLU6)
            self.head = torch.nn.Linear(8, 4)

        def forward(self, x):
            x = self.bn1(self.dw(self.bn0(self.stem(x))))
            return self.head(x.mean((2, 3)))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.bn0.bias.fill_(8.0)  # the dw conv's inputs mostly above 6, where the ReLU6 that pruning keeps clips
        _identity_dw(net.dw)
        _identity_bn(net.bn1)
    a = analyze(net, "bnact", 16)
    assert prunable(a) == {"dw": PRUNE_CONV}
    # dw + BN are the identity; pruned, the BN's ReLU6 stays (without it the inputs above 6 would differ)
    assert linearity(net, a, [torch.randn(2, 3, 16, 16)], pruned=True).pruned["dw"] == pytest.approx(0, abs=1e-6)


def test_linearity_pruning_of_a_block_whose_input_a_timm_bn_act_conv_reads() -> None:
    from timm.layers import BatchNormAct2d

    from dsa.importance import linearity

    class Net(torch.nn.Module):  # a residual block whose branch starts with dw + BN+ReLU (in place)
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn0 = BatchNormAct2d(8, act_layer=torch.nn.Hardswish)  # negative outputs: a ReLU changes them
            self.dw, self.bn1 = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), BatchNormAct2d(8)
            self.pw, self.bn2 = torch.nn.Conv2d(8, 8, 1, bias=False), torch.nn.BatchNorm2d(8)
            self.head = torch.nn.Linear(8, 4)

        def forward(self, x):
            x = self.bn0(self.stem(x))
            x = x + self.bn2(self.pw(self.bn1(self.dw(x))))
            return self.head(x.mean((2, 3)))

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(2, 3, 16, 16)
    a = analyze(net, "bnact-block", 16)
    assert PRUNE_BLOCK in prunable(a).values() and prunable(a)["dw"] == PRUNE_CONV
    block = next(n for n, k in prunable(a).items() if k == PRUNE_BLOCK)
    with torch.no_grad():
        s = net.bn0(net.stem(x))
        y = s + net.bn2(net.pw(net.bn1(net.dw(s))))
    expected = float((y - s).abs().sum() / (y.abs().sum() + s.abs().sum()))
    assert linearity(net, a, [x], pruned=True).pruned[block] == pytest.approx(expected, rel=1e-5)


def test_finetune_scores_pruning_and_the_budget_leaves_the_rest_at_the_worst(tiny, monkeypatch) -> None:
    import dsa.importance as imp_mod

    torch.manual_seed(0)
    net = tm.tiny_mbv2().eval()
    batches = [torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    first = tiny.removable[:1]
    imp = imp_mod.finetune_proxy(net, tiny, batches, steps=1, names=first, blocks=False, pruned=True)
    assert set(imp.pruned) == set(prunable(tiny)) and all(v >= 0 for v in imp.pruned.values())
    assert imp.metadata["unscored_pruned"] == [] and imp.metadata["scored"] == 1 + len(prunable(tiny))
    assert set(imp.metadata["heldout_top1_agreement"]) == {*first, *(f"pruned:{n}" for n in prunable(tiny))}
    clock = iter(range(1000))  # a fake clock: one second per reading
    monkeypatch.setattr(imp_mod.time, "perf_counter", lambda: float(next(clock)))
    cut = imp_mod.finetune_proxy(net, tiny, batches, steps=1, names=first, blocks=False, pruned=True, time_budget_s=2.5)
    unscored = cut.metadata["unscored_pruned"]
    assert unscored and set(unscored) < set(prunable(tiny)) and set(cut.pruned) == set(prunable(tiny))
    worst = max([*cut.scores.values(), *(v for n, v in cut.pruned.items() if n not in unscored)])
    assert all(cut.pruned[n] == worst for n in unscored)


def test_cli_importance_prune_convs(tmp_path) -> None:
    from tests.test_data import write_folder

    data = write_folder(tmp_path / "data", classes=3, per_split={"train": 4, "val": 2})
    out = tmp_path / "imp.json"
    args = ["importance", "--model", TINY, "--input-size", str(SIZE), "--data", str(data), "--samples", "4"]
    ok(dsa(*args, "--method", "linearity", "--prune-convs", "--out", str(out)))
    assert set(json.loads(out.read_text())["pruned"]) == set(prunable(analyze(tm.tiny_mbv2().eval(), TINY, SIZE)))
    err = user_error(dsa(*args, "--method", "gates", "--prune-convs", "--out", str(tmp_path / "g.json")))
    assert "--prune-convs only apply with --method linearity, removal-kl or finetune" in err
    assert not (tmp_path / "g.json").exists()


def test_profiles_time_the_pruned_variants_when_asked(tiny, tmp_path) -> None:
    from dsa.formats.profile import load_profile
    from dsa.ir import signature_of
    from dsa.latency.costs import ProfileCosts
    from dsa.measure.profiler import candidate_segments

    plain = {signature_of(s) for s, _ in candidate_segments(tiny)}
    wide = {signature_of(s) for s, _ in candidate_segments(tiny, pruned=True)}
    variants = [
        e.segment
        for g in ("activation", "block")
        for e in Planner(tiny, granularity=g, prune_convs=True).candidates.edges
        if e.prunes and e.segment is not None and e.segment.merged
    ]
    assert plain < wide and {signature_of(s) for s in variants} <= wide
    measured = {}
    for flag in ((), ("--prune-convs",)):
        out = tmp_path / f"profile{len(flag)}.json"
        ok(dsa("profile", "--model", TINY, "--input-size", SIZE, "--batch-size", 2, "--warmup", 0, "--repeats", 1,
               *flag, "--out", out))  # fmt: skip
        costs = ProfileCosts(tiny, load_profile(out))
        measured[flag] = [costs.measures(s) for s in variants]
    assert all(measured[("--prune-convs",)]) and not all(measured[()])
