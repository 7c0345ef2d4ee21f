"""INT8 costs per candidate segment (dsa importance --int8): the emulated INT8 grids, the cost of a conv equal to
the network run with that conv emulated in INT8, a merged segment's cost equal to its INT8 error injected by hand,
every segment the planner can choose scored, and the planner adding the costs when it plans for INT8 (only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from dsa.errors import DsaError, PlanError
from dsa.formats.importance import load_importance_file
from dsa.formats.plan import make_plan
from dsa.graph import analyze
from dsa.importance import _kl, int8_costs, removal_kl, with_int8_costs
from dsa.ir import segment_key
from dsa.quantize import emulate_conv, fake_quant_input, fake_quant_weight
from dsa.transform.merge import merge
from tests import tiny_models as tm
from tests.test_importance import TwoSites

pytestmark = pytest.mark.usefixtures("one_thread")


def _chain() -> nn.Module:
    """test_importance's conv -> ReLU -> conv -> ReLU6 -> conv -> pool -> linear with default weights (no site
    saturated) and a confident head (INT8 rounding moves its outputs measurably): every conv alone, and c1+c2 or
    c2+c3 merged."""
    model = TwoSites()
    for layer in (model.c1, model.c2, model.c3, model.fc):
        layer.reset_parameters()
    with torch.no_grad():
        model.fc.weight.mul_(30.0)
    return model.eval()


@pytest.fixture(scope="module")
def chain():
    torch.manual_seed(0)
    model = _chain()
    a = analyze(model, "chain", 12)
    batches = [torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    return model, a, batches


def test_weights_round_per_channel_to_the_symmetric_int8_grid() -> None:
    w = torch.randn(6, 4, 3, 3) * torch.logspace(-3, 2, 6).reshape(-1, 1, 1, 1)  # channels of very different scale
    q = fake_quant_weight(w)
    scale = w.abs().amax((1, 2, 3), keepdim=True) / 127
    steps = q / scale
    assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= 127 + 1e-4
    assert torch.allclose(q.abs().amax((1, 2, 3)), w.abs().amax((1, 2, 3)))  # each channel's extreme is exact
    assert ((q - w).abs() <= scale / 2 * (1 + 1e-5)).all()
    assert torch.equal(fake_quant_weight(q), q)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("lo", [-1.5, 0.0, 0.5])
def test_inputs_round_to_the_runtimes_activation_grid(runtime: str, lo: float) -> None:
    hi = 3.0
    x = torch.linspace(lo, hi, 1001)
    q = fake_quant_input(x, lo, hi, runtime)
    lo0 = min(lo, 0.0)
    if runtime == "onnxruntime":
        scale = (hi - lo0) / 255  # uint8 over the range widened to hold 0
    elif lo0 >= 0:
        scale = hi / 255  # unsigned symmetric
    else:
        scale = max(-lo0, hi) / 127  # signed symmetric
    assert ((q - x).abs() <= scale / 2 * (1 + 1e-4)).all()
    assert len(torch.unique(q)) <= 256
    assert float(fake_quant_input(torch.zeros(3), lo, hi, runtime).abs().max()) == 0.0  # zero padding stays exact
    assert torch.allclose(fake_quant_input(q, lo, hi, runtime), q, atol=1e-6)
    with pytest.raises(DsaError, match="onnxruntime or openvino"):
        fake_quant_input(x, lo, hi, "eager")


def test_depthwise_inputs_are_per_channel_under_openvino_only() -> None:
    from dsa.quantize import per_channel_input

    dw, dense = nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 4, 3)
    assert per_channel_input(dw, "openvino") and not per_channel_input(dw, "onnxruntime")
    assert not per_channel_input(dense, "openvino")
    x = torch.rand(2, 4, 6, 6) * torch.tensor([0.01, 0.1, 1.0, 10.0]).reshape(1, 4, 1, 1)
    lo, hi = x.amin((0, 2, 3)), x.amax((0, 2, 3))
    err = {rt: (emulate_conv(dw, lo, hi, rt)(x) - dw(x)).abs().amax((0, 2, 3)) for rt in ("openvino", "onnxruntime")}
    assert err["openvino"][0] < err["onnxruntime"][0] / 50  # the small channel has its own grid under OpenVINO


def _reference_cost(model, batches, conv: nn.Module, runtime: str) -> float:
    """KL of ``model`` with ``conv``'s output replaced by its INT8 emulation, by hand with hooks: the input range
    (per channel) from the first batch, the KL over the others (as int8_costs holds them out)."""
    seen = _inputs(model, batches[:1], conv)
    quantized = emulate_conv(conv, seen[0].amin((0, 2, 3)), seen[0].amax((0, 2, 3)), runtime)
    return _kl_with_hook(model, batches[1:], conv, lambda m, args, out: quantized(args[0]))


def _kl_with_hook(model, batches, module: nn.Module, hook) -> float:
    """KL of ``model``'s outputs on ``batches`` with a forward ``hook`` on ``module``, against without."""
    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            hurt = [model(x) for x in batches]
    finally:
        handle.remove()
    with torch.no_grad():
        plain = [model(x) for x in batches]
    return sum(_kl(p.double(), q.double()) for p, q in zip(plain, hurt, strict=True)) / len(plain)


