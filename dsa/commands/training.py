"""``dsa train``, ``dsa eval``, ``dsa importance``: finetuning, accuracy, and accuracy proxies."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dsa.commands._common import (
    CheckpointOpt,
    DeviceOpt,
    Format,
    FormatOpt,
    ModelOpt,
    PretrainedOpt,
    ThreadsOpt,
    bn_folded_note,
    check_out,
    command,
    emit_json,
    err,
    given_options,
    gpu_name,
    load_profile_opt,
    one_line_errors,
    only_with,
    out,
    random_weights_warning,
    refuse_together,
)
from dsa.vocab import DEFAULT_MODEL


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
        check_out(out_dir / name, f"--out (the run's {name})", **inputs)


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
                + bn_folded_note(
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


@command("train")
@one_line_errors
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
    only_with(
        plan is not None,
        "--plan",
        **{"--distill/--no-distill": distill, "--kd-weight": kd_weight, "--temperature": temperature},
        **{"--onnx/--no-onnx": onnx},
    )
    only_with(bench_repeats > 0, "--bench-repeats > 0", **{"--bench-batch-size": bench_batch_size})
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
        **given_options(distill=distill, kd_weight=kd_weight, temperature=temperature),
        amp=amp,
        channels_last=channels_last,
        num_workers=num_workers,
        seed=seed,
        max_steps_per_epoch=max_steps_per_epoch,
        device=device,
        **given_options(bench_batch_size=bench_batch_size, onnx=onnx),
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
        emit_json(
            {"run_dir": str(result.run_dir), "finished": result.finished, "epochs_done": result.epochs_done}
            | result.summary
        )
        return
    _print_train_summary(result)


@command("eval")
@one_line_errors
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
        emit_json(r)
        return
    top5 = "" if r["top5"] is None else f", top-5 {_pct(r['top5'])}"
    out.print(
        f"{r['model']} ({r['kind']} checkpoint): top-1 {_pct(r['top1'])}{top5} on {r['n']} images of "
        f"{r['data']} {r['split']} at {r['image_size']}px"
    )


@command("importance")
@one_line_errors
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
    prune_convs: Annotated[
        bool,
        typer.Option(
            "--prune-convs",
            help="linearity, removal-kl, finetune: also score pruning each prunable conv and residual branch "
            "(LayerMerge).",
        ),
    ] = False,
    int8: Annotated[
        str | None,
        typer.Option(
            "--int8",
            help="removal-kl, finetune: also score what each candidate segment costs deployed in INT8 under this "
            "runtime (onnxruntime or openvino; emulated), for `dsa plan --precision int8`.",
        ),
    ] = None,
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
    from dsa.importance import INT8_METHODS, calibration_batches, score, with_int8_costs
    from dsa.models import create_model
    from dsa.models import input_size as default_size
    from dsa.vocab import INT8_RUNTIMES

    if method not in METHODS:
        raise DsaError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    refuse_together(**{"--pretrained": pretrained, "--checkpoint": checkpoint})
    refuse_together(**{"--gpu": gpu, "--profile": profile})
    if method != "gates":
        only = [n for n, v in (("--gpu", gpu), ("--profile", profile)) if v is not None]
        if only:
            raise DsaError(f"{' and '.join(only)} only apply with --method gates (its latency term)")
    if method != "finetune" and time_budget is not None:
        raise DsaError("--time-budget only applies with --method finetune")
    only_with(method in ("gates", "finetune"), "--method gates or finetune", **{"--steps": steps})
    only_with(method != "gates", "--method linearity, removal-kl or finetune", **{"--prune-convs": prune_convs or None})
    only_with(method in INT8_METHODS, "--method removal-kl or finetune", **{"--int8": int8})
    if int8 is not None and int8 not in INT8_RUNTIMES:
        raise DsaError(f"--int8 is a runtime dsa quantizes for: {' or '.join(INT8_RUNTIMES)} (got {int8!r})")
    only_with(
        method == "gates", "--method gates", **{"--keep-fraction": keep_fraction, "--latency-weight": latency_weight}
    )
    steps = 20 if steps is None else steps
    keep_fraction = 0.5 if keep_fraction is None else keep_fraction
    latency_weight = 0.01 if latency_weight is None else latency_weight
    if time_budget is not None and not time_budget > 0:
        raise DsaError(f"--time-budget must be a positive number of seconds, got {time_budget:g}")
    check_out(out_path, "--out", **{"--checkpoint": checkpoint, "--profile": profile})
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
    if prune_convs:
        kw["pruned"] = True
    if method in ("gates", "finetune"):
        kw["steps"] = steps
    if method == "finetune" and time_budget is not None:
        kw["time_budget_s"] = time_budget
    if method == "gates":
        kw.update(keep_fraction=keep_fraction, latency_weight=latency_weight)
        if latency_weight > 0:
            kw["savings_ms"] = _activation_savings(a, gpu, profile)
    batches, meta = calibration_batches(data, size, samples, batch_size, seed)
    random_weights_warning(pretrained, checkpoint, "importance scores of an untrained network mean little")
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task(method, total=None)

        def progress(what: str, i: int, n: int) -> None:
            bar.update(task, completed=i, total=n, description=what)

        imp = score(method, net, a, batches, progress=progress, **kw)
        if int8 is not None:
            bar.update(task, completed=0, total=None, description=f"INT8 costs ({int8})")
            imp = with_int8_costs(imp, net, a, int8, batches, progress=progress)
    imp = dataclasses.replace(imp, metadata={**imp.metadata, **meta})
    imp.save(out_path)
    top = sorted(imp.scores.items(), key=lambda kv: kv[1])[:5]
    out.print(
        f"{method}: {len(imp.scores)} of {len(a.removable)} activations and {len(imp.segments)} blocks scored in "
        f"{imp.seconds:.1f} s -> {out_path}; cheapest to remove: {', '.join(f'{k} ({v:.3g})' for k, v in top)}"
    )
    if imp.int8:
        worst = sorted(imp.int8.items(), key=lambda kv: -kv[1])[:3]
        out.print(
            f"INT8 ({imp.int8_runtime}, emulated): {len(imp.int8)} candidate segments scored in "
            f"{imp.metadata['int8_seconds']:.1f} s; costliest: {', '.join(f'{k} ({v:.3g})' for k, v in worst)}"
        )
    if imp.metadata.get("unscored_activations"):
        err.print(
            f"the time budget ran out: {len(imp.metadata['unscored_activations'])} activations unscored; they cost "
            f"{imp.default:.3g} (the largest scored value) in the file"
        )
    unscored_pruned = imp.metadata.get("unscored_pruned")
    if unscored_pruned:
        worst = imp.pruned[unscored_pruned[0]]
        err.print(
            f"the time budget ran out: pruning {len(unscored_pruned)} prunable ops unscored; they cost {worst:.3g} "
            "(the largest scored value) in the file"
        )


def _activation_savings(a, gpu: str | None, profile: Path | None) -> dict[str, float]:
    from dsa.latency.resolve import savings

    return savings(a, gpu=gpu_name(gpu) if profile is None else None, profile=load_profile_opt(profile))
