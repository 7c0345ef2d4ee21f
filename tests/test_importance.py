"""Accuracy proxies on tiny models where the answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from dsa.errors import DsaError
from dsa.formats.importance import METHODS, load_importance_file
from dsa.graph import analyze
from dsa.importance import finetune_proxy, gates, linearity, removal_kl, score


class TwoSites(nn.Module):
    """conv -> ReLU (inputs all positive: the conv has a large positive bias) -> conv -> ReLU6 (inputs saturate
    far above 6) -> conv -> pool -> linear. Removing the first ReLU changes nothing; the second matters."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.a1 = nn.ReLU()
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.a2 = nn.ReLU6()
        self.c3 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():
            self.c1.weight.mul_(0.01)
            self.c1.bias.fill_(5.0)  # a1's input is ~5 > 0 everywhere: ReLU acts as the identity
            self.c2.bias.fill_(40.0)  # a2's input is ~40: ReLU6 clips everything to 6
            self.c3.weight.normal_(0, 1)

    def forward(self, x):
        y = self.c3(self.a2(self.c2(self.a1(self.c1(x)))))
        return self.fc(y.mean((2, 3)))


@pytest.fixture(scope="module")
def two():
    torch.manual_seed(0)
    model = TwoSites().eval()
    a = analyze(model, "two", 16)
    batches = [torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    return model, a, batches


def test_linearity_known_answers(two):
    model, a, batches = two
    imp = linearity(model, a, batches)
    assert set(imp.scores) == {"a1", "a2"}
    assert imp.scores["a1"] == pytest.approx(0.0, abs=1e-9)  # linearity 1: all inputs >= 0
    assert imp.scores["a2"] == pytest.approx(1.0, abs=1e-9)  # every input above 6: never linear


def test_removal_kl_known_answers(two):
    model, a, batches = two
    imp = removal_kl(model, a, batches, blocks=False)
    assert imp.scores["a1"] == pytest.approx(0.0, abs=1e-6)  # removing an identity ReLU changes nothing
    assert imp.scores["a2"] > 1e-3


def test_gates_keep_the_saturated_activation(two):
    model, a, batches = two
    imp = gates(model, a, batches, keep_fraction=0.5, steps=40, lr=0.1)
    assert imp.scores["a2"] > imp.scores["a1"]


def test_gates_latency_term_pushes_removal_where_the_saving_is_large(two):
    model, a, batches = two
    plain = gates(model, a, batches, keep_fraction=0.5, steps=30, lr=0.1)
    pushed = gates(model, a, batches, keep_fraction=0.5, steps=30, lr=0.1, savings_ms={"a1": 5.0}, latency_weight=1.0)
    assert pushed.scores["a1"] < plain.scores["a1"]


def test_finetune_proxy_known_answers_and_budget(two):
    model, a, batches = two
    imp = finetune_proxy(model, a, batches, steps=3, lr=1e-4)
    assert imp.scores["a1"] < 1e-2 and imp.scores["a2"] >= imp.scores["a1"]
    assert imp.default == 1.0 and imp.metadata["unscored_activations"] == []
    with pytest.raises(DsaError, match="scored no candidate within the time budget"):
        finetune_proxy(model, a, batches, steps=3, time_budget_s=0.0)


def test_finetune_budget_leaves_the_rest_at_the_worst_scored_cost(monkeypatch):
    import dsa.importance as imp_mod
    from tests import tiny_models as tm

    model = tm.tiny_mbv2().eval()
    a = analyze(model, "tiny", 32)
    batches = [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    clock = iter(range(1000))  # a fake clock: one second per reading
    monkeypatch.setattr(imp_mod.time, "perf_counter", lambda: float(next(clock)))
    cut = finetune_proxy(model, a, batches, steps=1, time_budget_s=2.5, blocks=False)
    assert len(cut.scores) == 2 and cut.metadata["candidates"] == len(a.removable)
    assert cut.metadata["unscored_activations"] == a.removable[2:]
    assert cut.default == max(cut.scores.values())


def test_scores_feed_the_planner(two, tmp_path):
    from dsa.formats.importance import load_importance

    model, a, batches = two
    imp = score("removal-kl", model, a, batches, blocks=False)
    path = tmp_path / "imp.json"
    imp.save(path)
    scores, default = load_importance(path)  # the planner's reader
    assert scores == imp.scores and default == 1.0
    again = load_importance_file(path)
    assert again.method == "removal-kl" and again.metadata["samples"] == 12
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == 1 and doc["fingerprint"] == a.fingerprint
    assert set(METHODS) == {"linearity", "removal-kl", "gates", "finetune"}


def test_block_scores_on_the_tiny_mbv2():
    from tests import tiny_models as tm

    model = tm.tiny_mbv2().eval()
    a = analyze(model, "tiny", 32)
    batches = [torch.randn(2, 3, 32, 32)]
    imp = removal_kl(model, a, batches, blocks=True)
    assert set(imp.segments) <= set(a.blocks()[1:-1]) and imp.segments
    assert all(v >= 0 for v in [*imp.scores.values(), *imp.segments.values()])


def test_cli_importance_feeds_dsa_plan(tmp_path):
    from typer.testing import CliRunner

    from cli import app
    from tests.test_data import write_folder

    data = write_folder(tmp_path / "data", classes=3, per_split={"train": 4, "val": 2})
    out = tmp_path / "imp.json"
    run = CliRunner().invoke
    args = ["--model", "tests.tiny_models:tiny_mbv2", "--input-size", "32"]
    r = run(
        app, ["importance", "--data", str(data), "--method", "linearity", "--samples", "8", "--out", str(out), *args]
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["method"] == "linearity" and doc["metadata"]["samples"] == 8 and doc["scores"]
    r = run(
        app,
        [
            "plan",
            *args,
            "--gpu",
            "v100",
            "--target-speedup",
            "1.2",
            "--importance",
            str(out),
            "--out",
            str(tmp_path / "p.json"),
            "--format",
            "json",
        ],
    )
    assert r.exit_code == 0, r.output
    r = run(app, ["importance", "--data", str(data), "--method", "nope", "--out", str(out), *args])
    assert r.exit_code == 1 and r.stderr.startswith("error: unknown --method")


def test_every_method_scores_blocks_and_named_candidates():
    from dsa.errors import DsaError
    from dsa.importance import activation_candidates, block_candidates, block_sums
    from tests import tiny_models as tm

    model = tm.tiny_mbv2().eval()
    a = analyze(model, "tiny", 32)
    batches = [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    inner = a.blocks()[1:-1]
    lin = linearity(model, a, batches)
    assert lin.segments == pytest.approx(block_sums(a, lin.scores))
    for b in inner:  # a block's linearity cost is the sum of its activations'
        members = [s.name for s in a.activations if s.block == b and s.removable]
        assert lin.segments[b] == pytest.approx(sum(lin.scores[m] for m in members))
    g = gates(model, a, batches, steps=12, savings_ms=dict.fromkeys(a.removable, 1.0))
    assert set(g.segments) == set(inner)
    # a uniform latency pull must not move every gate alike (per-parameter normalisation, as in Adam, did)
    assert len({round(v, 6) for v in g.scores.values()}) > 1
    ft = finetune_proxy(model, a, batches, steps=1, names=a.removable[:1], blocks=inner[:1])
    assert set(ft.scores) == set(a.removable[:1]) and set(ft.segments) == set(inner[:1])
    assert set(ft.metadata["heldout_top1_agreement"]) == {a.removable[0], inner[0]}
    kl = removal_kl(model, a, batches, names=[], blocks=inner[1:2])
    assert kl.scores == {} and set(kl.segments) == {inner[1]}
    assert removal_kl(model, a, batches, blocks=False).segments == {}
    with pytest.raises(DsaError, match="no removable activation 'nope'"):
        activation_candidates(a, ["nope"])
    with pytest.raises(DsaError, match="not an interior block"):
        block_candidates(a, [a.blocks()[0]])


def test_methods_agree_on_which_blocks_are_segments():
    from dsa.importance import block_candidates
    from tests import tiny_models as tm

    model = tm.tiny_se().eval()
    a = analyze(model, "se", 32)
    batches = [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    mergeable = set(block_candidates(a))
    assert set(linearity(model, a, batches).segments) == mergeable
    assert set(removal_kl(model, a, batches).segments) == mergeable


def test_activation_savings_follow_the_cost_model():
    from dsa.formats.plan import make_plan
    from dsa.latency.evaluate import activation_savings, evaluate
    from tests import tiny_models as tm

    a = analyze(tm.tiny_mbv2().eval(), "tiny", 32)
    saved = activation_savings(a, "v100", 64, "fp32")
    assert set(saved) == set(a.removable)
    for name in a.removable[:3]:
        ev = evaluate(a, make_plan(a, [name]), "v100", 64, "fp32")
        assert saved[name] == pytest.approx(ev.baseline.latency_ms - ev.planned.latency_ms)
    assert any(v != 0 for v in saved.values())


def test_cli_gates_use_the_device_savings(tmp_path):
    from typer.testing import CliRunner

    from cli import app
    from tests.test_data import write_folder

    data = write_folder(tmp_path / "data", classes=3, per_split={"train": 4, "val": 2})
    args = ["--model", "tests.tiny_models:tiny_mbv2", "--input-size", "32", "--data", str(data), "--samples", "4"]
    run = CliRunner().invoke
    out = tmp_path / "g.json"
    r = run(app, ["importance", *args, "--method", "gates", "--steps", "2", "--gpu", "a100", "--out", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["metadata"]["latency_term"] is True and doc["segments"]
    r = run(
        app,
        ["importance", *args, "--method", "gates", "--latency-weight", "0", "--no-blocks", "--out", str(out)],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["metadata"]["latency_term"] is False and doc["segments"] == {}
    # a device known only through its measured profiles (profiles/local-cpu/) drives the latency term too
    r = run(app, ["importance", *args, "--method", "gates", "--steps", "1", "-g", "local-cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["metadata"]["latency_term"] is True
    prof = next(iter(sorted(Path("profiles/local-cpu").glob("*_b32_fp32_nchw.json"))))
    for extra, fragment in (
        (["--gpu", "v100", "--profile", str(prof)], "give --gpu or --profile"),
        (["--pretrained", "--checkpoint", str(out)], "give --pretrained or --checkpoint"),
    ):
        r = run(app, ["importance", *args, "--method", "gates", *extra, "--out", str(out)])
        assert r.exit_code == 1 and fragment in r.stderr, r.output


@pytest.mark.parametrize("timm_bn_act", [False, True])
def test_linearity_of_in_place_smooth_activations(timm_bn_act) -> None:
    """A smooth activation is scored by running it on a copy: in place (torchvision's Hardswish(inplace=True), timm's
    BN+act) it must change neither its score nor the network's own forward pass."""
    from timm.layers import BatchNormAct2d

    class Net(nn.Module):
        def __init__(self, inplace: bool) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            if timm_bn_act:
                self.b1 = BatchNormAct2d(8, act_layer=nn.Hardswish, act_kwargs={"inplace": inplace})
            else:
                self.b1 = nn.Sequential(nn.BatchNorm2d(8), nn.Hardswish(inplace=inplace))
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            return self.fc(self.c2(self.b1(self.c1(x))).mean((2, 3)))

    batches = [torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    scores = []
    for inplace in (False, True):
        torch.manual_seed(0)
        net = Net(inplace).eval()
        a = analyze(net, "smooth", 16)
        scores.append(linearity(net, a, batches, blocks=False).scores)
    assert len(scores[0]) == 1 and 0 < next(iter(scores[0].values())) < 1
    assert scores[1] == pytest.approx(scores[0])
