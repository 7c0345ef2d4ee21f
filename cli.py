"""The ``dsa`` command line (typer): thin commands that call the library and render what it returns.

Data goes to stdout, diagnostics to stderr. One convention for everything a user can get wrong, bad option
values and unknown options included: one line ``error: ...`` on stderr and exit code 1. Ctrl-C ends with exit
code 130 and a line saying what was kept. Warnings (e.g. random weights) are lines starting ``warning:``.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from dsa.vocab import DEFAULT_DEVICE as DEFAULT_GPU
from dsa.vocab import DEFAULT_MODEL, PRECISIONS

APP_HELP = (
    "dsa: hardware-aware depth compression for PyTorch CNNs. Plan which activations to remove for a latency "
    "target (predicted or measured), merge the now-linear layers into single convolutions (verified), finetune, "
    "export and measure. Bad input ends with one 'error: ...' line and exit code 1; Ctrl-C with exit code 130."
)


class _OneLineErrors(TyperGroup):
    """click reports bad option values with a usage box and exit code 2; dsa reports every user error the same
    way: one ``error:`` line and exit code 1."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
        except typer.TyperException as e:  # click's usage errors: bad values, unknown options, missing options
            if type(e).__name__ == "NoArgsIsHelpError":  # `dsa` alone: the help, as a request for it
                typer.echo(e.format_message())
                sys.exit(0)
            ctx = getattr(e, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            typer.echo(f"error: {' '.join(e.format_message().split())}{hint}", err=True)
            sys.exit(1)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    help=APP_HELP,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Format(str, Enum):
    table = "table"
    json = "json"


Precision = Enum("Precision", {p: p for p in PRECISIONS}, type=str)  # fp32, tf32, fp16, bf16


class Granularity(str, Enum):
    activation = "activation"
    block = "block"


ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="A `dsa models` name, any torchvision or timm model name, or package.module:factory.",
    ),
]
PlanModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="The model (default: the one the plan was made for). A `dsa models`, torchvision or timm name, or "
        "package.module:factory.",
    ),
]
PretrainedOpt = Annotated[
    bool, typer.Option("--pretrained", help="Load offline pretrained weights (efficientnet_lite0).")
]
CheckpointOpt = Annotated[Path | None, typer.Option("--checkpoint", help="A state_dict to load into the model.")]
FormatOpt = Annotated[Format, typer.Option("--format", help="table (readable) or json (for scripts).")]
InputSizeOpt = Annotated[
    int | None,
    typer.Option("--input-size", "--image-size", min=1, help="Input resolution in pixels (default: the model's)."),
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", min=1, help="torch.set_num_threads (default: torch's, one per core).")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda when available, else cpu), cpu or cuda[:i].")]
AllowIncompleteOpt = Annotated[
    bool,
    typer.Option(
        "--allow-incomplete", help="Use a profile whose measurement was interrupted (complete: false), with a warning."
    ),
]

GpuOpt = Annotated[
    str | None,
    typer.Option("--gpu", "-g", help="Device name, alias (v100, a100, h100, ...) or device file (default: v100)."),
]
PrecisionOpt = Annotated[Precision, typer.Option(help="Numeric precision of the prediction.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")]
ProfileOpt = Annotated[
    Path | None,
    typer.Option("--profile", help="A measured profile (dsa profile): its device, calibration and times."),
]


def _errors(fn):
    """Turn dsa's (and roofline's) errors into one line on stderr and exit code 1; Ctrl-C into exit code 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from dsa.errors import DsaError, InterruptedRunError

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return fn(*args, **kwargs)
        except InterruptedRunError as e:
            typer.echo(f"error: {' '.join(str(e).split())}", err=True)
            raise typer.Exit(130) from None
        except DsaError as e:
            typer.echo(f"error: {' '.join(str(e).split())}", err=True)
            raise typer.Exit(1) from None
        except ValueError as e:  # roofline's errors (a ValueError), without importing roofline (scipy) up front
            rl_errors = sys.modules.get("roofline.errors")
            if rl_errors is None or not isinstance(e, rl_errors.RooflineError):
                raise
            typer.echo(f"error: {' '.join(str(e).split())}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("error: interrupted (Ctrl-C); no output was written or replaced", err=True)
            raise typer.Exit(130) from None
        except OSError as e:  # a file operation no check anticipated: still one line, never a traceback
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            typer.echo(f"error: {where}{e.strerror or e}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def _warn(message: str) -> None:
    err.print(f"warning: {' '.join(message.split())}", markup=False)


def _random_weights_warning(pretrained: bool, checkpoint: Path | None, what: str) -> None:
    if not pretrained and checkpoint is None:
        _warn(f"no --checkpoint or --pretrained: the network has random weights; {what}")


def _emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()


def _gpu(gpu: str | None) -> str:
    """``--gpu`` or the default; an empty name is an error, not the default."""
    from dsa.errors import DsaError

    if gpu is not None and not gpu.strip():
        raise DsaError("--gpu: an empty device name was given; see `dsa devices` for the names")
    return DEFAULT_GPU if gpu is None else gpu


def _given(**kw) -> dict:
    """The options the user gave (the library's defaults apply to the rest)."""
    return {k: v for k, v in kw.items() if v is not None}


def _only_with(condition: bool, what: str, **options) -> None:
    """Refuse options that would be silently ignored: ``options`` apply only when ``condition`` (``what``)."""
    from dsa.errors import DsaError

    given = [k for k, v in options.items() if v is not None]
    if given and not condition:
        raise DsaError(f"{' and '.join(given)} only apply with {what}; leave them out or add {what}")


def _refuse_together(**given) -> None:
    """Refuse options that contradict each other: ``_refuse_together(**{"--gpu": gpu, "--profile": profile})``."""
    from dsa.errors import DsaError

    named = [k for k, v in given.items() if v not in (None, False, (), [])]
    if len(named) > 1:
        raise DsaError(f"give {' or '.join(named)}, not both: they contradict each other")


def _check_out(path: Path | None, what: str, **inputs) -> Path:
    from dsa.io import check_output

    return check_output(path, what, inputs.items())


def _model_and_analysis(model: str, pretrained: bool, checkpoint: Path | None, input_size: int | None = None):
    from dsa.graph import analyze
    from dsa.models import create_model
    from dsa.models import input_size as default_size

    net = create_model(model, pretrained=pretrained, checkpoint=checkpoint)
    return net, analyze(net, model, default_size(model) if input_size is None else input_size, strict_size=True)


def _analysis(model: str, pretrained: bool, checkpoint: Path | None, input_size: int | None = None):
    """The analysis alone (what pricing and planning need): from the analysis cache (dsa.cache) when it has it,
    so that torch is not imported; with --pretrained the model is built (its weights are checked to exist)."""
    if pretrained:
        return _model_and_analysis(model, pretrained, checkpoint, input_size)[1]
    from dsa.cache import cached_analysis

    return cached_analysis(
        model, input_size, checkpoint, lambda: _model_and_analysis(model, False, checkpoint, input_size)[1]
    )


def _plan_and_model(plan_path: Path, model: str | None):
    """Load a plan; the model is the plan's unless ``--model`` names one (the plan's fingerprint then decides
    whether it fits: the same network may go by another name)."""
    from dsa.formats.plan import load_plan

    p = load_plan(plan_path)
    return p, model or p.model


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
    out.print(
        "Also accepted: any torchvision classification model name (torchvision.models.list_models()), any timm "
        "model name (timm.list_models()), and package.module:factory (a callable returning an nn.Module)."
    )


@app.command("analyze")
@_errors
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
        p, model = _plan_and_model(plan, model)
    model = model or DEFAULT_MODEL
    _, a = _model_and_analysis(model, pretrained, checkpoint, input_size if p is None else input_size or p.input_size)
    if p is not None:
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
    gpu: GpuOpt = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, help="Images per forward pass (default: 128, or the profile's)."),
    ] = None,
    precision: Annotated[
        Precision | None, typer.Option("--precision", help="Numeric precision (default: fp32, or the profile's).")
    ] = None,
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
    from dsa.formats.plan import ds_pattern_act_list, plan_from_act_list, remove_all_plan

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
    _refuse_together(**{"--gpu": gpu, "--profile": profile})
    _gpu(gpu)
    _check_out(out_path, "--out", **{"--profile": profile, "--importance": importance, "--checkpoint": checkpoint})
    prec = precision.value if precision is not None else None

    if not sources:
        from dsa.formats.importance import load_block_importance, load_importance
        from dsa.planner.planner import Planner

        block = granularity == Granularity.block
        scores, default_cost = load_importance(importance) if importance is not None else (None, 1.0)
        # block granularity: whole-block scores (dsa importance's "segments") where the file has them
        blocks_cost = load_block_importance(importance) if importance is not None and block else None
        prof = _load_profile(profile)
        if prof is not None:
            input_size = input_size or prof.input_size
        a = _analysis(model, pretrained, checkpoint, input_size)
        pricing = _pricing(a, gpu, prof, profile, batch_size, prec, allow_incomplete)
        planner = Planner(
            a,
            pricing.device,
            pricing.batch,
            pricing.precision,
            importance=scores,
            default_cost=default_cost,
            block_importance=blocks_cost,
            keep=keep or (),
            remove=remove or (),
            granularity=granularity.value if granularity else "activation",
            max_kernel=max_kernel,
            profile=pricing.profile,
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

    a = _analysis(model, pretrained, checkpoint, input_size)
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
    unused = [n for n, v in (("--batch-size", batch_size), ("--precision", precision)) if v is not None]
    if gpu is None and unused:
        raise PlanError(
            f"{' and '.join(unused)} only apply to the prediction a keep-list plan gets with --gpu; add --gpu G "
            "or leave them out"
        )
    prediction = None
    if gpu is not None:
        from dsa.latency.evaluate import evaluate

        pricing = _pricing(a, gpu, None, None, batch_size, prec, allow_incomplete)
        prediction = evaluate(a, p, pricing.device, pricing.batch, pricing.precision, profile=pricing.profile)
        prediction = prediction.prediction()
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


def _load_profile(path: Path | None):
    from dsa.formats.profile import load_profile

    return load_profile(path) if path is not None else None


def _pricing(a, gpu, prof, prof_path, batch_size, precision, allow_incomplete):
    """The device, batch, precision and profile that price ``a`` (dsa.latency.resolve); says what it chose."""
    from dsa.latency.resolve import resolve

    pricing = resolve(
        a,
        gpu=_gpu(gpu),
        profile=prof,
        profile_path=prof_path or "",
        batch=batch_size,
        precision=precision,
        allow_incomplete=allow_incomplete,
    )
    for note in pricing.notes:
        err.print(note, markup=False)
    for warning in pricing.warnings:
        _warn(warning)
    return pricing


def _bn_folded_note(bn_speedup: float | None, over: float | None) -> str:
    if bn_speedup is None or over is None:
        return ""
    return f" (BN folding alone: {bn_speedup:.2f}x; the plan is {over:.2f}x over that)"


def _prediction_line(pr: dict) -> str:
    return (
        f"predicted on {pr['device']} ({pr['precision']}, batch {pr['batch_size']}; {pr['source']}): original "
        f"{pr['baseline_latency_ms']:.2f} ms = {pr['baseline_throughput_img_s']:.0f} img/s -> planned "
        f"{pr['planned_latency_ms']:.2f} ms = {pr['planned_throughput_img_s']:.0f} img/s; "
        f"speed-up {pr['speedup']:.2f}x"
        + _bn_folded_note(pr.get("bn_folded_speedup"), pr.get("speedup_over_bn_folded"))
    )


def _figure_suffix(path: Path) -> None:
    from dsa.errors import DsaError

    if path.suffix.lower() not in (".png", ".svg"):
        raise DsaError(f"cannot write --out {path}: use a .png or .svg file name")


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
    ] = DEFAULT_GPU,
    points: Annotated[int, typer.Option("--points", min=2, help="Accuracy-cost budgets per granularity.")] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 128,
    precision: PrecisionOpt = Precision.fp32,
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
    from dsa.formats.importance import load_block_importance, load_importance
    from dsa.planner.pareto import frontier
    from dsa.planner.planner import Planner
    from dsa.planner.plot import plot_frontier

    _check_out(out_path, "--out", **{"--importance": importance, "--checkpoint": checkpoint})
    _figure_suffix(out_path)
    precision = precision.value
    scores, default_cost = load_importance(importance) if importance is not None else (None, 1.0)
    blocks_cost = load_block_importance(importance) if importance is not None else None
    a = _analysis(model, pretrained, checkpoint, input_size)
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
    _check_out(out_path, "--out", **inputs)
    ts_path = torchscript_path_for(out_path)
    _check_out(ts_path, "TorchScript output (beside --out)", **inputs)
    if onnx is not None:
        _check_out(onnx, "--onnx", **inputs, **{"--out": out_path, "the TorchScript output": ts_path})
    p, model = _plan_and_model(plan, model)
    meta: dict = {}
    if checkpoint is not None and is_training_checkpoint(checkpoint):
        _refuse_together(**_given(pretrained=pretrained, checkpoint=checkpoint))
        net, merged, p, meta = merge_training_checkpoint(checkpoint, p, model, plan)
    else:
        net, a = _model_and_analysis(model, pretrained, checkpoint, p.input_size)
        p.check(a)
        merged = merge(net, p)
        _random_weights_warning(pretrained, checkpoint, "the merged network is exact but its outputs mean nothing")
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
    }
    if fmt == Format.json:
        _emit_json(result)
        return
    out.print(
        f"merged {p.model}: {result['convs_before']} -> {result['convs_after']} convs; verified max relative "
        f"error {record.max_rel_error:.2e} (float64), {record.max_rel_error_model_dtype:.2e} (model dtype)"
    )
    out.print(f"wrote {out_path} and {ts_path} (TorchScript, {exported.torchscript_mode})")
    if onnx:
        out.print(
            f"wrote {onnx} (onnx.checker ok; onnxruntime max relative error {exported.onnxruntime_max_rel_error:.2e})"
        )


