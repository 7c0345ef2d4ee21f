"""Activation-removal plans: a portable, versioned JSON artifact (schema in docs/plan-schema.md).

A plan names what to remove (activation sites by qualified name), what to add (DepthShrinker's ReLU6 after
a removed block), where to keep linear runs unmerged (boundaries), and records the segments this induces.
It is bound to a model by name and by a structural fingerprint of its traced graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dsa.errors import PlanError, PlanFileError
from dsa.io import atomic_write_json, read_json
from dsa.ir import PRUNE_BLOCK, Analysis, Kind, prunable, pruned_ops, pruned_view

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no pruning, and a residual unit only starts a segment
SEGMENT_RULES = ("units-anywhere", "units-first")  # dsa.ir's segment rule: where residual units may sit


ADDABLE_ACTIVATIONS = ("ReLU6", "ReLU", "Hardswish", "SiLU")


# DepthShrinker's released MobileNetV2-1.4 patterns: kept blocks (0-based into the 17 inverted residuals)
# and whether the stem activation is kept. The head is always kept.
DS_PATTERNS: dict[str, tuple[tuple[int, ...], bool]] = {
    "A": ((0, 3, 4, 6, 8, 10, 11, 13, 14, 15, 16), False),
    "B": ((3, 4, 10, 11, 13, 14, 15, 16), True),
    "C": ((0, 3, 10, 11, 13, 14, 15, 16), True),
    "D": ((3, 4, 13, 14, 15, 16), False),
    "E": ((0, 3, 13, 14, 15, 16), False),
    "F": ((), True),
}


def ds_pattern_act_list(letter: str) -> list[int]:
    """The 19-entry keep list (stem, 17 blocks, head) of DepthShrinker pattern A-F for MobileNetV2."""
    key = letter.upper()
    if key not in DS_PATTERNS:
        raise PlanError(f"unknown DepthShrinker pattern {letter!r}; choose one of {', '.join(DS_PATTERNS)}")
    kept, stem = DS_PATTERNS[key]
    return [int(stem), *[int(i in kept) for i in range(17)], 1]


@dataclass(frozen=True)
class AddedActivation:
    after: str  # name of the op whose output gets the activation (a block's output)
    type: str = "ReLU6"

    def to_json(self) -> dict:
        return {"after": self.after, "type": self.type}


@dataclass(frozen=True)
class Plan:
    model: str
    fingerprint: str
    input_size: int = 224
    removed: tuple[str, ...] = ()
    added: tuple[AddedActivation, ...] = ()
    boundaries: tuple[str, ...] = ()
    segments: tuple[dict, ...] = ()
    source: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    segment_rule: str = "units-anywhere"
    pruned: tuple[str, ...] = ()  # convs (and their BNs) made identities, or residual adds whose branch is dropped

    @property
    def units_anywhere(self) -> bool:
        return self.segment_rule == "units-anywhere"

    def to_json(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "dsa.plan",
            "model": self.model,
            "fingerprint": self.fingerprint,
            "input_size": self.input_size,
            "removed": list(self.removed),
            "added": [a.to_json() for a in self.added],
            "boundaries": list(self.boundaries),
            "segment_rule": self.segment_rule,
            "pruned": list(self.pruned),
            "segments": list(self.segments),
            "source": self.source,
            "metadata": self.metadata,
        }

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_json())

    def with_metadata(self, **kw: Any) -> Plan:
        return replace(self, metadata={**self.metadata, **kw})

    def check(self, analysis: Analysis) -> None:
        """Raise :class:`PlanError` naming the field when this plan does not fit the analysed model."""
        if self.fingerprint != analysis.fingerprint:
            what = (
                f"leave out --model (or give --model {self.model}) to use the plan's model, or make a new plan for "
                f"{analysis.model_name}"
                if analysis.model_name != self.model
                else "the network changed since the plan was made (a checkpoint with another head?); make a new plan"
            )
            raise PlanError(
                f"field 'fingerprint': the plan was made for model {self.model!r} (fingerprint {self.fingerprint}), "
                f"but {analysis.model_name!r} has fingerprint {analysis.fingerprint}; {what}"
            )
        sites = {a.name: a for a in analysis.activations}
        for i, name in enumerate(self.removed):
            if name not in sites:
                raise PlanError(
                    f"field 'removed[{i}]': {name!r} is not an activation of {analysis.model_name} "
                    "(see `dsa analyze` for the names)"
                )
            if not sites[name].removable:
                raise PlanError(f"field 'removed[{i}]': {name!r} cannot be removed: {sites[name].reason}")
        for i, add in enumerate(self.added):
            if add.after not in analysis.by_name:
                raise PlanError(f"field 'added[{i}].after': {add.after!r} is not an op of {analysis.model_name}")
            if add.type not in ADDABLE_ACTIVATIONS:
                raise PlanError(f"field 'added[{i}].type': {add.type!r} is not one of {', '.join(ADDABLE_ACTIVATIONS)}")
        for i, name in enumerate(self.boundaries):
            if name not in analysis.by_name:
                raise PlanError(f"field 'boundaries[{i}]': {name!r} is not an op of {analysis.model_name}")
        self._check_pruned(analysis)
        if self.segments:  # recorded by make_plan; a plan without them (written by hand) is not checked here
            induced = [s.to_json() for s in self.induced_segments(analysis) if s.merged]
            if [tuple(s.get("convs", ())) for s in self.segments] != [tuple(s["convs"]) for s in induced] or any(
                list(s.get("kernel", ())) != list(t["kernel"]) for s, t in zip(self.segments, induced, strict=True)
            ):
                raise PlanError(
                    "field 'segments' does not match the segments that 'removed', 'added' and 'boundaries' induce "
                    f"on {analysis.model_name} (the file was edited or is damaged); remake the plan, or drop its "
                    "'segments' to have them derived"
                )

    def _check_pruned(self, analysis: Analysis) -> None:
        if not self.pruned:
            return
        kinds = prunable(analysis)
        for i, name in enumerate(self.pruned):
            if name not in kinds:
                why = "not an op of the network" if name not in analysis.by_name else "not prunable"
                raise PlanError(
                    f"field 'pruned[{i}]': {name!r} is {why}; a plan prunes a conv that keeps shapes (stride 1, equal "
                    "channels and map size) or a residual block's add (its whole branch)"
                )
        _, gone = pruned_ops(analysis, [n for n in self.pruned if kinds[n] == PRUNE_BLOCK])
        for i, name in enumerate(self.pruned):
            if analysis.by_name[name].id in gone:
                raise PlanError(f"field 'pruned[{i}]': {name!r} lies in a residual branch the plan prunes whole")

    def view(self, analysis: Analysis) -> Analysis:
        """The analysis of the network this plan prunes (``analysis`` itself when it prunes nothing)."""
        return pruned_view(analysis, self.pruned)

    def induced_segments(self, analysis: Analysis):
        analysis = self.view(analysis)
        return analysis.segments(
            self.removed, [a.after for a in self.added], self.boundaries, units_anywhere=self.units_anywhere
        )


def _field(d: dict, key: str, types: type | tuple[type, ...], path: str) -> Any:
    if key not in d:
        raise PlanFileError(f"plan {path}: field {key!r} is missing")
    v = d[key]
    if not isinstance(v, types) or (isinstance(v, bool) and types is int):
        tname = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise PlanFileError(f"plan {path}: field {key!r} must be {tname}, got {type(v).__name__}")
    return v


def _positive_int(d: dict, key: str, path: str) -> int:
    v = _field(d, key, int, path)
    if v < 1:
        raise PlanFileError(f"plan {path}: field {key!r} must be a positive integer, got {v}")
    return v


def _str_list(d: dict, key: str, path: str) -> tuple[str, ...]:
    v = _field(d, key, list, path)
    for i, x in enumerate(v):
        if not isinstance(x, str):
            raise PlanFileError(f"plan {path}: field '{key}[{i}]' must be a string, got {type(x).__name__}")
    return tuple(v)


def plan_from_json(d: Any, path: str = "<memory>") -> Plan:
    """Validate a decoded plan document; errors name the offending field."""
    if not isinstance(d, dict):
        raise PlanFileError(f"plan {path}: the document must be a JSON object, got {type(d).__name__}")
    version = d.get("schema_version")
    if version is None:
        raise PlanFileError(f"plan {path}: field 'schema_version' is missing")
    if isinstance(version, bool) or not isinstance(version, int) or version not in READABLE_VERSIONS:
        raise PlanFileError(
            f"plan {path}: field 'schema_version' is {version!r}; this dsa reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))} (upgrade dsa or re-create the plan)"
        )
    if version == 1:  # written before pruning and before residual units could sit anywhere in a segment
        for key in ("segment_rule", "pruned"):
            if key in d:
                raise PlanFileError(f"plan {path}: field {key!r} is not part of schema version 1; make it version 2")
        rule, pruned = "units-first", ()
    else:
        rule = _field(d, "segment_rule", str, path) if "segment_rule" in d else "units-anywhere"
        if rule not in SEGMENT_RULES:
            raise PlanFileError(
                f"plan {path}: field 'segment_rule' is {rule!r}; expected one of {', '.join(SEGMENT_RULES)}"
            )
        pruned = _str_list(d, "pruned", path) if "pruned" in d else ()
    if d.get("kind", "dsa.plan") != "dsa.plan":
        raise PlanFileError(f"plan {path}: field 'kind' is {d.get('kind')!r}, expected 'dsa.plan'")
    added_raw = _field(d, "added", list, path)
    added = []
    for i, a in enumerate(added_raw):
        if not isinstance(a, dict) or not isinstance(a.get("after"), str):
            raise PlanFileError(f"plan {path}: field 'added[{i}]' must be an object with a string 'after'")
        added.append(AddedActivation(a["after"], str(a.get("type", "ReLU6"))))
    segments = d.get("segments", [])
    if not isinstance(segments, list) or not all(isinstance(s, dict) for s in segments):
        raise PlanFileError(f"plan {path}: field 'segments' must be a list of objects")
    for key in ("source", "metadata"):
        if not isinstance(d.get(key, {}), dict):
            raise PlanFileError(f"plan {path}: field {key!r} must be an object")
    return Plan(
        model=_field(d, "model", str, path),
        fingerprint=_field(d, "fingerprint", str, path),
        input_size=_positive_int(d, "input_size", path) if "input_size" in d else 224,
        removed=_str_list(d, "removed", path),
        added=tuple(added),
        boundaries=_str_list(d, "boundaries", path) if "boundaries" in d else (),
        segments=tuple(segments),
        source=d.get("source", {}),
        metadata=d.get("metadata", {}),
        schema_version=version,
        segment_rule=rule,
        pruned=pruned,
    )


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file (schema only; :meth:`Plan.check` binds it to a model)."""
    return plan_from_json(read_json(path, "plan", PlanFileError), str(path))


