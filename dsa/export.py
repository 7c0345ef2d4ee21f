"""Saving merged networks: a checkpoint (plan + state_dict), TorchScript, and ONNX checked in onnxruntime."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from torch import nn

from dsa.errors import ExportError
from dsa.formats.plan import Plan
from dsa.io import atomic_write_bytes


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


def to_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = 17) -> float:
    """Export ONNX (batch dimension dynamic), check it with onnx.checker and compare onnxruntime's output with
    the model's; returns that max relative error (raises ExportError above 1e-4)."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as e:
        raise ExportError(f"ONNX export needs onnx and onnxruntime: pip install onnx onnxruntime ({e})") from e
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
    data = buf.getvalue()
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
