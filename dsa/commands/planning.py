"""``dsa plan`` and ``dsa pareto``: plans solved for a target or made from keep lists, and the frontier."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dsa.commands._common import (
    AllowIncompleteOpt,
    CheckpointOpt,
    Format,
    FormatOpt,
    GpuOpt,
    Granularity,
    InputSizeOpt,
    ModelOpt,
    PretrainedOpt,
    ProfileBatchOpt,
    ProfileOpt,
    ProfilePrecisionOpt,
    RuntimeOpt,
    analysis_of,
    check_out,
    command,
    emit_json,
    figure_suffix,
    gpu_name,
    load_profile_opt,
    one_line_errors,
    out,
    prediction_line,
    refuse_together,
    resolve_pricing,
)
from dsa.vocab import DEFAULT_MODEL


@command("plan")
@one_line_errors
def plan_cmd(
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Where to write the plan JSON.")] = Path("plan.json"),
    target_throughput: Annotated[
        float | None,
        typer.Option("--target-throughput", help="Solve: least accuracy cost at this predicted throughput (img/s)."),
    ] = None,
    target_latency: Annotated[
        float | None, typer.Option("--target-latency", help="Solve: ... at this predicted latency (ms per batch).")
    ] = None,
    target_speedup: Annotated[
        float | None, typer.Option("--target-speedup", help="Solve: ... at this predicted speed-up over the original.")
    ] = None,
    max_accuracy_cost: Annotated[
        float | None, typer.Option("--max-accuracy-cost", help="Solve: the fastest plan within this accuracy cost.")
    ] = None,
    gpu: GpuOpt = None,
    batch_size: ProfileBatchOpt = None,
    precision: ProfilePrecisionOpt = None,
    granularity: Annotated[
        Granularity | None,
        typer.Option(
            "--granularity",
            help="activation (default), or block: DepthShrinker's per-block decisions (ReLU6 after removed blocks).",
        ),
    ] = None,
    max_kernel: Annotated[int | None, typer.Option("--max-kernel", min=1, help="Largest merged kernel size.")] = None,
    keep: Annotated[
        list[str] | None, typer.Option("--keep", help="Keep this activation (or all of a block); repeatable.")
    ] = None,
    remove: Annotated[
        list[str] | None, typer.Option("--remove", help="Remove this activation (or all of a block); repeatable.")
    ] = None,
    cut_after: Annotated[
        list[str] | None,
        typer.Option("--cut-after", help="Never merge across the output of this op (e.g. a tapped feature map)."),
    ] = None,
    units_first: Annotated[
        bool,
        typer.Option(
            "--units-first",
            help="Plan in version 1's narrower space: a residual block only starts a segment (for comparisons).",
        ),
    ] = False,
    prune_convs: Annotated[
        bool,
        typer.Option(
            "--prune-convs",
            help="Also prune convs inside segments (LayerMerge): same-shape convs and whole residual branches.",
        ),
    ] = False,
    measured_only: Annotated[
        bool,
        typer.Option("--measured-only", help="Offer only the merged convs the profile has measured times for."),
    ] = False,
    importance: Annotated[
        Path | None,
        typer.Option("--importance", help='Accuracy costs, JSON {"scores": {activation: cost}, "default": 1}.'),
    ] = None,
    profile: Annotated[
        Path | None,
        typer.Option(
            "--profile",
            help="A measured profile (dsa profile): its device and times (default: a matching one in profiles/<gpu>/).",
        ),
    ] = None,
    allow_incomplete: AllowIncompleteOpt = False,
    runtime: RuntimeOpt = "eager",
    act_list: Annotated[
        str | None, typer.Option(help="DepthShrinker keep list: 1,0,... one per block plus stem and head.")
    ] = None,
    ds_pattern: Annotated[str | None, typer.Option(help="DepthShrinker's MobileNetV2 pattern A-F.")] = None,
    remove_all: Annotated[bool, typer.Option("--remove-all", help="Remove every removable activation.")] = False,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    input_size: InputSizeOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Write a plan: solved for a target (--target-throughput, --target-latency, --target-speedup or
    --max-accuracy-cost), or from a DepthShrinker keep list (--act-list, --ds-pattern, --remove-all). With
    --runtime R the plan is priced for runtime R (a profile taken under it: --profile, or one under
    profiles/<gpu>/): --target-speedup 1.3 means 1.3x over the original as R runs it."""
    from dsa.errors import PlanError
    from dsa.formats.plan import keep_list_plan

    sources = [n for n, v in (("--act-list", act_list), ("--ds-pattern", ds_pattern)) if v is not None]
    sources += ["--remove-all"] if remove_all else []
    targets = {
        "--target-throughput": target_throughput,
        "--target-latency": target_latency,
        "--target-speedup": target_speedup,
        "--max-accuracy-cost": max_accuracy_cost,
    }
    solver_only = {
        **targets,
        "--granularity": granularity,
        "--max-kernel": max_kernel,
        "--keep": keep or None,
        "--remove": remove or None,
        "--cut-after": cut_after or None,
        "--units-first": units_first or None,
        "--measured-only": measured_only or None,
        "--prune-convs": prune_convs or None,
        "--importance": importance,
        "--profile": profile,
    }
    given_targets = [n for n, v in targets.items() if v is not None]
    if len(sources) > 1:
        raise PlanError(f"give exactly one of --act-list, --ds-pattern, --remove-all; got {' and '.join(sources)}")
    if sources:
        given = [n for n, v in solver_only.items() if v is not None]
        if given:
            raise PlanError(
                f"{sources[0]} makes a plan without the solver; it cannot be combined with {', '.join(given)}"
            )
    elif not given_targets:
        raise PlanError(
            "give exactly one of --act-list, --ds-pattern, --remove-all, or a target for the solver "
            "(--target-throughput, --target-latency, --target-speedup or --max-accuracy-cost)"
        )
    elif len(given_targets) > 1:
        raise PlanError(f"give one target for the solver; got {' and '.join(given_targets)}")
    refuse_together(**{"--gpu": gpu, "--profile": profile})
    gpu_name(gpu)
    check_out(out_path, "--out", **{"--profile": profile, "--importance": importance, "--checkpoint": checkpoint})
    prec = precision.value if precision is not None else None

    if not sources:
        from dsa.planner.planner import solve_plan

        prof = load_profile_opt(profile)
        a = analysis_of(model, pretrained, checkpoint, input_size or (prof.input_size if prof else None))
        pricing = resolve_pricing(a, gpu, prof, profile, batch_size, prec, allow_incomplete, runtime)
        result = solve_plan(
            a,
            pricing.device,
            pricing.batch,
            pricing.precision,
            target_latency_ms=target_latency,
            target_throughput=target_throughput,
            target_speedup=target_speedup,
            max_accuracy_cost=max_accuracy_cost,
            importance_file=importance,
            keep=keep or (),
            remove=remove or (),
            granularity=granularity.value if granularity else "activation",
            max_kernel=max_kernel,
            costs=pricing.costs(a),
            cut_after=cut_after or (),
            units_anywhere=not units_first,
            measured_only=measured_only,
            prune_convs=prune_convs,
        )
        result.plan.save(out_path)
        if fmt == Format.json:
            emit_json(result.plan.to_json())
            return
        _print_plan_result(result, out_path)
        return

    a = analysis_of(model, pretrained, checkpoint, input_size)
    p = keep_list_plan(a, act_list=act_list, ds_pattern=ds_pattern, remove_all=remove_all)
    unused = [n for n, v in (("--batch-size", batch_size), ("--precision", precision)) if v is not None]
    if runtime != "eager" and gpu is None:
        unused.append("--runtime")
    if gpu is None and unused:
        raise PlanError(
            f"{' and '.join(unused)} only apply to the prediction a keep-list plan gets with --gpu; add --gpu G "
            "or leave them out"
        )
    prediction = None
    if gpu is not None:
        from dsa.latency.evaluate import evaluate

        pricing = resolve_pricing(a, gpu, None, None, batch_size, prec, allow_incomplete, runtime)
        prediction = evaluate(a, p, costs=pricing.costs(a))
        prediction = prediction.prediction()
        p = p.with_metadata(prediction=prediction)
    p.save(out_path)
    if fmt == Format.json:
        emit_json(p.to_json())
        return
    out.print(
        f"plan for {p.model}: {len(p.removed)} activations removed, {len(p.added)} added, "
        f"{len(p.segments)} merged segments -> {out_path}"
    )
    if prediction is not None:
        out.print(prediction_line(prediction))


