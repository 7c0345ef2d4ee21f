"""``dsa quantize``: post-training INT8 of a trained or merged network, with the runtime's own tooling."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dsa.commands._common import (
    CalibrationImagesOpt,
    Format,
    FormatOpt,
    ThreadsOpt,
    check_out,
    command,
    emit_json,
    err,
    one_line_errors,
    out,
)
from dsa.commands.training import DataOpt, ImageSizeOpt, Split, _pct


def report_path_for(artifact: Path) -> Path:
    """Where the quantization report of an INT8 artifact goes: beside it, as ``<name>.int8.json``."""
    return artifact.with_name(artifact.stem + ".int8.json")


@command("quantize")
@one_line_errors
def quantize_cmd(
    checkpoint: Annotated[
        Path,
        typer.Option(
            help="A merged checkpoint (merged.pt of dsa merge / dsa train), a `dsa train` last.pt or a state_dict."
        ),
    ],
    runtime: Annotated[
        str, typer.Option("--runtime", help="onnxruntime (its static quantization) or openvino (NNCF).")
    ],
    out_path: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="The INT8 network: *.onnx (onnxruntime) or *.xml with its .bin beside (openvino); the report "
            "goes beside as <name>.int8.json.",
        ),
    ],
    data: DataOpt,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="The model (needed for a plain state_dict).")
    ] = None,
    calibration_images: CalibrationImagesOpt = 300,
    split: Annotated[
        Split | None, typer.Option(help="The split both networks are evaluated on (default: test, else val).")
    ] = None,
    sensitivity: Annotated[
        bool,
        typer.Option(
            "--sensitivity",
            help="Also report each layer's INT8 sensitivity: the network with only that layer quantized, against "
            "float32 (one quantization per layer).",
        ),
    ] = False,
    image_size: ImageSizeOpt = None,
    threads: ThreadsOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Quantize a network to INT8 post-training, calibrated on images of --data, checked in its runtime, and
    report the accuracy of the float32 and the INT8 network side by side. Nothing is written unless all of it
    succeeded."""
    import torch
    from rich.progress import BarColumn, Progress, TextColumn

    from dsa.io import Outputs, json_bytes
    from dsa.quantize import check_artifact_path, check_quantizable
    from dsa.train.evaluate import quantize_checkpoint

    check_artifact_path(check_quantizable(runtime), out_path)
    report_path = report_path_for(out_path)
    check_out(out_path, "--out", **{"--checkpoint": checkpoint})
    check_out(report_path, "the report (beside --out)", **{"--checkpoint": checkpoint, "--out": out_path})
    if runtime == "openvino":
        check_out(out_path.with_suffix(".bin"), "the OpenVINO weights (beside --out)", **{"--checkpoint": checkpoint})
    if threads is not None:
        torch.set_num_threads(threads)
    with Progress(TextColumn("{task.description}"), BarColumn(), console=err, transient=True) as bar:
        task = bar.add_task(f"quantizing for {runtime}", total=None)

        def progress(step: str, done: int, total: int) -> None:
            bar.update(task, description=step, completed=done, total=total)

        q, report = quantize_checkpoint(
            checkpoint,
            runtime,
            data,
            model=model,
            image_size=image_size,
            calibration_images=calibration_images,
            split=split.value if split else None,
            sensitivity=sensitivity,
            progress=progress,
        )
    with Outputs() as outs:
        files = q.save(out_path, outs)
        report["files"] = [str(f) for f in files]
        outs.stage(report_path).write_bytes(json_bytes(report))
    if fmt == Format.json:
        emit_json(report)
        return
    c = report["quantization"]["check"]
    t = Table(
        "network",
        "top-1",
        "top-5",
        title=f"{report['model']} ({report['kind']}) on {report['fp32']['n']} images "
        f"of {report['data']} {report['split']} at {report['image_size']}px",
    )
    for k, name in (("fp32", "float32"), ("int8", f"INT8 ({runtime})")):
        t.add_row(name, _pct(report[k]["top1"]), _pct(report[k]["top5"]))
    out.print(t)
    out.print(
        f"INT8 top-1 {-report['top1_drop']:+.2f} points against float32; same prediction on "
        f"{100 * report['prediction_agreement']:.1f}% of images; output relative RMS error "
        f"{c['relative_rms_error']:.3f} on {c['inputs']} val images; calibrated on "
        f"{report['quantization']['calibration_images']} train images with {report['quantization']['tool']}"
    )
    if sensitivity:
        s = Table("layer", "rel. RMS error (only it INT8)", "top-1 agreement", title="most INT8-sensitive layers")
        for row in report["sensitivity"][:10]:
            s.add_row(row["layer"], f"{row['relative_rms_error']:.4f}", f"{100 * row['top1_agreement']:.1f}%")
        out.print(s)
    out.print(f"wrote {', '.join(report['files'])} and {report_path}")
