"""Measured latency: per-op (torch.profiler), per candidate merged segment, and end to end.

A profile is a schema-versioned JSON artifact under ``profiles/<device>/``. It holds, for one model, batch
size, precision and memory layout on one device:

- ``ops``: every op of the original network, timed with torch.profiler — the traced network runs through
  an fx interpreter that wraps each op in ``record_function("dsa::<op name>")``; on CUDA the time is the
  device time of the kernels inside the range;
- ``segments``: every candidate merged segment (a conv with the merged shape and random weights), and the
  activation after it when it keeps one, like the latency tables of the DP successors;
- ``end_to_end``: the whole original network (and a merged one, with a plan) timed as a unit, to check how
  well per-op times add up.

Every figure is a median over ``repeats`` runs, with its interquartile range. The device (torch, CUDA and
cuDNN versions, threads, layout, cudnn.benchmark and TF32 flags) is recorded, and a roofline spec of the
device (measured ceilings on a CPU) travels with the profile so that it can be calibrated anywhere.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn

import roofline as rl
from dsa.costs import dtype_bytes, op_spec
from dsa.errors import ArtifactError, DsaError
from dsa.graph import Analysis, Segment, segment_signature, signature_of
from dsa.io import atomic_write_json, read_json, without_profiler_noise
from dsa.plan import Plan, remove_all_plan
from dsa.vocab import DEFAULT_DEVICE, LAYOUTS, PRECISIONS

SCHEMA_VERSION = 1
TORCH_DTYPES = dict(zip(PRECISIONS, (torch.float32, torch.float32, torch.float16, torch.bfloat16), strict=True))


@dataclass(frozen=True)
class Stat:
    """Median and interquartile range of repeated timings, in milliseconds."""

    median_ms: float
    iqr_ms: float
    n: int

    @classmethod
    def of(cls, values_ms: Sequence[float]) -> Stat:
        v = sorted(values_ms)
        if len(v) >= 2:
            q = statistics.quantiles(v, n=4, method="inclusive")
            iqr = q[2] - q[0]
        else:
            iqr = 0.0
        return cls(statistics.median(v), iqr, len(v))

    def to_json(self) -> dict:
        return {"median_ms": self.median_ms, "iqr_ms": self.iqr_ms, "n": self.n}


@dataclass(frozen=True)
class Profile:
    model: str
    fingerprint: str
    input_size: int
    batch_size: int
    precision: str
    layout: str
    environment: dict
    device_spec: dict  # a roofline DeviceSpec as a dict
    ops: dict[str, Stat]  # by op name
    segments: dict[str, dict]  # by signature: {"conv": Stat, "act": Stat | None, "members": [...], "kernel": ...}
    end_to_end: dict[str, dict]  # "original" / "merged": {"median_ms", "iqr_ms", "n", "images_per_s", ...}
    warmup: int = 0
    repeats: int = 0
    complete: bool = True
    calibration: dict | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def device_name(self) -> str:
        return self.device_spec.get("name", "unknown")

    def device(self) -> rl.DeviceSpec:
        spec = rl.DeviceSpec.from_dict(self.device_spec, "profile device_spec")
        if self.calibration is not None:
            spec = spec.with_calibration(rl.Calibration.from_dict(self.calibration, "profile calibration"))
        return spec

    def to_json(self) -> dict:
        segs = {}
        for sig, s in self.segments.items():
            segs[sig] = {**s, "conv": s["conv"].to_json(), "act": s["act"].to_json() if s.get("act") else None}
        return {
            "schema_version": self.schema_version,
            "kind": "dsa.profile",
            "model": self.model,
            "fingerprint": self.fingerprint,
            "input_size": self.input_size,
            "batch_size": self.batch_size,
            "precision": self.precision,
            "layout": self.layout,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "complete": self.complete,
            "environment": self.environment,
            "device_spec": self.device_spec,
            "ops": {k: v.to_json() for k, v in self.ops.items()},
            "segments": segs,
            "end_to_end": self.end_to_end,
            "calibration": self.calibration,
        }

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_json())

    def check_for(
        self,
        a: Analysis,
        batch_size: int | None = None,
        precision: str | None = None,
        *,
        allow_incomplete: bool = False,
        path: str | Path = "",
    ) -> None:
        """Refuse (one line naming the field) a profile that does not fit what it is about to price: another
        network (fingerprint) or input size, another batch or precision, or an interrupted measurement
        (``complete: false``, unless ``allow_incomplete``)."""
        where = f"profile {path}" if path else f"the profile of {self.model}"
        if self.fingerprint != a.fingerprint:
            raise ArtifactError(
                f"{where}: field 'fingerprint' is {self.fingerprint} ({self.model}), but {a.model_name} has "
                f"{a.fingerprint}; profile this model (`dsa profile --model {a.model_name}`) or give its profile"
            )
        if self.input_size != a.input_size:
            raise ArtifactError(
                f"{where}: field 'input_size' is {self.input_size} px, but the network is analysed at {a.input_size} "
                f"px; give --input-size {self.input_size} or profile at {a.input_size} px"
            )
        if batch_size is not None and batch_size != self.batch_size:
            raise ArtifactError(
                f"{where}: field 'batch_size' is {self.batch_size}, but batch {batch_size} was asked for; leave out "
                f"--batch-size (the profile's batch is used) or profile at batch {batch_size}"
            )
        if precision is not None and precision != self.precision:
            raise ArtifactError(
                f"{where}: field 'precision' is {self.precision}, but {precision} was asked for; leave out "
                f"--precision or profile at {precision}"
            )
        if not self.complete and not allow_incomplete:
            raise ArtifactError(
                f"{where}: field 'complete' is false (the measurement was interrupted: {len(self.ops)} ops, "
                f"{len(self.segments)} segments measured); profile again, or pass --allow-incomplete to use it"
            )

    def matches(self, fingerprint: str, batch_size: int, precision: str, input_size: int | None = None) -> bool:
        """Same network, batch and precision (and input size, when given: measured times are per shape)."""
        same = (self.fingerprint, self.batch_size, self.precision) == (fingerprint, batch_size, precision)
        return same and (input_size is None or input_size == self.input_size)


def _stat(d: Any, where: str, path: str) -> Stat:
    if not isinstance(d, dict):
        raise ArtifactError(f"profile {path}: field {where!r} must be an object with median_ms")
    if any(isinstance(d.get(k), bool) for k in ("median_ms", "iqr_ms", "n")):
        raise ArtifactError(f"profile {path}: field '{where}' holds true/false where a number belongs")
    try:
        s = Stat(float(d["median_ms"]), float(d.get("iqr_ms", 0.0)), int(d.get("n", 1)))
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"profile {path}: field '{where}.median_ms' is missing or not a number") from e
    if not (s.median_ms > 0 and math.isfinite(s.median_ms)):
        raise ArtifactError(f"profile {path}: field '{where}.median_ms' must be a positive number, got {s.median_ms}")
    return s


def _check_batch_consistency(d: dict, path: str) -> None:
    """The end-to-end timings record images/s and ms per batch; their ratio is the batch they were measured at.
    A ``batch_size`` that disagrees means the file was edited (or corrupted): its times are of another batch."""
    batch = d["batch_size"]
    if batch < 1:
        raise ArtifactError(f"profile {path}: field 'batch_size' must be >= 1, got {batch}")
    for name, row in d["end_to_end"].items():
        if not isinstance(row, dict):
            continue
        if "batch_size" in row and row["batch_size"] != batch:  # recorded with each timing since dsa 0.2
            raise ArtifactError(
                f"profile {path}: field 'batch_size' is {batch}, but its end-to-end timing of the {name} network "
                f"was measured at batch {row['batch_size']}; the file was edited or is damaged: profile again"
            )
        try:
            implied = float(row["images_per_s"]) * float(row["median_ms"]) / 1e3
        except (KeyError, TypeError, ValueError):
            continue
        # the median of ms and of images/s over an even number of noisy runs need not be exact inverses:
        # only a factor of 2 reads as another batch
        if implied > 0 and not 0.5 <= implied / batch <= 2.0:
            raise ArtifactError(
                f"profile {path}: field 'batch_size' is {batch}, but its end-to-end timing of the {name} network "
                f"({row['images_per_s']:.4g} images/s at {row['median_ms']:.4g} ms per batch) was measured at batch "
                f"{implied:.0f}; the file was edited or is damaged: profile again with `dsa profile --batch-size B`"
            )


def profile_from_json(d: Any, path: str = "<memory>") -> Profile:
    """Validate a decoded profile; errors name the field."""
    if not isinstance(d, dict):
        raise ArtifactError(f"profile {path}: the document must be a JSON object")
    if d.get("kind") != "dsa.profile":
        raise ArtifactError(f"profile {path}: field 'kind' is {d.get('kind')!r}, expected 'dsa.profile'")
    v = d.get("schema_version")
    if isinstance(v, bool) or v != SCHEMA_VERSION:
        raise ArtifactError(f"profile {path}: field 'schema_version' is {v!r}; this dsa reads {SCHEMA_VERSION}")
    for key, typ in (
        ("model", str),
        ("fingerprint", str),
        ("input_size", int),
        ("batch_size", int),
        ("precision", str),
        ("layout", str),
        ("ops", dict),
        ("segments", dict),
        ("end_to_end", dict),
        ("device_spec", dict),
        ("environment", dict),
    ):
        if not isinstance(d.get(key), typ) or isinstance(d.get(key), bool):
            raise ArtifactError(f"profile {path}: field {key!r} is missing or not a {typ.__name__}")
    if d["precision"] not in TORCH_DTYPES:
        raise ArtifactError(f"profile {path}: field 'precision' is {d['precision']!r}")
    if d["layout"] not in LAYOUTS:
        raise ArtifactError(f"profile {path}: field 'layout' is {d['layout']!r}, expected 'nchw' or 'channels_last'")
    for key in ("warmup", "repeats"):
        v = d.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ArtifactError(f"profile {path}: field {key!r} must be an integer >= 0, got {v!r}")
    try:
        rl.DeviceSpec.from_dict(d["device_spec"], f"profile {path} device_spec")
    except rl.RooflineError as e:
        raise ArtifactError(str(e)) from e
    ops = {name: _stat(s, f"ops.{name}", path) for name, s in d["ops"].items()}
    segs = {}
    for sig, s in d["segments"].items():
        if not isinstance(s, dict):
            raise ArtifactError(f"profile {path}: field 'segments.{sig}' must be an object")
        segs[sig] = {
            **s,
            "conv": _stat(s.get("conv"), f"segments.{sig}.conv", path),
            "act": _stat(s["act"], f"segments.{sig}.act", path) if s.get("act") else None,
        }
    _check_batch_consistency(d, path)
    return Profile(
        model=d["model"],
        fingerprint=d["fingerprint"],
        input_size=d["input_size"],
        batch_size=d["batch_size"],
        precision=d["precision"],
        layout=d["layout"],
        environment=d["environment"],
        device_spec=d["device_spec"],
        ops=ops,
        segments=segs,
        end_to_end=d["end_to_end"],
        warmup=int(d.get("warmup", 0)),
        repeats=int(d.get("repeats", 0)),
        complete=bool(d.get("complete", True)),
        calibration=d.get("calibration"),
    )


def load_profile(path: str | Path) -> Profile:
    return profile_from_json(read_json(path, "profile"), str(path))


def device_profiles(directory: str | Path, device: str) -> list[tuple[Profile, Path]]:
    """Every profile under ``directory/<device>/``, by file name. Other JSON files there (plans, device files) are
    skipped; a file that says it is a profile but does not validate is an error, not silently passed over."""
    folder = Path(directory) / device
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            doc = read_json(path, "profile")
        except ArtifactError:
            continue
        if isinstance(doc, dict) and doc.get("kind") == "dsa.profile":
            out.append((profile_from_json(doc, str(path)), path))
    return out


def find_profile(
    directory: str | Path,
    device: str,
    fingerprint: str,
    batch_size: int,
    precision: str,
    layout: str | None = None,
    input_size: int | None = None,
    allow_incomplete: bool = False,
) -> tuple[Profile, Path] | None:
    """A complete profile under ``directory/<device>/`` matching the model, batch and precision (and layout,
    input size). An interrupted (incomplete) one is used only with ``allow_incomplete``; when it is the only
    match, that is an error rather than a silent fall-back to the roofline."""
    found, incomplete = [], []
    for p, path in device_profiles(directory, device):
        if p.matches(fingerprint, batch_size, precision, input_size) and (layout is None or p.layout == layout):
            if p.device_name != device:
                raise ArtifactError(
                    f"profile {path}: field 'device_spec.name' is {p.device_name!r}, but the file lies under "
                    f"{Path(directory) / device}/; move it to {Path(directory) / p.device_name}/"
                )
            if p.complete or allow_incomplete:
                found.append((p.layout != "nchw", not p.complete, path.name, p, path))  # prefer NCHW, complete
            else:
                incomplete.append(path)
    if not found and incomplete:
        raise ArtifactError(
            f"the only profile under {Path(directory) / device}/ that matches, {incomplete[0]}, is incomplete "
            "(its measurement was interrupted); profile again, or pass --allow-incomplete to use it"
        )
    return min(found)[3:] if found else None


# ------------------------------------------------------------------------------------------ measuring


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_callable(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> Stat:
    import time

    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        _sync(device)
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(device)
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
    return Stat.of(times)


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
        _sync(device)
        with without_profiler_noise():
            with profile(activities=activities) as prof:
                for _ in range(repeats):
                    interp.run(x)
                _sync(device)
            events = prof.events()
    per_op: dict[str, list[float]] = {}
    for ev in events:
        if not ev.name.startswith("dsa::"):
            continue
        us = ev.device_time_total if device.type == "cuda" else ev.cpu_time_total
        per_op.setdefault(ev.name[5:], []).append(us / 1e3)
    return {name: Stat.of(v) for name, v in per_op.items() if v and max(v) > 0}


def candidate_segments(a: Analysis) -> list[tuple[Segment, bool]]:
    """Every merged segment the planner may choose (the merged-segment edges of its DAGs, both
    granularities), with whether an activation follows it (True unless it came only from removing
    everything removable), deduplicated by shape."""
    from dsa.candidates import RooflineCosts, build_candidates

    out: dict[str, tuple[Segment, bool]] = {}
    costs = RooflineCosts(a, DEFAULT_DEVICE)  # the device does not matter: only the segments are read
    for granularity in ("activation", "block"):
        for edge in build_candidates(a, costs, granularity).edges:
            seg = getattr(edge, "segment", None)
            if seg is not None and seg.merged:
                out.setdefault(signature_of(seg), (seg, True))
    for seg in remove_all_plan(a).induced_segments(a):
        if seg.merged:
            out.setdefault(signature_of(seg), (seg, False))
    return list(out.values())


def _segment_module(seg: Segment, act: bool) -> tuple[nn.Module, nn.Module | None]:
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
    from dsa.bench import measure
    from dsa.merge import merge

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DsaError(f"--device {device}: CUDA is not available here; use --device cpu")
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
    total = 1 + len(segments) + 1 + (plan is not None)
    step = 0

    def tick(what: str) -> None:
        nonlocal step
        step += 1
        if progress:
            progress(what, step, total)

    ops: dict[str, Stat] = {}
    segs: dict[str, dict] = {}
    e2e: dict[str, dict] = {}
    complete = True
    try:
        ops = _per_op_times(a, x, dev, warmup, repeats)
        tick("per-op profile")
        for seg, act in segments:
            conv, act_mod = _segment_module(seg, act)
            conv = conv.to(dev, dtype=dtype, memory_format=fmt).eval()
            xin = torch.randn(batch_size, *seg.in_shape, dtype=dtype, device=dev).contiguous(memory_format=fmt)
            entry = {
                "members": list(seg.members),
                "convs": len(seg.convs),
                "c_in": seg.in_channels,
                "c_out": seg.out_channels,
                "kernel": list(seg.kernel),
                "stride": list(seg.stride),
                "groups": seg.groups,
                "in_shape": list(seg.in_shape),
                "out_shape": list(seg.out_shape),
                "conv": _time_callable(lambda c=conv, t=xin: c(t), dev, warmup, repeats),
                "act": None,
            }
            if act_mod is not None:
                with torch.inference_mode():
                    y = conv(xin)
                entry["act"] = _time_callable(lambda m=act_mod, t=y: m(t), dev, warmup, repeats)
            segs[signature_of(seg)] = entry
            tick(f"segment {seg.members[0]}")
        nets = {"original": model}
        if plan is not None:
            # merge a float32 CPU copy (merge verifies in float64 there), then time it like the original
            nets["merged"] = merge(copy.deepcopy(model).float().cpu(), plan).to(dev, dtype=dtype)
        res = measure(nets, batch_size, size, device, channels_last, warmup, repeats, dtype=dtype)
        for name, t in res.items():
            lat = [1e3 * batch_size / r for r in t.runs]
            e2e[name] = {**Stat.of(lat).to_json(), "images_per_s": t.images_per_s, "batch_size": batch_size}
            if name == "merged":
                e2e[name]["plan"] = plan.to_json()
            tick(f"end to end: {name}")
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
    )


def default_path(p: Profile, directory: str | Path = "profiles") -> Path:
    return profile_path(p.device_name, p.model, p.batch_size, p.precision, p.layout, directory)


def profile_path(
    device: str, model: str, batch_size: int, precision: str, layout: str, directory: str | Path = "profiles"
) -> Path:
    """``profiles/<device>/<model>_b<B>_<precision>_<layout>.json`` (known before anything is measured)."""
    model = model.replace(":", "_").replace("/", "_")
    return Path(directory) / device / f"{model}_b{batch_size}_{precision}_{layout}.json"


def partial_path(path: str | Path) -> Path:
    """Where an interrupted measurement is kept, beside (never over) the profile it was meant to be."""
    path = Path(path)
    stem = path.name[: -len(".json")] if path.name.endswith(".json") else path.name
    return path.with_name(stem + ".partial.json")


# ------------------------------------------------------------------------------------------ using profiles


@dataclass
class MeasuredItem:
    """One measured op or segment, with the roofline op(s) that model it."""

    key: str
    kind: str  # "op" or "segment"
    specs: list[rl.OpSpec] = field(default_factory=list)
    measured_ms: float = 0.0


def measured_items(a: Analysis, p: Profile) -> list[MeasuredItem]:
    """Pair every measured op and segment of a profile with its roofline ops."""
    if p.fingerprint != a.fingerprint:
        raise ArtifactError(
            f"profile of {p.model!r} (fingerprint {p.fingerprint}) does not match {a.model_name!r} "
            f"(fingerprint {a.fingerprint}); profile this model first"
        )
    nbytes = dtype_bytes(p.precision)
    items = []
    for op in a.ops.values():
        if op.name in p.ops:
            spec = op_spec(a, op, p.batch_size, nbytes)
            if spec is not None:
                items.append(MeasuredItem(op.name, "op", [spec], p.ops[op.name].median_ms))
    for sig, s in p.segments.items():
        conv = rl.conv2d_op(
            sig,
            p.batch_size,
            s["c_in"],
            s["c_out"],
            s["in_shape"][1],
            s["in_shape"][2],
            s["out_shape"][1],
            s["out_shape"][2],
            kernel=tuple(s["kernel"]),
            groups=s["groups"],
            bias=True,
            dtype_bytes=nbytes,
        )
        items.append(MeasuredItem(sig, "segment", [conv], s["conv"].median_ms))
    return items


def with_calibration(p: Profile, calibration: rl.Calibration) -> Profile:
    return replace(p, calibration=calibration.to_dict())


__all__ = [
    "Profile",
    "Stat",
    "profile_model",
    "load_profile",
    "device_profiles",
    "find_profile",
    "candidate_segments",
    "measured_items",
    "signature_of",
    "segment_signature",
    "default_path",
    "profile_path",
    "partial_path",
]
