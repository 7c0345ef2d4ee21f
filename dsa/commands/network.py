"""``dsa models``, ``dsa analyze``, ``dsa devices``: what there is to plan for."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dsa.commands._common import (
    CheckpointOpt,
    Format,
    FormatOpt,
    InputSizeOpt,
    PlanModelOpt,
    PretrainedOpt,
    check_out,
    command,
    emit_json,
    model_and_analysis,
    one_line_errors,
    out,
    plan_and_model,
)
from dsa.vocab import DEFAULT_MODEL


@command("models")
@one_line_errors
def models_cmd(fmt: FormatOpt = Format.table) -> None:
    """List the models `--model` accepts."""
    from dsa.models import list_models

    entries = list_models()
    if fmt == Format.json:
        emit_json(
            [
                {
                    "name": e.name,
                    "source": e.source,
                    "description": e.description,
                    "pretrained_offline": e.pretrained is not None,
                    "input_size": e.input_size,
                }
                for e in entries
            ]
        )
        return
    t = Table("name", "source", "description", "offline weights")
    for e in entries:
        t.add_row(e.name, e.source, e.description, "yes" if e.pretrained else "-")
    out.print(t)
    out.print(
        "Also accepted: any torchvision classification model name (torchvision.models.list_models()), any timm "
        "model name (timm.list_models()), and package.module:factory (a callable returning an nn.Module)."
    )


@command("analyze")
@one_line_errors
def analyze_cmd(
    model: PlanModelOpt = None,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    plan: Annotated[Path | None, typer.Option(help="Show the segments this plan induces.")] = None,
    input_size: InputSizeOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Activation sites, and the segments a plan (default: removing every removable activation) induces."""
    from dsa.formats.plan import remove_all_plan

    p = None
    if plan is not None:
        p, model = plan_and_model(plan, model)
    model = model or DEFAULT_MODEL
    _, a = model_and_analysis(model, pretrained, checkpoint, input_size if p is None else input_size or p.input_size)
    if p is not None:
        p.check(a)
        segs, segs_for = p.induced_segments(a), str(plan)
    else:
        segs, segs_for = remove_all_plan(a).induced_segments(a), "all-removable"
    if fmt == Format.json:
        emit_json(
            {
                "model": a.model_name,
                "fingerprint": a.fingerprint,
                "input_size": a.input_size,
                "activations": [s.to_json() for s in a.activations],
                "blocks": a.blocks(),
                "segments_for": segs_for,
                "segments": [s.to_json() for s in segs],
                "findings": [{"node": f.node, "reason": f.reason} for f in a.findings],
            }
        )
        return
    t = Table(
        "#", "activation", "type", "block", "removable", title=f"{a.model_name}: {len(a.activations)} activations"
    )
    for s in a.activations:
        t.add_row(str(s.index), s.name, s.type, s.block, "yes" if s.removable else f"no: {s.reason}")
    out.print(t)
    t = Table(
        "#",
        "first member",
        "last member",
        "convs",
        "kernel",
        "stride",
        "channels",
        "kind",
        title=f"segments ({segs_for}): {len(segs)}",
    )
    for i, s in enumerate(segs):
        kind = ("depthwise" if s.depthwise else "dense") + (" +residual" if s.residual else "")
        t.add_row(
            str(i),
            s.members[0],
            s.members[-1],
            str(len(s.convs)),
            "x".join(map(str, s.kernel)),
            "x".join(map(str, s.stride)),
            f"{s.in_channels}->{s.out_channels}",
            kind,
        )
    out.print(t)
    for f in a.findings:
        typer.echo(f"not analysed: {f.node}: {f.reason}", err=True)


@command("devices")
@one_line_errors
def devices_cmd(
    measure: Annotated[bool, typer.Option("--measure", help="Measure this machine's CPU (or --device cuda).")] = False,
    device: Annotated[
        str | None, typer.Option(help="With --measure: auto (the default: cuda when available, else cpu), cpu or cuda.")
    ] = None,
    seconds: Annotated[float | None, typer.Option(min=0.5, help="With --measure: time budget (default: 5 s).")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="With --measure: device file to write.")] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """List the known devices, or measure the local one (achieved matmul FLOP/s and copy bandwidth)."""
    import roofline as rl
    from dsa.errors import DsaError

    if measure:
        from dsa.io import staged
        from dsa.measure.timing import resolve_device

        if seconds is not None and not math.isfinite(seconds):
            raise DsaError(f"--seconds must be a finite number of seconds, got {seconds}")
        dev = resolve_device(device or "auto")
        if out_path is not None:
            check_out(out_path, "--out")
        else:  # the default file's folder is named after the device: check what can be checked before measuring
            check_out(Path("profiles") / "device.json", "the device file under profiles/")
        spec = rl.measure_local_device(dev, 5.0 if seconds is None else seconds)
        path = out_path or Path("profiles") / spec.name / "device.json"
        with staged(check_out(path, "the device file")) as tmp:
            rl.save_device(spec, tmp)
        if fmt == Format.json:
            emit_json({**spec.to_dict(), "path": str(path)})
            return
        m = spec.measured
        peaks = ", ".join(f"{k} {v:g} TFLOP/s" for k, v in sorted(m.matmul_tflops.items()))
        out.print(f"{spec.name}: matmul {peaks}; copy {m.copy_bandwidth_gbps:.1f} GB/s -> {path}")
        return
    given = [n for n, v in (("--device", device), ("--seconds", seconds), ("--out", out_path)) if v is not None]
    if given:
        raise DsaError(f"{', '.join(given)} only apply with --measure; add --measure or leave them out")
    specs = rl.list_devices()
    if fmt == Format.json:
        emit_json([s.to_dict() for s in specs])
        return
    t = Table("device", "aliases", "SMs", "fp32 TFLOP/s", "fp16 tensor TFLOP/s", "bandwidth GB/s", "calibrated")
    for s in specs:
        p = s.peaks_tflops
        t.add_row(
            s.name,
            ", ".join(s.aliases),
            str(s.sms),
            f"{p.cuda_fp32:g}" if p.cuda_fp32 else "-",
            f"{p.tensor_fp16:g}" if p.tensor_fp16 else "-",
            f"{s.mem_bandwidth_gbps:g}",
            s.calibration.precision if s.calibration else "-",
        )
    out.print(t)
