"""``dsa bench``, ``dsa profile``, ``dsa calibrate``, ``dsa validate``: measurements on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dsa.commands._common import (
    AllowIncompleteOpt,
    CalibrationDataOpt,
    CalibrationImagesOpt,
    CheckpointOpt,
    DeployPrecision,
    DeployPrecisionOpt,
    DeviceOpt,
    Format,
    FormatOpt,
    GpuOpt,
    InputSizeOpt,
    PlanModelOpt,
    Precision,
    PrecisionOpt,
    PretrainedOpt,
    ProfileModelOpt,
    RuntimeOpt,
    ThreadsOpt,
    analysis_of,
    bn_folded_note,
    check_out,
    command,
    emit_json,
    err,
    model_and_analysis,
    one_line_errors,
    out,
    plan_and_model,
    random_weights_warning,
    warn,
)
from dsa.errors import ArtifactError
from dsa.vocab import DEFAULT_MODEL


@command("bench")
@one_line_errors
def bench_cmd(
    plan: Annotated[Path | None, typer.Option(help="Also time the network merged by this plan.")] = None,
    runtime: RuntimeOpt = "eager",
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
    precision: DeployPrecisionOpt = DeployPrecision.fp32,
    calibration_data: CalibrationDataOpt = None,
    calibration_images: CalibrationImagesOpt = 32,
    fmt: FormatOpt = Format.table,
) -> None:
    """Measured images/s of the original network, of it with only its BNs folded, and of the merged network,
    interleaved in one run (speed does not depend on the weights). With --precision int8 (onnxruntime,
    openvino): the original and the merged network each quantized the same way, timed with their float32 forms."""
    import torch
    from rich.progress import Progress

    from dsa.errors import DsaError
    from dsa.measure.runtimes import check_runtime, runtime_info
    from dsa.measure.timing import measure, resolve_device
    from dsa.models import create_model
    from dsa.models import input_size as default_size
    from dsa.transform.merge import bn_folded_network, merge

    check_runtime(runtime)
    int8 = precision == DeployPrecision.int8
    if int8:
        from dsa.quantize import check_quantizable

        check_quantizable(runtime)
    if channels_last and runtime not in ("eager", "compile"):
        raise DsaError(f"--channels-last applies to eager and compile; {runtime} chooses its own layout")
    if calibration_data is not None and not int8:
        raise DsaError("--calibration-data calibrates INT8 quantization: add --precision int8")
    device = resolve_device(device)
    p = None
    if plan is not None:
        p, model = plan_and_model(plan, model)
    model = model or DEFAULT_MODEL
    if threads is not None:
        torch.set_num_threads(threads)
    net = create_model(model, pretrained=pretrained, checkpoint=checkpoint)
    size = input_size or (p.input_size if p is not None else default_size(model))
    calibration = None
    if int8:
        calibration = _calibration(net, size, calibration_data, calibration_images, pretrained or checkpoint)
    models = {"original": net}
    if not int8:  # under INT8 the runtimes fold BN themselves, and the baseline is the original INT8 network
        models["bn_folded"] = bn_folded_network(net, model, size)
    if p is not None:
        models["merged"] = merge(net, p)
    if int8:
        models |= {f"{k}_fp32": v for k, v in list(models.items())}
    random_weights_warning(pretrained, checkpoint, "fine for speed, which does not depend on the weights")
    with Progress(console=err, transient=True) as bar:
        if int8:
            bar.add_task(
                f"quantizing {sum(not k.endswith('_fp32') for k in models)} network(s) for {runtime}", total=None
            )
        task = bar.add_task("timing", total=repeats * len(models))
        res = measure(
            models,
            batch_size,
            size,
            device,
            channels_last,
            warmup,
            repeats,
            progress=lambda *_: bar.advance(task),
            runtime=runtime,
            threads=threads,
            precisions={k: "fp32" if k.endswith("_fp32") else "int8" for k in models} if int8 else None,
            calibration=calibration,
        )
    orig = res["original"].images_per_s
    result = {
        "model": model,
        "runtime": runtime_info(runtime, threads).to_json(),
        "batch_size": batch_size,
        "input_size": size,
        "device": device,
        "layout": "channels_last" if channels_last else "NCHW",
        "threads": torch.get_num_threads(),
        "warmup": warmup,
        "repeats": repeats,
        **{k: v.to_json() for k, v in res.items()},
        "precision": precision.value,
        "speedup": res["merged"].images_per_s / orig if "merged" in res else None,
        "bn_folded_speedup": res["bn_folded"].images_per_s / orig if "bn_folded" in res else None,
        "speedup_over_bn_folded": (
            res["merged"].images_per_s / res["bn_folded"].images_per_s
            if "merged" in res and "bn_folded" in res
            else None
        ),
    }
    if int8:
        from dsa.quantize import scheme

        result |= _int8_ratios(res) | {"quantization": scheme(runtime) | {"calibration_images": len(calibration)}}
        result["calibration_data"] = calibration_data or "random"
    if fmt == Format.json:
        emit_json(result)
        return
    t = Table(
        "network",
        "images/s (median)",
        "min",
        "max",
        "IQR",
        "ms/batch",
        "vs original",
        title=f"{model} under {runtime} {result['runtime']['version']}, {precision.value}, batch {batch_size}, "
        f"{size} px, {result['layout']}, {device}, {result['threads']} threads, median of {repeats} interleaved runs",
    )
    names = {"original": "original", "bn_folded": "BN folded only", "merged": "merged"}
    if int8:
        names = {"original": "original INT8", "merged": "merged INT8", "original_fp32": "original fp32"}
        names["merged_fp32"] = "merged fp32"
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
    if int8:
        line = f"INT8 gain on the original: {result['int8_gain_original']:.2f}x"
        if result["speedup"]:
            line = (
                f"speed-up (merged INT8 over original INT8): {result['speedup']:.2f}x; over the original fp32 "
                f"{result['speedup_over_original_fp32']:.2f}x; fp32 merging alone {result['speedup_fp32']:.2f}x; "
                + line
                + f", on the merged {result['int8_gain_merged']:.2f}x"
            )
        out.print(line)
    elif result["speedup"]:
        out.print(
            f"speed-up: {result['speedup']:.2f}x"
            + bn_folded_note(result["bn_folded_speedup"], result["speedup_over_bn_folded"])
        )


def _calibration(net, size: int, data: str | None, n: int, trained):
    """INT8 calibration inputs for ``dsa bench``: ``n`` images of ``data``'s train split, or random images (then a
    network with random weights first gets BN statistics that fit them: :func:`dsa.quantize.settle_random_weights`)."""
    import torch

    from dsa.quantize import settle_random_weights

    if data is not None:
        from dsa.data import calibration_images, load_data

        return calibration_images(load_data(data, size), n)
    if not trained:
        settle_random_weights(net, size)
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _int8_ratios(res: dict) -> dict:
    """What INT8 and merging give, apart and together: ``speedup`` stays merged INT8 over original INT8."""
    ips = {k: v.images_per_s for k, v in res.items()}
    out = {"int8_gain_original": ips["original"] / ips["original_fp32"]}
    if "merged" in ips:
        out |= {
            "int8_gain_merged": ips["merged"] / ips["merged_fp32"],
            "speedup_fp32": ips["merged_fp32"] / ips["original_fp32"],
            "speedup_over_original_fp32": ips["merged"] / ips["original_fp32"],
        }
    return out


@command("profile")
@one_line_errors
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
    runtime: Annotated[
        str,
        typer.Option(
            "--runtime",
            help="eager (default: torch.profiler), onnxruntime (its session profiler) or openvino (its performance "
            "counters); CPU, fp32 or int8 (every graph quantized by the runtime's own tooling).",
        ),
    ] = "eager",
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs of each op, segment and network first.")] = 2,
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs of each (median and IQR recorded).")] = 5,
    plan: Annotated[Path | None, typer.Option(help="Also time the network merged by this plan end to end.")] = None,
    in_network: Annotated[
        bool,
        typer.Option(
            "--in-network",
            help="--runtime R: also time every merged segment inside merged networks that hold them (a few more "
            "networks to run; costs then use these times).",
        ),
    ] = False,
    prune_convs: Annotated[
        bool,
        typer.Option(
            "--prune-convs",
            help="Also time the merged convs of the pruned variants `dsa plan --prune-convs` offers (LayerMerge).",
        ),
    ] = False,
    threads: ThreadsOpt = None,
    input_size: InputSizeOpt = None,
    model: PlanModelOpt = None,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
) -> None:
    """Measure every op, every candidate merged segment and the whole network, with torch.profiler (eager) or
    the runtime's own profiler (--runtime onnxruntime|openvino: what the runtime runs after its fusions, each
    candidate segment as a standalone graph, merged and original). Ctrl-C keeps what was measured in
    <out>.partial.json and never touches an existing profile."""
    import torch
    from rich.progress import Progress

    import roofline as rl
    from dsa.errors import DsaError
    from dsa.formats.profile import partial_path, profile_path
    from dsa.measure.profiler import candidate_segments, profile_model
    from dsa.measure.runtime_profile import check_profiled, profile_runtime
    from dsa.measure.timing import resolve_device

    check_profiled(runtime)
    device = resolve_device(device)
    if precision == Precision.tf32 and not device.startswith("cuda"):
        raise DsaError("--precision tf32 is a CUDA tensor-core mode; a CPU computes fp32: use --precision fp32")
    if runtime != "eager":
        if channels_last:
            raise DsaError(f"--channels-last applies to eager; {runtime} chooses its own layout")
        if device != "cpu" or precision.value not in ("fp32", "int8"):
            raise DsaError(
                f"--runtime {runtime} is profiled on the CPU in fp32 or int8 here: use --device cpu --precision fp32"
            )
    elif precision.value == "int8":
        raise DsaError("int8 networks are quantized and profiled by a runtime: add --runtime onnxruntime|openvino")
    elif in_network:
        raise DsaError(
            "--in-network times merged convs inside networks under a runtime: add --runtime onnxruntime|openvino"
        )
    p = None
    if plan is not None:
        p, model = plan_and_model(plan, model)
    model = model or DEFAULT_MODEL
    if threads is not None:
        torch.set_num_threads(threads)
    inputs = {"--plan": plan, "--checkpoint": checkpoint}
    if out_path is not None:  # checked before minutes of measuring; the default path needs the device's name
        check_out(out_path, "--out", **inputs)
    net, a = model_and_analysis(model, pretrained, checkpoint, input_size or (p.input_size if p else None))
    if p is not None:
        p.check(a)
    if precision.value == "int8" and not (pretrained or checkpoint):
        from dsa.quantize import settle_random_weights

        settle_random_weights(net, a.input_size)  # else INT8 computes zeros (speed does not depend on weights)
    spec = rl.measure_local_device(device, seconds=2.0)
    layout = "channels_last" if channels_last else "nchw"
    path = out_path or profile_path(spec.name, a.model_name, batch_size, precision.value, layout, runtime=runtime)
    check_out(path, "--out", **inputs)
    check_out(partial_path(path), "the partial profile (beside --out)", **inputs)
    err.print(
        f"profiling {a.model_name} under {runtime} on {spec.name} ({device}, batch {batch_size}, {a.input_size} px, "
        f"{precision.value}, {layout if runtime == 'eager' else 'its own layout'}, "
        f"{threads or torch.get_num_threads()} threads, {repeats} repeats) -> {path}; Ctrl-C keeps what was measured",
        markup=False,
    )
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("profiling", total=None)

        def progress(what: str, step: int, total: int) -> None:
            bar.update(task, completed=step, total=total, description=what)

        common = dict(
            batch_size=batch_size,
            warmup=warmup,
            repeats=repeats,
            plan=p,
            device_spec=spec,
            progress=progress,
            segments=candidate_segments(a, pruned=prune_convs),
        )
        if runtime == "eager":
            prof = profile_model(
                net, a, precision=precision.value, device=device, channels_last=channels_last, **common
            )
        else:  # the threads recorded are the threads the runtime was given
            prof = profile_runtime(
                net,
                a,
                runtime,
                threads=threads or torch.get_num_threads(),
                precision=precision.value,
                in_network=in_network,
                **common,
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


@command("calibrate")
@one_line_errors
def calibrate_cmd(
    profile: Annotated[Path, typer.Option("--profile", help="A measured profile (dsa profile).")],
    device_out: Annotated[
        Path | None, typer.Option("--device-out", help="Also write the calibrated device file here.")
    ] = None,
    runtime: Annotated[
        str | None,
        typer.Option("--runtime", help="The runtime the profile must have been taken under (default: its own)."),
    ] = None,
    allow_incomplete: AllowIncompleteOpt = False,
    model: ProfileModelOpt = None,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Fit the roofline efficiencies of the profiled device on a training split of the measured ops; the
    calibration is stored in the profile (and optionally a device file), both written only if both can be."""
    import roofline as rl
    from dsa.io import Outputs
    from dsa.measure.calibrate import calibrate

    check_out(profile, "--profile (rewritten with its calibration)")
    if device_out is not None:
        check_out(device_out, "--device-out", **{"--profile": profile, "--checkpoint": checkpoint})
    a, prof = profile_and_analysis(profile, model, pretrained, checkpoint, allow_incomplete, runtime)
    cal, prof = calibrate(a, prof)
    with Outputs() as outs:
        prof.save(outs.stage(profile))
        if device_out is not None:
            rl.save_device(prof.device(), outs.stage(device_out))
    if fmt == Format.json:
        emit_json(cal.to_dict())
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


