"""The importance file (``dsa importance`` writes it, the planner reads it): per-activation and per-block accuracy
costs, and optionally what deploying each candidate segment in INT8 costs (``int8``), validated on load."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from dsa.errors import DsaError, PlanError
from dsa.io import atomic_write_json, read_json
from dsa.vocab import INT8_RUNTIMES

DEFAULT_ACTIVATION_COST = 1.0


def is_cost(v: object) -> bool:
    """An accuracy cost: a finite number >= 0 (not a bool)."""
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0


SCHEMA_VERSION = 1


METHODS = ("linearity", "removal-kl", "gates", "finetune")


@dataclass(frozen=True)
class Importance:
    method: str
    model: str
    fingerprint: str
    scores: dict[str, float]  # activation name -> cost of removing it (>= 0)
    segments: dict[str, float] = field(default_factory=dict)  # block name -> cost of merging it (DS style)
    metadata: dict = field(default_factory=dict)
    seconds: float = 0.0
    default: float = 1.0  # the cost of an activation without a score (the planner's "default")
    pruned: dict[str, float] = field(default_factory=dict)  # prunable op name -> cost of pruning it (LayerMerge)
    int8: dict[str, float] = field(default_factory=dict)  # dsa.ir.segment_key -> cost of that segment in INT8
    int8_runtime: str = ""  # whose INT8 scheme the int8 costs emulate

    def to_json(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "dsa.importance",
            "method": self.method,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "scores": self.scores,
            "default": self.default,
            "segments": self.segments,
            **({"pruned": self.pruned} if self.pruned else {}),
            **({"int8": {"runtime": self.int8_runtime, "costs": self.int8}} if self.int8 else {}),
            "metadata": self.metadata,
            "seconds": self.seconds,
        }

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_json())


def read_importance(path: str | Path, error: type[DsaError] = PlanError) -> Importance:
    """The one reader of importance files. A file `dsa importance` wrote (``kind`` ``dsa.importance``) has its kind,
    schema version and method checked; a hand-written ``{"scores": {activation: cost}, "default": cost,
    "segments": {block: cost}, "pruned": {op: cost}, "int8": {"runtime": r, "costs": {segment key: cost}}}``
    (``default``, ``segments``, ``pruned`` and ``int8`` optional) is accepted as it is. Every cost is a finite
    number >= 0."""
    d = read_json(path, "importance", error)
    if not isinstance(d, dict) or not isinstance(d.get("scores"), dict):
        raise error(f'importance {path}: expected an object {{"scores": {{activation name: cost}}}}')
    if "kind" in d or "schema_version" in d:
        if d.get("kind") != "dsa.importance":
            raise error(f"importance {path}: field 'kind' must be 'dsa.importance'")
        if d.get("schema_version") != SCHEMA_VERSION or isinstance(d.get("schema_version"), bool):
            raise error(f"importance {path}: field 'schema_version' is {d.get('schema_version')!r}")
        if d.get("method") not in METHODS:
            raise error(f"importance {path}: field 'method' is {d.get('method')!r}; one of {', '.join(METHODS)}")
    default = d.get("default", DEFAULT_ACTIVATION_COST)
    for name, v in [*d["scores"].items(), ("default", default)]:
        if not is_cost(v):
            raise error(f"importance {path}: the cost of {name!r} must be a finite number >= 0, got {v!r}")
    segments = _cost_map(d, "segments", "block names", "block {!r}", path, error)
    pruned = _cost_map(d, "pruned", "prunable op names", "pruning {!r}", path, error)
    int8 = d.get("int8", {"runtime": "", "costs": {}})
    if not isinstance(int8, dict) or set(int8) != {"runtime", "costs"}:
        raise error(f'importance {path}: "int8" must be {{"runtime": ..., "costs": {{segment: cost}}}}')
    if int8["costs"] and int8["runtime"] not in INT8_RUNTIMES:
        raise error(
            f"importance {path}: the int8 runtime must be one of {', '.join(INT8_RUNTIMES)}, got {int8['runtime']!r}"
        )
    int8_costs = _cost_map(int8, "costs", "segment keys", "segment {!r} in INT8", path, error)
    metadata, seconds = d.get("metadata", {}), d.get("seconds", 0.0)
    if not isinstance(metadata, dict):
        raise error(f'importance {path}: "metadata" must be an object, got {type(metadata).__name__}')
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise error(f'importance {path}: "seconds" must be a number, got {seconds!r}')
    return Importance(
        str(d.get("method", "user")),
        str(d.get("model", "")),
        str(d.get("fingerprint", "")),
        {k: float(v) for k, v in d["scores"].items()},
        {k: float(v) for k, v in segments.items()},
        dict(metadata),
        float(seconds),
        float(default),
        {k: float(v) for k, v in pruned.items()},
        {k: float(v) for k, v in int8_costs.items()},
        str(int8["runtime"]) if int8_costs else "",
    )


def _cost_map(d: dict, key: str, keys: str, what: str, path, error: type[DsaError]) -> dict:
    """An optional ``{name: cost}`` field of an importance file, validated."""
    m = d.get(key, {})
    if not isinstance(m, dict):
        raise error(f'importance {path}: "{key}" must map {keys} to costs')
    for name, v in m.items():
        if not is_cost(v):
            raise error(f"importance {path}: the cost of {what.format(name)} must be a finite number >= 0, got {v!r}")
    return m


def load_importance_file(path: str | Path) -> Importance:
    """:func:`read_importance`, with errors as :class:`DsaError` (not about a plan)."""
    return read_importance(path, DsaError)


def load_importance(path: str | Path) -> tuple[dict[str, float], float]:
    """(scores, default cost) of an importance file, for the planner (:func:`read_importance`)."""
    imp = read_importance(path)
    return imp.scores, imp.default


def load_block_importance(path: str | Path) -> dict[str, float]:
    """The whole-block costs of an importance file (``"segments"``), or {} when it has none (block-granular
    planning, see :class:`~dsa.planner.planner.Planner`)."""
    return read_importance(path).segments
