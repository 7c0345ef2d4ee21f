"""``dsa evaluate``, ``dsa roofline``, ``dsa report``: predicted latency of a plan, per op and segment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dsa.commands._common import (
    AllowIncompleteOpt,
    BatchOpt,
    CheckpointOpt,
    Format,
    FormatOpt,
    GpuOpt,
    InputSizeOpt,
    PlanModelOpt,
    Precision,
    PrecisionOpt,
    PretrainedOpt,
    ProfileBatchOpt,
    ProfileOpt,
    ProfilePrecisionOpt,
    RuntimeOpt,
    analysis_of,
    bn_folded_note,
    check_out,
    command,
    emit_json,
    figure_suffix,
    load_profile_opt,
    one_line_errors,
    out,
    plan_and_model,
    refuse_together,
    resolve_pricing,
)
from dsa.vocab import DEFAULT_MODEL


def evaluation(
    model,
    pretrained,
    checkpoint,
    plan,
    gpu,
    batch_size,
    precision,
    profile=None,
    allow_incomplete=False,
    input_size=None,
    runtime="eager",
):
    """Price a plan (or BN folding alone) on ``--gpu``, or on ``--profile``'s device with its measured times."""
    from dsa.formats.plan import bn_folded_plan
    from dsa.latency.evaluate import evaluate

    refuse_together(**{"--gpu": gpu, "--profile": profile})
    prof = load_profile_opt(profile)
    if plan is not None:
        p, model = plan_and_model(plan, model)
        a = analysis_of(model, pretrained, checkpoint, p.input_size)
        p.check(a)
    else:
        model = model or DEFAULT_MODEL
        a = analysis_of(model, pretrained, checkpoint, input_size or (prof.input_size if prof else None))
        p = bn_folded_plan(a)
    pricing = resolve_pricing(a, gpu, prof, profile, batch_size, precision, allow_incomplete, runtime)
    return model, evaluate(a, p, costs=pricing.costs(a))


@command("evaluate")
@one_line_errors
def evaluate_cmd(
    plan: Annotated[Path, typer.Option(help="The plan JSON.")],
    gpu: GpuOpt = None,
    batch_size: ProfileBatchOpt = None,
    precision: ProfilePrecisionOpt = None,
    profile: ProfileOpt = None,
    allow_incomplete: AllowIncompleteOpt = False,
    runtime: RuntimeOpt = "eager",
    model: PlanModelOpt = None,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Predicted latency and throughput of the original, the BN-folded and the planned network on a GPU (or,
    with --profile, on the profiled device, using its measured times where it has them). --runtime R prices
    for runtime R with a profile taken under it (--profile, or one under profiles/<gpu>/)."""
    model, ev = evaluation(
        model,
        pretrained,
        checkpoint,
        plan,
        gpu,
        batch_size,
        precision.value if precision else None,
        profile,
        allow_incomplete,
        runtime=runtime,
    )
    if fmt == Format.json:
        emit_json({"model": model, **ev.to_json()})
        return
    t = Table(
        "segment",
        "convs",
        "kernel",
        "channels",
        "before ms",
        "after ms",
        "after from",
        title=f"{model} on {ev.device} under {ev.runtime}, {ev.precision}, batch {ev.batch} ({ev.source})",
    )
    for row in ev.segment_rows():
        if row["convs"] > 1:
            t.add_row(
                row["members"][0],
                str(row["convs"]),
                "x".join(map(str, row["kernel"])),
                "->".join(map(str, row["channels"])),
                f"{row['baseline_ms']:.3f}",
                f"{row['planned_ms']:.3f}",
                row["planned_source"],
            )
    out.print(t)
    src = ev.sources()
    counts = lambda d: ", ".join(f"{n} {k}" for k, n in d.items()) or "none"  # noqa: E731
    out.print(
        f"op times: original {counts(src['baseline_ops'])}; planned {counts(src['planned_ops'])} "
        f"(roofline: {src['roofline_model']})"
    )
    folded = ev.bn_folded
    out.print(
        f"original: {ev.baseline.latency_ms:.2f} ms, {ev.baseline.throughput_img_s:.0f} img/s; "
        + (f"BN folded only: {folded.latency_ms:.2f} ms, {folded.throughput_img_s:.0f} img/s; " if folded else "")
        + f"planned: {ev.planned.latency_ms:.2f} ms, {ev.planned.throughput_img_s:.0f} img/s; "
        f"speed-up {ev.speedup:.2f}x" + bn_folded_note(ev.bn_folded_speedup, ev.speedup_over_bn_folded)
    )


@command("roofline")
@one_line_errors
def roofline_cmd(
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Figure file (.png or .svg).")],
    gpu: GpuOpt = None,
    plan: Annotated[Path | None, typer.Option(help="Also plot the merged layers of this plan.")] = None,
    batch_size: BatchOpt = 128,
    precision: PrecisionOpt = Precision.fp32,
    model: PlanModelOpt = None,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    input_size: InputSizeOpt = None,
) -> None:
    """The device's roofline with every layer of the network (and of the merged network) as a point."""
    import roofline as rl

    check_out(out_path, "--out", **{"--plan": plan, "--checkpoint": checkpoint})
    figure_suffix(out_path)
    model, ev = evaluation(model, pretrained, checkpoint, plan, gpu, batch_size, precision.value, input_size=input_size)
    points = rl.points_from_ops([c.spec for c in ev.baseline_ops], list(ev.baseline.op_times), "original layers")
    if plan is not None:
        merged = [
            (c.spec, t) for c, t in zip(ev.planned_ops, ev.planned.op_times, strict=True) if c.segment is not None
        ]
        points += rl.points_from_ops([m[0] for m in merged], [m[1] for m in merged], "merged layers")
    title = f"{model} on {ev.device}, {ev.precision}, batch {ev.batch} (predicted; area = time)"
    rl.plot_roofline(ev.device, ev.precision, points, out_path, title=title)  # written atomically
    out.print(f"wrote {out_path}")


@command("report")
@one_line_errors
def report_cmd(
    plan: Annotated[Path, typer.Option(help="The plan JSON.")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Figure file (.png or .svg).")],
    gpu: GpuOpt = None,
    batch_size: BatchOpt = 128,
    precision: PrecisionOpt = Precision.fp32,
    model: PlanModelOpt = None,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
) -> None:
    """Per-block predicted latency of the original and the planned network, as bars."""
    import roofline as rl

    check_out(out_path, "--out", **{"--plan": plan, "--checkpoint": checkpoint})
    figure_suffix(out_path)
    model, ev = evaluation(model, pretrained, checkpoint, plan, gpu, batch_size, precision.value)
    blocks, before, after = ev.by_block()
    title = f"{model} on {ev.device}, {ev.precision}, batch {ev.batch}: predicted latency per block"
    rl.plot_latency_bars(blocks, before, after, out_path, title, before_label="original", after_label="planned")
    out.print(f"wrote {out_path}")
