"""Measuring a profile with torch.profiler: the network's ops, every candidate segment's merged conv (alone and
with an activation after it), and end-to-end timings of the original, BN-folded and fully merged networks."""

from __future__ import annotations

import copy
import datetime as dt
import platform
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

import roofline as rl
from dsa.errors import DsaError
from dsa.formats.plan import Plan, remove_all_plan
from dsa.formats.profile import Profile, Stat, segment_entry
from dsa.io import without_profiler_noise
from dsa.ir import Analysis, Segment, signature_of
from dsa.measure.timing import sync, time_callable
from dsa.vocab import PRECISIONS

# the precisions eager PyTorch profiles in (int8 is a runtime's quantized network: dsa.measure.runtime_profile)
TORCH_DTYPES = dict(zip(PRECISIONS[:4], (torch.float32, torch.float32, torch.float16, torch.bfloat16), strict=True))


def environment(device: torch.device, layout: str, precision: str) -> dict:
    env = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "layout": layout,
        "dtype": precision,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        env |= {
            "device_name": torch.cuda.get_device_name(device),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    else:
        env |= {"device_name": platform.processor() or platform.machine()}
    return env


class _Annotated(fx.Interpreter):
    """Runs a traced network with one record_function range per op of the analysis."""

    def __init__(self, gm: fx.GraphModule, names: dict[str, str]) -> None:
        super().__init__(gm)
        self.names = names

    def run_node(self, n: fx.Node):
        name = self.names.get(n.name)
        if name is None:
            return super().run_node(n)
        with torch.profiler.record_function(f"dsa::{name}"):
            return super().run_node(n)


def _time_callable(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> Stat:
    return Stat.of(time_callable(fn, device, warmup, repeats))


def _per_op_times(a: Analysis, x: torch.Tensor, device: torch.device, warmup: int, repeats: int) -> dict[str, Stat]:
    """torch.profiler over ``repeats`` annotated forward passes; one range per op."""
    from torch.profiler import ProfilerActivity, profile

    gm = a.graph_module
    names = {}
    for op in a.ops.values():
        if op.kind not in ("input", "output") and not op.id.endswith("/act"):
            names[op.node] = op.name
    interp = _Annotated(gm, names)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode():
        for _ in range(warmup):
            interp.run(x)
        sync(device)
        with without_profiler_noise():
            with profile(activities=activities) as prof:
                for _ in range(repeats):
                    interp.run(x)
                sync(device)
            events = prof.events()
    per_op: dict[str, list[float]] = {}
    for ev in events:
        if not ev.name.startswith("dsa::"):
            continue
        us = ev.device_time_total if device.type == "cuda" else ev.cpu_time_total
        per_op.setdefault(ev.name[5:], []).append(us / 1e3)
    return {name: Stat.of(v) for name, v in per_op.items() if v and max(v) > 0}


def candidate_segments(a: Analysis, pruned: bool = False) -> list[tuple[Segment, bool]]:
    """Every merged segment the planner may choose (the merged-segment edges of its DAGs, both
    granularities), with whether an activation follows it (True unless it came only from removing
    everything removable), deduplicated by shape. With ``pruned``, also the merged convs of the pruned variants
    ``dsa plan --prune-convs`` offers (with its default pruning costs: an importance file's costs may pick other
    sets of convs to prune, which are then priced by the roofline)."""
    from dsa.planner.candidates import GRANULARITIES, merged_segments

    out: dict[str, tuple[Segment, bool]] = {}
    for seg in merged_segments(a):
        out.setdefault(signature_of(seg), (seg, True))
    for seg in remove_all_plan(a).induced_segments(a):
        if seg.merged:
            out.setdefault(signature_of(seg), (seg, False))
    if pruned:
        from dsa.planner.planner import Planner

        for g in GRANULARITIES:
            for e in Planner(a, granularity=g, prune_convs=True).candidates.edges:
                if e.prunes and e.segment is not None and e.segment.merged:
                    out.setdefault(signature_of(e.segment), (e.segment, True))
    return list(out.values())


class Steps:
    """Counts the steps of a measurement and reports each to ``progress(what, step, total)``."""

    def __init__(self, total: int, progress: Callable[[str, int, int], None] | None) -> None:
        self.total, self.step, self.progress = total, 0, progress

    def tick(self, what: str) -> None:
        self.step += 1
        if self.progress:
            self.progress(what, self.step, self.total)


def end_to_end_rows(timings: dict, batch_size: int, plan: Plan | None) -> dict[str, dict]:
    """A profile's ``end_to_end`` rows from :func:`dsa.measure.timing.measure` results: per-batch latency stats,
    images/s and the batch; the merged row carries its plan."""
    rows = {}
    for name, t in timings.items():
        lat = [1e3 * batch_size / r for r in t.runs]
        rows[name] = {**Stat.of(lat).to_json(), "images_per_s": t.images_per_s, "batch_size": batch_size}
        if name == "merged":
            rows[name]["plan"] = plan.to_json()
    return rows


def segment_module(seg: Segment, act: bool) -> tuple[nn.Module, nn.Module | None]:
    """The merged conv of ``seg`` with random weights and its shape's padding (and the ReLU6 after it, with
    ``act``): what a profile times for the segment."""
    c_in, c_out, (kh, kw), stride = seg.in_channels, seg.out_channels, seg.kernel, seg.stride
    pad_h = max(0, (seg.out_shape[1] - 1) * stride[0] + kh - seg.in_shape[1])
    pad_w = max(0, (seg.out_shape[2] - 1) * stride[1] + kw - seg.in_shape[2])
    conv = nn.Conv2d(c_in, c_out, (kh, kw), stride, padding=(pad_h // 2, pad_w // 2), groups=seg.groups, bias=True)
    return conv, (nn.ReLU6() if act else None)


def profile_model(
    model: nn.Module,
    a: Analysis,
    *,
    batch_size: int = 32,
    precision: str = "fp32",
    device: str = "cpu",
    channels_last: bool = False,
    warmup: int = 2,
    repeats: int = 5,
    plan: Plan | None = None,
    segments: Sequence[tuple[Segment, bool]] | None = None,
    device_spec: rl.DeviceSpec | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Profile:
    """Measure ``model`` (analysed as ``a``); see the module docstring. A KeyboardInterrupt stops measuring
    and returns what was measured so far, with ``complete=False``."""
    from dsa.measure.timing import measure
    from dsa.transform.merge import merge

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DsaError(f"--device {device}: CUDA is not available here; use --device cpu")
    if precision == "int8":
        raise DsaError(
            "int8 networks are quantized and profiled by a runtime: --runtime onnxruntime|openvino --precision int8"
        )
    if precision not in TORCH_DTYPES:
        raise DsaError(f"unknown precision {precision!r}; choose one of {', '.join(TORCH_DTYPES)}")
    if precision == "tf32" and dev.type != "cuda":
        raise DsaError("--precision tf32 is a CUDA tensor-core mode; a CPU computes fp32: use --precision fp32")
    dtype = TORCH_DTYPES[precision]
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    layout = "channels_last" if channels_last else "nchw"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    spec = device_spec or rl.measure_local_device(device, seconds=2.0)
    size = a.input_size
    x = torch.randn(batch_size, 3, size, size, dtype=dtype, device=dev).contiguous(memory_format=fmt)
    a.graph_module.to(dev, dtype=dtype, memory_format=fmt).eval()
    model.to(dev, dtype=dtype, memory_format=fmt).eval()
    segments = list(segments) if segments is not None else candidate_segments(a)
    steps = Steps(1 + len(segments) + 1 + (plan is not None), progress)
    ops: dict[str, Stat] = {}
    segs: dict[str, dict] = {}
    e2e: dict[str, dict] = {}
    complete = True
    try:
        ops = _per_op_times(a, x, dev, warmup, repeats)
        steps.tick("per-op profile")
        for seg, act in segments:
            conv, act_mod = segment_module(seg, act)
            conv = conv.to(dev, dtype=dtype, memory_format=fmt).eval()
            xin = torch.randn(batch_size, *seg.in_shape, dtype=dtype, device=dev).contiguous(memory_format=fmt)
            entry = {
                **segment_entry(seg),
                "conv": _time_callable(lambda c=conv, t=xin: c(t), dev, warmup, repeats),
                "act": None,
            }
            if act_mod is not None:
                with torch.inference_mode():
                    y = conv(xin)
                entry["act"] = _time_callable(lambda m=act_mod, t=y: m(t), dev, warmup, repeats)
            segs[signature_of(seg)] = entry
            steps.tick(f"segment {seg.members[0]}")
        nets = {"original": model}
        if plan is not None:
            # merge a float32 CPU copy (merge verifies in float64 there), then time it like the original
            nets["merged"] = merge(copy.deepcopy(model).float().cpu(), plan).to(dev, dtype=dtype)
        res = measure(nets, batch_size, size, device, channels_last, warmup, repeats, dtype=dtype)
        e2e |= end_to_end_rows(res, batch_size, plan)
        for name in res:
            steps.tick(f"end to end: {name}")
    except KeyboardInterrupt:
        complete = False
    if ops:
        e2e["sum_of_ops_ms"] = sum(s.median_ms for s in ops.values())
    return Profile(
        model=a.model_name,
        fingerprint=a.fingerprint,
        input_size=size,
        batch_size=batch_size,
        precision=precision,
        layout=layout,
        environment=environment(dev, layout, precision),
        device_spec=spec.to_dict(),
        ops=ops,
        segments=segs,
        end_to_end=e2e,
        warmup=warmup,
        repeats=repeats,
        complete=complete,
        runtime={"name": "eager", "version": torch.__version__},  # torch.profiler times eager kernels
    )
