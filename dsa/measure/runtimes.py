"""The runtimes a network is deployed with, as callables to time: eager PyTorch, ``torch.compile`` (inductor),
ONNX Runtime (all graph optimizations) and OpenVINO (CPU plugin). ONNX Runtime and OpenVINO run the network's
ONNX export (:func:`dsa.export.onnx_bytes`), so what they fuse (BN folding, conv + activation + add) is what is
measured. Runtimes are optional: one that is not installed is refused with the extra to install.

Every network :func:`prepare` returns was checked against the eager network on the example input: a runtime
that computes something else is never measured. :func:`node_times` reads each runtime's own profiler.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata

import torch
from torch import nn

from dsa.errors import DsaError
from dsa.vocab import RUN_RUNTIMES, RUNTIMES  # the names, defined once

_PACKAGES = {"eager": "torch", "compile": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}
_EXTRAS = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
#: relative error a runtime may show against eager float32 (fused kernels reorder sums)
TOLERANCE = 1e-3


@dataclass(frozen=True)
class Runtime:
    """A runtime and how it was set up (recorded with every measurement)."""

    name: str
    version: str
    options: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "version": self.version, **self.options}


def check_runtime(name: str) -> str:
    """``name`` if dsa knows it and it is installed; else a :class:`DsaError` saying what to do."""
    if name not in RUNTIMES:
        raise DsaError(f"unknown --runtime {name!r}; choose one of {', '.join(RUNTIMES)}")
    if name not in RUN_RUNTIMES:
        raise DsaError(
            f"dsa cannot run networks under --runtime {name}: it has no {name} adapter (TensorRT needs a CUDA device); "
            f"{name} prices plans only: `dsa plan --runtime {name} --gpu G` (roofline), or with a measured table "
            f"imported by `dsa import-table`; to measure here, choose one of {', '.join(RUN_RUNTIMES)}"
        )
    try:
        metadata.version(_PACKAGES[name])
    except metadata.PackageNotFoundError as e:
        raise DsaError(
            f"--runtime {name} needs the {_PACKAGES[name]} package: pip install 'dsa[{_EXTRAS[name]}]'"
        ) from e
    return name


def runtime_info(name: str, threads: int | None = None) -> Runtime:
    options: dict = {"threads": threads if threads is not None else torch.get_num_threads()}
    if name == "compile":
        options["backend"] = "inductor"
    elif name == "onnxruntime":
        options |= {"graph_optimization_level": "ORT_ENABLE_ALL", "allow_spinning": False}
    elif name == "openvino":
        options |= {"device": "CPU", "inference_precision": "f32"}
    return Runtime(name, metadata.version(_PACKAGES[name]), options)


def _ort_options(threads: int | None):
    """ONNX Runtime's session options as dsa runs it: all graph optimizations, ``threads`` intra-op threads, and
    no spin-waiting between parallel sections: measured here (2 cores, batch 32), spinning threads cost
    mobilenet_v2_140 25% of its speed and its DS-F merged form 37% (docs/results.md, issue 14), and ONNX Runtime's
    documentation advises turning it off where cores are shared."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def _ort(model: nn.Module, example: torch.Tensor, threads: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    from dsa.export import onnx_bytes

    return _ort_run(onnx_bytes(model, example), threads)


def _ort_run(data: bytes, threads: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """An ONNX model (bytes) in an ONNX Runtime session with dsa's options (:func:`_ort_options`)."""
    import onnxruntime as ort

    session = ort.InferenceSession(data, _ort_options(threads), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])

    return run


