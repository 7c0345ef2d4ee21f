"""The ``dsa`` command line, in process with typer's CliRunner (click >= 8.2 keeps stdout and stderr apart:
``result.stdout``, ``result.stderr``; ``result.output`` is both interleaved)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from dsa import apply_plan, load_plan
from tests import tiny_models as tm
from tests.cli_helpers import dsa, ok, user_error

TINY = "tests.tiny_models:tiny_mbv2"
SIZE = "32"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    ok(dsa("plan", "--model", TINY, "--input-size", SIZE, "--act-list", "1,0,0,1,1", "--out", path))
    return path


# ------------------------------------------------------------------------------------------ models, analyze


def test_models_table() -> None:
    out = ok(dsa("models"))
    for name in ("mobilenet_v2_140", "resnet18", "efficientnet_lite0"):
        assert name in out
    assert "package.module:factory" in out


def test_models_json() -> None:
    entries = json.loads(ok(dsa("models", "--format", "json")))
    by_name = {e["name"]: e for e in entries}
    assert by_name["mobilenet_v2_140"]["source"] == "torchvision"
    assert by_name["mobilenet_v2_140"]["input_size"] == 224
    assert by_name["efficientnet_lite0"]["pretrained_offline"] is True
    assert by_name["resnet18"]["pretrained_offline"] is False
    assert set(entries[0]) == {"name", "source", "description", "pretrained_offline", "input_size"}


def test_analyze_json() -> None:
    doc = json.loads(ok(dsa("analyze", "--model", TINY, "--input-size", SIZE, "--format", "json")))
    assert doc["model"] == TINY and doc["input_size"] == 32
    acts = doc["activations"]
    assert [a["name"] for a in acts][:3] == ["features.0.2", "features.1.conv.2", "features.1.conv.5"]
    assert all({"name", "type", "block", "removable"} <= set(a) for a in acts)
    assert acts[0]["type"] == "ReLU6" and acts[0]["block"] == "features.0"
    assert acts[-1]["removable"] is False and "no conv follows" in acts[-1]["reason"]
    assert doc["blocks"] == [f"features.{i}" for i in range(5)]
    assert doc["segments_for"] == "all-removable"
    assert [len(s["convs"]) for s in doc["segments"]] == [1, 6, 4]
    assert doc["segments"][1]["residual"] is True and doc["segments"][1]["kernel"] == [5, 5]
    assert doc["findings"] == []


def test_analyze_json_with_a_plan(tiny_plan) -> None:
    doc = json.loads(ok(dsa("analyze", "--model", TINY, "--input-size", SIZE, "--plan", tiny_plan, "--format", "json")))
    assert doc["segments_for"] == str(tiny_plan)
    # a plan with added activations cuts after each removed block, and a kept block is never merged into the
    # next one (its project conv and the head conv stay two convs)
    assert [s["convs"][0] for s in doc["segments"] if len(s["convs"]) > 1] == [
        "features.1.conv.0",
        "features.2.conv.0",
    ]


def test_analyze_table_reports_findings_on_stderr() -> None:
    result = dsa("analyze", "--model", "tests.tiny_models:tiny_reflect", "--input-size", SIZE)
    out = ok(result)
    assert "act1" in out and "act2" in out
    assert "not analysed" not in out  # diagnostics go to stderr
    assert "which dsa cannot merge" in " ".join(out.split())  # act1's reason names the unmergeable conv
    err = " ".join(result.stderr.split())
    assert err.startswith("not analysed: conv2:")
    assert "padding_mode='reflect' cannot be relocated (only zero padding merges)" in err


# ------------------------------------------------------------------------------------------ plan, merge, bench


def test_plan_writes_the_plan(tiny_plan) -> None:
    p = load_plan(tiny_plan)
    assert p.model == TINY and p.input_size == 32
    assert p.source == {"kind": "act-list", "act_list": [1, 0, 0, 1, 1]}
    assert len(p.removed) == 4 and len(p.added) == 2


def test_plan_table_and_json_output(tmp_path) -> None:
    path = tmp_path / "p.json"
    out = ok(dsa("plan", "--model", TINY, "--input-size", SIZE, "--act-list", "1, 0,0,1,1", "--out", path))
    assert f"plan for {TINY}: 4 activations removed, 2 added, 2 merged segments -> {path}" in " ".join(out.split())
    result = dsa("plan", "--model", TINY, "--input-size", SIZE, "--remove-all", "-o", path, "--format", "json")
    doc = json.loads(ok(result))
    assert doc == json.loads(path.read_text())
    assert doc["source"] == {"kind": "remove-all"} and len(doc["removed"]) == 7


def test_merge_writes_checkpoint_torchscript_and_onnx(tiny_plan, tmp_path) -> None:
    out_path, onnx_path = tmp_path / "merged.pt", tmp_path / "merged.onnx"
    result = dsa("merge", "--model", TINY, "--plan", tiny_plan, "--out", out_path, "--onnx", onnx_path)
    out = " ".join(ok(result).split())
    ts_path = tmp_path / "merged.torchscript.pt"
    assert out_path.is_file() and ts_path.is_file() and onnx_path.is_file()
    assert f"merged {TINY}: 11 -> 7 convs" in out
    m = re.search(r"verified max relative error (\S+) \(float64\), (\S+) \(model dtype\)", out)
    assert m, out
    assert float(m.group(1)) < 1e-12 and float(m.group(2)) < 1e-5
    m = re.search(r"onnxruntime max relative error ([0-9.e+-]+), OpenVINO ([0-9.e+-]+)\)", out)
    assert m, out  # the ONNX file is checked in both runtimes that load it
    assert float(m.group(1)) < 1e-4 and float(m.group(2)) < 1e-4

    # every artifact computes what the merge-ready network computes
    import onnxruntime as ort

    from dsa.networks import load_merged

    ready = apply_plan(tm.tiny_mbv2(), load_plan(tiny_plan))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = ready(x)
        outputs = {
            "torchscript": torch.jit.load(str(ts_path))(x),
            "checkpoint": load_merged(out_path)(x),
        }
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs["onnx"] = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    for what, y in outputs.items():
        assert y.shape == (3, 10), what
        assert float((y - ref).abs().max() / ref.abs().max()) < 1e-4, what


def test_merge_json(tiny_plan, tmp_path) -> None:
    out_path = tmp_path / "m.pt"
    doc = json.loads(ok(dsa("merge", "--model", TINY, "--plan", tiny_plan, "-o", out_path, "--format", "json")))
    assert (doc["convs_before"], doc["convs_after"]) == (11, 7)
    assert doc["verified_max_rel_error_fp64"] < 1e-12
    assert doc["verified_max_rel_error_model_dtype"] < 1e-5
    assert doc["torchscript"] == str(tmp_path / "m.torchscript.pt")
    assert doc["torchscript_mode"] == "script"
    assert doc["onnx"] is None and doc["onnxruntime_max_rel_error"] is None
    assert not list(tmp_path.glob("*.onnx"))


def test_bench_json(tiny_plan) -> None:
    result = dsa(
        "bench", "--model", TINY, "--plan", tiny_plan, "--batch-size", "2", "--repeats", "2", "--warmup", "1",
        "--threads", "1", "--format", "json",
    )  # fmt: skip
    doc = json.loads(ok(result))
    assert doc["input_size"] == 32 and doc["batch_size"] == 2 and doc["repeats"] == 2
    assert doc["layout"] == "NCHW" and doc["threads"] == 1
    for k in ("original", "merged"):
        assert doc[k]["images_per_s"] > 0
        assert len(doc[k]["runs_images_per_s"]) == 2
    assert doc["speedup"] == pytest.approx(doc["merged"]["images_per_s"] / doc["original"]["images_per_s"])


def test_bench_without_plan_times_only_the_original() -> None:
    result = dsa(
        "bench", "--model", TINY, "--batch-size", "1", "--repeats", "1", "--warmup", "0", "--threads", "1",
        "--format", "json",
    )  # fmt: skip
    doc = json.loads(ok(result))
    assert "merged" not in doc and doc["speedup"] is None
    assert doc["input_size"] == 224  # a user model's default resolution


# ------------------------------------------------------------------------------------------ user errors


def test_unknown_model() -> None:
    user_error(dsa("analyze", "--model", "nosuch"), "unknown model 'nosuch'", "mobilenet_v2_140")


def test_unimportable_user_model() -> None:
    user_error(dsa("analyze", "--model", "tests.no_such_module:f"), "cannot import 'tests.no_such_module'")


def test_user_model_without_factory() -> None:
    user_error(dsa("analyze", "--model", "tests.tiny_models:nope"), "has no callable 'nope'")


def test_untraceable_model() -> None:
    user_error(
        dsa("analyze", "--model", "tests.tiny_models:tiny_untraceable", "--input-size", SIZE),
        "torch.fx cannot trace _Untraceable",
        "control flow",
    )


def test_plan_for_another_model(tiny_plan, tmp_path) -> None:
    se = "tests.tiny_models:tiny_se"
    user_error(
        dsa("merge", "--model", se, "--plan", tiny_plan, "--out", tmp_path / "m.pt"),
        "field 'fingerprint'",
        f"made for model '{TINY}'",
    )
    assert not list(tmp_path.iterdir())
    user_error(dsa("analyze", "--model", se, "--input-size", SIZE, "--plan", tiny_plan), "field 'fingerprint'")
    user_error(dsa("bench", "--model", se, "--plan", tiny_plan, "--repeats", "1"), "field 'fingerprint'")


def test_wrong_act_list_length(tmp_path) -> None:
    user_error(
        dsa("plan", "--model", TINY, "--input-size", SIZE, "--act-list", "1,0,1", "--out", tmp_path / "p.json"),
        "act-list has 3 entries but",
        "needs 5",
    )
    assert not (tmp_path / "p.json").exists()


def test_act_list_that_is_not_numbers(tmp_path) -> None:
    user_error(
        dsa("plan", "--model", TINY, "--input-size", SIZE, "--act-list", "1,x,1", "--out", tmp_path / "p.json"),
        "--act-list must be comma-separated 0/1 values, got '1,x,1'",
    )


def test_ds_pattern_on_a_model_with_other_blocks(tmp_path) -> None:
    user_error(
        dsa("plan", "--model", TINY, "--input-size", SIZE, "--ds-pattern", "F", "--out", tmp_path / "p.json"),
        "--ds-pattern is DepthShrinker's MobileNetV2 keep list",
        "has 5 blocks",
    )


def test_plan_needs_exactly_one_source(tmp_path) -> None:
    message = "give exactly one of --act-list, --ds-pattern, --remove-all"
    user_error(dsa("plan", "--model", TINY, "--out", tmp_path / "p.json"), message)
    user_error(dsa("plan", "--model", TINY, "--remove-all", "--ds-pattern", "F", "--out", tmp_path / "p.json"), message)


def test_missing_checkpoint(tmp_path) -> None:
    user_error(
        dsa("analyze", "--model", TINY, "--checkpoint", tmp_path / "none.pt"),
        f"checkpoint {tmp_path / 'none.pt'} does not exist",
    )


def test_checkpoint_of_another_model(tmp_path) -> None:
    path = tmp_path / "se.pt"
    torch.save(tm.tiny_se().state_dict(), path)
    user_error(dsa("analyze", "--model", TINY, "--checkpoint", path), "does not fit the model")


def test_checkpoint_with_a_wrong_shaped_tensor(tmp_path) -> None:
    state = tm.tiny_mbv2().state_dict()
    state["features.1.conv.0.weight"] = torch.zeros(5, 8, 1, 1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    user_error(dsa("analyze", "--model", TINY, "--checkpoint", path), "does not fit the model", "size mismatch")


def test_checkpoint_with_missing_and_extra_keys(tmp_path) -> None:
    state = tm.tiny_mbv2().state_dict()
    del state["classifier.bias"]
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    user_error(dsa("analyze", "--model", TINY, "--checkpoint", path), "missing 1 keys (e.g. classifier.bias)")
    state = tm.tiny_mbv2().state_dict()
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    user_error(dsa("analyze", "--model", TINY, "--checkpoint", path), "1 unexpected keys (e.g. extra.weight)")


def test_checkpoint_that_is_not_a_torch_file(tmp_path) -> None:
    path = tmp_path / "text.pt"
    path.write_text("hello")
    user_error(dsa("analyze", "--model", TINY, "--checkpoint", path), "is not a PyTorch file")


def test_checkpoint_that_fits_is_loaded(tmp_path) -> None:
    model = tm._init(tm.TinyMBV2(), seed=3)
    path = tmp_path / "good.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    from dsa import create_model

    loaded = create_model(TINY, checkpoint=path)
    assert torch.equal(loaded.features[1].conv[0].weight, model.features[1].conv[0].weight)
    ok(dsa("analyze", "--model", TINY, "--input-size", SIZE, "--checkpoint", path, "--format", "json"))


def test_malformed_plan_json(tmp_path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"schema_version": 1,\n "model": }')
    user_error(dsa("merge", "--model", TINY, "--plan", path, "--out", tmp_path / "m.pt"), "is not valid JSON", "line 2")


def test_missing_plan_file(tmp_path) -> None:
    user_error(
        dsa("merge", "--model", TINY, "--plan", tmp_path / "nope.json", "--out", tmp_path / "m.pt"), "does not exist"
    )


def test_multi_line_error_messages_become_one_line(monkeypatch) -> None:
    from dsa import ModelError

    def broken(*args, **kwargs):
        raise ModelError("first line\n  second line")

    monkeypatch.setattr("dsa.models.create_model", broken)
    assert user_error(dsa("analyze", "--model", TINY)) == "error: first line second line"


def test_negative_input_size_is_a_user_error() -> None:
    result = dsa("analyze", "--model", TINY, "--input-size", "-3")
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (1, 2)
    assert "Traceback" not in result.output


def test_zero_input_size_is_not_silently_the_default() -> None:
    result = dsa("analyze", "--model", TINY, "--input-size", "0", "--format", "json")
    assert result.exit_code != 0


def test_shape_propagation_failure_is_one_line_with_the_cause() -> None:
    line = user_error(dsa("analyze", "--model", "tests.tiny_models:tiny_reflect", "--input-size", "1"))
    assert "Padding size should be less than the corresponding input dimension" in line


def test_cuda_on_a_machine_without_it() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    user_error(dsa("bench", "--model", TINY, "--device", "cuda"), "CUDA is not available")


# ------------------------------------------------------------------------------------------ the real network


@pytest.mark.slow
def test_ds_pattern_f_on_mobilenet_v2_140_merges_and_exports(tmp_path) -> None:
    plan = tmp_path / "f.json"
    out = " ".join(ok(dsa("plan", "--ds-pattern", "F", "--out", plan)).split())
    assert "plan for mobilenet_v2_140: 33 activations removed, 17 added" in out
    out = " ".join(ok(dsa("merge", "--plan", plan, "--out", tmp_path / "m.pt", "--onnx", tmp_path / "m.onnx")).split())
    assert "merged mobilenet_v2_140: 52 -> 19 convs" in out
    m = re.search(r"onnxruntime max relative error ([0-9.e+-]+), OpenVINO ([0-9.e+-]+)\)", out)
    assert m, out
    assert float(m.group(1)) < 1e-4 and float(m.group(2)) < 1e-4
    assert (tmp_path / "m.onnx").is_file() and (tmp_path / "m.torchscript.pt").is_file()
