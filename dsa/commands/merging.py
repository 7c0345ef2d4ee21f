"""``dsa merge``: the merged network, verified, with TorchScript and ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dsa.commands._common import (
    CheckpointOpt,
    Format,
    FormatOpt,
    PlanModelOpt,
    PretrainedOpt,
    check_out,
    command,
    emit_json,
    model_and_analysis,
    one_line_errors,
    out,
    plan_and_model,
    random_weights_warning,
    refuse_together,
)


@command("merge")
@one_line_errors
def merge_cmd(
    plan: Annotated[Path, typer.Option(help="The plan JSON.")],
    out_path: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Merged checkpoint (plan + state_dict); TorchScript goes beside it as <name>.torchscript.pt.",
        ),
    ],
    onnx: Annotated[
        Path | None,
        typer.Option(
            help="Also export ONNX here, the file ONNX Runtime and OpenVINO load (checked with onnx.checker, "
            "onnxruntime and, when installed, OpenVINO)."
        ),
    ] = None,
    model: PlanModelOpt = None,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Merge a (finetuned) network by its plan; write the merged model, TorchScript and optionally ONNX, all or
    nothing: no existing file is replaced unless every one was written and checked."""
    import torch

    from dsa.export import export_merged, torchscript_path_for
    from dsa.io import Outputs
    from dsa.networks import is_training_checkpoint, merge_training_checkpoint
    from dsa.transform.merge import conv_count, merge, merge_record

    inputs = {"--plan": plan, "--checkpoint": checkpoint}
    check_out(out_path, "--out", **inputs)
    ts_path = torchscript_path_for(out_path)
    check_out(ts_path, "TorchScript output (beside --out)", **inputs)
    if onnx is not None:
        check_out(onnx, "--onnx", **inputs, **{"--out": out_path, "the TorchScript output": ts_path})
    p, model = plan_and_model(plan, model)
    meta: dict = {}
    if checkpoint is not None and is_training_checkpoint(checkpoint):
        refuse_together(**{"--pretrained": pretrained, "--checkpoint": checkpoint})
        net, merged, p, meta = merge_training_checkpoint(checkpoint, p, model, plan)
    else:
        net, a = model_and_analysis(model, pretrained, checkpoint, p.input_size)
        p.check(a)
        merged = merge(net, p)
        random_weights_warning(pretrained, checkpoint, "the merged network is exact but its outputs mean nothing")
    example = torch.randn(1, 3, p.input_size, p.input_size)
    with Outputs() as outs:
        exported = export_merged(merged, p, outs, out_path, example=example, onnx=onnx, **meta)
    record = merge_record(merged)
    result = {
        "model": p.model,
        "convs_before": conv_count(net),
        "convs_after": conv_count(merged),
        "verified_max_rel_error_fp64": record.max_rel_error,
        "verified_max_rel_error_model_dtype": record.max_rel_error_model_dtype,
        "checkpoint": str(out_path),
        "torchscript": str(ts_path),
        "torchscript_mode": exported.torchscript_mode,
        "onnx": str(onnx) if onnx else None,
        "onnxruntime_max_rel_error": exported.onnxruntime_max_rel_error,
        "openvino_max_rel_error": exported.openvino_max_rel_error,
    }
    if fmt == Format.json:
        emit_json(result)
        return
    out.print(
        f"merged {p.model}: {result['convs_before']} -> {result['convs_after']} convs; verified max relative "
        f"error {record.max_rel_error:.2e} (float64), {record.max_rel_error_model_dtype:.2e} (model dtype)"
    )
    out.print(f"wrote {out_path} and {ts_path} (TorchScript, {exported.torchscript_mode})")
    if onnx:
        out.print(
            f"wrote {onnx} (onnx.checker ok; onnxruntime max relative error {exported.onnxruntime_max_rel_error:.2e}"
            + ("" if exported.openvino_max_rel_error is None else f", OpenVINO {exported.openvino_max_rel_error:.2e}")
            + ")"
        )
