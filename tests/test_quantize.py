"""INT8 with the runtimes' own tooling (dsa.quantize): the quantized original and merged networks run in ONNX Runtime
and OpenVINO and match their float32 form within a stated tolerance, the saved artifacts load in their runtime,
`dsa bench --precision int8` times both networks quantized the same way, `dsa quantize` reports the accuracy of
both forms, and bad input gets one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dsa.errors import ArtifactError, DsaError, ExportError
from dsa.formats.plan import plan_from_act_list
from dsa.graph import analyze
from dsa.io import Outputs
from dsa.models import replace_head
from dsa.quantize import check, quantize, relative_rms, sensitivity, settle_random_weights
from dsa.transform.merge import merge
from tests import tiny_models as tm
from tests.cli_helpers import dsa, ok, user_error
from tests.test_data import write_folder

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = "tests.tiny_models:tiny_mbv2"
RUNTIMES = ["onnxruntime", "openvino"]
# INT8 rounding of a tiny network with settled BN statistics: a few percent of the outputs (measured 2-7%)
TINY_TOLERANCE = 0.15


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    model = settle_random_weights(tm.tiny_mbv2().eval(), 32)
    a = analyze(model, "tiny", 32)
    return model, merge(model, plan_from_act_list(a, [1, 0, 0, 1, 1]))


def test_random_weights_are_settled_to_unit_scale_activations() -> None:
    torch.manual_seed(0)
    from dsa.models import create_model

    net = create_model("mobilenet_v2").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = float(net(x).abs().max())
        settle_random_weights(net, 64, images=8)
        after = float(net(x).abs().max())
    assert before < 1e-3 < 1e-2 < after  # BN's initial statistics shrink the outputs; settled ones do not
    assert not net.training


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("which", ["original", "merged"])
def test_int8_network_runs_in_its_runtime_and_matches_float32(nets, runtime: str, which: str) -> None:
    net = nets[0] if which == "original" else nets[1]
    calib, held = torch.randn(16, 3, 32, 32), torch.randn(8, 3, 32, 32)
    q = quantize(net, runtime, calib, check_inputs=held)
    c = q.info["check"]
    assert 0 < c["relative_rms_error"] <= TINY_TOLERANCE  # INT8: not bit-exact, but the same network
    assert c["inputs"] == 8 and q.info["calibration_images"] == 16
    assert (
        q.info["tool"]
        == {"onnxruntime": "onnxruntime.quantization.quantize_static", "openvino": "nncf.quantize"}[runtime]
    )
    again = check(q, net, torch.randn(4, 3, 32, 32))  # inputs it was neither calibrated nor checked on
    assert again["relative_rms_error"] <= TINY_TOLERANCE


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_saved_int8_artifact_loads_in_its_runtime(nets, runtime: str, tmp_path: Path) -> None:
    net = nets[1]
    x = torch.randn(4, 3, 32, 32)
    q = quantize(net, runtime, torch.randn(8, 3, 32, 32))
    path = tmp_path / ("net.onnx" if runtime == "onnxruntime" else "net.xml")
    with Outputs() as outs:
        files = q.save(path, outs)
    assert all(f.is_file() for f in files)
    if runtime == "onnxruntime":
        import onnx
        import onnxruntime as ort

        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops  # QDQ
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    else:
        import openvino as ov

        assert files[1].suffix == ".bin"
        m = ov.Core().read_model(str(path))
        assert any(op.get_type_name() == "FakeQuantize" for op in m.get_ordered_ops())
        got = ov.Core().compile_model(m, "CPU")(x.numpy())[0]
    with torch.no_grad():
        ref = net(x)
    assert relative_rms(torch.from_numpy(np.asarray(got)), ref) <= TINY_TOLERANCE


class _SamePad(torch.nn.Module):
    """A strided 5x5 conv with "same" padding computed from the input size at run time (as efficientnet_lite0's
    convs do): its ONNX export carries the pad arithmetic as nodes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        ph, pw = max((-(-h // 2) - 1) * 2 + 5 - h, 0), max((-(-w // 2) - 1) * 2 + 5 - w, 0)
        return torch.relu(self.conv(torch.nn.functional.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_shape_arithmetic_is_not_quantized(runtime: str) -> None:
    net = _SamePad().eval()
    x = torch.randn(4, 3, 28, 28)
    q = quantize(net, runtime, x)  # ONNX Runtime's quantizer alone would round the pads: a 13x13 output, not 14x14
    assert q.info["check"]["relative_rms_error"] <= TINY_TOLERANCE
    if runtime == "onnxruntime":
        import onnxruntime as ort

        got = ort.InferenceSession(q.model, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
        assert got.shape == (4, 8, 14, 14)


def test_wrong_artifact_suffix_is_refused(nets, tmp_path: Path) -> None:
    q = quantize(nets[0], "onnxruntime", torch.randn(4, 3, 32, 32))
    with Outputs() as outs, pytest.raises(DsaError, match=r"\*\.onnx"):
        q.save(tmp_path / "net.xml", outs)
    assert not list(tmp_path.iterdir())


def test_a_degenerate_quantization_is_refused() -> None:
    from dsa.models import create_model

    torch.manual_seed(0)
    net = create_model("mobilenet_v2").eval()  # random weights, BN's initial statistics: outputs ~1e-10
    with pytest.raises(ExportError, match="does not compute the float32 network"):
        quantize(net, "openvino", torch.randn(2, 3, 64, 64))


def test_only_runtimes_with_int8_tooling_quantize(nets) -> None:
    with pytest.raises(DsaError, match="onnxruntime or openvino"):
        quantize(nets[0], "eager", torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sensitivity_quantizes_one_layer_at_a_time(nets, runtime: str) -> None:
    net = nets[1]
    rows = sensitivity(net, runtime, torch.randn(8, 3, 32, 32), torch.randn(4, 3, 32, 32))
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) + 1  # and the classifier
    assert len(rows) == convs
    errs = [r["relative_rms_error"] for r in rows]
    assert errs == sorted(errs, reverse=True) and all(0 < e < TINY_TOLERANCE for e in errs)
    assert "classifier" in {r["layer"] for r in rows} and len({r["node"] for r in rows}) == len(rows)
    # a merged (traced) network's layers are named by their module paths, not the export's flattened names
    paths = {n for n, m in net.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert {r["layer"] for r in rows} == paths
    assert all(r["kl"] >= 0 for r in rows)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sensitivity_of_chosen_layers_quantizes_only_that_layer(nets, runtime: str) -> None:
    net = nets[0]
    layer = next(n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d))
    x = torch.randn(8, 3, 32, 32)
    (row,) = sensitivity(net, runtime, x, x[:4], layers=[layer])
    assert row["layer"] == layer and 0 < row["relative_rms_error"] < TINY_TOLERANCE
    with pytest.raises(DsaError, match="no conv or linear layer nope"):
        sensitivity(net, runtime, x, x[:4], layers=["nope"])


def test_one_layer_alone_leaves_residual_adds_in_float(nets) -> None:
    """NNCF quantizes residual adds and pooling inputs unless told not to; a layer's sensitivity leaves them."""
    from dsa.export import onnx_bytes, openvino_model
    from dsa.quantize import _OV_CONVS, _OV_OTHER_QUANTIZABLE, _batches, _quantize_ov

    net = nets[0]
    data = onnx_bytes(net, torch.randn(1, 3, 32, 32))
    ov = openvino_model(data)
    nodes = [op.get_friendly_name() for op in ov.get_ordered_ops() if op.get_type_name() in _OV_CONVS]
    q = _quantize_ov(openvino_model(data), _batches(torch.randn(4, 3, 32, 32)), nodes[1:], _OV_OTHER_QUANTIZABLE)
    fq = [op for op in q.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    assert fq  # only what feeds the first conv (its input, its weights), nothing else
    for op in fq:
        readers = [t.get_node() for t in op.output(0).get_target_inputs()]
        assert all(r.get_friendly_name() == nodes[0] or r.get_type_name() in ("Reshape", "Convert") for r in readers)


# ------------------------------------------------------------------------------------------ the commands


def test_bench_int8_times_both_networks_quantized_and_their_fp32_forms(tiny_plan_path: Path) -> None:
    r = json.loads(
        ok(
            dsa(
                "bench",
                "--plan",
                tiny_plan_path,
                "--model",
                TINY,
                "--input-size",
                "32",
                "--runtime",
                "openvino",
                "--precision",
                "int8",
                "--batch-size",
                "2",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--threads",
                "1",
                "--format",
                "json",
            )
        )
    )
    assert r["precision"] == "int8" and r["calibration_data"] == "random"
    assert {"original", "merged", "original_fp32", "merged_fp32"} <= set(r)
    assert r["speedup"] == pytest.approx(r["merged"]["images_per_s"] / r["original"]["images_per_s"])
    assert r["int8_gain_original"] == pytest.approx(r["original"]["images_per_s"] / r["original_fp32"]["images_per_s"])
    assert r["speedup_over_original_fp32"] == pytest.approx(r["speedup"] * r["int8_gain_original"])
    assert r["bn_folded_speedup"] is None and r["quantization"]["tool"] == "nncf.quantize"


@pytest.fixture(scope="module")
def tiny_plan_path(tmp_path_factory) -> Path:
    a = analyze(tm.tiny_mbv2(), TINY, 32)
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    plan_from_act_list(a, [1, 0, 0, 1, 1]).save(path)
    return path


def test_bench_int8_errors() -> None:
    user_error(dsa("bench", "--model", TINY, "--precision", "int8"), "onnxruntime or openvino")
    user_error(
        dsa("bench", "--model", TINY, "--runtime", "onnxruntime", "--calibration-data", "elpv"), "--precision int8"
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny network for 3 classes (a plain state_dict, BN statistics settled) and an ImageFolder to match."""
    d = tmp_path_factory.mktemp("q")
    torch.manual_seed(0)
    net = tm.tiny_mbv2()
    replace_head(net, 3)
    settle_random_weights(net.eval(), 32)
    torch.save(net.state_dict(), d / "net.pt")
    return d / "net.pt", write_folder(d / "data", classes=3, per_split={"train": 4, "val": 2, "test": 2}, size=32)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_quantize_command_writes_the_artifact_and_reports_both_accuracies(
    trained, runtime: str, tmp_path: Path
) -> None:
    ckpt, data = trained
    out = tmp_path / ("net.onnx" if runtime == "onnxruntime" else "net.xml")
    r = json.loads(
        ok(
            dsa(
                "quantize",
                "--checkpoint",
                ckpt,
                "--model",
                TINY,
                "--runtime",
                runtime,
                "--data",
                data,
                "--out",
                out,
                "--calibration-images",
                "6",
                "--image-size",
                "32",
                "--format",
                "json",
            )
        )
    )
    assert r["split"] == "test" and r["fp32"]["n"] == r["int8"]["n"] == 6
    assert r["top1_drop"] == pytest.approx(r["fp32"]["top1"] - r["int8"]["top1"])
    assert 0 <= r["prediction_agreement"] <= 1 and r["quantization"]["calibration_images"] == 6
    report = json.loads((tmp_path / "net.int8.json").read_text())
    assert report["files"] == r["files"] and all(Path(f).is_file() for f in r["files"])


def test_quantize_command_errors(trained, tmp_path: Path) -> None:
    ckpt, data = trained
    base = ["quantize", "--checkpoint", ckpt, "--model", TINY, "--data", data, "--image-size", "32"]
    user_error(dsa(*base, "--runtime", "compile", "--out", tmp_path / "n.onnx"), "onnxruntime or openvino")
    user_error(dsa(*base, "--runtime", "openvino", "--out", tmp_path / "n.onnx"), "*.xml")
    assert not list(tmp_path.iterdir())  # nothing written when it failed
    user_error(dsa(*base, "--runtime", "onnxruntime", "--out", ckpt), "*.onnx")  # never over the input


# ------------------------------------------------------------------------------------------ INT8 profiles and costs


@pytest.fixture(scope="module", params=RUNTIMES)
def int8_profile(request, nets):
    import roofline as rl
    from dsa.measure.runtime_profile import profile_runtime

    model = nets[0]
    a = analyze(model, "tiny", 32)
    spec = rl.measure_local_device("cpu", seconds=0.5)
    p = profile_runtime(
        model,
        a,
        request.param,
        batch_size=2,
        threads=1,
        warmup=1,
        repeats=2,
        device_spec=spec,
        precision="int8",
        plan=plan_from_act_list(a, [1, 0, 0, 1, 1]),
    )
    return a, p


def test_an_int8_profile_times_the_quantized_graphs(int8_profile, tmp_path: Path) -> None:
    from dsa.formats.profile import load_profile
    from dsa.ir import Kind

    a, p = int8_profile
    assert p.precision == "int8" and p.environment["dtype"] == "int8" and p.complete
    convs = {op.name for op in a.ops.values() if op.kind == Kind.CONV}
    assert convs <= set(p.ops)  # every quantized conv is charged to its conv
    assert p.segments and all(s["original"].median_ms > 0 and s["conv"].median_ms > 0 for s in p.segments.values())
    assert {"original", "merged"} <= set(p.end_to_end)
    p.save(tmp_path / "p.json")
    assert load_profile(tmp_path / "p.json").precision == "int8"


def test_an_int8_profile_prices_a_plan_and_the_planner_plans_int8(int8_profile) -> None:
    from dsa.formats.plan import remove_all_plan
    from dsa.latency.costs import ProfileCosts, plan_ms

    a, p = int8_profile
    costs = ProfileCosts(a, p)
    assert costs.precision == "int8" and plan_ms(a, remove_all_plan(a), costs) > 0
    with pytest.raises(ArtifactError, match="int8"):
        ProfileCosts(a, p, precision="fp32")  # a profile prices only its own precision


def test_int8_in_the_roofline_is_a_cpu_rate() -> None:
    import roofline as rl

    conv = rl.conv2d_op("c", 8, 256, 256, 28, 28, 28, 28, kernel=3, dtype_bytes=1)
    gpu = rl.load_device("v100")
    with pytest.raises(rl.RooflineError, match="TensorRT"):
        rl.predict_op(conv, gpu, "int8")
    cpu = rl.measure_local_device("cpu", seconds=0.5)
    rates = cpu.measured.matmul_tflops
    if "int8" not in rates:
        pytest.skip("this torch has no CPU int8 matmul")
    int8 = rl.predict_op(conv, cpu, "int8").total_ms
    fp32 = rl.predict_op(conv.with_dtype_bytes(4), cpu, "fp32").total_ms
    assert int8 == pytest.approx(fp32 * rates["fp32"] / rates["int8"], rel=0.5)  # compute-bound: the rate ratio


def test_int8_profiles_need_a_runtime() -> None:
    user_error(dsa("profile", "--model", TINY, "--input-size", "32", "--precision", "int8"), "--runtime")