@app.command("bench")
@_errors
def bench_cmd(
    plan: Annotated[Path | None, typer.Option(help="Also time the network merged by this plan.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 32,
    device: DeviceOpt = "auto",
    channels_last: Annotated[bool, typer.Option("--channels-last", help="NHWC memory layout.")] = False,
    threads: ThreadsOpt = None,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed forward passes per network first.")] = 2,
    repeats: Annotated[int, typer.Option(min=1, help="Timed forward passes per network (median reported).")] = 5,
    model: PlanModelOpt = None,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    input_size: InputSizeOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Measured images/s of the original network, of it with only its BNs folded, and of the merged network,
    interleaved in one run (speed does not depend on the weights)."""
    import torch
    from rich.progress import Progress

    from dsa.measure.timing import measure, resolve_device
    from dsa.models import create_model
    from dsa.models import input_size as default_size
    from dsa.transform.merge import bn_folded_network, merge

    device = resolve_device(device)
    p = None
    if plan is not None:
        p, model = _plan_and_model(plan, model)
    model = model or DEFAULT_MODEL
    if threads is not None:
        torch.set_num_threads(threads)
    net = create_model(model, pretrained=pretrained, checkpoint=checkpoint)
    size = input_size or (p.input_size if p is not None else default_size(model))
    models = {"original": net, "bn_folded": bn_folded_network(net, model, size)}
    if p is not None:
        models["merged"] = merge(net, p)
    _random_weights_warning(pretrained, checkpoint, "fine for speed, which does not depend on the weights")
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("timing", total=repeats * len(models))
        res = measure(
            models, batch_size, size, device, channels_last, warmup, repeats, progress=lambda *_: bar.advance(task)
        )
    orig = res["original"].images_per_s
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
        "speedup": res["merged"].images_per_s / orig if "merged" in res else None,
        "bn_folded_speedup": res["bn_folded"].images_per_s / orig,
        "speedup_over_bn_folded": (
            res["merged"].images_per_s / res["bn_folded"].images_per_s if "merged" in res else None
        ),
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
        "vs original",
        title=f"{model}, batch {batch_size}, {size} px, {result['layout']}, {device}, {result['threads']} threads, "
        f"median of {repeats} interleaved runs",
    )
    names = {"original": "original", "bn_folded": "BN folded only", "merged": "merged"}
    for k, v in res.items():
        t.add_row(
            names.get(k, k),
            f"{v.images_per_s:.1f}",
            f"{v.images_per_s_min:.1f}",
            f"{v.images_per_s_max:.1f}",
            f"{v.iqr_images_per_s:.1f}",
            f"{v.latency_ms:.1f}",
            f"{v.images_per_s / orig:.2f}x",
        )
    out.print(t)
    if result["speedup"]:
        out.print(
            f"speed-up: {result['speedup']:.2f}x"
            + _bn_folded_note(result["bn_folded_speedup"], result["speedup_over_bn_folded"])
        )


@app.command("devices")
@_errors
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
            _check_out(out_path, "--out")
        else:  # the default file's folder is named after the device: check what can be checked before measuring
            _check_out(Path("profiles") / "device.json", "the device file under profiles/")
        spec = rl.measure_local_device(dev, 5.0 if seconds is None else seconds)
        path = out_path or Path("profiles") / spec.name / "device.json"
        with staged(_check_out(path, "the device file")) as tmp:
            rl.save_device(spec, tmp)
        if fmt == Format.json:
            _emit_json({**spec.to_dict(), "path": str(path)})
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


def _evaluation(
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
):
    """Price a plan (or BN folding alone) on ``--gpu``, or on ``--profile``'s device with its measured times."""
    from dsa.formats.plan import bn_folded_plan
    from dsa.latency.evaluate import evaluate

    _refuse_together(**{"--gpu": gpu, "--profile": profile})
    prof = _load_profile(profile)
    if plan is not None:
        p, model = _plan_and_model(plan, model)
        a = _analysis(model, pretrained, checkpoint, p.input_size)
        p.check(a)
    else:
        model = model or DEFAULT_MODEL
        a = _analysis(model, pretrained, checkpoint, input_size or (prof.input_size if prof else None))
        p = bn_folded_plan(a)
    pricing = _pricing(a, gpu, prof, profile, batch_size, precision, allow_incomplete)
    return model, evaluate(a, p, pricing.device, pricing.batch, pricing.precision, profile=pricing.profile)


@app.command("evaluate")
@_errors
def evaluate_cmd(
    plan: Annotated[Path, typer.Option(help="The plan JSON.")],
    gpu: GpuOpt = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, help="Images per forward pass (default: 128, or the profile's)."),
    ] = None,
    precision: Annotated[
        Precision | None, typer.Option(help="Numeric precision (default: fp32, or the profile's).")
    ] = None,
    profile: ProfileOpt = None,
    allow_incomplete: AllowIncompleteOpt = False,
    model: PlanModelOpt = None,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Predicted latency and throughput of the original, the BN-folded and the planned network on a GPU (or,
    with --profile, on the profiled device, using its measured times where it has them)."""
    model, ev = _evaluation(
        model,
        pretrained,
        checkpoint,
        plan,
        gpu,
        batch_size,
        precision.value if precision else None,
        profile,
        allow_incomplete,
    )
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
        f"speed-up {ev.speedup:.2f}x" + _bn_folded_note(ev.bn_folded_speedup, ev.speedup_over_bn_folded)
    )


@app.command("roofline")
@_errors
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

    _check_out(out_path, "--out", **{"--plan": plan, "--checkpoint": checkpoint})
    _figure_suffix(out_path)
    model, ev = _evaluation(
        model, pretrained, checkpoint, plan, gpu, batch_size, precision.value, input_size=input_size
    )
    points = rl.points_from_ops([c.spec for c in ev.baseline_ops], list(ev.baseline.op_times), "original layers")
    if plan is not None:
        merged = [
            (c.spec, t) for c, t in zip(ev.planned_ops, ev.planned.op_times, strict=True) if c.segment is not None
        ]
        points += rl.points_from_ops([m[0] for m in merged], [m[1] for m in merged], "merged layers")
    title = f"{model} on {ev.device}, {ev.precision}, batch {ev.batch} (predicted; area = time)"
    rl.plot_roofline(ev.device, ev.precision, points, out_path, title=title)  # written atomically
    out.print(f"wrote {out_path}")


@app.command("report")
@_errors
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

    _check_out(out_path, "--out", **{"--plan": plan, "--checkpoint": checkpoint})
    _figure_suffix(out_path)
    model, ev = _evaluation(model, pretrained, checkpoint, plan, gpu, batch_size, precision.value)
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
    device: DeviceOpt = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 32,
    precision: PrecisionOpt = Precision.fp32,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="NHWC memory layout.")] = False,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs of each op, segment and network first.")] = 2,
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs of each (median and IQR recorded).")] = 5,
    plan: Annotated[Path | None, typer.Option(help="Also time the network merged by this plan end to end.")] = None,
    threads: ThreadsOpt = None,
    input_size: InputSizeOpt = None,
    model: PlanModelOpt = None,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
) -> None:
    """Measure every op (torch.profiler), every candidate merged segment and the whole network. Ctrl-C keeps what
    was measured in <out>.partial.json and never touches an existing profile."""
    import torch
    from rich.progress import Progress

    import roofline as rl
    from dsa.errors import DsaError
    from dsa.formats.profile import partial_path, profile_path
    from dsa.measure.profiler import profile_model
    from dsa.measure.timing import resolve_device

    device = resolve_device(device)
    if precision == Precision.tf32 and not device.startswith("cuda"):
        raise DsaError("--precision tf32 is a CUDA tensor-core mode; a CPU computes fp32: use --precision fp32")
    p = None
    if plan is not None:
        p, model = _plan_and_model(plan, model)
    model = model or DEFAULT_MODEL
    if threads is not None:
        torch.set_num_threads(threads)
    inputs = {"--plan": plan, "--checkpoint": checkpoint}
    if out_path is not None:  # checked before minutes of measuring; the default path needs the device's name
        _check_out(out_path, "--out", **inputs)
    net, a = _model_and_analysis(model, pretrained, checkpoint, input_size or (p.input_size if p else None))
    if p is not None:
        p.check(a)
    spec = rl.measure_local_device(device, seconds=2.0)
    layout = "channels_last" if channels_last else "nchw"
    path = out_path or profile_path(spec.name, a.model_name, batch_size, precision.value, layout)
    _check_out(path, "--out", **inputs)
    _check_out(partial_path(path), "the partial profile (beside --out)", **inputs)
    err.print(
        f"profiling {a.model_name} on {spec.name} ({device}, batch {batch_size}, {a.input_size} px, "
        f"{precision.value}, {layout}, {torch.get_num_threads()} threads, {repeats} repeats) -> {path}; Ctrl-C keeps "
        "what was measured",
        markup=False,
    )
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
            device_spec=spec,
            progress=progress,
        )
    e2e = prof.end_to_end
    summary = f"{len(prof.ops)} ops, {len(prof.segments)} candidate segments"
    if "original" in e2e:
        summary += f"; original {e2e['original']['images_per_s']:.1f} img/s"
    if "merged" in e2e:
        summary += f", merged {e2e['merged']['images_per_s']:.1f} img/s"
    if not prof.complete:
        kept = partial_path(path)
        prof.save(kept)
        before = f"{path} is unchanged" if path.exists() else f"nothing was written to {path}"
        typer.echo(
            f"error: interrupted (Ctrl-C): what was measured ({summary}) is kept in {kept} (complete: false); "
            f"{before}; profile again to complete it",
            err=True,
        )
        raise typer.Exit(130)
    prof.save(path)
    partial_path(path).unlink(missing_ok=True)  # a complete profile supersedes an earlier interrupted one
    out.print(f"wrote {path}: {summary}")


@app.command("calibrate")
@_errors
def calibrate_cmd(
    profile: Annotated[Path, typer.Option("--profile", help="A measured profile (dsa profile).")],
    device_out: Annotated[
        Path | None, typer.Option("--device-out", help="Also write the calibrated device file here.")
    ] = None,
    allow_incomplete: AllowIncompleteOpt = False,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="The model (default: the one the profile was taken of).")
    ] = None,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Fit the roofline efficiencies of the profiled device on a training split of the measured ops; the
    calibration is stored in the profile (and optionally a device file), both written only if both can be."""
    import roofline as rl
    from dsa.io import Outputs
    from dsa.measure.calibrate import calibrate

    _check_out(profile, "--profile (rewritten with its calibration)")
    if device_out is not None:
        _check_out(device_out, "--device-out", **{"--profile": profile, "--checkpoint": checkpoint})
    a, prof = _profile_and_analysis(profile, model, pretrained, checkpoint, allow_incomplete)
    cal, prof = calibrate(a, prof)
    with Outputs() as outs:
        prof.save(outs.stage(profile))
        if device_out is not None:
            rl.save_device(prof.device(), outs.stage(device_out))
    if fmt == Format.json:
        _emit_json(cal.to_dict())
        return
    effs = ", ".join(f"{k} {v:.3g}" for k, v in sorted(cal.compute_efficiency.items()))
    mems = ", ".join(f"{k} {v:.3g}" for k, v in sorted(cal.memory_efficiency.items()))
    out.print(
        f"calibrated {prof.device_name} on {cal.n_ops} measured items: compute efficiency (share of peak) {effs}; "
        f"memory efficiency (share of bandwidth) {mems}; launch overhead {cal.launch_ms:.4f} ms per op; median "
        f"|error| on the fitted items {cal.median_abs_pct_error_uncalibrated:.1f}% uncalibrated -> "
        f"{cal.median_abs_pct_error:.1f}% calibrated"
    )
    out.print(f"stored in {profile}" + (f" and {device_out}" if device_out else ""))


def _profile_and_analysis(profile: Path, model, pretrained, checkpoint, allow_incomplete):
    """A profile and the analysis of the network it was taken of (``--model`` default: the profile's)."""
    from dsa.formats.profile import load_profile

    prof = load_profile(profile)
    a = _analysis(model or prof.model, pretrained, checkpoint, prof.input_size)
    prof.check_for(a, allow_incomplete=allow_incomplete, path=profile)
    from dsa.latency.resolve import incomplete_note

    for warning in incomplete_note(prof, profile):
        _warn(warning)
    return a, prof


@app.command("validate")
@_errors
def validate_cmd(
    profile: Annotated[Path, typer.Option("--profile", help="A measured profile (dsa profile).")],
    allow_incomplete: AllowIncompleteOpt = False,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="The model (default: the one the profile was taken of).")
    ] = None,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """How well the roofline predicts held-out measured segments and ops, and whole networks, before and
    after calibration."""
    from dsa.measure.calibrate import validate

    a, prof = _profile_and_analysis(profile, model, pretrained, checkpoint, allow_incomplete)
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
    int | None,
    typer.Option(
        "--image-size", "--input-size", min=8, help="Image resolution in pixels (default: the model's, or the run's)."
    ),
]


