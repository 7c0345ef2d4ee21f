"""Saving merged networks: a checkpoint (plan + state_dict), TorchScript, and ONNX checked in onnxruntime."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from torch import nn

from dsa.errors import ArtifactError, ExportError
from dsa.io import atomic_torch_save, atomic_write_bytes
from dsa.plan import Plan, plan_from_json

CHECKPOINT_SCHEMA_VERSION = 1


def save_merged(model: nn.Module, plan: Plan, path: str | Path, **metadata) -> None:
    """Write the merged network's state_dict with its plan (rebuild with :func:`load_merged`)."""
    atomic_torch_save(
        {
            "schema_version": CHECKPOINT_SCHEMA_VERSION,
            "kind": "dsa.merged",
            "plan": plan.to_json(),
            "state_dict": model.state_dict(),
            "metadata": metadata,
        },
        path,
    )


def load_merged(path: str | Path, pretrained: bool = False) -> nn.Module:
    """Rebuild a merged network from :func:`save_merged`'s file (the model is rebuilt from the registry)."""
    from dsa.io import read_torch
    from dsa.merge import merge
    from dsa.models import create_model, replace_head

    ckpt = read_torch(path, "merged checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "dsa.merged":
        raise ArtifactError(f"{path} is not a dsa merged checkpoint (field 'kind')")
    if ckpt.get("schema_version") != CHECKPOINT_SCHEMA_VERSION:
        raise ArtifactError(
            f"{path}: field 'schema_version' is {ckpt.get('schema_version')!r}, "
            f"this dsa reads {CHECKPOINT_SCHEMA_VERSION}"
        )
    plan = plan_from_json(ckpt["plan"], str(path))
    model = create_model(plan.model, pretrained=pretrained)
    num_classes = (ckpt.get("metadata") or {}).get("num_classes")
    if num_classes:  # finetuned with a new head (dsa train): rebuild that head before merging
        replace_head(model, int(num_classes))
    merged = merge(model, plan)
    try:
        merged.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ArtifactError(f"{path}: state_dict does not fit the merged {plan.model}: {str(e).splitlines()[0]}") from e
    return merged.eval()


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