def _inputs(model, batches, conv) -> list[torch.Tensor]:
    seen = []
    handle = conv.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_a_lone_convs_cost_is_the_network_with_that_conv_in_int8(chain, runtime: str) -> None:
    model, a, batches = chain
    costs = int8_costs(model, a, runtime, batches)
    for name in ("c1", "c2", "c3"):
        ref = _reference_cost(model, batches, getattr(model, name), runtime)
        assert ref > 0
        assert costs[f"{name}..{name}"] == pytest.approx(ref, rel=1e-3)


def test_a_merged_segments_cost_is_its_int8_error_added_in_the_float_network_at_its_scale(chain) -> None:
    model, a, batches = chain
    costs = int8_costs(model, a, "openvino", batches)
    merged = merge(model, make_plan(a, ["a1"]))  # c1 and c2 merged into one 5x5 conv
    conv = merged.get_submodule("c1")
    assert tuple(conv.weight.shape[-2:]) == (5, 5)
    x0 = batches[0]
    quantized = emulate_conv(conv, x0.amin((0, 2, 3)), x0.amax((0, 2, 3)), "openvino")
    # the INT8 error of the merged conv, per batch, at the float network's signal level (||c2 out|| / ||merged out||)
    errors = iter([quantized(x) - conv(x) for x in batches[1:]])
    scales = iter([model.c2(model.a1(model.c1(x))).norm() / conv(x).norm() for x in batches[1:]])
    ref = _kl_with_hook(model, batches[1:], model.c2, lambda m, args, out: out + next(errors) * next(scales))
    assert costs["c1..c2"] == pytest.approx(ref, rel=1e-3) and ref > 0


def test_every_segment_the_planner_can_choose_is_scored_and_pruned_variants_too() -> None:
    from dsa.latency.costs import RooflineCosts
    from dsa.planner.candidates import SEGMENT, build_candidates

    torch.manual_seed(0)
    model = tm.tiny_mbv2().eval()
    a = analyze(model, "tiny", 16)
    batches = [torch.randn(2, 3, 16, 16)]
    prune = removal_kl(model, a, batches, blocks=False, pruned=True).pruned
    costs = int8_costs(model, a, "onnxruntime", batches, prune_cost=prune)
    for prune_cost in (None, prune):
        cands = build_candidates(a, RooflineCosts(a, "v100"), "activation", prune_cost=prune_cost)
        keys = {segment_key(e.segment, e.prunes) for e in cands.edges if e.kind == SEGMENT and e.segment is not None}
        assert keys <= set(costs)
    assert any(" pruned " in k for k in costs) and all(v >= 0 for v in costs.values())