def _check_run_dir(out_dir: Path, data: str, plan: Path | None, checkpoint: Path | None) -> None:
    """Every file a run writes is checked before training starts: last.pt, metrics and, with a plan, the
    merged exports and plan.json (which must not be the input plan); the run never goes inside the dataset."""
    from dsa.errors import DsaError

    if str(out_dir) in ("", "."):
        raise DsaError("--out: give a run directory (an empty path or '.' would scatter the run's files here)")
    if Path(data).is_dir():
        d, o = Path(data).resolve(), out_dir.resolve()
        if o == d or d in o.parents:
            raise DsaError(f"--out {out_dir} lies inside --data {data}; keep the run out of the dataset")
    inputs = {"--plan": plan, "--checkpoint": checkpoint}
    names = ["last.pt", "metrics.jsonl", "result.json"]
    if plan is not None:
        names += ["merged.pt", "merged.torchscript.pt", "merged.onnx", "plan.json"]
    for name in names:
        _check_out(out_dir / name, f"--out (the run's {name})", **inputs)


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
        speed = (
            f"; inference {bench['original']['images_per_s']:.1f} images/s (batch {bench['batch_size']}, "
            f"{bench['layout']}, {bench['threads']} threads, median of {bench['repeats']} on {bench['device']})"
            if bench
            else ""
        )
        out.print(f"{s['model']} finetuned for {s['epochs']} epochs: {scores}{speed}")
    else:
        t = Table(
            "network", *[f"{k} top-1" for k in splits], "inference images/s", title=f"{s['model']} with {s['plan']}"
        )
        ips = {k: f"{bench[k]['images_per_s']:.1f}" if k in bench else "-" for k in ("original", "bn_folded", "merged")}
        t.add_row("merge-ready", *[_pct(acc[k]["merge_ready"]["top1"]) for k in splits], "-")
        t.add_row("merged", *[_pct(acc[k]["merged"]["top1"]) for k in splits], ips["merged"])
        t.add_row("original (speed only)", *["-" for _ in splits], ips["original"])
        t.add_row("original, BN folded only (speed only)", *["-" for _ in splits], ips["bn_folded"])
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
                f"measured speed-up {bench['speedup']:.2f}x over the original (inference)"
                + _bn_folded_note(
                    bench["original"] and bench["bn_folded"]["images_per_s"] / bench["original"]["images_per_s"],
                    bench.get("speedup_over_bn_folded"),
                )
                + f" (batch {bench['batch_size']}, {bench['layout']}, {bench['threads']} threads, median of "
                f"{bench['repeats']} interleaved runs on {bench['device']})"
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
    weight_decay: Annotated[
        float | None, typer.Option(min=0.0, help="Weight decay (default: 4e-5 for sgd, 0.05 for adamw).")
    ] = None,
    image_size: ImageSizeOpt = None,
    distill: Annotated[
        bool | None,
        typer.Option("--distill/--no-distill", help="With --plan: distil from the original network (default: on)."),
    ] = None,
    kd_weight: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="With --plan: weight of the distillation loss (0.7).")
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="With --plan: distillation temperature (> 0; 1).")] = None,
    amp: Annotated[bool, typer.Option("--amp", help="Mixed precision (bfloat16 on CPU, float16 on CUDA).")] = False,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="NHWC layout (training and timing).")] = False,
    num_workers: Annotated[int, typer.Option(min=0, help="DataLoader worker processes.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, shuffling and augmentation.")] = 0,
    max_steps_per_epoch: Annotated[
        int | None, typer.Option(min=1, help="Cut every epoch short after N steps (smoke runs).")
    ] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    bench_batch_size: Annotated[
        int | None, typer.Option(min=1, help="Batch of the final images/s measurement (default: 32).")
    ] = None,
    bench_repeats: Annotated[int, typer.Option(min=0, help="Timed runs of that measurement (0: skip it).")] = 5,
    onnx: Annotated[
        bool | None, typer.Option("--onnx/--no-onnx", help="With --plan: also export ONNX (default: on).")
    ] = None,
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

    from dsa.train.config import TrainConfig
    from dsa.train.loop import train

    if threads is not None:
        torch.set_num_threads(threads)
    _check_run_dir(out_dir, data, plan, checkpoint)
    _only_with(
        plan is not None,
        "--plan",
        **{"--distill/--no-distill": distill, "--kd-weight": kd_weight, "--temperature": temperature},
        **{"--onnx/--no-onnx": onnx},
    )
    _only_with(bench_repeats > 0, "--bench-repeats > 0", **{"--bench-batch-size": bench_batch_size})
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
        **_given(distill=distill, kd_weight=kd_weight, temperature=temperature),
        amp=amp,
        channels_last=channels_last,
        num_workers=num_workers,
        seed=seed,
        max_steps_per_epoch=max_steps_per_epoch,
        device=device,
        **_given(bench_batch_size=bench_batch_size, onnx=onnx),
        bench_repeats=bench_repeats,
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
            elif event == "progress":
                bar.update(task, completed=info["completed"], total=info["total"])

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
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 64,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Accuracy (top-1, and top-5 with >= 5 classes) of a trained or merged network on a dataset split."""
    import torch

    from dsa.measure.timing import resolve_device
    from dsa.train.evaluate import evaluate_checkpoint

    device = resolve_device(device)
    if threads is not None:
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
    image_size: ImageSizeOpt = None,
    seed: Annotated[int, typer.Option()] = 0,
    steps: Annotated[int | None, typer.Option(min=1, help="gates / finetune: optimisation steps (20).")] = None,
    time_budget: Annotated[float | None, typer.Option(help="finetune: stop after this many seconds.")] = None,
    blocks: Annotated[
        bool, typer.Option("--blocks/--no-blocks", help="Also score each block merged DepthShrinker style.")
    ] = True,
    keep_fraction: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="gates: share of activations the top-k mask keeps (0.5).")
    ] = None,
    latency_weight: Annotated[
        float | None, typer.Option(min=0.0, help="gates: weight of the latency term (0: accuracy only; 0.01).")
    ] = None,
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
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help=f"The model (default: {DEFAULT_MODEL}, or the checkpoint's)."),
    ] = None,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
) -> None:
    """Score what removing each activation (and merging each block) costs in accuracy, without full training."""
    import dataclasses

    from rich.progress import Progress

    from dsa.errors import DsaError
    from dsa.formats.importance import METHODS
    from dsa.graph import analyze
    from dsa.importance import calibration_batches, score
    from dsa.models import create_model
    from dsa.models import input_size as default_size

    if method not in METHODS:
        raise DsaError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    _refuse_together(**{"--pretrained": pretrained, "--checkpoint": checkpoint})
    _refuse_together(**{"--gpu": gpu, "--profile": profile})
    if method != "gates":
        only = [n for n, v in (("--gpu", gpu), ("--profile", profile)) if v is not None]
        if only:
            raise DsaError(f"{' and '.join(only)} only apply with --method gates (its latency term)")
    if method != "finetune" and time_budget is not None:
        raise DsaError("--time-budget only applies with --method finetune")
    _only_with(method in ("gates", "finetune"), "--method gates or finetune", **{"--steps": steps})
    _only_with(
        method == "gates", "--method gates", **{"--keep-fraction": keep_fraction, "--latency-weight": latency_weight}
    )
    steps = 20 if steps is None else steps
    keep_fraction = 0.5 if keep_fraction is None else keep_fraction
    latency_weight = 0.01 if latency_weight is None else latency_weight
    if time_budget is not None and not time_budget > 0:
        raise DsaError(f"--time-budget must be a positive number of seconds, got {time_budget:g}")
    _check_out(out_path, "--out", **{"--checkpoint": checkpoint, "--profile": profile})
    if checkpoint is not None:
        from dsa.networks import load_for_eval

        loaded = load_for_eval(checkpoint, model=model)
        if loaded.kind not in ("train", "state_dict"):
            raise DsaError(f"{checkpoint} holds a {loaded.kind} network; importance needs the original one")
        net, name, size = loaded.module.eval(), loaded.model, image_size or loaded.image_size
    else:
        model = model or DEFAULT_MODEL
        net, name = create_model(model, pretrained=pretrained), model
        size = image_size or default_size(model)
    a = analyze(net, name, size, strict_size=True)
    kw: dict = {"blocks": blocks}
    if method in ("gates", "finetune"):
        kw["steps"] = steps
    if method == "finetune" and time_budget is not None:
        kw["time_budget_s"] = time_budget
    if method == "gates":
        kw.update(keep_fraction=keep_fraction, latency_weight=latency_weight)
        if latency_weight > 0:
            kw["savings_ms"] = _activation_savings(a, gpu, profile)
    batches, meta = calibration_batches(data, size, samples, batch_size, seed)
    _random_weights_warning(pretrained, checkpoint, "importance scores of an untrained network mean little")
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
    from dsa.latency.resolve import savings

    return savings(a, gpu=_gpu(gpu) if profile is None else None, profile=_load_profile(profile))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
