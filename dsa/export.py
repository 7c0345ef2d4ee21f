"""Exporting merged networks: the merged checkpoint, TorchScript, and ONNX checked in onnxruntime -- one
function, :func:`export_merged`, for ``dsa merge`` and ``dsa train``."""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsa.errors import ExportError
from dsa.formats.plan import Plan
from dsa.io import Outputs, atomic_write_bytes


def to_torchscript(model: nn.Module, example: torch.Tensor, path: str | Path, plan: Plan | None = None) -> str:
    """Save TorchScript (scripted when possible, else traced); returns "script" or "trace"."""
    extra = {"dsa_plan.json": json.dumps(plan.to_json())} if plan else {}
    model = model.eval()
    try:
        ts = torch.jit.script(model)
        how = "script"
    except Exception:
        with torch.no_grad():
            ts = torch.jit.trace(model, example)
        how = "trace"
    with torch.no_grad():
        err = float((ts(example) - model(example)).abs().max())
    if err > 1e-4 * float(model(example).abs().max()):
        raise ExportError(f"TorchScript output differs from the model by {err:.3g}")
    buf = io.BytesIO()
    torch.jit.save(ts, buf, _extra_files=extra)
    atomic_write_bytes(path, buf.getvalue())
    return how


def onnx_bytes(model: nn.Module, example: torch.Tensor, opset: int = 17) -> bytes:
    """The ONNX export of ``model`` (legacy exporter, batch dimension dynamic), in memory."""
    model = model.eval()
    buf = io.BytesIO()
    try:
        torch.onnx.export(
            model,
            (example,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    except Exception as e:
        raise ExportError(f"ONNX export failed: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    return buf.getvalue()


def scope_of(node_name: str) -> str:
    """The module path an ONNX node name carries: ``/features/features.3/conv/conv.1/conv.1.2/Clip_output_0``
    -> ``features.3.conv.1.2`` (each scope repeats its parent's path; the last part is the op)."""
    if not node_name.startswith("/"):
        return ""
    path: list[str] = []
    for part in node_name.split("/")[1:-1]:
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return ".".join(path)


def to_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = 17) -> float:
    """Export ONNX (batch dimension dynamic), check it with onnx.checker and compare onnxruntime's output with
    the model's; returns that max relative error (raises ExportError above 1e-4)."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as e:
        raise ExportError(f"ONNX export needs onnx and onnxruntime: pip install onnx onnxruntime ({e})") from e
    model = model.eval()
    data = onnx_bytes(model, example, opset)
    proto = onnx.load_from_string(data)
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise ExportError(f"onnx.checker rejects the exported model: {e}") from e
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = torch.cat([example, torch.randn_like(example)])
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        ref = model(x)
    err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    if err > 1e-4:
        raise ExportError(f"onnxruntime output differs from the model by relative error {err:.3g}")
    atomic_write_bytes(path, data)
    return err


def openvino_model(data: bytes):
    """An ONNX model (bytes) read by OpenVINO (an ``openvino.Model``)."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="dsa-ov-") as d:  # OpenVINO picks its reader by the file's suffix
        path = Path(d) / "model.onnx"
        path.write_bytes(data)
        return ov.Core().read_model(str(path))


def openvino_compile(ov_model, config: dict | None = None):
    """An ``openvino.Model`` compiled for the CPU, in f32 (no silent bf16/fp16 for what is not quantized) unless
    ``config`` says otherwise; ``config`` adds OpenVINO properties (threads, hints, performance counters)."""
    import openvino as ov

    return ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", **(config or {})})


def openvino_compiled(data: bytes, config: dict | None = None):
    """An ONNX model (bytes) compiled by OpenVINO for the CPU (:func:`openvino_compile`)."""
    return openvino_compile(openvino_model(data), config)


def openvino_max_rel_error(model: nn.Module, example: torch.Tensor, onnx_path: str | Path) -> float | None:
    """Load an exported ONNX file with OpenVINO (CPU, f32) and compare its output with the model's; the max
    relative error (raises ExportError above 1e-4), or None when OpenVINO is not installed."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return None
    compiled = openvino_compiled(Path(onnx_path).read_bytes())
    x = torch.cat([example, torch.randn_like(example)])
    got = torch.from_numpy(compiled(x.numpy())[0].copy())
    with torch.no_grad():
        ref = model.eval()(x)
    err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    if err > 1e-4:
        raise ExportError(f"OpenVINO's output of the ONNX export differs from the model by relative error {err:.3g}")
    return err


def torchscript_path_for(checkpoint: str | Path) -> Path:
    """Where the TorchScript file of a merged checkpoint goes: beside it, as ``<name>.torchscript.pt``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".torchscript.pt")


@dataclass(frozen=True)
class Exported:
    """What :func:`export_merged` wrote and checked."""

    checkpoint: Path
    torchscript: Path
    torchscript_mode: str  # "script" or "trace"
    onnx: Path | None = None
    onnxruntime_max_rel_error: float | None = None
    onnx_error: str | None = None  # with ``onnx_failure="record"``: why ONNX could not be exported
    openvino_max_rel_error: float | None = None  # the ONNX file run by OpenVINO (None: not installed)

    def to_json(self) -> dict:
        d: dict = {"checkpoint": str(self.checkpoint), "torchscript": str(self.torchscript)}
        d["torchscript_mode"] = self.torchscript_mode
        if self.onnx is not None:
            d["onnxruntime_max_rel_error"] = self.onnxruntime_max_rel_error
            d["openvino_max_rel_error"] = self.openvino_max_rel_error
            d["onnx"] = str(self.onnx)
        if self.onnx_error is not None:
            d["onnx_error"] = self.onnx_error
        return d


def export_merged(
    merged: nn.Module,
    plan: Plan,
    outputs: Outputs,
    checkpoint: str | Path,
    *,
    example: torch.Tensor,
    onnx: str | Path | None = None,
    onnx_failure: str = "raise",
    notify: Callable[[str], None] | None = None,
    **metadata: Any,
) -> Exported:
    """The one export of a merged network (``dsa merge`` and ``dsa train``): the merged checkpoint (plan,
    state_dict, the verified error of :func:`~dsa.transform.merge.merge`, ``metadata``), TorchScript beside it
    (checked against the network) and optionally ONNX (checked with onnx.checker and onnxruntime), all staged in
    ``outputs`` (renamed only when everything was written). With ``onnx_failure="record"`` an ONNX export that
    fails is reported in the result instead of raised. ``notify`` hears each step's name."""
    from dsa.checkpoints import save_merged
    from dsa.transform.merge import merge_record

    say = notify or (lambda _what: None)
    record = merge_record(merged)
    if record is None:
        raise ExportError("export_merged takes a network dsa.merge returned (it carries its verified error)")
    checkpoint = Path(checkpoint)
    ts_path = torchscript_path_for(checkpoint)
    say(f"exporting {checkpoint.name}")
    save_merged(merged, plan, outputs.stage(checkpoint), verified_max_rel_error=record.max_rel_error, **metadata)
    say("exporting TorchScript")
    how = to_torchscript(merged, example, outputs.stage(ts_path), plan)
    if onnx is None:
        return Exported(checkpoint, ts_path, how)
    say("exporting ONNX (checked in onnxruntime and OpenVINO)")
    try:
        staged = outputs.stage(onnx)
        err = to_onnx(merged, example, staged)
        ov_err = openvino_max_rel_error(merged, example, staged)
    except ExportError as e:
        if onnx_failure != "record":
            raise
        return Exported(checkpoint, ts_path, how, onnx_error=str(e))
    return Exported(checkpoint, ts_path, how, Path(onnx), err, openvino_max_rel_error=ov_err)