@pytest.fixture(scope="module")
def int8_planner_inputs():
    import roofline as rl
    from dsa.latency.costs import RooflineCosts

    torch.manual_seed(0)
    model = tm.tiny_mbv2().eval()
    a = analyze(model, "tiny", 32)
    cpu = rl.measure_local_device("cpu", seconds=0.2)
    if "int8" not in cpu.measured.matmul_tflops:
        pytest.skip("this torch has no CPU int8 matmul")
    costs = RooflineCosts(a, cpu, 8, "int8", runtime="openvino")
    batches = [torch.randn(2, 3, 32, 32)]
    return model, a, costs, int8_costs(model, a, "openvino", batches)


def test_the_planner_adds_each_chosen_segments_int8_cost(int8_planner_inputs) -> None:
    from dsa.planner.planner import Planner

    model, a, costs, int8 = int8_planner_inputs
    plain = Planner(a, costs=costs).for_target(target_speedup=1.1)
    both = Planner(a, costs=costs, int8_costs=int8, int8_runtime="openvino").for_target(target_speedup=1.1)
    for r in (plain, both):
        assert r.speedup >= 1.1 * (1 - 1e-6)
    chosen = sum(int8[f"{row.members[0]}..{row.members[-1]}"] for row in both.segments if row.convs)
    assert both.accuracy_cost == pytest.approx(len(both.removed) + chosen, rel=1e-6)
    assert "INT8 costs per segment (openvino)" in both.accuracy_proxy
    # a merge made costly in INT8 is avoided where another plan reaches the target
    merged = [row for row in plain.segments if len(row.convs) > 1]
    assert merged
    worst = f"{merged[0].members[0]}..{merged[0].members[-1]}"
    steep = dict.fromkeys(int8, 0.0) | {worst: 1e3}
    avoid = Planner(a, costs=costs, int8_costs=steep, int8_runtime="openvino").for_target(target_speedup=1.1)
    assert avoid.speedup >= 1.1 * (1 - 1e-6)
    assert worst not in {f"{row.members[0]}..{row.members[-1]}" for row in avoid.segments}


def test_int8_costs_price_only_int8_plans_of_their_runtime_and_must_cover_them(int8_planner_inputs) -> None:
    from dsa.latency.costs import RooflineCosts
    from dsa.planner.planner import Planner

    model, a, costs, int8 = int8_planner_inputs
    with pytest.raises(PlanError, match="INT8 under onnxruntime"):
        Planner(a, costs=costs, int8_costs=int8, int8_runtime="onnxruntime")
    fp32 = RooflineCosts(a, costs.device, 8, "fp32", runtime="openvino")
    with pytest.raises(PlanError, match="--precision int8"):
        Planner(a, costs=fp32, int8_costs=int8, int8_runtime="openvino")
    some = dict(list(int8.items())[:3])
    with pytest.raises(PlanError, match="lack .* segment"):
        Planner(a, costs=costs, int8_costs=some, int8_runtime="openvino")


def test_the_importance_file_keeps_int8_costs_and_checks_them(chain, tmp_path: Path) -> None:
    model, a, batches = chain
    imp = with_int8_costs(removal_kl(model, a, batches, blocks=False), model, a, "openvino", batches)
    assert imp.int8_runtime == "openvino" and imp.int8 and "int8_emulation" in imp.metadata
    imp.save(tmp_path / "imp.json")
    back = load_importance_file(tmp_path / "imp.json")
    assert back.int8 == imp.int8 and back.int8_runtime == "openvino" and back.scores == imp.scores
    doc = json.loads((tmp_path / "imp.json").read_text())
    for bad, message in [
        ({"runtime": "tensorrt", "costs": {"c1..c1": 0.1}}, "int8 runtime"),
        ({"runtime": "openvino", "costs": {"c1..c1": -1}}, "finite number >= 0"),
        ({"costs": {}}, '"int8" must be'),
    ]:
        (tmp_path / "bad.json").write_text(json.dumps(doc | {"int8": bad}))
        with pytest.raises(DsaError, match=message):
            load_importance_file(tmp_path / "bad.json")
    from dsa.importance import linearity

    with pytest.raises(DsaError, match="removal-kl or finetune"):
        with_int8_costs(linearity(model, a, batches), model, a, "openvino", batches)


