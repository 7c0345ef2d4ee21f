"""What every command shares: the consoles, option types, the one-line error handling, and the small steps
(loading the model and its analysis, resolving the pricing) that commands call before the library does the work."""

from __future__ import annotations

import functools
import json
import sys
import warnings
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dsa.vocab import DEFAULT_DEVICE as DEFAULT_GPU
from dsa.vocab import DEPLOY_PRECISIONS, PRECISIONS

out = Console(highlight=False, soft_wrap=True)


err = Console(stderr=True, highlight=False, soft_wrap=True)


class Format(str, Enum):
    table = "table"
    json = "json"


Precision = Enum("Precision", {p: p for p in PRECISIONS}, type=str)  # fp32, tf32, fp16, bf16


DeployPrecision = Enum("DeployPrecision", {p: p for p in DEPLOY_PRECISIONS}, type=str)  # fp32, int8


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


RuntimeOpt = Annotated[
    str,
    typer.Option(
        "--runtime",
        help="What the network runs with: eager (default, DepthShrinker's protocol), compile (torch.compile), "
        "onnxruntime or openvino (CPU, via ONNX), tensorrt (GPU; pricing only: roofline or an imported table).",
    ),
]


DeployPrecisionOpt = Annotated[
    DeployPrecision,
    typer.Option(
        "--precision",
        help="fp32, or int8: both networks quantized post-training with the runtime's own tooling (onnxruntime: "
        "its static quantization; openvino: NNCF).",
    ),
]
CalibrationDataOpt = Annotated[
    str | None,
    typer.Option(
        "--calibration-data",
        help="INT8 calibration images: elpv or an ImageFolder directory (its train split; default: random images, "
        "fine for speed, which does not depend on them).",
    ),
]
CalibrationImagesOpt = Annotated[
    int, typer.Option("--calibration-images", min=1, help="How many images INT8 calibration uses.")
]


ProfileModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="The model (default: the one the profile was taken of).")
]
ProfileBatchOpt = Annotated[
    int | None,
    typer.Option("--batch-size", min=1, help="Images per forward pass (default: 128, or the profile's)."),
]
ProfilePrecisionOpt = Annotated[
    Precision | None, typer.Option("--precision", help="Numeric precision (default: fp32, or the profile's).")
]
ProfileOpt = Annotated[
    Path | None,
    typer.Option("--profile", help="A measured profile (dsa profile): its device, calibration and times."),
]


def one_line_errors(fn):
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


def warn(message: str) -> None:
    err.print(f"warning: {' '.join(message.split())}", markup=False)


def random_weights_warning(pretrained: bool, checkpoint: Path | None, what: str) -> None:
    if not pretrained and checkpoint is None:
        warn(f"no --checkpoint or --pretrained: the network has random weights; {what}")


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()


def gpu_name(gpu: str | None) -> str:
    """``--gpu`` or the default; an empty name is an error, not the default."""
    from dsa.errors import DsaError

    if gpu is not None and not gpu.strip():
        raise DsaError("--gpu: an empty device name was given; see `dsa devices` for the names")
    return DEFAULT_GPU if gpu is None else gpu


def given_options(**kw) -> dict:
    """The options the user gave (the library's defaults apply to the rest)."""
    return {k: v for k, v in kw.items() if v is not None}


def only_with(condition: bool, what: str, **options) -> None:
    """Refuse options that would be silently ignored: ``options`` apply only when ``condition`` (``what``)."""
    from dsa.errors import DsaError

    given = [k for k, v in options.items() if v is not None]
    if given and not condition:
        raise DsaError(f"{' and '.join(given)} only apply with {what}; leave them out or add {what}")


def refuse_together(**given) -> None:
    """Refuse options that contradict each other: ``refuse_together(**{"--gpu": gpu, "--profile": profile})``."""
    from dsa.errors import DsaError

    named = [k for k, v in given.items() if v not in (None, False, (), [])]
    if len(named) > 1:
        raise DsaError(f"give {' or '.join(named)}, not both: they contradict each other")


def check_out(path: Path | None, what: str, **inputs) -> Path:
    from dsa.io import check_output

    return check_output(path, what, inputs.items())


def model_and_analysis(model: str, pretrained: bool, checkpoint: Path | None, input_size: int | None = None):
    from dsa.graph import analyze
    from dsa.models import create_model
    from dsa.models import input_size as default_size

    net = create_model(model, pretrained=pretrained, checkpoint=checkpoint)
    return net, analyze(net, model, default_size(model) if input_size is None else input_size, strict_size=True)


def analysis_of(model: str, pretrained: bool, checkpoint: Path | None, input_size: int | None = None):
    """The analysis alone (what pricing and planning need): from the analysis cache (dsa.cache) when it has it,
    so that torch is not imported; with --pretrained the model is built (its weights are checked to exist)."""
    if pretrained:
        return model_and_analysis(model, pretrained, checkpoint, input_size)[1]
    from dsa.cache import cached_analysis

    return cached_analysis(
        model, input_size, checkpoint, lambda: model_and_analysis(model, False, checkpoint, input_size)[1]
    )


def plan_and_model(plan_path: Path, model: str | None):
    """Load a plan; the model is the plan's unless ``--model`` names one (the plan's fingerprint then decides
    whether it fits: the same network may go by another name)."""
    from dsa.formats.plan import load_plan

    p = load_plan(plan_path)
    return p, model or p.model


def load_profile_opt(path: Path | None):
    from dsa.formats.profile import load_profile

    return load_profile(path) if path is not None else None


def resolve_pricing(a, gpu, prof, prof_path, batch_size, precision, allow_incomplete, runtime="eager"):
    """The device, batch, precision and profile that price ``a`` under ``runtime`` (dsa.latency.resolve); says
    what it chose."""
    from dsa.latency.resolve import resolve

    pricing = resolve(
        a,
        gpu=gpu_name(gpu),
        profile=prof,
        profile_path=prof_path or "",
        batch=batch_size,
        precision=precision,
        allow_incomplete=allow_incomplete,
        runtime=runtime,
    )
    for note in pricing.notes:
        err.print(note, markup=False)
    for warning in pricing.warnings:
        warn(warning)
    return pricing


def bn_folded_note(bn_speedup: float | None, over: float | None) -> str:
    if bn_speedup is None or over is None:
        return ""
    return f" (BN folding alone: {bn_speedup:.2f}x; the plan is {over:.2f}x over that)"


def prediction_line(pr: dict) -> str:
    return (
        f"predicted on {pr['device']} under {pr.get('runtime', 'eager')} ({pr['precision']}, batch {pr['batch_size']}; "
        f"{pr['source']}): original "
        f"{pr['baseline_latency_ms']:.2f} ms = {pr['baseline_throughput_img_s']:.0f} img/s -> planned "
        f"{pr['planned_latency_ms']:.2f} ms = {pr['planned_throughput_img_s']:.0f} img/s; "
        f"speed-up {pr['speedup']:.2f}x" + bn_folded_note(pr.get("bn_folded_speedup"), pr.get("speedup_over_bn_folded"))
    )


def figure_suffix(path: Path) -> None:
    from dsa.errors import DsaError

    if path.suffix.lower() not in (".png", ".svg"):
        raise DsaError(f"cannot write --out {path}: use a .png or .svg file name")


COMMANDS: list[tuple[str, Callable]] = []


def command(name: str) -> Callable[[Callable], Callable]:
    """Register a command function (cli.py adds every registered command to the typer app, in this order)."""

    def register(fn: Callable) -> Callable:
        COMMANDS.append((name, fn))
        return fn

    return register
