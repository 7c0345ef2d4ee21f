"""Runtime adapters (dsa.measure.runtimes): each runtime runs a tiny network and its merged form to the eager
output, is timed through the one interleaved benchmark, and a missing or unknown runtime is a clear error."""

from __future__ import annotations

import json
from importlib import metadata

import pytest
import torch

from dsa.errors import DsaError
from dsa.formats.plan import plan_from_act_list
from dsa.graph import analyze
from dsa.measure import runtimes
from dsa.measure.timing import measure
from dsa.transform.merge import merge
from tests import tiny_models as tm
from tests.cli_helpers import dsa, ok, user_error

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["--model", "tests.tiny_models:tiny_mbv2", "--input-size", "32"]


@pytest.fixture(scope="module")
def nets():
    model = tm.tiny_mbv2().eval()
    a = analyze(model, "tiny", 32)
    return {"original": model, "merged": merge(model, plan_from_act_list(a, [1, 0, 0, 1, 1]))}


@pytest.mark.parametrize("name", ["eager", "onnxruntime", "openvino"])
def test_each_runtime_computes_the_eager_output(nets, name) -> None:
    x = torch.randn(3, 3, 32, 32)
    for net in nets.values():
        run = runtimes.prepare(name, net, x, threads=1)
        y = torch.randn(2, 3, 32, 32)  # another batch size: the exports keep the batch dynamic
        with torch.inference_mode():
            assert torch.allclose(run(y), net(y), rtol=1e-3, atol=1e-4)
    res = measure(nets, 2, 32, "cpu", warmup=1, repeats=2, runtime=name, threads=1)
    assert set(res) == {"original", "merged"} and all(t.images_per_s > 0 for t in res.values())
    info = runtimes.runtime_info(name, 1).to_json()
    assert info["name"] == name and info["version"] and info["threads"] == 1


@pytest.mark.slow
def test_torch_compile_runs_the_merged_network(nets) -> None:
    run = runtimes.prepare("compile", nets["merged"], torch.randn(2, 3, 32, 32))
    with torch.inference_mode():
        x = torch.randn(2, 3, 32, 32)
        assert torch.allclose(run(x), nets["merged"](x), rtol=1e-3, atol=1e-4)


def test_unknown_and_missing_runtimes_are_refused(monkeypatch) -> None:
    with pytest.raises(DsaError, match="unknown --runtime 'tensorflow'; choose one of eager, compile"):
        runtimes.check_runtime("tensorflow")
    real = metadata.version

    def missing(name):
        if name == "openvino":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(runtimes.metadata, "version", missing)
    with pytest.raises(DsaError, match=r"pip install 'dsa\[openvino\]'"):
        runtimes.check_runtime("openvino")


def test_a_runtime_that_computes_something_else_is_never_timed(nets, monkeypatch) -> None:
    monkeypatch.setattr(runtimes, "_ort", lambda m, x, t: lambda y: m(y) + 1.0)
    with pytest.raises(DsaError, match="onnxruntime computes something else than the eager network"):
        runtimes.prepare("onnxruntime", nets["original"], torch.randn(2, 3, 32, 32))


def test_cli_bench_under_a_runtime(tmp_path) -> None:
    plan = tmp_path / "p.json"
    ok(dsa("plan", *TINY, "--act-list", "1,0,0,1,1", "-o", plan))
    args = ["--batch-size", "2", "--repeats", "2", "--warmup", "1", "--threads", "1", "--format", "json"]
    doc = json.loads(ok(dsa("bench", "--plan", plan, "--runtime", "onnxruntime", *args)))
    assert doc["runtime"]["name"] == "onnxruntime" and doc["runtime"]["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert doc["speedup"] == pytest.approx(doc["merged"]["images_per_s"] / doc["original"]["images_per_s"])
    user_error(dsa("bench", *TINY, "--runtime", "tvm", *args), "unknown --runtime 'tvm'")
    user_error(
        dsa("bench", *TINY, "--runtime", "openvino", "--channels-last", *args), "--channels-last applies to eager"
    )


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_node_times_come_from_the_runtime_s_profiler(nets, name) -> None:
    """The runtime's own per-node times: its executed (fused) nodes, with convolutions among them; the merged
    network runs fewer nodes than the original."""
    x = torch.randn(2, 3, 32, 32)
    counts = {}
    for label, net in nets.items():
        times = runtimes.node_times(name, net, x, repeats=3, threads=1)
        assert times and all(t.median_ms >= 0 for t in times)
        assert any("conv" in t.op_type.lower() for t in times), [t.op_type for t in times]
        counts[label] = len(times)
    assert counts["merged"] < counts["original"]
    with pytest.raises(DsaError, match="per-node times come from"):
        runtimes.node_times("eager", nets["original"], x)


def _profile_doc(a, **extra) -> dict:
    import roofline as rl
    from dsa.formats.profile import SCHEMA_VERSION

    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "dsa.profile",
        "model": a.model_name,
        "fingerprint": a.fingerprint,
        "input_size": a.input_size,
        "batch_size": 8,
        "precision": "fp32",
        "layout": "nchw",
        "environment": {},
        "device_spec": rl.load_device("v100").to_dict(),
        "ops": {},
        "segments": {},
        "end_to_end": {},
        **extra,
    }


def test_profiles_record_their_runtime_and_never_price_another(tmp_path) -> None:
    from dsa.errors import ArtifactError
    from dsa.formats.profile import profile_from_json
    from dsa.latency.evaluate import evaluate
    from dsa.latency.resolve import resolve

    a = analyze(tm.tiny_mbv2().eval(), "tiny", 32)
    old = profile_from_json(_profile_doc(a))  # written before runtimes were recorded: eager
    assert old.runtime_name == "eager" and old.to_json()["runtime"] == {"name": "eager"}
    ov = profile_from_json(_profile_doc(a, runtime={"name": "openvino", "version": "2026.4.1"}))
    assert profile_from_json(json.loads(json.dumps(ov.to_json()))).runtime == ov.runtime
    with pytest.raises(ArtifactError, match="field 'runtime' is openvino, but eager was asked for"):
        resolve(a, profile=ov, runtime="eager")
    with pytest.raises(ArtifactError, match="field 'runtime' is eager, but onnxruntime was asked for"):
        old.check_for(a, runtime="onnxruntime")
    with pytest.raises(ArtifactError, match="field 'runtime' must be an object"):
        profile_from_json(_profile_doc(a, runtime={"name": "tvm"}))
    pricing = resolve(a, profile=ov, runtime="openvino")
    ev = evaluate(a, plan_from_act_list(a, [1, 0, 0, 1, 1]), batch=8, profile=pricing.profile)
    assert ev.prediction()["runtime"] == "openvino" and ev.to_json()["runtime"] == "openvino"
    with pytest.raises(ArtifactError, match="taken under onnxruntime, and the roofline models eager PyTorch"):
        resolve(a, gpu="v100", runtime="onnxruntime", profiles_dir=tmp_path)
    assert resolve(a, gpu="v100", profiles_dir=tmp_path).runtime == "eager"
    assert evaluate(a, plan_from_act_list(a, [1, 0, 0, 1, 1]), "v100").prediction()["runtime"] == "eager"
