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

A profile taken under a deployment runtime (``runtime``: ONNX Runtime, OpenVINO; ``dsa profile --runtime``) holds
the same three parts as that runtime runs them, from its own profiler (see :mod:`dsa.measure.runtime_profile`):
``ops`` are its executed nodes charged to the ops they come from, ``fused`` maps each op that ran inside another
op's node to that op, and each segment has its merged conv (``conv``, with the activation after it fused when
``act_fused``) and the ``original`` ops it replaces, both timed as standalone graphs.

Every figure is a median over ``repeats`` runs, with its interquartile range. The device (torch, CUDA and
cuDNN versions, threads, layout, cudnn.benchmark and TF32 flags) is recorded, and a roofline spec of the
device (measured ceilings on a CPU) travels with the profile so that it can be calibrated anywhere.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import roofline as rl
from dsa.errors import ArtifactError
from dsa.io import atomic_write_json, read_json
from dsa.ir import Analysis, Segment
from dsa.vocab import DEFAULT_RUNTIME, LAYOUTS, PRECISIONS, RUNTIMES

SCHEMA_VERSION = 1


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
    # by signature: {"conv": Stat, "act": Stat | None, "members": [...], "kernel": ...}; under a runtime also
    # "original" (the ops it replaces, standalone) and, when timed so, "in_network" (the conv inside a network)
    segments: dict[str, dict]
    end_to_end: dict[str, dict]  # "original" / "merged": {"median_ms", "iqr_ms", "n", "images_per_s", ...}
    warmup: int = 0
    repeats: int = 0
    complete: bool = True
    calibration: dict | None = None
    runtime: dict = field(default_factory=lambda: {"name": DEFAULT_RUNTIME})  # {"name", "version", options...}
    fused: dict[str, str] = field(default_factory=dict)  # op -> the op whose kernel runs it (fused runtimes)
    schema_version: int = SCHEMA_VERSION

    @property
    def runtime_name(self) -> str:
        return self.runtime.get("name", DEFAULT_RUNTIME)

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
            for key in ("original", "in_network"):
                if s.get(key) is not None:
                    segs[sig][key] = s[key].to_json()
        return {
            "schema_version": self.schema_version,
            "kind": "dsa.profile",
            "model": self.model,
            "fingerprint": self.fingerprint,
            "input_size": self.input_size,
            "batch_size": self.batch_size,
            "precision": self.precision,
            "layout": self.layout,
            "runtime": self.runtime,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "complete": self.complete,
            "environment": self.environment,
            "device_spec": self.device_spec,
            "ops": {k: v.to_json() for k, v in self.ops.items()},
            "fused": self.fused,
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
        runtime: str | None = None,
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
        if runtime is not None and runtime != self.runtime_name:
            raise ArtifactError(
                f"{where}: field 'runtime' is {self.runtime_name}, but {runtime} was asked for: times measured under "
                f"one runtime never price another; use a profile taken under {runtime}, or ask for {self.runtime_name}"
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


def segment_entry(seg: Segment) -> dict:
    """What a profile records of a candidate segment besides its times: members and merged shape."""
    return {
        "members": list(seg.members),
        "convs": len(seg.convs),
        "c_in": seg.in_channels,
        "c_out": seg.out_channels,
        "kernel": list(seg.kernel),
        "stride": list(seg.stride),
        "groups": seg.groups,
        "in_shape": list(seg.in_shape),
        "out_shape": list(seg.out_shape),
    }


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
    if d["precision"] not in PRECISIONS:
        raise ArtifactError(f"profile {path}: field 'precision' is {d['precision']!r}")
    if d["layout"] not in LAYOUTS:
        raise ArtifactError(f"profile {path}: field 'layout' is {d['layout']!r}, expected 'nchw' or 'channels_last'")
    runtime = d.get("runtime", {"name": DEFAULT_RUNTIME})  # profiles before runtimes were recorded: eager
    if not isinstance(runtime, dict) or runtime.get("name") not in RUNTIMES:
        names = ", ".join(RUNTIMES)
        raise ArtifactError(f"profile {path}: field 'runtime' must be an object whose 'name' is one of {names}")
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
        for key in ("original", "in_network"):
            if s.get(key) is not None:
                segs[sig][key] = _stat(s[key], f"segments.{sig}.{key}", path)
    fused = d.get("fused", {})
    if not isinstance(fused, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in fused.items()):
        raise ArtifactError(f"profile {path}: field 'fused' must map op names to the op names they run inside")
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
        runtime=dict(runtime),
        fused=dict(fused),
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
    runtime: str = DEFAULT_RUNTIME,
) -> tuple[Profile, Path] | None:
    """A complete profile under ``directory/<device>/`` matching the model, batch, precision and runtime (and
    layout, input size). An interrupted (incomplete) one is used only with ``allow_incomplete``; when it is the only
    match, that is an error rather than a silent fall-back to the roofline."""
    found, incomplete = [], []
    for p, path in device_profiles(directory, device):
        same = p.matches(fingerprint, batch_size, precision, input_size) and p.runtime_name == runtime
        if same and (layout is None or p.layout == layout):
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


def default_path(p: Profile, directory: str | Path = "profiles") -> Path:
    return profile_path(p.device_name, p.model, p.batch_size, p.precision, p.layout, directory, p.runtime_name)


def profile_path(
    device: str,
    model: str,
    batch_size: int,
    precision: str,
    layout: str,
    directory: str | Path = "profiles",
    runtime: str = DEFAULT_RUNTIME,
) -> Path:
    """``profiles/<device>/<model>_b<B>_<precision>_<layout>.json`` for eager, ``..._<runtime>.json`` for a
    runtime that chooses its own layout (known before anything is measured)."""
    model = model.replace(":", "_").replace("/", "_")
    last = layout if runtime == DEFAULT_RUNTIME else runtime
    return Path(directory) / device / f"{model}_b{batch_size}_{precision}_{last}.json"


def partial_path(path: str | Path) -> Path:
    """Where an interrupted measurement is kept, beside (never over) the profile it was meant to be."""
    path = Path(path)
    stem = path.name[: -len(".json")] if path.name.endswith(".json") else path.name
    return path.with_name(stem + ".partial.json")
