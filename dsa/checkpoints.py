"""Every checkpoint dsa reads or writes, by kind: model weights (a state_dict, ``--checkpoint``), training
checkpoints (``RUN/last.pt``, kind ``dsa.train``) and merged networks (``dsa merge`` / ``dsa train``, kind
``dsa.merged``). Each kind's schema version is checked on load; writes are atomic (:mod:`dsa.io`).

Rebuilding a network from a checkpoint (which needs the model registry and the merge) is :mod:`dsa.networks`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsa.errors import ArtifactError, DsaError, ModelError
from dsa.formats.plan import Plan, plan_from_json
from dsa.io import atomic_torch_save, read_torch

MERGED_KIND = "dsa.merged"
MERGED_SCHEMA_VERSION = 1
TRAINING_KIND = "dsa.train"
TRAINING_SCHEMA_VERSION = 1


def read_checkpoint(path: str | Path, what: str = "checkpoint", error: type[DsaError] = ModelError) -> Any:
    """The object in a torch checkpoint file (one-line errors for a missing or unreadable file)."""
    return read_torch(Path(path), what, error)


def kind_of(obj: Any) -> str | None:
    """``dsa.train``, ``dsa.merged`` or None (a plain state_dict, or a dict holding one)."""
    return obj.get("kind") if isinstance(obj, dict) else None


def _of_kind(path: Path, obj: Any, kind: str, version: int, what: str) -> dict:
    """``obj`` (read from ``path`` when None) if it is a ``kind`` checkpoint of schema ``version``."""
    if obj is None:
        obj = read_checkpoint(path, what, ArtifactError)
    if kind_of(obj) != kind:
        raise ArtifactError(f"{path} is not a dsa {what} (field 'kind')")
    _check_version(obj, path, version)
    return obj


def _check_version(obj: dict, path: Path, expected: int) -> None:
    if obj.get("schema_version") != expected:
        raise ArtifactError(
            f"{path}: field 'schema_version' is {obj.get('schema_version')!r}, this dsa reads {expected}"
        )


def state_dict_of(obj: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict inside a loaded checkpoint (plain, ``{'model': ...}`` or ``{'state_dict': ...}``)."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"checkpoint {path} does not hold a state_dict of tensors")
    return obj


def load_state(model: nn.Module, state: dict, path: str | Path) -> None:
    """Load ``state`` strictly into ``model``; a mismatch is one line naming the first missing/unexpected key."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise ModelError(f"checkpoint {path} does not fit the model: {first}") from e
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} keys (e.g. {result.missing_keys[0]})")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[0]})")
    if problems:
        raise ModelError(f"checkpoint {path} does not fit the model: " + "; ".join(problems))


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a state_dict (or a dict holding one under 'model' / 'state_dict') strictly into ``model``."""
    path = Path(path)
    obj = read_checkpoint(path)
    if kind_of(obj) == MERGED_KIND:
        raise ModelError(
            f"checkpoint {path} is a merged network (written by dsa merge): it is already merged and does not load "
            "into the original model; use it with `dsa eval --checkpoint`, or give the unmerged network's checkpoint"
        )
    load_state(model, state_dict_of(obj, path), path)


def save_merged(model: nn.Module, plan: Plan, path: str | Path, **metadata) -> None:
    """Write the merged network's state_dict with its plan (rebuild with :func:`dsa.networks.load_merged`)."""
    atomic_torch_save(
        {
            "schema_version": MERGED_SCHEMA_VERSION,
            "kind": MERGED_KIND,
            "plan": plan.to_json(),
            "state_dict": model.state_dict(),
            "metadata": metadata,
        },
        path,
    )


def read_merged(path: str | Path, obj: Any = None) -> tuple[Plan, dict, dict]:
    """(plan, state_dict, metadata) of a merged checkpoint, validated (``obj``: the file's content, if read)."""
    path = Path(path)
    obj = _of_kind(path, obj, MERGED_KIND, MERGED_SCHEMA_VERSION, "merged checkpoint")
    return plan_from_json(obj["plan"], str(path)), obj["state_dict"], dict(obj.get("metadata") or {})


def training_checkpoint(**fields: Any) -> dict:
    """The content of a training checkpoint (kind and schema version added)."""
    return {"kind": TRAINING_KIND, "schema_version": TRAINING_SCHEMA_VERSION, **fields}


def load_training_checkpoint(path: str | Path, obj: Any = None) -> dict:
    """Read and validate a `dsa train` checkpoint (``kind`` ``dsa.train``)."""
    return _of_kind(Path(path), obj, TRAINING_KIND, TRAINING_SCHEMA_VERSION, "training checkpoint")
