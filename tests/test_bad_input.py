"""Bad input, contradictory options and unwritable outputs, as a table: every row runs one `dsa` command line
and checks the exit code, the one `error:` line (its fragments), that the files named must stay untouched are
byte-identical afterwards, and that no temp file is left behind. Interruptions (SIGINT) are in
test_interrupt.py."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import roofline as rl
from dsa import analyze, create_model, merge, plan_from_act_list, remove_all_plan
from dsa.checkpoints import save_merged
from dsa.measure.profiler import profile_model
from tests.cli_helpers import dsa, ok, user_error
from tests.test_data import write_folder

TINY = "tests.tiny_models:tiny_mbv2"
SE = "tests.tiny_models:tiny_se"

pytestmark = pytest.mark.usefixtures("one_thread")


def _unwritable_dir(tmp: Path) -> Path:
    """A directory that refuses new files: a read-only file system where there is one (root ignores modes)."""
    for d in (Path("/sys"), Path("/proc")):
        try:
            fd, p = tempfile.mkstemp(dir=d)
        except OSError:
            return d
        os.close(fd)
        os.unlink(p)
    ro = tmp / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    return ro


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict[str, Path]:
    """The files the table refers to as {name}."""
    d = tmp_path_factory.mktemp("bad")
    net = create_model(TINY)
    a = analyze(net, TINY, 32)
    plan = plan_from_act_list(a, [1, 0, 0, 1, 1])
    plan.save(d / "plan.json")
    se = analyze(create_model(SE), SE, 32)
    remove_all_plan(se).save(d / "se_plan.json")
    spec = rl.measure_local_device("cpu", seconds=0.5)
    prof = profile_model(net, a, batch_size=2, warmup=0, repeats=1, device_spec=spec)
    prof.save(d / "profile.json")
    doc = prof.to_json()
    (d / "incomplete.json").write_text(json.dumps({**doc, "complete": False}))
    (d / "edited_batch.json").write_text(json.dumps({**doc, "batch_size": 128}))
    save_merged(merge(copy.deepcopy(net), plan), plan, d / "merged.pt")
    (d / "old.pt").write_bytes(b"an earlier merge, which must survive a failed one")
    (d / "garbage.pt").write_bytes(os.urandom(256))
    (d / "json.pt").write_text('{"not": "a checkpoint"}')
    torch.save({"model": torch.nn.ReLU()}, d / "object.pt")
    plan_doc = plan.to_json()
    (d / "edited_segments.json").write_text(json.dumps({**plan_doc, "removed": plan_doc["removed"][:2]}))
    (d / "bool_median.json").write_text(
        json.dumps({**doc, "ops": {k: {**v, "median_ms": True} for k, v in doc["ops"].items()}})
    )
    (d / "weird_layout.json").write_text(json.dumps({**doc, "layout": "weird"}))
    (d / "negative_repeats.json").write_text(json.dumps({**doc, "repeats": -4}))
    write_folder(d / "data", classes=2, per_split={"train": 2, "val": 1})
    (d / "run_with_plan").mkdir()
    (d / "run_with_plan" / "plan.json").write_bytes((d / "plan.json").read_bytes())
    (d / "a_dir").mkdir()
    (d / "empty_run").mkdir()
    (d / "a_file").write_text("x")
    return {
        "w": d,
        "ro": _unwritable_dir(d),
        **{p.stem: p for p in d.iterdir() if p.is_file() or p.is_dir()},
    }


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    fragments: tuple[str, ...]
    unchanged: tuple[str, ...] = ()  # names in w that must be byte-identical afterwards
    absent: tuple[str, ...] = ()  # paths (formatted) that must not exist afterwards
    code: int = 1


def C(id: str, argv: str, *fragments: str, unchanged=(), absent=(), code=1) -> Case:
    return Case(id, tuple(argv.split()), fragments, tuple(unchanged), tuple(absent), code)


P = f"--model {TINY} --input-size 32"
CASES = [
    # ---- data lost: outputs checked before work, multi-file outputs all-or-nothing, outputs never inputs
    C(
        "merge-onnx-unwritable",
        "merge --plan {plan} --out {old} --onnx {ro}/m.onnx",
        "cannot write --onnx",
        unchanged=["old", "plan"],
        absent=["{w}/old.torchscript.pt"],
    ),
    C("merge-out-is-plan", "merge --plan {plan} --out {plan}", "is also the input --plan", unchanged=["plan"]),
    C(
        "merge-out-is-checkpoint",
        "merge --plan {plan} --out {merged} --checkpoint {merged}",
        "is also the input --checkpoint",
        unchanged=["merged"],
    ),
    C("merge-onnx-is-out", "merge --plan {plan} --out {w}/m.pt --onnx {w}/m.pt", "is also the input --out"),
    C("merge-out-directory", "merge --plan {plan} --out {a_dir}", "is a directory"),
    C("merge-out-unwritable", "merge --plan {plan} --out {ro}/m.pt", "cannot write --out"),
    C("merge-out-under-a-file", "merge --plan {plan} --out {a_file}/m.pt", "is not a directory"),
    C(
        "calibrate-device-out-unwritable",
        "calibrate --profile {profile} --device-out {ro}/dev.json",
        "cannot write --device-out",
        unchanged=["profile"],
    ),
    C(
        "calibrate-device-out-is-profile",
        "calibrate --profile {profile} --device-out {profile}",
        "is also the input --profile",
        unchanged=["profile"],
    ),
    C("plan-out-unwritable", f"plan {P} --remove-all --out {{ro}}/p.json", "cannot write --out"),
    C("plan-out-directory", f"plan {P} --remove-all --out {{a_dir}}", "is a directory"),
    C("plan-out-empty", f"plan {P} --remove-all --out=", "empty path"),
    C("plan-out-under-a-file", f"plan {P} --remove-all --out {{a_file}}/p.json", "is not a directory"),
    C(
        "plan-out-is-profile",
        f"plan {P} --target-speedup 1.1 --profile {{profile}} --out {{profile}}",
        "is also the input --profile",
        unchanged=["profile"],
    ),
    C("devices-out-unwritable", "devices --measure --out {ro}/dev.json", "cannot write --out"),
    C("devices-out-directory", "devices --measure --out {a_dir}", "is a directory"),
    C("profile-out-unwritable", f"profile {P} --out {{ro}}/p.json", "cannot write --out"),
    C(
        "profile-out-is-plan",
        f"profile {P} --plan {{plan}} --out {{plan}}",
        "is also the input --plan",
        unchanged=["plan"],
    ),
    C("pareto-out-unwritable", f"pareto {P} --out {{ro}}/f.png", "cannot write --out"),
    C("pareto-out-bad-suffix", f"pareto {P} --out {{w}}/f.txt", ".png or .svg"),
    C("roofline-out-unwritable", f"roofline {P} --out {{ro}}/f.png", "cannot write --out"),
    C("report-out-directory", "report --plan {plan} --out {a_dir}", "is a directory"),
    C("importance-out-unwritable", f"importance {P} --data elpv --out {{ro}}/i.json", "cannot write --out"),
    C("train-out-unwritable", f"train {P} --data elpv --out {{ro}}/run", "cannot write --out"),
    C("train-out-is-a-file", f"train {P} --data elpv --out {{a_file}}", "is not a directory"),
    # ---- silently wrong: profiles validated against their use, contradictions refused
    C(
        "plan-incomplete-profile",
        f"plan {P} --target-speedup 1.1 --profile {{incomplete}} --out {{w}}/p.json",
        "field 'complete' is false",
        "--allow-incomplete",
    ),
    C(
        "plan-edited-batch-profile",
        f"plan {P} --target-speedup 1.1 --profile {{edited_batch}} --out {{w}}/p.json",
        "field 'batch_size' is 128",
        "measured at batch 2",
    ),
    C(
        "plan-profile-and-gpu",
        f"plan {P} --target-speedup 1.1 --profile {{profile}} --gpu a100 --out {{w}}/p.json",
        "--gpu",
        "--profile",
        "not both",
    ),
    C(
        "plan-profile-other-batch",
        f"plan {P} --target-speedup 1.1 --profile {{profile}} --batch-size 64",
        "field 'batch_size' is 2",
        "batch 64",
    ),
    C(
        "plan-profile-other-precision",
        f"plan {P} --target-speedup 1.1 --profile {{profile}} --precision fp16",
        "field 'precision' is fp32",
    ),
    C(
        "plan-profile-other-model",
        f"plan --model {SE} --input-size 32 --target-speedup 1.1 --profile {{profile}}",
        "field 'fingerprint'",
    ),
    C(
        "plan-profile-other-size",
        f"plan --model {TINY} --input-size 64 --target-speedup 1.1 --profile {{profile}}",
        "field 'input_size' is 32",
    ),
    C(
        "evaluate-profile-other-batch",
        "evaluate --plan {plan} --profile {profile} --batch-size 64",
        "field 'batch_size' is 2",
    ),
    C("evaluate-profile-and-gpu", "evaluate --plan {plan} --profile {profile} --gpu v100", "not both"),
    C("evaluate-incomplete-profile", "evaluate --plan {plan} --profile {incomplete}", "field 'complete' is false"),
    C("validate-incomplete-profile", "validate --profile {incomplete}", "field 'complete' is false"),
    C(
        "calibrate-edited-profile",
        "calibrate --profile {edited_batch}",
        "field 'batch_size' is 128",
        unchanged=["edited_batch"],
    ),
    C(
        "importance-incomplete-profile",
        f"importance {P} --data elpv --method gates --profile {{incomplete}} --out {{w}}/i.json --samples 2 --steps 1",
        "'complete' is false",
    ),
    C(
        "importance-gpu-not-gates",
        f"importance {P} --data elpv --gpu v100 --out {{w}}/i.json",
        "only apply with --method gates",
    ),
    C(
        "importance-time-budget-not-finetune",
        f"importance {P} --data elpv --time-budget 5 --out {{w}}/i.json",
        "only applies with --method finetune",
    ),
    C(
        "importance-gpu-and-profile",
        f"importance {P} --data elpv --method gates --gpu v100 --profile {{profile}} --out {{w}}/i.json",
        "not both",
    ),
    C(
        "train-resume-nothing",
        f"train {P} --data elpv --out {{empty_run}} --resume",
        "holds no training checkpoint",
        "leave out --resume",
    ),
    C("bench-threads-zero", f"bench {P} --threads 0", "Invalid value for '--threads'"),
    C("devices-options-without-measure", "devices --out {w}/d.json", "only apply with --measure"),
    C("pretrained-and-checkpoint", f"analyze {P} --pretrained --checkpoint {{merged}}", "not both"),
    # ---- were tracebacks
    C(
        "factory-raises",
        "analyze --model tests.tiny_models:tiny_raising",
        "tiny_raising() raised RuntimeError",
        "weights file not found",
    ),
    C("bench-threads-negative", f"bench {P} --threads -3", "Invalid value for '--threads'"),
    C("eval-threads-negative", "eval --checkpoint {merged} --data elpv --threads -3", "Invalid value for '--threads'"),
    C(
        "train-weight-decay-negative",
        f"train {P} --data elpv --out {{w}}/run --weight-decay -1",
        "Invalid value for '--weight-decay'",
    ),
    C("user-model-without-colon-part", "analyze --model tests.tiny_models:", "package.module:factory"),
    # ---- were exit code 2 with a usage box
    C("batch-size-zero", f"plan {P} --remove-all --gpu v100 --batch-size 0", "Invalid value for '--batch-size'"),
    C("batch-size-negative", "evaluate --plan {plan} --batch-size -1", "Invalid value for '--batch-size'"),
    C("points-one", f"pareto {P} --points 1", "Invalid value for '--points'"),
    C("target-not-numeric", f"plan {P} --target-speedup fast", "Invalid value for '--target-speedup'"),
    C("misspelled-option", f"plan {P} --batchsize 3", "No such option: --batchsize", "--batch-size"),
    C("unknown-command", "plna", "No such command 'plna'"),
    C("precision-fp8-evaluate", "evaluate --plan {plan} --precision fp8", "Invalid value for '--precision'"),
    C("precision-fp8-plan", f"plan {P} --target-speedup 1.1 --precision fp8", "Invalid value for '--precision'"),
    C("format-xml", f"analyze {P} --format xml", "Invalid value for '--format'"),
    C("seconds-too-short", "devices --measure --seconds 0.1", "Invalid value for '--seconds'"),
    C("granularity-bad", f"plan {P} --target-speedup 1.1 --granularity layer", "Invalid value for '--granularity'"),
    C("missing-required-option", "merge --out {w}/m.pt", "Missing option '--plan'"),
    # ---- were misleading
    C("plan-is-a-directory", "merge --plan {a_dir} --out {w}/m.pt", "is a directory"),
    C("checkpoint-garbage", f"analyze {P} --checkpoint {{garbage}}", "is not a PyTorch file"),
    C("checkpoint-json", f"analyze {P} --checkpoint {{json}}", "is not a PyTorch file"),
    C("checkpoint-objects", f"analyze {P} --checkpoint {{object}}", "holds Python objects", "will not run code"),
    C("checkpoint-is-a-directory", f"analyze {P} --checkpoint {{a_dir}}", "is a directory"),
    C("checkpoint-already-merged", f"analyze {P} --checkpoint {{merged}}", "already merged"),
    C(
        "merge-checkpoint-already-merged",
        "merge --plan {plan} --checkpoint {merged} --out {w}/m2.pt",
        "already merged",
        unchanged=["merged"],
    ),
    C("eval-checkpoint-garbage", "eval --checkpoint {garbage} --data elpv", "is not a PyTorch file"),
    C(
        "plan-for-other-model-named",
        "merge --plan {plan} --model " + SE + " --out {w}/m.pt",
        "field 'fingerprint'",
        "leave out --model",
    ),
    # ---- found by an adversarial review after the first pass
    C("merge-out-empty", "merge --plan {plan} --out=", "empty path"),
    C(
        "merge-onnx-is-the-torchscript",
        "merge --plan {plan} --out {w}/m5.pt --onnx {w}/m5.torchscript.pt",
        "is also the input the TorchScript output",
    ),
    C("train-out-inside-data", f"train {P} --data {{data}} --out {{data}}/run", "lies inside --data"),
    C("train-out-is-data", f"train {P} --data {{data}} --out {{data}}", "lies inside --data"),
    C("train-out-empty", f"train {P} --data {{data}} --out=", "give a run directory"),
    C(
        "train-plan-inside-run",
        f"train {P} --data {{data}} --out {{run_with_plan}} --plan {{run_with_plan}}/plan.json",
        "is also the input --plan",
        unchanged=["run_with_plan/plan.json"],
    ),
    C(
        "keep-list-batch-without-gpu",
        f"plan {P} --remove-all --batch-size 64 --out {{w}}/p.json",
        "--batch-size only apply",
        "add --gpu",
    ),
    C(
        "keep-list-precision-without-gpu",
        f"plan {P} --remove-all --precision fp16 --out {{w}}/p.json",
        "--precision only apply",
    ),
    C("gpu-empty", "evaluate --plan {plan} --gpu=", "empty device name"),
    C("seconds-inf", "devices --measure --seconds inf", "finite number"),
    C("profile-tf32-on-cpu", f"profile {P} --device cpu --precision tf32 --out {{w}}/p.json", "CUDA tensor-core"),
    C("plan-segments-edited", "analyze --plan {edited_segments}", "field 'segments' does not match"),
    C("merge-plan-segments-edited", "merge --plan {edited_segments} --out {w}/m.pt", "field 'segments' does not match"),
    C("profile-bool-time", f"plan {P} --target-speedup 1.1 --profile {{bool_median}}", "true/false"),
    C("profile-weird-layout", f"plan {P} --target-speedup 1.1 --profile {{weird_layout}}", "field 'layout'"),
    C("profile-negative-repeats", "validate --profile {negative_repeats}", "field 'repeats'"),
    C(
        "train-kd-weight-without-plan",
        f"train {P} --data {{data}} --out {{w}}/r1 --kd-weight 0.5",
        "--kd-weight only apply with --plan",
    ),
    C(
        "train-no-onnx-without-plan",
        f"train {P} --data {{data}} --out {{w}}/r1 --no-onnx",
        "--onnx/--no-onnx only apply with --plan",
    ),
    C(
        "train-bench-batch-without-bench",
        f"train {P} --data {{data}} --out {{w}}/r1 --bench-repeats 0 --bench-batch-size 4",
        "--bench-batch-size only apply with --bench-repeats > 0",
    ),
    C(
        "importance-keep-fraction-not-gates",
        f"importance {P} --data elpv --keep-fraction 0.3 --out {{w}}/i.json",
        "--keep-fraction only apply with --method gates",
    ),
    C(
        "importance-steps-removal-kl",
        f"importance {P} --data elpv --steps 5 --out {{w}}/i.json",
        "--steps only apply with --method gates or finetune",
    ),
    # ---- feedback
    C("input-size-1", "analyze --model mobilenet_v2 --input-size 1", "below mobilenet_v2's total stride (32 px)"),
    C("input-size-7", "analyze --model mobilenet_v2 --input-size 7", "give --input-size 32 or more"),
    C(
        "unknown-model-says-what-is-accepted",
        "analyze --model nosuchnet",
        "unknown model 'nosuchnet'",
        "torchvision",
        "timm",
        "package.module:factory",
    ),
]


def _named(w: dict[str, Path], name: str) -> Path:
    head, _, rest = name.partition("/")
    return w[head] / rest if rest else w[head]


def _fmt(s: str, w: dict[str, Path]) -> str:
    return s.format(**{k: str(v) for k, v in w.items()})


def _temp_files(d: Path) -> list[Path]:
    return [p for p in d.rglob(".*") if p.name.endswith(".tmp") or p.name.startswith(".dsa-write-check")]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, w: dict[str, Path]) -> None:
    argv = [_fmt(a, w) for a in case.argv]
    before = {n: _named(w, n).read_bytes() for n in case.unchanged}
    result = dsa(*argv)
    assert result.exit_code == case.code
    user_error(result, *case.fragments)
    for n, data in before.items():
        assert _named(w, n).read_bytes() == data, f"{n} was changed"
    for a in case.absent:
        assert not Path(_fmt(a, w)).exists(), a
    assert not _temp_files(w["w"])


def test_the_table_covers_every_command() -> None:
    commands = {c.argv[0] for c in CASES}
    assert {"plan", "merge", "bench", "devices", "evaluate", "roofline", "report", "profile", "calibrate",
            "validate", "train", "eval", "importance", "analyze", "pareto"} <= commands  # fmt: skip
    assert len(CASES) >= 95


# ------------------------------------------------------------------------------------------ what works instead


def test_merge_takes_the_model_from_the_plan(w) -> None:
    out = w["w"] / "se_merged.pt"
    result = dsa("merge", "--plan", w["se_plan"], "--out", out, "--format", "json")
    doc = json.loads(ok(result))
    assert doc["model"] == SE and out.is_file()
    assert "random weights" in result.stderr  # said, not silent


def test_bench_and_importance_say_random_weights(w) -> None:
    result = dsa("bench", *P.split(), "--batch-size", "1", "--repeats", "1", "--warmup", "0", "--format", "json")
    doc = json.loads(ok(result))
    assert "warning: no --checkpoint or --pretrained" in result.stderr
    assert doc["bn_folded"]["images_per_s"] > 0 and doc["bn_folded_speedup"] > 0


def test_zero_removals_never_read_as_a_gain(w, tmp_path) -> None:
    """With nothing removed, the plan's speed-up over BN folding alone is exactly 1."""
    plan = tmp_path / "nothing.json"
    ok(dsa("plan", *P.split(), "--act-list", "1,1,1,1,1", "--gpu", "v100", "--out", plan))
    pred = json.loads(plan.read_text())["metadata"]["prediction"]
    assert pred["speedup_over_bn_folded"] == pytest.approx(1.0)
    assert pred["bn_folded_speedup"] == pytest.approx(pred["speedup"])
    ev = json.loads(ok(dsa("evaluate", "--plan", plan, "--format", "json")))
    assert ev["speedup_over_bn_folded"] == pytest.approx(1.0)
    assert ev["bn_folded_speedup"] == pytest.approx(ev["speedup"]) and ev["speedup"] > 1.0
    text = " ".join(ok(dsa("evaluate", "--plan", plan)).split())
    assert "BN folding alone" in text and "1.00x over that" in text


