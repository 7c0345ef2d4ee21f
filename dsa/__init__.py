"""dsa: hardware-aware depth compression for PyTorch CNNs.

Three levels of API (as Torch-Pruning's graph / criteria / driver):

- graph: :func:`analyze` (torch.fx) finds activation sites and the segments a plan induces;
- plans: :class:`Plan`, :func:`load_plan`, :func:`make_plan`, :func:`plan_from_act_list`, and the planner
  (:func:`plan_for_target`, :func:`fastest_plan`, :class:`Planner`: the best plan for a latency target, exactly);
- transforms: :func:`apply_plan` (merge-ready network to finetune) and :func:`merge` (one conv per segment,
  verified numerically);
- training: :class:`TrainConfig` and ``dsa.train.train`` (finetune with distillation, merge, export, measure),
  :func:`evaluate_checkpoint` (the function is not re-exported here: ``dsa.train`` stays the module).
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
from dsa.graph import Analysis, analyze
from dsa.merge import apply_plan, merge  # eager: `merge` is also a submodule's name, which must not shadow it
from dsa.models import create_model, list_models
from dsa.plan import (
    Plan,
    act_list_of,
    ds_pattern_act_list,
    load_plan,
    make_plan,
    plan_from_act_list,
    remove_all_plan,
)

# the planner (scipy) and the trainer load on first use (PEP 562), so that `dsa models` or a library user who
# only merges does not pull them in
_LAZY = {
    "Planner": "dsa.planner",
    "PlanResult": "dsa.planner",
    "fastest_plan": "dsa.planner",
    "plan_for_target": "dsa.planner",
    "TrainConfig": "dsa.train",
    "TrainResult": "dsa.train",
    "evaluate_checkpoint": "dsa.train",
    "load_for_eval": "dsa.train",
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