def make_plan(
    analysis: Analysis,
    removed: Sequence[str] = (),
    added: Sequence[AddedActivation] = (),
    boundaries: Sequence[str] = (),
    source: dict | None = None,
    *,
    pruned: Sequence[str] = (),
    segment_rule: str = "units-anywhere",
) -> Plan:
    """Build and check a plan for an analysed model, recording the segments it induces."""
    order = {a.name: a.index for a in analysis.activations}
    plan = Plan(
        model=analysis.model_name,
        fingerprint=analysis.fingerprint,
        input_size=analysis.input_size,
        removed=tuple(sorted(dict.fromkeys(removed), key=lambda n: order.get(n, 1 << 30))),
        added=tuple(added),
        boundaries=tuple(boundaries),
        source=source or {"kind": "manual"},
        segment_rule=segment_rule,
        pruned=tuple(dict.fromkeys(pruned)),
    )
    plan.check(analysis)
    segs = plan.induced_segments(analysis)
    return replace(plan, segments=tuple(s.to_json() for s in segs if s.merged))


def bn_folded_plan(analysis: Analysis) -> Plan:
    """The plan that only folds BNs: nothing removed, and a boundary after every conv (after its BN, when one
    follows), so that no two convs merge. Linear conv pairs that merge for free (a linear bottleneck's project
    conv and the next expand conv) stay apart: this is the network a user gets from BN folding alone, the
    baseline that a plan's speed-up must beat to be a gain."""
    users = analysis.users()
    boundaries = []
    for op in analysis.ops.values():
        if op.kind != Kind.CONV:
            continue
        nxt = [analysis.ops[u] for u in users[op.id]]
        end = nxt[0] if len(nxt) == 1 and nxt[0].kind == Kind.BN else op
        boundaries.append(end.name)
    return make_plan(analysis, boundaries=boundaries, source={"kind": "bn-folded"})


