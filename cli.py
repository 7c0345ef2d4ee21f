"""The ``dsa`` command line (typer). Thin commands that call the library; data on stdout, diagnostics on
stderr, every :class:`dsa.DsaError` a one-line message and exit code 1."""

from __future__ import annotations

import functools
import json
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=__doc__.splitlines()[0] if __doc__ else None,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


class Format(str, Enum):
    table = "table"
    json = "json"


ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="Registry name (see `dsa models`) or package.module:factory.")
]
PretrainedOpt = Annotated[
    bool, typer.Option("--pretrained", help="Load offline pretrained weights (efficientnet_lite0).")
]
CheckpointOpt = Annotated[Path | None, typer.Option("--checkpoint", help="A state_dict to load into the model.")]
FormatOpt = Annotated[Format, typer.Option("--format", help="table (readable) or json (for scripts).")]
InputSizeOpt = Annotated[
    int | None, typer.Option("--input-size", min=1, help="Input resolution (default: the model's).")
]

DEFAULT_MODEL = "mobilenet_v2_140"


def _errors(fn):
    """Turn dsa's (and roofline's) errors into one line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from dsa.errors import DsaError
        from roofline.errors import RooflineError

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return fn(*args, **kwargs)
        except (DsaError, RooflineError) as e:
            typer.echo(f"error: {' '.join(str(e).split())}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def _emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()


def _model_and_analysis(model: str, pretrained: bool, checkpoint: Path | None, input_size: int | None = None):
    from dsa.graph import analyze
    from dsa.models import create_model
    from dsa.models import input_size as default_size

    net = create_model(model, pretrained=pretrained, checkpoint=checkpoint)
    return net, analyze(net, model, default_size(model) if input_size is None else input_size)


@app.command("models")
@_errors
def models_cmd(fmt: FormatOpt = Format.table) -> None:
    """List the models `--model` accepts."""
    from dsa.models import list_models

    entries = list_models()
    if fmt == Format.json:
        _emit_json(
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
    out.print("Any other model: --model package.module:factory (a callable returning an nn.Module).")


@app.command("analyze")
@_errors
def analyze_cmd(
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    plan: Annotated[Path | None, typer.Option(help="Show the segments this plan induces.")] = None,
    input_size: InputSizeOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Activation sites, and the segments a plan (default: removing every removable activation) induces."""
    from dsa.plan import load_plan, remove_all_plan

    _, a = _model_and_analysis(model, pretrained, checkpoint, input_size)
    if plan is not None:
        p = load_plan(plan)
        p.check(a)
        segs, segs_for = p.induced_segments(a), str(plan)
    else:
        segs, segs_for = remove_all_plan(a).induced_segments(a), "all-removable"
    if fmt == Format.json:
        _emit_json(
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


@app.command("plan")
@_errors
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
    gpu: Annotated[
        str | None,
        typer.Option("--gpu", "-g", help="Device name, alias (v100, a100, ...) or device file (default: v100)."),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, help="Images per forward pass (default: 128, or the profile's)."),
    ] = None,
    precision: Annotated[
        str | None, typer.Option("--precision", help="fp32, tf32, fp16 or bf16 (default: fp32, or the profile's).")
    ] = None,
    granularity: Annotated[
        str | None,
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
    --max-accuracy-cost), or from a DepthShrinker keep list (--act-list, --ds-pattern, --remove-all)."""
    from dsa.errors import PlanError
    from dsa.plan import ds_pattern_act_list, plan_from_act_list, remove_all_plan

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
    if precision is not None and precision not in ("fp32", "tf32", "fp16", "bf16"):
        raise PlanError(f"--precision must be fp32, tf32, fp16 or bf16, got {precision!r}")
    if granularity is not None and granularity not in ("activation", "block"):
        raise PlanError(f"--granularity must be activation or block, got {granularity!r}")

    if not sources:
        from dsa.planner import Planner, load_block_importance, load_importance

        scores, default_cost = load_importance(importance) if importance is not None else (None, 1.0)
        # block granularity: whole-block scores (dsa importance's "segments") where the file has them
        blocks_cost = load_block_importance(importance) if importance is not None and granularity == "block" else None
        prof = None
        if profile is not None:
            from dsa.profile import load_profile

            prof = load_profile(profile)
            batch_size = batch_size or prof.batch_size
            precision = precision or prof.precision
        batch_size, precision = batch_size or 128, precision or "fp32"
        _, a = _model_and_analysis(model, pretrained, checkpoint, input_size)
        if prof is None:
            prof = _find_profile(gpu or "v100", a, batch_size, precision)
        planner = Planner(
            a,
            gpu or "v100",
            batch_size,
            precision,
            importance=scores,
            default_cost=default_cost,
            block_importance=blocks_cost,
            keep=keep or (),
            remove=remove or (),
            granularity=granularity or "activation",
            max_kernel=max_kernel,
            profile=prof,
        )
        if max_accuracy_cost is not None:
            result = planner.fastest(max_accuracy_cost)
        else:
            result = planner.for_target(target_latency, target_throughput, target_speedup)
        result.plan.save(out_path)
        if fmt == Format.json:
            _emit_json(result.plan.to_json())
            return
        _print_plan_result(result, out_path)
        return

    _, a = _model_and_analysis(model, pretrained, checkpoint, input_size)
    if remove_all:
        p = remove_all_plan(a)
    else:
        if ds_pattern is not None:
            keep_list = ds_pattern_act_list(ds_pattern)
            if len(a.blocks()) != len(keep_list):
                raise PlanError(
                    f"--ds-pattern is DepthShrinker's MobileNetV2 keep list ({len(keep_list)} entries: stem, "
                    f"17 blocks, head); {model} has {len(a.blocks())} blocks; use --act-list"
                )
        else:
            try:
                keep_list = [int(x) for x in act_list.replace(" ", "").split(",") if x != ""]
            except ValueError as e:
                raise PlanError(f"--act-list must be comma-separated 0/1 values, got {act_list!r}") from e
        p = plan_from_act_list(a, keep_list)
    prediction = None
    if gpu is not None:
        from dsa.costs import evaluate

        batch_size, precision = batch_size or 128, precision or "fp32"
        ev = evaluate(a, p, gpu, batch_size, precision, profile=_find_profile(gpu, a, batch_size, precision))
        prediction = {
            "device": ev.device,
            "precision": ev.precision,
            "batch_size": ev.batch,
            "source": ev.source,
            "baseline_latency_ms": ev.baseline.latency_ms,
            "planned_latency_ms": ev.planned.latency_ms,
            "baseline_throughput_img_s": ev.baseline.throughput_img_s,
            "planned_throughput_img_s": ev.planned.throughput_img_s,
            "speedup": ev.speedup,
        }
        p = p.with_metadata(prediction=prediction)
    p.save(out_path)
    if fmt == Format.json:
        _emit_json(p.to_json())
        return
    out.print(
        f"plan for {p.model}: {len(p.removed)} activations removed, {len(p.added)} added, "
        f"{len(p.segments)} merged segments -> {out_path}"
    )
    if prediction is not None:
        out.print(_prediction_line(prediction))


def _prediction_line(pr: dict) -> str:
    return (
        f"predicted on {pr['device']} ({pr['precision']}, batch {pr['batch_size']}; {pr['source']}): original "
        f"{pr['baseline_latency_ms']:.2f} ms = {pr['baseline_throughput_img_s']:.0f} img/s -> planned "
        f"{pr['planned_latency_ms']:.2f} ms = {pr['planned_throughput_img_s']:.0f} img/s; "
        f"speed-up {pr['speedup']:.2f}x"
    )


def _block_span(blocks: tuple[str, ...]) -> str:
    """``features.3`` or ``features.3..4`` (``first..last`` when the prefixes differ)."""
    if len(blocks) == 1:
        return blocks[0]
    a, b = blocks[0].rpartition("."), blocks[-1].rpartition(".")
    return f"{blocks[0]}..{b[2]}" if a[0] == b[0] and a[0] else f"{blocks[0]}..{blocks[-1]}"


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
    out.print(_prediction_line(r.prediction()))
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


@app.command("pareto")
@_errors
def pareto_cmd(
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Figure file (.png or .svg).")] = Path("pareto.png"),
    gpu: Annotated[
        str, typer.Option("--gpu", "-g", help="Device name, alias (v100, a100, ...) or device file.")
    ] = "v100",
    points: Annotated[int, typer.Option("--points", min=2, help="Accuracy-cost budgets per granularity.")] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 128,
    precision: Annotated[str, typer.Option("--precision", help="fp32, tf32, fp16 or bf16.")] = "fp32",
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
    and per block, with DepthShrinker's patterns A-F for MobileNetV2."""
    from dsa.errors import PlanError
    from dsa.pareto import frontier, plot_frontier
    from dsa.planner import Planner, load_block_importance, load_importance

    if precision not in ("fp32", "tf32", "fp16", "bf16"):
        raise PlanError(f"--precision must be fp32, tf32, fp16 or bf16, got {precision!r}")
    scores, default_cost = load_importance(importance) if importance is not None else (None, 1.0)
    blocks_cost = load_block_importance(importance) if importance is not None else None
    _, a = _model_and_analysis(model, pretrained, checkpoint, input_size)
    planners = [
        Planner(
            a,
            gpu,
            batch_size,
            precision,
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
        _emit_json({**f.to_json(), "figure": str(out_path)})
        return
    t = Table(
        "granularity",
        "accuracy cost",
        "removed",
        "speed-up",
        "img/s",
        title=f"{f.model} on {f.device} ({f.precision}, batch {f.batch}): fastest plan per accuracy cost",
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


@app.command("merge")
@_errors
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
        Path | None, typer.Option(help="Also export ONNX here (checked with onnx.checker and onnxruntime).")
    ] = None,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Merge a (finetuned) network by its plan; write the merged model, TorchScript and optionally ONNX."""
    import torch

    from dsa.export import save_merged, to_onnx, to_torchscript
    from dsa.merge import conv_count, merge
    from dsa.plan import load_plan

    p = load_plan(plan)
    meta: dict = {}
    if checkpoint is not None and _is_training_checkpoint(checkpoint):
        net, merged, p, meta = _merge_training_checkpoint(checkpoint, p, model, pretrained, plan)
    else:
        net, a = _model_and_analysis(model, pretrained, checkpoint, p.input_size)
        merged = merge(net, p)
    example = torch.randn(1, 3, p.input_size, p.input_size)
    save_merged(merged, p, out_path, verified_max_rel_error=merged.dsa_merge_error, **meta)
    ts_path = out_path.with_name(out_path.stem + ".torchscript.pt")
    how = to_torchscript(merged, example, ts_path, p)
    onnx_err = to_onnx(merged, example, onnx) if onnx else None
    result = {
        "model": p.model,
        "convs_before": conv_count(net),
        "convs_after": conv_count(merged),
        "verified_max_rel_error_fp64": merged.dsa_merge_error,
        "verified_max_rel_error_model_dtype": merged.dsa_merge_error_model_dtype,
        "checkpoint": str(out_path),
        "torchscript": str(ts_path),
        "torchscript_mode": how,
        "onnx": str(onnx) if onnx else None,
        "onnxruntime_max_rel_error": onnx_err,
    }
    if fmt == Format.json:
        _emit_json(result)
        return
    out.print(
        f"merged {p.model}: {result['convs_before']} -> {result['convs_after']} convs; verified max relative "
        f"error {merged.dsa_merge_error:.2e} (float64), {merged.dsa_merge_error_model_dtype:.2e} (model dtype)"
    )
    out.print(f"wrote {out_path} and {ts_path} (TorchScript, {how})")
    if onnx:
        out.print(f"wrote {onnx} (onnx.checker ok; onnxruntime max relative error {onnx_err:.2e})")


def _is_training_checkpoint(path: Path) -> bool:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not ours to judge here: the model loader reports unreadable files
        return False
    return isinstance(obj, dict) and obj.get("kind") == "dsa.train"


def _merge_training_checkpoint(path: Path, p, model: str, pretrained: bool, plan_path: Path):
    """Merge a `dsa train` checkpoint: a merge-ready one (trained with this plan) as it is, a plain one (e.g. a
    finetuned baseline with a new head) by the plan, re-derived for its head as the trainer does."""
    from dsa.errors import DsaError
    from dsa.merge import merge
    from dsa.models import create_model
    from dsa.train import build_networks, load_for_eval

    if pretrained:
        raise DsaError("give --pretrained or --checkpoint, not both")
    loaded = load_for_eval(path, model=None if model == DEFAULT_MODEL else model)
    num_classes = len(loaded.classes)  # a training checkpoint records its classes
    if loaded.plan is not None:
        if (loaded.plan.removed, loaded.plan.added, loaded.plan.boundaries) != (p.removed, p.added, p.boundaries):
            raise DsaError(f"{path} was finetuned with another plan than {plan_path}; merge it with that plan")
        original = create_model(loaded.model)  # only counted (convs), so its head does not matter
        ready, p = loaded.module, loaded.plan
    else:
        nets = build_networks(loaded.model, num_classes, checkpoint=path, plan=plan_path)
        original, ready, p = nets.original, nets.student.eval(), nets.plan
    meta = {
        "model_name": loaded.model,
        "num_classes": num_classes,
        "classes": list(loaded.classes),
        "image_size": loaded.image_size,
    }
    return original, merge(ready, verify_sizes=sorted({p.input_size, loaded.image_size})), p, meta


@app.command("bench")
@_errors
def bench_cmd(
    plan: Annotated[Path | None, typer.Option(help="Also time the network merged by this plan.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    device: Annotated[str, typer.Option(help="cpu or cuda[:i].")] = "cpu",
    channels_last: Annotated[bool, typer.Option("--channels-last", help="NHWC memory layout.")] = False,
    threads: Annotated[int | None, typer.Option(help="torch.set_num_threads (default: torch's).")] = None,
    warmup: Annotated[int, typer.Option(min=0)] = 2,
    repeats: Annotated[int, typer.Option(min=1)] = 5,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Measured images/s of the original and the merged network, interleaved in one run."""
    import torch
    from rich.progress import Progress

    from dsa.bench import measure
    from dsa.errors import DsaError
    from dsa.merge import merge
    from dsa.models import create_model
    from dsa.models import input_size as default_size
    from dsa.plan import load_plan

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DsaError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if threads:
        torch.set_num_threads(threads)
    net = create_model(model, pretrained=pretrained, checkpoint=checkpoint)
    models = {"original": net}
    size = default_size(model)
    if plan is not None:
        p = load_plan(plan)
        size = p.input_size
        models["merged"] = merge(net, p)
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("timing", total=repeats * len(models))
        res = measure(
            models, batch_size, size, device, channels_last, warmup, repeats, progress=lambda *_: bar.advance(task)
        )
    result = {
        "model": model,
        "batch_size": batch_size,
        "input_size": size,
        "device": device,
        "layout": "channels_last" if channels_last else "NCHW",
        "threads": torch.get_num_threads(),
        "warmup": warmup,
        "repeats": repeats,
        **{k: v.to_json() for k, v in res.items()},
        "speedup": res["merged"].images_per_s / res["original"].images_per_s if "merged" in res else None,
    }
    if fmt == Format.json:
        _emit_json(result)
        return
    t = Table(
        "network",
        "images/s (median)",
        "min",
        "max",
        "IQR",
        "ms/batch",
        title=f"{model}, batch {batch_size}, {result['layout']}, {result['threads']} threads, {repeats} repeats",
    )
    for k, v in res.items():
        t.add_row(
            k,
            f"{v.images_per_s:.1f}",
            f"{v.images_per_s_min:.1f}",
            f"{v.images_per_s_max:.1f}",
            f"{v.iqr_images_per_s:.1f}",
            f"{v.latency_ms:.1f}",
        )
    out.print(t)
    if result["speedup"]:
        out.print(f"speed-up: {result['speedup']:.2f}x")


class Precision(str, Enum):
    fp32 = "fp32"
    tf32 = "tf32"
    fp16 = "fp16"
    bf16 = "bf16"


GpuOpt = Annotated[str, typer.Option("--gpu", "-g", help="Device name, alias (v100, a100, h100, ...) or device file.")]
PrecisionOpt = Annotated[Precision, typer.Option(help="Numeric precision of the prediction.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")]


@app.command("devices")
@_errors
def devices_cmd(
    measure: Annotated[bool, typer.Option("--measure", help="Measure this machine's CPU (or --device cuda).")] = False,
    device: Annotated[str, typer.Option(help="With --measure: cpu or cuda[:i].")] = "cpu",
    seconds: Annotated[float, typer.Option(min=0.5, help="With --measure: time budget.")] = 5.0,
    out_path: Annotated[Path | None, typer.Option("--out", help="With --measure: device file to write.")] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """List the known devices, or measure the local one (achieved matmul FLOP/s and copy bandwidth)."""
    import roofline as rl

    if measure:
        spec = rl.measure_local_device(device, seconds)
        path = out_path or Path("profiles") / spec.name / "device.json"
        rl.save_device(spec, path)
        if fmt == Format.json:
            _emit_json({**spec.to_dict(), "path": str(path)})
            return
        m = spec.measured
        out.print(f"{spec.name}: matmul {m.matmul_tflops} TFLOP/s, copy {m.copy_bandwidth_gbps:.1f} GB/s -> {path}")
        return
    specs = rl.list_devices()
    if fmt == Format.json:
        _emit_json([s.to_dict() for s in specs])
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


ProfileOpt = Annotated[
    Path | None, typer.Option("--profile", help="A measured profile (dsa profile): its device, calibration and times.")
]


def _evaluation(model, pretrained, checkpoint, plan, gpu, batch_size, precision, profile=None):
    from dsa.costs import evaluate
    from dsa.plan import load_plan, make_plan
    from dsa.profile import load_profile

    if plan is not None:
        p = load_plan(plan)
        _, a = _model_and_analysis(model, pretrained, checkpoint, p.input_size)
        p.check(a)
    else:
        _, a = _model_and_analysis(model, pretrained, checkpoint)
        p = make_plan(a)
    prof = load_profile(profile) if profile is not None else _find_profile(gpu, a, batch_size, precision.value)
    return evaluate(a, p, gpu, batch_size, precision.value, profile=prof)


def _find_profile(gpu: str, a, batch_size: int, precision: str):
    """A profile under profiles/<device>/ matching the model, batch and precision, if there is one."""
    import roofline as rl
    from dsa.profile import find_profile

    try:
        device = rl.load_device(gpu).name
    except rl.RooflineError:
        if not (Path("profiles") / gpu).is_dir():
            raise
        device = gpu  # a measured device (e.g. local-cpu) known only through its profiles
    found = find_profile("profiles", device, a.fingerprint, batch_size, precision, input_size=a.input_size)
    if found is None:
        if device == gpu and not Path(gpu).exists() and gpu not in {d.name for d in rl.list_devices()}:
            raise rl.RooflineError(
                f"no profile under profiles/{gpu}/ matches {a.model_name} at {a.input_size} px, batch {batch_size}, "
                f"{precision}; run `dsa profile` or pass --profile"
            )
        return None
    typer.echo(f"using the measured profile {found[1]}", err=True)
    return found[0]


@app.command("evaluate")
@_errors
def evaluate_cmd(
    plan: Annotated[Path, typer.Option(help="The plan JSON.")],
    gpu: GpuOpt = "v100",
    batch_size: BatchOpt = 128,
    precision: PrecisionOpt = Precision.fp32,
    profile: ProfileOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Predicted latency and throughput of the original and the planned network on a GPU (or, with
    --profile, on the profiled device, using its measured times where it has them)."""
    ev = _evaluation(model, pretrained, checkpoint, plan, gpu, batch_size, precision, profile)
    if fmt == Format.json:
        _emit_json({"model": model, **ev.to_json()})
        return
    t = Table(
        "segment",
        "convs",
        "kernel",
        "channels",
        "before ms",
        "after ms",
        "after from",
        title=f"{model} on {ev.device}, {ev.precision}, batch {ev.batch} ({ev.source})",
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
    out.print(f"op times: original {src['baseline_ops']}, planned {src['planned_ops']} ({src['roofline_model']})")
    out.print(
        f"original: {ev.baseline.latency_ms:.2f} ms, {ev.baseline.throughput_img_s:.0f} img/s; "
        f"planned: {ev.planned.latency_ms:.2f} ms, {ev.planned.throughput_img_s:.0f} img/s; "
        f"speed-up {ev.speedup:.2f}x"
    )


@app.command("roofline")
@_errors
def roofline_cmd(
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Figure file (.png or .svg).")],
    gpu: GpuOpt = "v100",
    plan: Annotated[Path | None, typer.Option(help="Also plot the merged layers of this plan.")] = None,
    batch_size: BatchOpt = 128,
    precision: PrecisionOpt = Precision.fp32,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
) -> None:
    """The device's roofline with every layer of the network (and of the merged network) as a point."""
    import roofline as rl

    ev = _evaluation(model, pretrained, checkpoint, plan, gpu, batch_size, precision)
    points = rl.points_from_ops([c.spec for c in ev.baseline_ops], list(ev.baseline.op_times), "original layers")
    if plan is not None:
        merged = [
            (c.spec, t) for c, t in zip(ev.planned_ops, ev.planned.op_times, strict=True) if c.segment is not None
        ]
        points += rl.points_from_ops([m[0] for m in merged], [m[1] for m in merged], "merged layers")
    title = f"{model} on {ev.device}, {ev.precision}, batch {ev.batch} (predicted; area = time)"
    rl.plot_roofline(ev.device, ev.precision, points, out_path, title=title)
    out.print(f"wrote {out_path}")


@app.command("report")
@_errors
def report_cmd(
    plan: Annotated[Path, typer.Option(help="The plan JSON.")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Figure file (.png or .svg).")],
    gpu: GpuOpt = "v100",
    batch_size: BatchOpt = 128,
    precision: PrecisionOpt = Precision.fp32,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
) -> None:
    """Per-block predicted latency of the original and the planned network, as bars."""
    import roofline as rl

    ev = _evaluation(model, pretrained, checkpoint, plan, gpu, batch_size, precision)
    blocks, before, after = ev.by_block()
    title = f"{model} on {ev.device}, {ev.precision}, batch {ev.batch}: predicted latency per block"
    rl.plot_latency_bars(blocks, before, after, out_path, title, before_label="original", after_label="planned")
    out.print(f"wrote {out_path}")


@app.command("profile")
@_errors
def profile_cmd(
    out_path: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Profile file (default: profiles/<device>/<model>_b<B>_<precision>_<layout>.json)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda[:i].")] = "cpu",
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    precision: PrecisionOpt = Precision.fp32,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="NHWC memory layout.")] = False,
    warmup: Annotated[int, typer.Option(min=0)] = 2,
    repeats: Annotated[int, typer.Option(min=1)] = 5,
    plan: Annotated[Path | None, typer.Option(help="Also time the network merged by this plan end to end.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch.set_num_threads (default: torch's).")] = None,
    input_size: InputSizeOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
) -> None:
    """Measure every op (torch.profiler), every candidate merged segment and the whole network."""
    import torch
    from rich.progress import Progress

    from dsa.plan import load_plan
    from dsa.profile import default_path, profile_model

    if threads:
        torch.set_num_threads(threads)
    p = load_plan(plan) if plan is not None else None
    net, a = _model_and_analysis(model, pretrained, checkpoint, p.input_size if p else input_size)
    if p is not None:
        p.check(a)
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("profiling", total=None)

        def progress(what: str, step: int, total: int) -> None:
            bar.update(task, completed=step, total=total, description=what)

        prof = profile_model(
            net,
            a,
            batch_size=batch_size,
            precision=precision.value,
            device=device,
            channels_last=channels_last,
            warmup=warmup,
            repeats=repeats,
            plan=p,
            progress=progress,
        )
    path = out_path or default_path(prof)
    prof.save(path)
    e2e = prof.end_to_end
    summary = f"{len(prof.ops)} ops, {len(prof.segments)} candidate segments"
    if "original" in e2e:
        summary += f"; original {e2e['original']['images_per_s']:.1f} img/s"
    if "merged" in e2e:
        summary += f", merged {e2e['merged']['images_per_s']:.1f} img/s"
    out.print(f"wrote {path}: {summary}")
    if not prof.complete:
        err.print("interrupted: the profile holds what was measured before Ctrl-C")
        raise typer.Exit(130)


@app.command("calibrate")
@_errors
def calibrate_cmd(
    profile: Annotated[Path, typer.Option("--profile", help="A measured profile (dsa profile).")],
    device_out: Annotated[
        Path | None, typer.Option("--device-out", help="Also write the calibrated device file here.")
    ] = None,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Fit the roofline efficiencies of the profiled device on a training split of the measured ops; the
    calibration is stored in the profile (and optionally a device file)."""
    import roofline as rl
    from dsa.calibrate import calibrate
    from dsa.profile import load_profile

    prof = load_profile(profile)
    _, a = _model_and_analysis(model, pretrained, checkpoint, prof.input_size)
    cal, prof = calibrate(a, prof)
    prof.save(profile)
    if device_out is not None:
        rl.save_device(prof.device(), device_out)
    if fmt == Format.json:
        _emit_json(cal.to_dict())
        return
    effs = ", ".join(f"{k} {v:.3g}" for k, v in sorted(cal.compute_efficiency.items()))
    out.print(
        f"calibrated {prof.device_name} on {cal.n_ops} items: compute efficiency {effs}; memory "
        f"{', '.join(f'{v:.3g}' for v in sorted(set(cal.memory_efficiency.values())))}; launch {cal.launch_ms:.4f} ms; "
        f"training median error {cal.median_abs_pct_error_uncalibrated:.1f}% -> {cal.median_abs_pct_error:.1f}%"
    )
    out.print(f"stored in {profile}" + (f" and {device_out}" if device_out else ""))


@app.command("validate")
@_errors
def validate_cmd(
    profile: Annotated[Path, typer.Option("--profile", help="A measured profile (dsa profile).")],
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """How well the roofline predicts held-out measured segments and ops, and whole networks, before and
    after calibration."""
    from dsa.calibrate import validate
    from dsa.profile import load_profile

    prof = load_profile(profile)
    _, a = _model_and_analysis(model, pretrained, checkpoint, prof.input_size)
    rep = validate(a, prof)
    if fmt == Format.json:
        _emit_json(rep)
        return
    t = Table(
        "held-out",
        "model",
        "n",
        "median |err| %",
        "within 10%",
        "Spearman",
        "Kendall",
        title=f"{rep['model']} on {rep['device']}, batch {rep['batch_size']}, {rep['precision']}, {rep['layout']}",
    )
    for label in ("uncalibrated", "calibrated"):
        for kind in ("segment", "op"):
            m = rep[label][kind]
            if m.get("n"):
                t.add_row(
                    kind + "s",
                    label,
                    str(m["n"]),
                    f"{m['median_abs_pct_err']:.1f}",
                    f"{m['within_10pct']:.0%}",
                    f"{m.get('spearman', float('nan')):.3f}",
                    f"{m.get('kendall', float('nan')):.3f}",
                )
    out.print(t)
    for name, row in rep["end_to_end"].items():
        if isinstance(row, dict):
            out.print(
                f"end to end, {name}: measured {row['measured_ms']:.1f} ms, predicted "
                f"{row['predicted_ms_uncalibrated']:.1f} ms uncalibrated ({row['abs_pct_err_uncalibrated']:.1f}% off), "
                f"{row['predicted_ms_calibrated']:.1f} ms calibrated ({row['abs_pct_err_calibrated']:.1f}% off)"
            )


class Optimizer(str, Enum):
    sgd = "sgd"
    adamw = "adamw"


class Split(str, Enum):
    train = "train"
    val = "val"
    test = "test"


DataOpt = Annotated[
    str,
    typer.Option(
        "--data", help="elpv (the ELPV solar-cell dataset) or an ImageFolder directory with train/, val/ (and test/)."
    ),
]
ImageSizeOpt = Annotated[
    int | None, typer.Option("--image-size", min=8, help="Image resolution (default: the model's, or the run's).")
]
ThreadsOpt = Annotated[int | None, typer.Option(help="torch.set_num_threads (default: torch's).")]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}%"


def _print_train_summary(result) -> None:
    s = result.summary
    if not result.finished:
        out.print(
            f"stopped after epoch {result.epochs_done}; continue with the same options and --resume "
            f"(checkpoint {result.run_dir / 'last.pt'})"
        )
        return
    acc, bench = s["accuracy"], s.get("bench") or {}
    splits = list(acc)
    if s["plan"] is None:
        scores = ", ".join(f"{k} top-1 {_pct(v['top1'])}" for k, v in acc.items())
        speed = f"; {bench['original']['images_per_s']:.1f} images/s" if bench else ""
        out.print(f"{s['model']} finetuned for {s['epochs']} epochs: {scores}{speed}")
    else:
        t = Table("network", *[f"{k} top-1" for k in splits], "images/s", title=f"{s['model']} with {s['plan']}")
        ips = {k: f"{bench[k]['images_per_s']:.1f}" if k in bench else "-" for k in ("original", "merged")}
        t.add_row("merge-ready", *[_pct(acc[k]["merge_ready"]["top1"]) for k in splits], "-")
        t.add_row("merged", *[_pct(acc[k]["merged"]["top1"]) for k in splits], ips["merged"])
        t.add_row("original (speed only)", *["-" for _ in splits], ips["original"])
        out.print(t)
        m = s["merge"]
        same = "equal" if s["merged_equals_merge_ready"] else "DIFFERENT"
        flips = sum(a["prediction_disagreements"] for a in acc.values())
        out.print(
            f"merged {m['convs_before']} -> {m['convs_after']} convs (max relative error "
            f"{m['verified_max_rel_error_fp64']:.1e} float64); merged and merge-ready accuracy {same} "
            f"({flips} predictions differ)"
        )
        if bench.get("speedup"):
            out.print(
                f"measured speed-up {bench['speedup']:.2f}x (batch {bench['batch_size']}, {bench['layout']}, "
                f"{bench['threads']} threads, {bench['repeats']} repeats, one run)"
            )
        e = s["export"]
        out.print(f"wrote {e['checkpoint']}, {e['torchscript']}" + (f", {e['onnx']}" if e.get("onnx") else ""))
        if e.get("onnx_error"):
            err.print(f"ONNX not written: {e['onnx_error']}")
    out.print(f"run directory {result.run_dir}: last.pt, metrics.jsonl, result.json")


@app.command("train")
@_errors
def train_cmd(
    data: DataOpt,
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Run directory: last.pt, metrics.jsonl, result.json, merged exports.")
    ],
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = False,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Start from these weights: a state_dict, or a plain `dsa train` run's last.pt (baseline)."),
    ] = None,
    plan: Annotated[
        Path | None,
        typer.Option(help="Finetune this plan's merge-ready network (with distillation), then merge, export, measure."),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="Images per step and process.")] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine decay to 0 over the run).")] = 0.01,
    optimizer: Annotated[Optimizer, typer.Option(help="sgd (momentum 0.9) or adamw.")] = Optimizer.sgd,
    weight_decay: Annotated[float | None, typer.Option(help="Default: 4e-5 (sgd), 0.05 (adamw).")] = None,
    image_size: ImageSizeOpt = None,
    distill: Annotated[
        bool, typer.Option("--distill/--no-distill", help="With --plan: distil from the original network.")
    ] = True,
    kd_weight: Annotated[float, typer.Option(min=0.0, max=1.0, help="Weight of the distillation loss.")] = 0.7,
    temperature: Annotated[float, typer.Option(help="Distillation temperature.")] = 1.0,
    amp: Annotated[bool, typer.Option("--amp", help="Mixed precision (bfloat16 on CPU, float16 on CUDA).")] = False,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="NHWC layout (training and timing).")] = False,
    num_workers: Annotated[int, typer.Option(min=0, help="DataLoader worker processes.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, shuffling and augmentation.")] = 0,
    max_steps_per_epoch: Annotated[
        int | None, typer.Option(min=1, help="Cut every epoch short after N steps (smoke runs).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:i].")] = "auto",
    threads: ThreadsOpt = None,
    bench_batch_size: Annotated[int, typer.Option(min=1, help="Batch of the final images/s measurement.")] = 32,
    bench_repeats: Annotated[int, typer.Option(min=0, help="Timed runs of that measurement (0: skip it).")] = 5,
    onnx: Annotated[bool, typer.Option("--onnx/--no-onnx", help="With --plan: also export ONNX.")] = True,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last.pt.")] = False,
    stop_after_epochs: Annotated[
        int | None, typer.Option(min=1, help="End this process after N epochs (continue later with --resume).")
    ] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Finetune a network (the baseline), or with --plan its merge-ready form with distillation, then merge,
    export and measure it. Runs under `torchrun --nproc-per-node N` with DistributedDataParallel."""
    import os

    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dsa.train import TrainConfig, train

    if threads:
        torch.set_num_threads(threads)
    cfg = TrainConfig(
        data=data,
        out=str(out_dir),
        model=model,
        pretrained=pretrained,
        checkpoint=str(checkpoint) if checkpoint else None,
        plan=str(plan) if plan else None,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer.value,
        weight_decay=weight_decay,
        image_size=image_size,
        distill=distill,
        kd_weight=kd_weight,
        temperature=temperature,
        amp=amp,
        channels_last=channels_last,
        num_workers=num_workers,
        seed=seed,
        max_steps_per_epoch=max_steps_per_epoch,
        device=device,
        bench_batch_size=bench_batch_size,
        bench_repeats=bench_repeats,
        onnx=onnx,
    )
    main_rank = os.environ.get("RANK", "0") in ("", "0")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # the bar starts with the run (setup event), so that bad input is one line on stderr
    bar = Progress(*columns, console=err, transient=True, disable=not main_rank)
    task = bar.add_task("preparing", total=None)
    epochs_total = [epochs]
    try:

        def on_event(event: str, info: dict) -> None:
            if event == "setup":
                bar.start()
                epochs_total[0] = info["epochs"]
                d = info["data"]
                sizes = ", ".join(f"{k} {d[k]['images']}" for k in ("train", "val", "test") if k in d)
                what = f"plan {info['plan']} ({info['removed']} activations removed)" if info["plan"] else "baseline"
                err.print(
                    f"{info['model']}, {what}, {d['name']} ({len(d['classes'])} classes: {sizes}) at "
                    f"{d['image_size']}px; {info['world_size']} process(es) on {info['device']}; "
                    f"{info['steps_per_epoch']} steps per epoch"
                    + (f"; resuming after epoch {info['start_epoch']}" if info["start_epoch"] else "")
                    + ("; distillation" if info["distill"] else ""),
                    soft_wrap=True,
                )
            elif event == "step":
                bar.update(
                    task,
                    completed=info["step"],
                    total=info["steps"],
                    description=f"epoch {info['epoch']}/{epochs_total[0]} loss {info['loss']:.4f}",
                )
            elif event == "epoch":
                kd = "" if info["kd"] is None else f" (ce {info['ce']:.4f}, kd {info['kd']:.4f})"
                err.print(
                    f"epoch {info['epoch']}/{epochs_total[0]}: loss {info['loss']:.4f}{kd}, val top-1 "
                    f"{_pct(info['val_top1'])}, {info['seconds']:.1f} s ({info['train_images_per_s']:.1f} images/s)",
                    soft_wrap=True,
                )
            elif event == "phase":
                bar.update(task, completed=0, total=None, description=info["what"])

        result = train(cfg, resume=resume, stop_after_epochs=stop_after_epochs, callback=on_event)
    finally:
        if bar.live.is_started:
            bar.stop()
    if result is None:  # not rank 0
        return
    if fmt == Format.json:
        _emit_json(
            {"run_dir": str(result.run_dir), "finished": result.finished, "epochs_done": result.epochs_done}
            | result.summary
        )
        return
    _print_train_summary(result)


@app.command("eval")
@_errors
def eval_cmd(
    checkpoint: Annotated[
        Path,
        typer.Option(help="A `dsa train` run's last.pt, a merged checkpoint (merged.pt) or a plain state_dict."),
    ],
    data: DataOpt,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="The model (needed for a plain state_dict).")
    ] = None,
    plan: Annotated[Path | None, typer.Option(help="For a state_dict of a merge-ready network: its plan.")] = None,
    split: Annotated[Split, typer.Option(help="Which split to evaluate.")] = Split.val,
    image_size: ImageSizeOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    device: Annotated[str, typer.Option(help="cpu or cuda[:i].")] = "cpu",
    threads: ThreadsOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Accuracy (top-1, and top-5 with >= 5 classes) of a trained or merged network on a dataset split."""
    import torch

    from dsa.train import evaluate_checkpoint

    if threads:
        torch.set_num_threads(threads)
    r = evaluate_checkpoint(
        checkpoint,
        data,
        model=model,
        plan=plan,
        split=split.value,
        image_size=image_size,
        batch_size=batch_size,
        device=device,
    )
    if fmt == Format.json:
        _emit_json(r)
        return
    top5 = "" if r["top5"] is None else f", top-5 {_pct(r['top5'])}"
    out.print(
        f"{r['model']} ({r['kind']} checkpoint): top-1 {_pct(r['top1'])}{top5} on {r['n']} images of "
        f"{r['data']} {r['split']} at {r['image_size']}px"
    )


@app.command("importance")
@_errors
def importance_cmd(
    data: Annotated[str, typer.Option(help="Calibration data: an ImageFolder directory or 'elpv'.")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Importance file (dsa plan --importance reads it).")],
    method: Annotated[str, typer.Option(help="linearity, removal-kl, gates or finetune.")] = "removal-kl",
    samples: Annotated[int, typer.Option(min=2, help="Calibration images (a seeded subset of the split).")] = 64,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    image_size: Annotated[
        int | None,
        typer.Option("--image-size", "--input-size", min=8, help="Default: the model's or the checkpoint's."),
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    steps: Annotated[int, typer.Option(min=1, help="gates / finetune: optimisation steps.")] = 20,
    time_budget: Annotated[float | None, typer.Option(help="finetune: stop after this many seconds.")] = None,
    blocks: Annotated[
        bool, typer.Option("--blocks/--no-blocks", help="Also score each block merged DepthShrinker style.")
    ] = True,
    keep_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="gates: share of activations the top-k mask keeps.")
    ] = 0.5,
    latency_weight: Annotated[
        float, typer.Option(min=0.0, help="gates: weight of the latency term (0: accuracy only).")
    ] = 0.01,
    gpu: Annotated[
        str | None,
        typer.Option(
            "--gpu", "-g", help="gates: device whose predicted savings drive the latency term (default: v100)."
        ),
    ] = None,
    profile: Annotated[
        Path | None,
        typer.Option("--profile", help="gates: a measured profile; its calibrated device (and, if it matches, times)."),
    ] = None,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
) -> None:
    """Score what removing each activation (and merging each block) costs in accuracy, without full training."""
    import dataclasses

    from rich.progress import Progress

    from dsa.errors import DsaError
    from dsa.graph import analyze
    from dsa.importance import METHODS, calibration_batches, score
    from dsa.models import create_model
    from dsa.models import input_size as default_size

    if method not in METHODS:
        raise DsaError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    if pretrained and checkpoint is not None:
        raise DsaError("give --pretrained or --checkpoint, not both")
    if gpu is not None and profile is not None:
        raise DsaError("give --gpu or --profile for the latency term, not both (a profile names its device)")
    if checkpoint is not None:
        from dsa.train import load_for_eval

        loaded = load_for_eval(checkpoint, model=None if model == DEFAULT_MODEL else model)
        if loaded.kind not in ("train", "state_dict"):
            raise DsaError(f"{checkpoint} holds a {loaded.kind} network; importance needs the original one")
        net, name, size = loaded.module.eval(), loaded.model, image_size or loaded.image_size
    else:
        net, name = create_model(model, pretrained=pretrained), model
        size = image_size or default_size(model)
    a = analyze(net, name, size)
    batches, meta = calibration_batches(data, size, samples, batch_size, seed)
    kw: dict = {"blocks": blocks}
    if method in ("gates", "finetune"):
        kw["steps"] = steps
    if method == "finetune" and time_budget is not None:
        kw["time_budget_s"] = time_budget
    if method == "gates":
        kw.update(keep_fraction=keep_fraction, latency_weight=latency_weight)
        if latency_weight > 0:
            kw["savings_ms"] = _activation_savings(a, gpu, profile)
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task(method, total=None)

        def progress(what: str, i: int, n: int) -> None:
            bar.update(task, completed=i, total=n, description=what)

        imp = score(method, net, a, batches, progress=progress, **kw)
    imp = dataclasses.replace(imp, metadata={**imp.metadata, **meta})
    imp.save(out_path)
    top = sorted(imp.scores.items(), key=lambda kv: kv[1])[:5]
    out.print(
        f"{method}: {len(imp.scores)} of {len(a.removable)} activations and {len(imp.segments)} blocks scored in "
        f"{imp.seconds:.1f} s -> {out_path}; cheapest to remove: {', '.join(f'{k} ({v:.3g})' for k, v in top)}"
    )
    if imp.metadata.get("unscored_activations"):
        err.print(
            f"the time budget ran out: {len(imp.metadata['unscored_activations'])} activations unscored; they cost "
            f"{imp.default:.3g} (the largest scored value) in the file"
        )


def _activation_savings(a, gpu: str | None, profile: Path | None) -> dict[str, float]:
    """Predicted ms saved per removed activation: on the profile's calibrated device (with its measured times
    when it was taken of this network at this size), else on ``gpu``'s roofline at batch 128, fp32. A ``gpu``
    known only through its profiles (``local-cpu``) uses one of them: a matching one if there is one."""
    import roofline as rl
    from dsa.costs import activation_savings
    from dsa.profile import device_profiles, load_profile

    if profile is None:
        gpu = gpu or "v100"
        try:
            return activation_savings(a, rl.load_device(gpu), 128, "fp32")
        except rl.RooflineError:
            profs = [q for q, _ in device_profiles("profiles", gpu)]
            if not profs:
                raise
            same = [q for q in profs if q.matches(a.fingerprint, q.batch_size, q.precision, a.input_size)]
            return _savings_on(a, (same or profs)[0])
    return _savings_on(a, load_profile(profile))


def _savings_on(a, prof) -> dict[str, float]:
    from dsa.costs import activation_savings

    same = prof.matches(a.fingerprint, prof.batch_size, prof.precision, a.input_size)
    return activation_savings(a, prof.device(), prof.batch_size, prof.precision, profile=prof if same else None)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
