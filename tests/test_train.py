"""The trainer on tiny models and tiny generated data: baseline and planned runs, merge == merge-ready accuracy,
resume == uninterrupted, the NaN guard, torchrun DDP, `dsa eval`, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dsa import analyze, plan_from_act_list
from dsa.checkpoints import load_training_checkpoint
from dsa.data import MemoryDataset
from dsa.errors import ModelError, PlanError, TrainingError
from dsa.models import classifier_head, replace_head
from dsa.networks import build_networks, load_for_eval
from dsa.train.config import TrainConfig
from dsa.train.evaluate import accuracy
from dsa.train.loop import train
from dsa.train.losses import kd_loss
from tests import tiny_models as tm
from tests.cli_helpers import dsa, ok, user_error
from tests.test_data import write_folder

TINY = "tests.tiny_models:tiny_mbv2"
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyDropout(nn.Module):
    """TinyMBV2 with dropout before the classifier: training draws from the global RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.body = tm.tiny_mbv2()
        self.drop = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body.features(x)
        f = torch.flatten(F.adaptive_avg_pool2d(f, 1), 1)
        return self.body.classifier(self.drop(f))


def tiny_dropout() -> nn.Module:
    return TinyDropout().eval()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """5 classes (so top-5 is reported): 6 train, 3 val, 3 test images each."""
    return write_folder(tmp_path_factory.mktemp("data"), classes=5, per_split={"train": 6, "val": 3, "test": 3})


@pytest.fixture(scope="module")
def plan_path(tmp_path_factory) -> Path:
    """Block-granular plan for TinyMBV2 (10 classes): features.1 and features.2 merged."""
    a = analyze(tm.tiny_mbv2(), TINY, 32)
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    plan_from_act_list(a, [1, 0, 0, 1, 1]).save(path)
    return path


def config(data: Path, out: Path, **kw) -> TrainConfig:
    base = {
        "data": str(data),
        "out": str(out),
        "model": TINY,
        "image_size": 32,
        "epochs": 2,
        "batch_size": 6,
        "lr": 0.05,
        "bench_batch_size": 2,
        "bench_repeats": 1,
        "onnx": False,
    }
    return TrainConfig(**{**base, **kw})


def weights(run: Path) -> dict:
    return load_training_checkpoint(run / "last.pt")["model"]


# ------------------------------------------------------------------------------------------ heads and plans