def plan_from_act_list(analysis: Analysis, act_list: Sequence[int], added_type: str = "ReLU6") -> Plan:
    """Import a DepthShrinker keep list: one entry per block holding activations (stem, blocks, head).

    ``0`` for a block removes all its activations, adds ``added_type`` after its output (after the residual
    add) and so merges it into one conv; ``0`` for the stem or head just removes that activation.
    """
    blocks = analysis.blocks()
    if len(act_list) != len(blocks):
        raise PlanError(
            f"act-list has {len(act_list)} entries but {analysis.model_name} needs {len(blocks)} "
            f"(stem, {len(blocks) - 2} blocks, head: {blocks[0]} ... {blocks[-1]})"
        )
    bad = [i for i, v in enumerate(act_list) if v not in (0, 1)]
    if bad:
        raise PlanError(f"act-list entry {bad[0]} is {act_list[bad[0]]!r}; entries must be 0 (remove) or 1 (keep)")
    removed: list[str] = []
    added: list[AddedActivation] = []
    boundaries: list[str] = []
    for i, (block, keep) in enumerate(zip(blocks, act_list, strict=True)):
        if keep:
            # a kept block stays as it is: no merge across its output (a linear bottleneck's project conv
            # and the next block's expand conv would otherwise fuse into one larger conv)
            out = analysis.block_output(block)
            if 0 < i < len(blocks) - 1 and out.kind != Kind.ACT:
                boundaries.append(out.name)
            continue
        sites = [a for a in analysis.activations if a.block == block]
        for s in sites:
            if not s.removable:
                raise PlanError(f"act-list entry {i} ({block}) removes {s.name}, which cannot be removed: {s.reason}")
        removed += [s.name for s in sites]
        if 0 < i < len(blocks) - 1:
            out = analysis.block_output(block)
            if out.kind == Kind.ACT:
                raise PlanError(f"block {block} ends in an activation; nothing to add after it")
            added.append(AddedActivation(out.name, added_type))
    return make_plan(
        analysis, removed, added, boundaries, source={"kind": "act-list", "act_list": list(map(int, act_list))}
    )


