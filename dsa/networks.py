"""Networks rebuilt from checkpoints: a merged network (``dsa.merged``), a `dsa train` checkpoint (plain or
merge-ready), a plain state_dict; the starting weights of a training run; the networks of a run (the student,
merge-ready with a plan, and its teacher). Reading and validating the files is :mod:`dsa.checkpoints`'s."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsa.checkpoints import (
    MERGED_KIND,
    TRAINING_KIND,
    kind_of,
    load_state,
    load_training_checkpoint,
    read_checkpoint,
    read_merged,
    state_dict_of,
)
from dsa.errors import ArtifactError, DsaError, ModelError, PlanError
from dsa.formats.plan import Plan, load_plan, make_plan, plan_from_json
from dsa.models import classifier_head, create_model, input_size, replace_head


def _same_plan(a: Plan, b: Plan) -> bool:
    return (a.removed, a.added, a.boundaries) == (b.removed, b.added, b.boundaries)


def _rebuild_merged(plan: Plan, state: dict, meta: dict, path: Path, pretrained: bool = False) -> nn.Module:
    from dsa.transform.merge import merge

    name = meta.get("model_name", plan.model)
    net = create_model(name, pretrained=pretrained)
    if meta.get("num_classes"):  # finetuned with a new head (dsa train): rebuild that head before merging
        replace_head(net, int(meta["num_classes"]))
    merged = merge(net, plan)
    try:
        merged.load_state_dict(state)
    except RuntimeError as e:
        raise ArtifactError(f"{path}: state_dict does not fit the merged {name}: {str(e).splitlines()[0]}") from e
    return merged.eval()


def load_merged(path: str | Path, pretrained: bool = False) -> nn.Module:
    """Rebuild a merged network from :func:`dsa.checkpoints.save_merged`'s file (the model from the registry)."""
    plan, state, meta = read_merged(path)
    return _rebuild_merged(plan, state, meta, Path(path), pretrained)


@dataclass
class LoadedModel:
    module: nn.Module
    kind: str  # "train", "train-merge-ready", "merged", "state_dict"
    model: str
    image_size: int
    classes: tuple[str, ...] | None  # recorded by dsa train; None for a plain state_dict
    plan: Any = None


def load_for_eval(
    checkpoint: str | Path,
    *,
    model: str | None = None,
    plan: str | Path | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
) -> LoadedModel:
    """Rebuild a network from a `dsa train` checkpoint (plain or merge-ready), a merged checkpoint
    (:func:`dsa.checkpoints.save_merged`, also with a replaced head) or a plain state_dict (needs ``model``; with
    ``plan``, it holds the merge-ready network's weights), detected by the checkpoint's ``kind`` field."""
    from dsa.transform.merge import apply_plan

    path = Path(checkpoint)
    obj = read_checkpoint(path, "checkpoint", ArtifactError)
    kind = kind_of(obj)
    if kind == TRAINING_KIND:
        ckpt = load_training_checkpoint(path, obj)
        cfg = ckpt["config"]
        name = cfg["model"]
        if model is not None and model != name:
            raise ModelError(f"{path} was trained as --model {name}, not {model}")
        p = plan_from_json(ckpt["plan"], str(path)) if ckpt.get("plan") else None
        if plan is not None and (p is None or not _same_plan(load_plan(plan), p)):
            raise ModelError(f"{path} was not trained with the plan {plan}; leave out --plan")
        net = create_model(name)
        replace_head(net, int(ckpt["num_classes"]))
        if p is not None:
            net = apply_plan(net, p)
        load_state(net, ckpt["model"], path)
        return LoadedModel(
            net.eval(),
            "train-merge-ready" if p is not None else "train",
            name,
            image_size or int(cfg["image_size"]),
            tuple(ckpt["classes"]),
            p,
        )
    if kind == MERGED_KIND:
        p, state, meta = read_merged(path, obj)
        name = meta.get("model_name", p.model)
        if model is not None and model != name:
            raise ModelError(f"{path} holds a merged {name}, not {model}")
        merged = _rebuild_merged(p, state, meta, path)
        classes = tuple(meta["classes"]) if meta.get("classes") else None
        return LoadedModel(merged, "merged", name, image_size or int(meta.get("image_size", p.input_size)), classes, p)
    if model is None:
        raise ModelError(f"{path} is a plain state_dict; give --model (and --plan if it holds a merge-ready network)")
    state = state_dict_of(obj, path)
    net = create_model(model)
    if num_classes is not None:
        head, _ = classifier_head(net)
        if f"{head}.weight" in state and state[f"{head}.weight"].shape[0] == num_classes:
            replace_head(net, num_classes)
    p = None
    if plan is not None:
        p = load_plan(plan)
        net = apply_plan(net, p)
    load_state(net, state, path)
    return LoadedModel(net.eval(), "state_dict", model, image_size or input_size(model), None, p)