def test_allow_incomplete_uses_the_profile_with_a_warning(w, tmp_path) -> None:
    result = dsa("plan", *P.split(), "--target-speedup", "1.01", "--profile", w["incomplete"], "--allow-incomplete",
                 "--out", tmp_path / "p.json")  # fmt: skip
    assert result.exit_code in (0, 1)  # the target may or may not be reachable on this profile
    assert "warning: the profile" in result.stderr and "is incomplete" in result.stderr


def test_an_incomplete_profile_under_profiles_is_not_used_silently(w, tmp_path, monkeypatch) -> None:
    folder = tmp_path / "profiles" / "local-cpu"
    folder.mkdir(parents=True)
    doc = json.loads(w["incomplete"].read_text())
    (folder / "tiny.json").write_text(json.dumps({**doc, "device_spec": {**doc["device_spec"], "name": "local-cpu"}}))
    monkeypatch.chdir(tmp_path)
    line = user_error(
        dsa("plan", *P.split(), "--target-speedup", "1.01", "--gpu", "local-cpu", "--batch-size", "2"),
        "is incomplete",
        "--allow-incomplete",
    )
    assert "tiny.json" in line  # names the file it refused
    assert not (tmp_path / "plan.json").exists()


def test_any_torchvision_classification_model_name_is_accepted() -> None:
    doc = json.loads(ok(dsa("analyze", "--model", "squeezenet1_0", "--format", "json")))
    assert doc["model"] == "squeezenet1_0" and doc["activations"]


def test_help_is_whole_and_documents_the_convention() -> None:
    out = " ".join(ok(dsa("--help")).split())
    assert "exit code 1" in out and "130" in out
    no_args = dsa()
    assert no_args.exit_code == 0 and "Usage" in no_args.stdout