def act_list_of(plan: Plan, analysis: Analysis) -> list[int]:
    """Export a plan as a DepthShrinker keep list (exact only for block-granular plans)."""
    removed = set(plan.removed)
    out = []
    for block in analysis.blocks():
        names = [a.name for a in analysis.activations if a.block == block]
        gone = [n in removed for n in names]
        if any(gone) and not all(gone):
            raise PlanError(f"block {block} is only partly removed; a keep list can only say all or nothing")
        out.append(0 if all(gone) else 1)
    return out


def remove_all_plan(analysis: Analysis) -> Plan:
    """Remove every removable activation, add nothing (the most aggressive activation-granular plan)."""
    return make_plan(analysis, analysis.removable, source={"kind": "remove-all"})


def keep_list_plan(
    analysis: Analysis, *, act_list: str | None = None, ds_pattern: str | None = None, remove_all: bool = False
) -> Plan:
    """A plan without the solver, from exactly one source: a DepthShrinker keep list (``"1,0,0,..."``, one entry
    per block plus stem and head), one of DepthShrinker's MobileNetV2 patterns A-F, or removing every removable
    activation."""
    given = [n for n, v in (("--act-list", act_list), ("--ds-pattern", ds_pattern)) if v is not None]
    given += ["--remove-all"] if remove_all else []
    if len(given) != 1:
        got = " and ".join(given) or "none"
        raise PlanError(f"give exactly one of --act-list, --ds-pattern, --remove-all; got {got}")
    if remove_all:
        return remove_all_plan(analysis)
    if ds_pattern is not None:
        keep = ds_pattern_act_list(ds_pattern)
        if len(analysis.blocks()) != len(keep):
            raise PlanError(
                f"--ds-pattern is DepthShrinker's MobileNetV2 keep list ({len(keep)} entries: stem, 17 blocks, head); "
                f"{analysis.model_name} has {len(analysis.blocks())} blocks; use --act-list"
            )
    else:
        try:
            keep = [int(x) for x in act_list.replace(" ", "").split(",") if x != ""]
        except ValueError as e:
            raise PlanError(f"--act-list must be comma-separated 0/1 values, got {act_list!r}") from e
    return plan_from_act_list(analysis, keep)