def test_cli_importance_int8(tmp_path: Path) -> None:
    from tests.cli_helpers import dsa, ok, user_error
    from tests.test_data import write_folder

    data = write_folder(tmp_path / "data", classes=3, per_split={"train": 4, "val": 2})
    args = ["importance", "--model", "tests.tiny_models:tiny_mbv2", "--input-size", "16", "--data", str(data)]
    out = tmp_path / "imp.json"
    r = ok(dsa(*args, "--samples", "4", "--no-blocks", "--int8", "onnxruntime", "--out", str(out)))
    assert "INT8 (onnxruntime, emulated)" in r
    assert load_importance_file(out).int8_runtime == "onnxruntime"
    user_error(dsa(*args, "--method", "linearity", "--int8", "openvino", "--out", str(out)), "--int8", "removal-kl")
    user_error(dsa(*args, "--int8", "tensorrt", "--out", str(out)), "--int8", "onnxruntime or openvino")


def test_a_kept_activation_inside_the_last_module_runs_after_the_scaled_error() -> None:
    """timm's BN+act: the error is scaled to the float network's value before the activation, then activated."""
    from timm.layers import BatchNormAct2d

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.b1, self.b2 = BatchNormAct2d(8, act_layer=nn.ReLU6), BatchNormAct2d(8, act_layer=nn.ReLU6)
            self.fc = nn.Linear(8, 5)
            with torch.no_grad():
                self.fc.weight.mul_(30.0)
                for bn in (self.b1, self.b2):
                    bn.running_mean.normal_(0, 0.1)
                    bn.running_var.uniform_(0.5, 2.0)

        def forward(self, x):
            return self.fc(self.b2(self.c2(self.b1(self.c1(x)))).mean((2, 3)))

    torch.manual_seed(0)
    model = Net().eval()
    a = analyze(model, "bnact", 12)
    batches = [torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    costs = int8_costs(model, a, "openvino", batches)
    (act,) = [s.name for s in a.activations if s.removable and s.name.startswith("b1")]
    for removed, key in [([], "c1..b1"), ([act], "c1..b2")]:
        conv = merge(model, make_plan(a, removed)).get_submodule("c1")  # BN folded; with b1's act removed: merged
        x0 = batches[0]
        quantized = emulate_conv(conv, x0.amin((0, 2, 3)), x0.amax((0, 2, 3)), "openvino")
        inputs = iter(batches[1:])
        bn = model.b1 if key == "c1..b1" else model.b2

        def hook(m, args, out, conv=conv, quantized=quantized, inputs=inputs):
            x = next(inputs)
            pre = nn.BatchNorm2d.forward(m, args[0])  # the float network's value before the activation
            y, yq = conv(x), quantized(x)
            return m.act(pre + (yq - y) * (pre.norm() / y.norm()))

        ref = _kl_with_hook(model, batches[1:], bn, hook)
        assert ref > 0 and costs[key] == pytest.approx(ref, rel=1e-3)


def test_int8_costs_cover_block_granularity_the_v1_space_and_pruning(int8_planner_inputs) -> None:
    from dsa.planner.planner import Planner, pruning_costs

    model, a, costs, int8 = int8_planner_inputs
    for options in ({"granularity": "block"}, {"units_anywhere": False}):
        Planner(a, costs=costs, int8_costs=int8, int8_runtime="openvino", **options).for_target(target_speedup=1.05)
    batches = [torch.randn(2, 3, 32, 32)]
    pruned = int8_costs(model, a, "openvino", batches, prune_cost=pruning_costs(a, None, 1.0))
    r = Planner(a, costs=costs, int8_costs=pruned, int8_runtime="openvino", prune_convs=True)
    assert r.for_target(target_speedup=1.05).speedup >= 1.05 * (1 - 1e-6)