def _print_plan_result(r, out_path: Path) -> None:
    merged = [s for s in r.segments if len(s.convs) > 1]
    t = Table(
        "blocks",
        "convs",
        "kernel",
        "channels",
        "kind",
        "ms before",
        "ms after",
        title=f"{r.plan.model}: {len(merged)} merged segments",
    )
    for s in merged:
        kind = ("dw" if s.depthwise else "dense") + ("+res" if s.residual else "") + ("+act" if s.added_after else "")
        t.add_row(
            _block_span(s.blocks),
            str(len(s.convs)),
            "x".join(map(str, s.kernel)) + ("" if s.stride == (1, 1) else f"/{s.stride[0]}"),
            f"{s.channels[0]}->{s.channels[1]}",
            kind,
            f"{s.baseline_ms:.2f}",
            f"{s.planned_ms:.2f}",
        )
    out.print(t)
    removed = ", ".join(r.removed) if r.removed else "none"
    out.print(
        f"removed {len(r.removed)} activations (accuracy cost {r.accuracy_cost:g}: {r.accuracy_proxy}): {removed}"
    )
    if r.plan.added:
        out.print(f"added ReLU6 after: {', '.join(x.after for x in r.plan.added)}")
    if r.plan.pruned:
        out.print(f"pruned {len(r.plan.pruned)} (convs, or residual adds: whole branches): {', '.join(r.plan.pruned)}")
    out.print(prediction_line(r.prediction()))
    target = ", ".join(f"{k} {v:g}" for k, v in r.target.items() if v is not None)
    s = r.solver
    gap = "-" if s["mip_gap"] is None else f"{s['mip_gap']:.1e}"
    out.print(
        f"target: {target}; solver {s['name']}: {s['status']} in {1e3 * s['solve_s']:.0f} ms "
        f"({s['solves']} solves, {s['edges']} candidate edges, {r.granularity} granularity, gap {gap})"
    )
    if r.act_list is not None:
        note = "" if r.act_list_exact else " (importing it merges differently: this plan also keeps some boundaries)"
        out.print(f"DepthShrinker keep list (--act-list): {','.join(map(str, r.act_list))}{note}")
    out.print(f"wrote {out_path}")