@command("import-table")
@one_line_errors
def import_table_cmd(
    table: Annotated[Path, typer.Argument(help="A measured segment table (CSV: st,end,time_ms,...,h_out,w_out).")],
    model: Annotated[str, typer.Option("--model", "-m", help="The network the table measures.")],
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="The batch the table was measured at.")],
    gpu: GpuOpt = None,
    runtime: RuntimeOpt = "eager",
    input_size: InputSizeOpt = None,
    offset: Annotated[
        int | None,
        typer.Option("--offset", min=0, help="Leading convs of the network the table's chain skips (default: found)."),
    ] = None,
    drop_mismatched: Annotated[
        bool, typer.Option("--drop-mismatched", help="Leave out rows whose shape disagrees with the network's.")
    ] = False,
    out_path: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="The profile to write (default: profiles/<gpu>/<model>_b<B>_fp32_<runtime>.json; eager: _nchw.json).",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing profile at --out.")] = False,
    fmt: FormatOpt = Format.table,
) -> None:
    """Import a measured segment table (e.g. Kim et al.'s) as a profile that dsa plan --profile prices with: each
    row matched to the network's conv or candidate segment, its claimed shape checked against the network's."""
    import roofline as rl
    from dsa.formats.profile import profile_path
    from dsa.formats.segment_table import load_table
    from dsa.measure.table_import import profile_from_table

    device = rl.load_device(gpu or "v100")
    path = out_path or profile_path(device.name, model, batch_size, "fp32", "nchw", "profiles", runtime)
    if path.exists() and not force:
        raise ArtifactError(
            f"--out {path} exists (a measured profile, perhaps); give another --out, or --force to replace it"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    check_out(path, "--out", **{"table": table})
    t = load_table(table)
    a = analysis_of(model, False, None, input_size)
    prof, report = profile_from_table(t, a, device, runtime, batch_size, offset=offset, drop_mismatched=drop_mismatched)
    prof.save(path)
    if fmt == Format.json:
        emit_json({"profile": str(path), **report.to_json()})
        return
    out.print(
        f"imported {report.ops + report.segments} of {len(t.rows)} rows of {table} as {a.model_name}'s profile on "
        f"{device.name} under {runtime} (batch {batch_size}): {report.ops} convs, {report.segments} merged segments; "
        f"chain from conv {report.offset} ({report.chain[0]})"
    )
    if report.not_offered:
        shown = ", ".join(f"({s}, {e}]" for s, e in report.not_offered[:6])
        more = f" and {len(report.not_offered) - 6} more" if len(report.not_offered) > 6 else ""
        warn(f"{len(report.not_offered)} rows are segments dsa does not offer and were left out: {shown}{more}")
    if report.mismatched:
        warn(f"{len(report.mismatched)} rows disagreed with the network's shapes and were left out (--drop-mismatched)")
    out.print(f"wrote {path}")


def profile_and_analysis(profile: Path, model, pretrained, checkpoint, allow_incomplete, runtime=None):
    """A profile and the analysis of the network it was taken of (``--model`` default: the profile's); with
    ``runtime``, the profile must have been taken under it."""
    from dsa.formats.profile import load_profile

    prof = load_profile(profile)
    a = analysis_of(model or prof.model, pretrained, checkpoint, prof.input_size)
    prof.check_for(a, allow_incomplete=allow_incomplete, path=profile, runtime=runtime)
    from dsa.latency.resolve import incomplete_note

    for warning in incomplete_note(prof, profile):
        warn(warning)
    return a, prof


@command("validate")
@one_line_errors
def validate_cmd(
    profile: Annotated[Path, typer.Option("--profile", help="A measured profile (dsa profile).")],
    runtime: Annotated[
        str | None,
        typer.Option("--runtime", help="The runtime the profile must have been taken under (default: its own)."),
    ] = None,
    allow_incomplete: AllowIncompleteOpt = False,
    model: ProfileModelOpt = None,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """How well the roofline predicts held-out measured segments and ops, and whole networks, before and
    after calibration."""
    from dsa.measure.calibrate import validate

    a, prof = profile_and_analysis(profile, model, pretrained, checkpoint, allow_incomplete, runtime)
    rep = validate(a, prof)
    if fmt == Format.json:
        emit_json(rep)
        return
    t = Table(
        "held-out",
        "model",
        "n",
        "median |err| %",
        "within 10%",
        "Spearman",
        "Kendall",
        title=f"{rep['model']} on {rep['device']} under {rep['runtime']['name']}, batch {rep['batch_size']}, "
        f"{rep['precision']}, {rep['layout']}",
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
                f"{row['predicted_ms_calibrated']:.1f} ms calibrated ({row['abs_pct_err_calibrated']:.1f}% off), "
                f"{row['predicted_ms_profile']:.1f} ms from the profile's op times "
                f"({row['abs_pct_err_profile']:.1f}% off)"
            )
    for label, d in rep["merge_decisions"].items():
        if label != "rows" and d.get("n"):
            out.print(
                f"does merging pay off ({label.replace('_', ' ')} segments, {d['n']}; it pays for "
                f"{d['merging_pays_measured']} measured): calibrated roofline right for {d['roofline_right']:.0%}, "
                f"the profile's op times for {d['profile_right']:.0%}"
            )