def load_start_weights(model: nn.Module, path: Path, num_classes: int) -> bool:
    """Load --checkpoint (a state_dict, or a plain `dsa train` checkpoint such as the baseline's), replacing the
    head before or after loading as the checkpoint's head width requires. Returns whether the head was replaced."""
    obj = read_checkpoint(path, "checkpoint", ArtifactError)
    if kind_of(obj) == MERGED_KIND:
        raise ModelError(f"{path} is a merged checkpoint; training starts from an unmerged network (e.g. the baseline)")
    if kind_of(obj) == TRAINING_KIND and obj.get("plan") is not None:
        raise ModelError(
            f"{path} is a merge-ready training checkpoint (trained with a plan); start from a plain one "
            "(the baseline's RUN/last.pt), or continue that run with --out RUN --resume"
        )
    state = state_dict_of(obj, path)
    name, _ = classifier_head(model)
    if state.get(f"{name}.weight", torch.empty(0, 0)).shape[0] == num_classes:
        replaced = replace_head(model, num_classes)
        load_state(model, state, path)
    else:
        load_state(model, state, path)
        replaced = replace_head(model, num_classes)
    return replaced


@dataclass
class Networks:
    student: nn.Module  # the network to train (merge-ready with a plan)
    original: nn.Module  # the starting network (the teacher with a plan)
    plan: Any  # the effective Plan (re-derived for a new head) or None
    head_replaced: bool


def build_networks(
    model: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    checkpoint: str | Path | None = None,
    plan: str | Path | None = None,
) -> Networks:
    """The original network with a ``num_classes`` head (weights from ``pretrained`` / ``checkpoint``) and, with a
    plan, its merge-ready copy. ``plan`` is checked against the model as built (before the head is replaced)."""
    from dsa.graph import analyze
    from dsa.transform.merge import apply_plan

    base = create_model(model, pretrained=pretrained)
    p = load_plan(plan) if plan is not None else None
    first_error = None
    if p is not None:
        try:
            p.check(analyze(base, model, p.input_size))
        except PlanError as e:  # retried below against the new head (a plan made for num_classes classes)
            first_error = e
    if checkpoint is not None:
        replaced = load_start_weights(base, Path(checkpoint), num_classes)
    else:
        replaced = replace_head(base, num_classes)
    if p is None:
        return Networks(base, base, None, replaced)
    analysis = analyze(base, model, p.input_size)
    if first_error is not None and (not replaced or p.fingerprint != analysis.fingerprint):
        raise first_error
    if p.fingerprint != analysis.fingerprint:
        derived = make_plan(analysis, p.removed, p.added, p.boundaries, source=p.source)
        p = derived.with_metadata(
            **p.metadata,
            derived_from={"fingerprint": p.fingerprint, "reason": f"classifier replaced for {num_classes} classes"},
        )
    base.eval()
    student = apply_plan(base, p, analysis)
    return Networks(student, base, p, replaced)


def is_training_checkpoint(path: Path) -> bool:
    """Whether ``path`` holds a `dsa train` checkpoint (what ``dsa merge --checkpoint`` merges differently); a
    merged checkpoint is refused (it is merged already)."""
    obj = read_checkpoint(path)
    if kind_of(obj) == MERGED_KIND:
        raise ModelError(
            f"checkpoint {path} is a merged network (written by dsa merge): it is already merged; merge the "
            "merge-ready or finetuned checkpoint it came from, or use it as it is (dsa eval --checkpoint)"
        )
    return kind_of(obj) == TRAINING_KIND


def merge_training_checkpoint(path: Path, p: Plan, model: str, plan_path: Path):
    """Merge a `dsa train` checkpoint: a merge-ready one (trained with this plan) as it is, a plain one (e.g. a
    finetuned baseline with a new head) by the plan, re-derived for its head as the trainer does. Returns
    (original network, merged network, effective plan, checkpoint metadata)."""
    from dsa.transform.merge import merge

    loaded = load_for_eval(path, model=model)
    num_classes = len(loaded.classes)  # a training checkpoint records its classes
    if loaded.plan is not None:
        if not _same_plan(loaded.plan, p):
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