def _block_span(blocks: tuple[str, ...]) -> str:
    """``features.3`` or ``features.3..4`` (``first..last`` when the prefixes differ)."""
    if len(blocks) == 1:
        return blocks[0]
    a, b = blocks[0].rpartition("."), blocks[-1].rpartition(".")
    return f"{blocks[0]}..{b[2]}" if a[0] == b[0] and a[0] else f"{blocks[0]}..{blocks[-1]}"


@command("pareto")
@one_line_errors
def pareto_cmd(
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Figure file (.png or .svg).")] = Path("pareto.png"),
    gpu: GpuOpt = None,
    points: Annotated[int, typer.Option("--points", min=2, help="Accuracy-cost budgets per granularity.")] = 20,
    batch_size: ProfileBatchOpt = None,
    precision: ProfilePrecisionOpt = None,
    profile: ProfileOpt = None,
    allow_incomplete: AllowIncompleteOpt = False,
    runtime: RuntimeOpt = "eager",
    max_kernel: Annotated[int | None, typer.Option("--max-kernel", min=1, help="Largest merged kernel size.")] = None,
    importance: Annotated[
        Path | None,
        typer.Option("--importance", help='Accuracy costs, JSON {"scores": {activation: cost}, "default": 1}.'),
    ] = None,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    input_size: InputSizeOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """The predicted speed-up vs accuracy-cost frontier (fastest plan per accuracy-cost budget), per activation
    and per block, with DepthShrinker's patterns A-F for MobileNetV2 (--runtime R: priced for R, with a profile
    taken under it)."""
    from dsa.formats.importance import load_block_importance, load_importance
    from dsa.planner.pareto import frontier
    from dsa.planner.planner import Planner
    from dsa.planner.plot import plot_frontier

    check_out(out_path, "--out", **{"--importance": importance, "--checkpoint": checkpoint})
    figure_suffix(out_path)
    refuse_together(**{"--gpu": gpu, "--profile": profile})
    scores, default_cost = load_importance(importance) if importance is not None else (None, 1.0)
    blocks_cost = load_block_importance(importance) if importance is not None else None
    prof = load_profile_opt(profile)
    a = analysis_of(model, pretrained, checkpoint, input_size or (prof.input_size if prof else None))
    prec = precision.value if precision is not None else None
    pricing = resolve_pricing(a, gpu, prof, profile, batch_size, prec, allow_incomplete, runtime)
    planners = [
        Planner(
            a,
            pricing.device,
            pricing.batch,
            pricing.precision,
            costs=pricing.costs(a),
            importance=scores,
            default_cost=default_cost,
            block_importance=blocks_cost if g == "block" else None,
            granularity=g,
            max_kernel=max_kernel,
        )
        for g in ("activation", "block")
    ]
    f = frontier(planners, points)
    plot_frontier(f, out_path)
    if fmt == Format.json:
        emit_json({**f.to_json(), "figure": str(out_path)})
        return
    t = Table(
        "granularity",
        "accuracy cost",
        "removed",
        "speed-up",
        "img/s",
        title=f"{f.model} on {f.device} under {runtime} ({f.precision}, batch {f.batch}): fastest plan per accuracy "
        "cost",
    )
    for g, pts in f.curves.items():
        for p in pts:
            t.add_row(g, f"{p.accuracy_cost:g}", str(p.removed), f"{p.speedup:.2f}x", f"{p.throughput_img_s:.0f}")
    for p in f.patterns:
        t.add_row(
            f"DS pattern {p.name}",
            f"{p.accuracy_cost:g}",
            str(p.removed),
            f"{p.speedup:.2f}x",
            f"{p.throughput_img_s:.0f}",
        )
    out.print(t)
    out.print(f"wrote {out_path}")
