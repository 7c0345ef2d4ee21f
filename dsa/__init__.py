"""dsa: hardware-aware depth compression for PyTorch CNNs.

Three levels of API (as Torch-Pruning's graph / criteria / driver):

- graph: :func:`analyze` (torch.fx) finds activation sites and the segments a plan induces;
- plans: :class:`Plan`, :func:`load_plan`, :func:`make_plan`, :func:`plan_from_act_list`, and the planner
  (:func:`plan_for_target`, :func:`fastest_plan`, :class:`Planner`: the best plan for a latency target, exactly);
- transforms: :func:`apply_plan` (merge-ready network to finetune) and :func:`merge` (one conv per segment,
  verified numerically);
- training: :class:`TrainConfig` and ``dsa.train.train`` (finetune with distillation, merge, export, measure),
  :func:`evaluate_checkpoint` (the function is not re-exported here: ``dsa.train`` is the trainer's package).

The package's layout is its architecture (docs/design.md): ``ir`` < ``formats`` < ``checkpoints``, ``models``,
``data`` < ``graph`` < ``transform`` < ``networks``, ``export`` < ``latency`` < ``planner`` < ``measure`` <
``train``, ``importance`` < ``cli``.
"""

from dsa._version import __version__
from dsa.errors import (
    AnalysisError,
    ArtifactError,
    DataError,
    DsaError,
    ExportError,
    MergeError,
    MergeVerificationError,
    ModelError,
    PlanError,
    TrainingError,
)

# Everything else loads on first use (PEP 562): `import dsa.ir` or a cached `dsa plan` must not import torch, and
# `dsa models` must not import the solver or the trainer.
_LAZY = {
    "Analysis": "dsa.ir",
    "analyze": "dsa.graph",
    "apply_plan": "dsa.transform.merge",
    "merge": "dsa.transform.merge",
    "merge_record": "dsa.transform.merge",
    "merge_ready_record": "dsa.transform.merge",
    "create_model": "dsa.models",
    "list_models": "dsa.models",
    "Plan": "dsa.formats.plan",
    "act_list_of": "dsa.formats.plan",
    "ds_pattern_act_list": "dsa.formats.plan",
    "load_plan": "dsa.formats.plan",
    "make_plan": "dsa.formats.plan",
    "plan_from_act_list": "dsa.formats.plan",
    "remove_all_plan": "dsa.formats.plan",
    "Planner": "dsa.planner.planner",
    "PlanResult": "dsa.planner.planner",
    "fastest_plan": "dsa.planner.planner",
    "plan_for_target": "dsa.planner.planner",
    "TrainConfig": "dsa.train.config",
    "TrainResult": "dsa.train.config",
    "evaluate_checkpoint": "dsa.train.evaluate",
    "load_for_eval": "dsa.networks",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dsa' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "DsaError",
    "AnalysisError",
    "ArtifactError",
    "ExportError",
    "MergeError",
    "MergeVerificationError",
    "ModelError",
    "PlanError",
    "DataError",
    "TrainingError",
    "Analysis",
    "analyze",
    "apply_plan",
    "merge",
    "merge_record",
    "merge_ready_record",
    "create_model",
    "list_models",
    "Plan",
    "act_list_of",
    "ds_pattern_act_list",
    "load_plan",
    "make_plan",
    "plan_from_act_list",
    "remove_all_plan",
    "Planner",
    "PlanResult",
    "fastest_plan",
    "plan_for_target",
    "TrainConfig",
    "TrainResult",
    "evaluate_checkpoint",
    "load_for_eval",
]