def openvino_config(threads: int | None) -> dict:
    """OpenVINO's properties as dsa runs it: the latency hint (one request at a time) and ``threads``."""
    config: dict = {"PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def _openvino(model: nn.Module, example: torch.Tensor, threads: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    from dsa.export import onnx_bytes, openvino_model

    return _openvino_run(openvino_model(onnx_bytes(model, example)), threads)


def _openvino_run(ov_model, threads: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """An ``openvino.Model`` compiled with dsa's properties (:func:`openvino_config`), one request."""
    from dsa.export import openvino_compile

    request = openvino_compile(ov_model, openvino_config(threads)).create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(request.infer({0: x.numpy()})[0].copy())

    return run


def prepare(
    name: str,
    model: nn.Module,
    example: torch.Tensor,
    threads: int | None = None,
    int8: bool = False,
    calibration: torch.Tensor | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` (eval mode, CPU float32 for ONNX Runtime and OpenVINO) as it runs under runtime ``name``: a
    callable from an input batch to the output, checked against the eager model on ``example``. With ``int8``
    (ONNX Runtime, OpenVINO) the network is quantized with the runtime's own tooling
    (:func:`dsa.quantize.quantize`, calibrated on ``calibration``, default ``example``) and checked within
    :data:`dsa.quantize.TOLERANCE`."""
    check_runtime(name)
    model = model.eval()
    if name in ("onnxruntime", "openvino") and (example.device.type != "cpu" or example.dtype != torch.float32):
        raise DsaError(f"--runtime {name} runs on the CPU in float32 here; use --device cpu")
    if int8:
        from dsa.quantize import quantize

        q = quantize(model, name, calibration if calibration is not None else example, check_inputs=example)
        return prepare_quantized(q, threads)
    if name == "eager":
        return model  # the reference itself: nothing to check
    if name == "compile":
        run = torch.compile(model, backend="inductor")
    elif name == "onnxruntime":
        run = _ort(model, example, threads)
    else:
        run = _openvino(model, example, threads)
    with torch.inference_mode():
        ref, got = model(example), run(example)
    err = float((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30))
    if not err <= TOLERANCE:
        raise DsaError(f"{name} computes something else than the eager network (max relative error {err:.3g})")
    return run


def prepare_quantized(quantized, threads: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """An INT8 network (:class:`dsa.quantize.Quantized`, checked when it was made) as its runtime runs it, with the
    session options float32 networks get."""
    if quantized.runtime == "onnxruntime":
        return _ort_run(quantized.model, threads)
    return _openvino_run(quantized.model, threads)


@dataclass(frozen=True)
class NodeTime:
    """One node of the runtime's executed graph (after its own fusions), as its profiler reports it."""

    name: str  # the runtime's node name (ONNX names carry the module path: /features/features.3/conv/conv.0/Conv)
    op_type: str  # e.g. Conv, FusedConv, Convolution, Add, GlobalAveragePool
    median_ms: float
    runs_ms: tuple[float, ...] = ()  # the time of each timed run, in run order

    @property
    def layout_only(self) -> bool:
        """A node that only converts the layout (the runtime's blocked formats) at the graph's edges."""
        return self.op_type.startswith("Reorder")


def _median(values: list[float]) -> float:
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def node_times(
    name: str,
    model: nn.Module,
    example: torch.Tensor,
    repeats: int = 5,
    threads: int | None = None,
    int8: bool = False,
    calibration: torch.Tensor | None = None,
):
    """Per-node times of ``model`` under ONNX Runtime (its session profiler) or OpenVINO (its performance
    counters), median over ``repeats`` runs after one warm-up: what the runtime runs after fusing, node by node.
    With ``int8``: of the network quantized by the runtime's tooling (:func:`dsa.quantize.quantize`, calibrated on
    ``calibration``, default ``example``)."""
    import json

    from dsa.export import onnx_bytes, openvino_model

    check_runtime(name)
    if name not in ("onnxruntime", "openvino"):
        raise DsaError(f"per-node times come from ONNX Runtime's or OpenVINO's profiler, not {name}'s")
    model = model.eval()
    if int8:
        from dsa.quantize import quantize

        artifact = quantize(
            model, name, calibration if calibration is not None else example, check_inputs=example
        ).model
    else:
        data = onnx_bytes(model, example)
        artifact = data if name == "onnxruntime" else openvino_model(data)
    x = example.numpy()
    samples: dict[tuple[str, str], list[float]] = {}
    if name == "onnxruntime":
        import onnxruntime as ort

        with tempfile.TemporaryDirectory(prefix="dsa-ort-") as d:
            opts = _ort_options(threads)
            opts.enable_profiling = True
            opts.profile_file_prefix = os.path.join(d, "profile")
            session = ort.InferenceSession(artifact, opts, providers=["CPUExecutionProvider"])
            for _ in range(repeats + 1):
                session.run(None, {"input": x})
            with open(session.end_profiling()) as f:
                events = json.load(f)
        runs: dict[tuple[str, str], list[float]] = {}
        for ev in events:
            if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
                key = (ev["name"].removesuffix("_kernel_time"), ev.get("args", {}).get("op_name", ""))
                runs.setdefault(key, []).append(ev["dur"] / 1e3)
        samples = {k: v[1:] or v for k, v in runs.items()}  # the first run is the warm-up
    else:
        import openvino as ov

        from dsa.export import openvino_compile

        config: dict = {"PERF_COUNT": True}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        request = openvino_compile(artifact, config).create_infer_request()
        request.infer({0: x})
        for _ in range(repeats):
            request.infer({0: x})
            for info in request.get_profiling_info():
                if info.status == ov.ProfilingInfo.Status.EXECUTED:
                    key = (info.node_name, info.node_type)
                    samples.setdefault(key, []).append(info.real_time.total_seconds() * 1e3)
    return [NodeTime(n, t, _median(v), tuple(v)) for (n, t), v in samples.items()]