def test_classifier_head_of_torchvision_and_timm_models() -> None:
    from dsa.models import create_model

    mbv2 = create_model("mobilenet_v2")
    assert classifier_head(mbv2)[0] == "classifier.1"
    assert replace_head(mbv2, 4) and mbv2.classifier[1].out_features == 4
    assert not replace_head(mbv2, 4)
    r18 = create_model("resnet18")
    assert classifier_head(r18)[0] == "fc"
    replace_head(r18, 7)
    assert r18(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
    lite = create_model("efficientnet_lite0")
    replace_head(lite, 4)  # timm reset_classifier
    assert classifier_head(lite)[0] == "classifier" and lite.classifier.out_features == 4
    with pytest.raises(ModelError, match="no nn.Linear"):
        classifier_head(nn.Sequential(nn.Conv2d(3, 4, 1)))


def test_new_head_breaks_the_fingerprint_and_the_plan_is_rederived(plan_path: Path) -> None:
    from dsa.formats.plan import load_plan

    plan = load_plan(plan_path)
    nets = build_networks(TINY, 5, plan=plan_path)
    assert nets.head_replaced
    assert nets.plan.fingerprint != plan.fingerprint  # the fingerprint covers the classifier's width
    assert nets.plan.metadata["derived_from"]["fingerprint"] == plan.fingerprint
    assert (nets.plan.removed, nets.plan.added, nets.plan.segments) == (plan.removed, plan.added, plan.segments)
    assert nets.student(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    same = build_networks(TINY, 10, plan=plan_path)  # no new head: the plan is used as it is
    assert not same.head_replaced and same.plan == plan


def test_plan_for_another_model_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "se.json"
    a = analyze(tm.tiny_se(), "tests.tiny_models:tiny_se", 32)
    from dsa.formats.plan import remove_all_plan

    remove_all_plan(a).save(other)
    with pytest.raises(PlanError, match="fingerprint"):
        build_networks(TINY, 5, plan=other)


def test_kd_loss() -> None:
    s = torch.randn(4, 5)
    assert float(kd_loss(s, s)) == pytest.approx(0.0, abs=1e-6)
    t = torch.randn(4, 5)
    ref = F.kl_div(F.log_softmax(s / 2, 1), F.softmax(t / 2, 1), reduction="batchmean") * 4
    assert float(kd_loss(s, t, 2.0)) == pytest.approx(float(ref), rel=1e-5)


def test_evaluate_top1_top5() -> None:
    class Fixed(nn.Module):
        def __init__(self, k: int) -> None:
            super().__init__()
            self.k = k

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.arange(self.k, dtype=torch.float32).expand(x.shape[0], -1)  # always predicts k-1

    imgs = torch.zeros(6, 1, 8, 8, dtype=torch.uint8)
    acc3 = accuracy(Fixed(3), MemoryDataset(imgs, torch.tensor([2, 2, 0, 1, 2, 0])), batch_size=4)
    assert acc3.top1 == pytest.approx(50.0) and acc3.top5 is None and acc3.n == 6
    acc6 = accuracy(Fixed(6), MemoryDataset(imgs, torch.tensor([5, 0, 1, 2, 3, 4])), batch_size=4)
    assert acc6.top1 == pytest.approx(100 / 6) and acc6.top5 == pytest.approx(500 / 6)


# ------------------------------------------------------------------------------------------ runs


def test_baseline_run_writes_checkpoint_metrics_and_result(data: Path, tmp_path: Path) -> None:
    events = []
    r = train(config(data, tmp_path / "run", epochs=1), callback=lambda e, i: events.append(e))
    assert r.finished and r.epochs_done == 1
    ckpt = load_training_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["plan"] is None and ckpt["epoch"] == 1 and ckpt["num_classes"] == 5
    assert {"model", "optimizer", "scheduler", "rng", "config", "sampler_epoch"} <= set(ckpt)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1
    assert {"epoch", "step", "loss", "ce", "kd", "lr", "val_top1", "val_top5", "seconds"} <= set(lines[0])
    assert lines[0]["kd"] is None and lines[0]["val_top5"] == 100.0  # 5 classes: top-5 is everything
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert set(result["accuracy"]) == {"val", "test"}
    assert result["bench"]["original"]["images_per_s"] > 0
    assert events[0] == "setup" and events[-1] == "done" and "step" in events and "epoch" in events


def test_planned_run_merged_accuracy_equals_merge_ready(data: Path, plan_path: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    train(config(data, base, epochs=1))
    run = tmp_path / "planned"
    r = train(config(data, run, checkpoint=str(base / "last.pt"), plan=str(plan_path), onnx=True))
    s = r.summary
    assert s["merged_equals_merge_ready"]
    for split in ("val", "test"):
        a = s["accuracy"][split]
        assert a["merged"]["top1"] == a["merge_ready"]["top1"]
        assert a["prediction_disagreements"] == 0
    assert s["merge"]["convs_after"] < s["merge"]["convs_before"]
    assert s["merge"]["verified_max_rel_error_fp64"] < 1e-9
    assert s["bench"]["speedup"] > 0 and set(s["bench"]) >= {"original", "merged", "threads", "batch_size"}
    for name in ("merged.pt", "merged.torchscript.pt", "merged.onnx", "plan.json", "result.json"):
        assert (run / name).is_file(), name
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(x["kd"] is not None and x["kd"] >= 0 for x in lines)
    # the TorchScript export computes what the merged checkpoint computes
    loaded = load_for_eval(run / "merged.pt")
    ts = torch.jit.load(str(run / "merged.torchscript.pt"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ts(x), loaded.module(x), atol=1e-5)
    # and dsa.networks.load_merged rebuilds the finetuned head too
    from dsa.networks import load_merged

    with torch.no_grad():
        assert torch.allclose(load_merged(run / "merged.pt")(x), loaded.module(x), atol=1e-6)


@pytest.mark.parametrize("planned", [False, True], ids=["baseline-with-dropout", "planned-with-distillation"])
def test_resume_after_an_interrupted_run_equals_an_uninterrupted_run(
    data: Path, plan_path: Path, tmp_path: Path, planned: bool
) -> None:
    kw = {"plan": str(plan_path)} if planned else {"model": "tests.test_train:tiny_dropout"}
    kw |= {"epochs": 3, "bench_repeats": 0}
    train(config(data, tmp_path / "straight", **kw))
    first = train(config(data, tmp_path / "resumed", **kw), stop_after_epochs=1)
    assert not first.finished and first.epochs_done == 1
    assert load_training_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 1
    torch.manual_seed(123)  # a fresh process would start from another global RNG state
    second = train(config(data, tmp_path / "resumed", **kw), resume=True)
    assert second.finished and second.epochs_done == 3
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


def test_resume_refuses_changed_options_and_a_second_run_refuses_the_directory(data: Path, tmp_path: Path) -> None:
    train(config(data, tmp_path / "run", bench_repeats=0), stop_after_epochs=1)
    with pytest.raises(TrainingError, match=r"lr \(0.05 -> 0.1\)"):
        train(config(data, tmp_path / "run", lr=0.1), resume=True)
    with pytest.raises(TrainingError, match="pass --resume"):
        train(config(data, tmp_path / "run"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data: Path, tmp_path: Path, monkeypatch) -> None:
    real = F.cross_entropy
    calls = {"n": 0}
    steps_per_epoch = 5  # 30 train images / batch 6

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if calls["n"] > steps_per_epoch else out

    monkeypatch.setattr(F, "cross_entropy", poisoned)
    with pytest.raises(TrainingError, match=r"loss is nan .* epoch 2 step 1; .*last\.pt \(epoch 1\)"):
        train(config(data, tmp_path / "run", bench_repeats=0))
    ckpt = load_training_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert load_for_eval(tmp_path / "run" / "last.pt").kind == "train"


def test_nan_guard_from_the_cli_with_a_huge_learning_rate(data: Path, tmp_path: Path) -> None:
    r = dsa("train", "--data", data, "--model", TINY, "--image-size", 32, "--epochs", 1, "--batch-size", 6,
            "--lr", 1e30, "--out", tmp_path / "run", "--bench-repeats", 0)  # fmt: skip
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in r.output  # progress lines come before it
    assert "loss is" in errors[0] or "non-finite" in errors[0]
    assert "lower --lr" in errors[0] and "no checkpoint was written yet" in errors[0]
    assert not (tmp_path / "run" / "last.pt").exists()


def test_torchrun_two_processes_gloo(data: Path, plan_path: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "cli",
           "train", "--data", str(data), "--model", TINY, "--plan", str(plan_path), "--image-size", "32",
           "--epochs", "1", "--batch-size", "3", "--out", str(run), "--bench-repeats", "1", "--bench-batch-size", "2",
           "--no-onnx", "--format", "json"]  # fmt: skip
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    ckpt = load_training_checkpoint(run / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["epoch"] == 1
    assert ckpt["step"] == 5  # 30 images over 2 processes, batch 3: 5 steps
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    summary = json.loads(p.stdout)  # rank 0 alone prints the result
    assert summary["world_size"] == 2 and summary["merged_equals_merge_ready"]


# ------------------------------------------------------------------------------------------ CLI


def test_cli_train_and_eval_on_train_and_merged_checkpoints(data: Path, plan_path: Path, tmp_path: Path) -> None:
    base, run = tmp_path / "base", tmp_path / "planned"
    common = ["--data", data, "--model", TINY, "--image-size", 32, "--epochs", 1, "--batch-size", 6,
              "--bench-repeats", 1, "--bench-batch-size", 2]  # fmt: skip
    out = ok(dsa("train", *common, "--out", base))
    assert "finetuned for 1 epochs" in out
    out = ok(dsa("train", *common, "--checkpoint", base / "last.pt", "--plan", plan_path, "--no-onnx", "--out", run))
    assert "merged and merge-ready accuracy equal" in out and "measured speed-up" in out
    result = json.loads((run / "result.json").read_text())

    r = json.loads(ok(dsa("eval", "--checkpoint", base / "last.pt", "--data", data, "--format", "json")))
    assert r["kind"] == "train" and r["n"] == 15 and r["top5"] == 100.0
    base_result = json.loads((base / "result.json").read_text())
    assert r["top1"] == base_result["accuracy"]["val"]["top1"]

    for ckpt, kind in ((run / "last.pt", "train-merge-ready"), (run / "merged.pt", "merged")):
        r = json.loads(ok(dsa("eval", "--checkpoint", ckpt, "--data", data, "--split", "test", "--format", "json")))
        assert r["kind"] == kind and r["split"] == "test"
        assert r["top1"] == result["accuracy"]["test"]["merged"]["top1"]
    out = ok(dsa("eval", "--checkpoint", run / "merged.pt", "--data", data, "--model", TINY))
    assert "top-1" in out and "top-5" in out and "merged checkpoint" in out

    # `dsa merge` takes training checkpoints too: the merge-ready one as trained, the baseline (new head) by plan
    from dsa.networks import load_for_eval

    x = torch.randn(2, 3, 32, 32)
    ready = load_for_eval(run / "last.pt").module
    ok(dsa("merge", "--checkpoint", run / "last.pt", "--plan", plan_path, "--out", tmp_path / "m1.pt"))
    m1 = load_for_eval(tmp_path / "m1.pt")
    assert m1.kind == "merged" and m1.classes == ready_classes(run)
    torch.testing.assert_close(m1.module(x), ready(x), rtol=1e-4, atol=1e-5)
    ok(dsa("merge", "--checkpoint", base / "last.pt", "--plan", plan_path, "--out", tmp_path / "m2.pt"))
    m2 = load_for_eval(tmp_path / "m2.pt").module
    student = build_networks(TINY, 5, checkpoint=base / "last.pt", plan=plan_path).student.eval()
    assert m2(x).shape == (2, 5)
    torch.testing.assert_close(m2(x), student(x), rtol=1e-4, atol=1e-5)
    other = tmp_path / "other.json"
    plan_from_act_list(analyze(tm.tiny_mbv2(), TINY, 32), [1, 1, 0, 1, 1]).save(other)
    user_error(dsa("merge", "--checkpoint", run / "last.pt", "--plan", other, "--out", tmp_path / "m3.pt"),
               "was finetuned with another plan")  # fmt: skip
    assert not (tmp_path / "m3.pt").exists()


def ready_classes(run: Path) -> tuple[str, ...]:
    return tuple(load_training_checkpoint(run / "last.pt")["classes"])


def test_cli_eval_plain_state_dict(data: Path, tmp_path: Path) -> None:
    net = tm.tiny_mbv2()
    replace_head(net, 5)
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    user_error(dsa("eval", "--checkpoint", tmp_path / "sd.pt", "--data", data), "give --model")
    r = json.loads(ok(dsa("eval", "--checkpoint", tmp_path / "sd.pt", "--data", data, "--model", TINY,
                          "--image-size", 32, "--format", "json")))  # fmt: skip
    assert r["kind"] == "state_dict" and r["n"] == 15


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--data", "/nonexistent/dir"], ["not a known dataset name"]),
        (["--data", "imagenet"], ["imagenet", "not a known dataset name"]),
        (["--plan", "SE_PLAN"], ["fingerprint", "make a new plan"]),
        (["--plan", "/nonexistent/plan.json"], ["plan", "does not exist"]),
        (["--checkpoint", "/nonexistent/w.pt"], ["does not exist"]),
        (["--optimizer", "adamw", "--pretrained"], ["--pretrained applies to registry models only"]),
        (["--epochs", "1", "--batch-size", "64"], ["fewer than one batch of 64"]),
    ],
)
def test_cli_train_bad_input_is_one_line(data: Path, tmp_path: Path, args: list, fragments: list) -> None:
    if "SE_PLAN" in args:
        from dsa.formats.plan import remove_all_plan

        se = tmp_path / "se.json"
        remove_all_plan(analyze(tm.tiny_se(), "tests.tiny_models:tiny_se", 32)).save(se)
        args = [str(se) if a == "SE_PLAN" else a for a in args]
    full = ["train", "--data", data, "--model", TINY, "--image-size", 32, "--epochs", 1, "--batch-size", 6,
            "--out", tmp_path / "run", *args]  # fmt: skip
    user_error(dsa(*full), *fragments)


def test_cli_train_refuses_a_merged_checkpoint_as_start(data: Path, plan_path: Path, tmp_path: Path) -> None:
    run = tmp_path / "planned"
    train(config(data, run, epochs=1, plan=str(plan_path), bench_repeats=0))
    for ckpt, fragment in ((run / "merged.pt", "merged checkpoint"), (run / "last.pt", "merge-ready training")):
        r = dsa("train", "--data", data, "--model", TINY, "--image-size", 32, "--checkpoint", ckpt,
                "--out", tmp_path / "again")  # fmt: skip
        user_error(r, fragment)
    user_error(dsa("eval", "--checkpoint", run / "last.pt", "--data", data, "--model", "resnet18"), "trained as")
