"""The planner: candidate segments as a DAG per linear run (:mod:`.candidates`), the integer program
(:mod:`.solver`) and an exact DP cross-check (:mod:`.dp`), the :class:`~dsa.planner.planner.Planner`
(:mod:`.planner`), the accuracy/speed frontier (:mod:`.pareto`) and its figure (:mod:`.plot`). No torch."""

# `from dsa.planner import Planner` works; loaded on first use so that the submodules stay cheap to import
_LAZY = {
    "Planner": "dsa.planner.planner",
    "PlanResult": "dsa.planner.planner",
    "plan_for_target": "dsa.planner.planner",
    "fastest_plan": "dsa.planner.planner",
    "pareto_points": "dsa.planner.pareto",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'dsa.planner' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
