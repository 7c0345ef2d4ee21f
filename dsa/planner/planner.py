"""The planner: the best activation-removal plan for a latency target, exactly, with an integer program.

Formulation (details in docs/planner.md). :mod:`dsa.planner.candidates` turns the network into one DAG per linear run,
whose start-to-end paths are exactly the valid plans of that run; each edge has a predicted time and removes
some activations. With one binary ``x_e`` per edge::

    minimise    sum_e acc_e x_e                                   (accuracy cost of the removed activations)
    subject to  one unit of flow from each run's start to its end (a path per run)
                fixed_ms + sum_e time_e x_e  <=  budget_ms         (budget = batch / target throughput, ...)

solved with ``scipy.optimize.milp`` (HiGHS), then re-solved for the fastest plan at that accuracy cost (ties).
The dual, :func:`fastest_plan`, minimises time under an accuracy-cost budget. ``acc_e`` sums the cost of each
activation the edge removes: by default 1 (a plan removes as few activations as the target needs), or the
scores of an importance file. Block granularity (DepthShrinker's per-block decisions) adds a binary ``y_b`` per
block: every activation of the block is kept iff ``y_b = 0``, and the ReLU6 after a removed block's output
is taken iff ``y_b = 1``.

:func:`solve_dp` is an independent exact dynamic program over the same DAGs (Pareto labels of
(accuracy cost, time) per node, no discretisation; block decisions enumerated per independent stage), used
in tests as a cross-check of the MILP.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import roofline as rl
from dsa.errors import InternalError, PlanError
from dsa.formats.importance import DEFAULT_ACTIVATION_COST, is_cost, read_importance
from dsa.formats.plan import AddedActivation, Plan, act_list_of, bn_folded_plan, make_plan, plan_from_act_list
from dsa.ir import PRUNE_CONV, Analysis, Kind, prunable, prunable_blocks, segment_key
from dsa.latency.costs import CostModel, plan_ms
from dsa.latency.evaluate import cost_model, prediction_record
from dsa.planner.candidates import GRANULARITIES, KEEP, SEGMENT, Candidates, Edge, build_candidates
from dsa.planner.solver import BUDGET_RTOL, SOLVER, PathProblem, Solution, Tie, solve_milp
from dsa.vocab import DEFAULT_DEVICE


@dataclass(frozen=True)
class SegmentRow:
    """One piece of the planned network: a merged segment (or a single conv with its BN folded)."""

    members: tuple[str, ...]
    blocks: tuple[str, ...]
    convs: tuple[str, ...]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    channels: tuple[int, int]
    depthwise: bool
    residual: bool
    removes: tuple[str, ...]
    added_after: str
    baseline_ms: float  # the original ops of this piece
    planned_ms: float  # the merged conv (+ ops of the piece it does not cover, + an added ReLU6)

    def to_json(self) -> dict:
        return {
            "first": self.members[0],
            "last": self.members[-1],
            "blocks": list(self.blocks),
            "convs": list(self.convs),
            "kernel": list(self.kernel),
            "stride": list(self.stride),
            "channels": list(self.channels),
            "depthwise": self.depthwise,
            "residual": self.residual,
            "removes": list(self.removes),
            "added_after": self.added_after or None,
            "baseline_ms": self.baseline_ms,
            "planned_ms": self.planned_ms,
        }


@dataclass(frozen=True)
class PlanResult:
    """A solved plan with its predicted figures and the solver's report."""

    plan: Plan
    device: str
    precision: str
    batch: int
    source: str  # where the times came from
    granularity: str
    baseline_ms: float
    planned_ms: float
    accuracy_cost: float
    accuracy_proxy: str
    removed: tuple[str, ...]
    segments: tuple[SegmentRow, ...]
    solver: dict
    target: dict
    act_list: tuple[int, ...] | None = None  # block granularity: DepthShrinker's keep list
    act_list_exact: bool | None = None  # whether importing that keep list gives exactly these segments
    bn_folded_ms: float | None = None  # the original with only its BNs folded (nothing removed)
    runtime: str = "eager"  # what the times are of

    @property
    def baseline_throughput(self) -> float:
        return self.batch / (self.baseline_ms / 1e3)

    @property
    def planned_throughput(self) -> float:
        return self.batch / (self.planned_ms / 1e3)

    @property
    def speedup(self) -> float:
        return self.baseline_ms / self.planned_ms

    def prediction(self) -> dict:
        return prediction_record(
            self.device,
            self.precision,
            self.batch,
            self.source,
            self.baseline_ms,
            self.planned_ms,
            self.bn_folded_ms,
            self.runtime,
        )


def _cost_label(importance: Mapping[str, float] | None, default_cost: float) -> str:
    return "importance scores" if importance else f"removed activations (each costs {default_cost:g})"


class Planner:
    """Candidates and costs of one network on one device, ready to solve any number of targets.

    ``importance`` maps activation names to the accuracy cost of removing them (``default_cost`` for the rest;
    without it every removed activation costs 1); at block granularity, ``block_importance`` maps blocks to the
    cost of merging each as a whole (a block's activations then cost that much together). ``keep`` / ``remove``
    force activations (or whole blocks, by block name). ``int8_costs`` (:func:`dsa.importance.int8_costs`: segment
    key -> what that segment costs when deployed in INT8) adds each chosen segment's INT8 cost to the plan's
    accuracy cost: planning for INT8 deployment (``precision="int8"`` and the same runtime only). ``costs``
    overrides the time model (default: the roofline of ``device``, or the measured ``profile`` where it has times).
    """

    def __init__(
        self,
        analysis: Analysis,
        device: str | rl.DeviceSpec = DEFAULT_DEVICE,
        batch: int = 128,
        precision: str = "fp32",
        *,
        importance: Mapping[str, float] | None = None,
        default_cost: float = DEFAULT_ACTIVATION_COST,
        block_importance: Mapping[str, float] | None = None,
        keep: Sequence[str] = (),
        remove: Sequence[str] = (),
        granularity: str = "activation",
        max_kernel: int | None = None,
        costs: CostModel | None = None,
        profile=None,
        cut_after: Sequence[str] = (),
        units_anywhere: bool = True,
        measured_only: bool = False,
        prune_convs: bool = False,
        prune_costs: Mapping[str, float] | None = None,
        int8_costs: Mapping[str, float] | None = None,
        int8_runtime: str = "",
    ) -> None:
        if granularity not in GRANULARITIES:
            raise PlanError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise PlanError(f"batch size must be a positive integer, got {batch!r}")
        self.analysis = analysis
        self.granularity = granularity
        self.max_kernel = max_kernel
        if costs is None:
            costs = cost_model(analysis, device, batch, precision, profile)
        self.costs = costs
        self.device = costs.device.name
        self.batch = costs.batch
        self.precision = costs.precision
        self.importance = dict(importance) if importance else None
        self.accuracy_proxy = _cost_label(importance, default_cost)
        self.act_cost = self._act_costs(importance, default_cost)
        if block_importance:
            self._block_costs(block_importance)
            self.accuracy_proxy += " + whole-block scores"
        self.keep, self.remove = self._forced(keep, remove)
        self.cut_after = self._cut_ids(cut_after)
        self.units_anywhere = units_anywhere
        if measured_only and not hasattr(costs, "measures"):
            raise PlanError("--measured-only needs a measured profile (--profile, or one found under profiles/<gpu>/)")
        self.measured_only = measured_only
        self.prune_convs = prune_convs
        self.prune_cost = self._prune_costs(prune_costs, default_cost) if prune_convs else {}
        self.candidates: Candidates = build_candidates(
            analysis, costs, granularity, max_kernel, units_anywhere, self.prune_cost if prune_convs else None
        )
        self.int8_cost = self._int8_costs(int8_costs, int8_runtime) if int8_costs else {}
        if self.int8_cost:
            self.accuracy_proxy += f" + INT8 costs per segment ({int8_runtime})"
        self.problem, self.edge_of = self._problem()

    # --- inputs
    def _int8_costs(self, given: Mapping[str, float], runtime: str) -> dict[str, float]:
        """Each segment edge's INT8 cost (by edge index), from costs keyed by :func:`dsa.ir.segment_key`; every
        segment the planner can choose must have one."""
        if self.precision != "int8" or self.costs.runtime != runtime:
            raise PlanError(
                f"INT8 costs of {runtime} price plans deployed in INT8 under {runtime}; this plan is "
                f"{self.precision} under {self.costs.runtime} (use --precision int8 --runtime {runtime}, or an "
                "importance file without int8 costs)"
            )
        costs, missing = {}, []
        for e in self.candidates.edges:
            if e.kind == SEGMENT and e.segment is not None and e.segment.convs:
                key = segment_key(e.segment, e.prunes)
                if key in given:
                    costs[e.index] = float(given[key])
                else:
                    missing.append(key)
        if missing:
            raise PlanError(
                f"the importance file's INT8 costs lack {len(missing)} segment(s) the planner can choose (e.g. "
                f"{missing[0]!r}); score them with the same network, input size and --prune-convs as this plan "
                "(`dsa importance --int8`)"
            )
        return costs

    def _act_costs(self, importance: Mapping[str, float] | None, default: float) -> dict[str, float]:
        names = {s.name for s in self.analysis.activations}
        costs = dict.fromkeys(self.analysis.removable, float(default))
        for name, v in (importance or {}).items():
            if name not in names:
                raise PlanError(
                    f"importance: {name!r} is not an activation of {self.analysis.model_name} (see `dsa analyze`)"
                )
            if not is_cost(v):
                raise PlanError(f"importance: the cost of {name!r} must be a finite number >= 0, got {v!r}")
            if name in costs:
                costs[name] = float(v)
        return costs

    def _block_costs(self, block_importance: Mapping[str, float]) -> None:
        """Block granularity removes a block's activations together, so a block's whole cost (measured by
        merging it, e.g. `dsa importance`'s ``segments``) is spread evenly over them: their sum is that cost."""
        if self.granularity != "block":
            raise PlanError("whole-block importance applies to --granularity block only")
        a = self.analysis
        for block, v in block_importance.items():
            if block not in a.blocks():
                raise PlanError(f"importance: {block!r} is not a block of {a.model_name} (see `dsa analyze`)")
            if not is_cost(v):
                raise PlanError(f"importance: the cost of block {block!r} must be a finite number >= 0, got {v!r}")
            members = [s.name for s in a.activations if s.block == block and s.removable]
            for name in members:
                self.act_cost[name] = float(v) / len(members)

    def _expand(self, names: Sequence[str], option: str) -> dict[str, str]:
        """Activation names for each given name (an activation, or a block meaning all its activations)."""
        a = self.analysis
        sites = {s.name: s for s in a.activations}
        blocks = set(a.blocks())
        out: dict[str, str] = {}
        for name in names:
            if name in sites:
                out[name] = name
            elif name in blocks:
                for s in a.activations:
                    if s.block == name:
                        out[s.name] = name
            else:
                raise PlanError(
                    f"{option} {name!r} is neither an activation nor a block of {a.model_name} "
                    "(see `dsa analyze` for the names)"
                )
        return out

    def _forced(self, keep: Sequence[str], remove: Sequence[str]) -> tuple[set[str], set[str]]:
        a = self.analysis
        both = sorted(set(keep) & set(remove))
        if both:
            raise PlanError(f"{both[0]!r} is given to both --keep and --remove; give it to one of them")
        k = self._expand(keep, "--keep")
        r = self._expand(remove, "--remove")
        clash = sorted(set(k) & set(r))
        if clash:
            raise PlanError(
                f"activation {clash[0]} is kept by --keep {k[clash[0]]} and removed by --remove {r[clash[0]]}"
            )
        for name, given in r.items():
            site = a.site(name)
            if not site.removable:
                raise PlanError(f"--remove {given}: {name} cannot be removed: {site.reason}")
        keep_set, remove_set = set(k), set(r)
        if self.granularity == "block":
            block_of = {s.name: s.block for s in a.activations}
            kb = {block_of[n] for n in keep_set}
            rb = {block_of[n] for n in remove_set}
            clash_b = sorted(kb & rb)
            if clash_b:
                raise PlanError(
                    f"block {clash_b[0]} has activations in both --keep and --remove; with --granularity block "
                    "a block is kept or removed as a whole"
                )
            keep_set = {s.name for s in a.activations if s.block in kb}
            remove_set = {s.name for s in a.activations if s.block in rb}
            for name in sorted(remove_set):
                if not a.site(name).removable:
                    raise PlanError(
                        f"--remove {r.get(name, block_of[name])}: {name} cannot be removed: {a.site(name).reason}"
                    )
        return keep_set, remove_set

    def _prune_costs(self, given: Mapping[str, float] | None, default: float) -> dict[str, float]:
        if not self.units_anywhere:
            raise PlanError("--prune-convs plans in the wider segment space; leave out --units-first")
        return pruning_costs(self.analysis, given, default)

    def _cut_ids(self, names: Sequence[str]) -> set[str]:
        """Op ids after which no segment may go on (``--cut-after``: e.g. a feature map another head reads)."""
        a = self.analysis
        for name in names:
            if name not in a.by_name:
                raise PlanError(
                    f"--cut-after {name!r} is not an op of {a.model_name} (op names are qualified module names, as "
                    "in `dsa analyze`'s segments)"
                )
        return {a.by_name[n].id for n in names}

    def _problem(self) -> tuple[PathProblem, list[Edge]]:
        c = self.candidates
        fixed_y: dict[str, int] = {}
        if self.granularity == "block":
            for block in c.block_acts:
                acts = set(c.block_acts[block]) | {s.name for s in self.analysis.activations if s.block == block}
                if block in c.block_locked or not c.block_acts[block] or acts & self.keep:
                    fixed_y[block] = 0
                elif acts & self.remove:
                    fixed_y[block] = 1
        block_of = {s.name: s.block for s in self.analysis.activations}

        def allowed(e: Edge) -> bool:
            if set(e.removes) & self.keep or set(e.keeps) & self.remove:
                return False
            if e.kind == SEGMENT and self.cut_after & set(e.ops[:-1]):
                return False  # the segment goes on past an op the plan must cut after
            if self.measured_only and e.segment is not None and e.segment.merged and not self.costs.measures(e.segment):
                return False  # a merged conv the profile has no time for
            if self.granularity == "block":
                if any(fixed_y.get(block_of[n]) == 0 for n in e.removes):
                    return False
                if any(fixed_y.get(block_of[n]) == 1 for n in e.keeps):
                    return False
                if e.cut_block and fixed_y.get(e.cut_block) is not None:
                    return bool(e.added_after) == bool(fixed_y[e.cut_block])
            return True

        edges = _on_paths([e for e in c.edges if allowed(e)], c.starts, c.ends)
        index = {e.index: k for k, e in enumerate(edges)}
        ties: list[Tie] = []
        if self.granularity == "block":
            for block, acts in c.block_acts.items():
                if not acts and block not in c.block_fixed:
                    continue
                keep_groups = tuple(
                    tuple(index[e.index] for e in edges if e.kind == KEEP and name in e.keeps) for name in acts
                )
                ties.append(
                    Tie(
                        block,
                        keep_groups,
                        tuple(index[e.index] for e in edges if set(e.removes) & set(acts)),
                        tuple(index[e.index] for e in edges if e.cut_block == block and e.added_after),
                        tuple(index[e.index] for e in edges if e.cut_block == block and not e.added_after),
                        c.block_fixed.get(block, ("", 0.0))[1],
                        fixed_y.get(block),
                    )
                )
        problem = PathProblem(
            n_nodes=len(c.nodes),
            src=tuple(e.src for e in edges),
            dst=tuple(e.dst for e in edges),
            time_ms=tuple(e.time_ms for e in edges),
            acc=tuple(
                math.fsum(
                    [
                        *(self.act_cost[n] for n in e.removes),
                        *(self.prune_cost[n] for n in e.prunes),
                        self.int8_cost.get(e.index, 0.0),
                    ]
                )
                for e in edges
            ),
            starts=tuple(c.starts),
            ends=tuple(c.ends),
            fixed_ms=c.fixed_ms,
            ties=tuple(ties),
        )
        return problem, edges

    # --- budgets
    @property
    def baseline_ms(self) -> float:
        return self.candidates.baseline_ms

    def budget_ms(
        self,
        target_latency_ms: float | None = None,
        target_throughput: float | None = None,
        target_speedup: float | None = None,
    ) -> tuple[float, dict]:
        given = {
            "latency_ms": target_latency_ms,
            "throughput_img_s": target_throughput,
            "speedup": target_speedup,
        }
        chosen = {k: v for k, v in given.items() if v is not None}
        if len(chosen) != 1:
            raise PlanError(
                "give exactly one target: a latency (ms per batch), a throughput (images/s) or a speed-up; got "
                + (", ".join(chosen) if chosen else "none")
            )
        ((kind, value),) = chosen.items()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise PlanError(f"the target {kind} must be a positive number, got {value!r}")
        if kind == "latency_ms":
            budget = float(value)
        elif kind == "throughput_img_s":
            budget = 1e3 * self.batch / value
        else:
            budget = self.baseline_ms / value
        return budget, {kind: float(value), "budget_ms": budget}

    # --- solving
    def for_target(
        self,
        target_latency_ms: float | None = None,
        target_throughput: float | None = None,
        target_speedup: float | None = None,
        time_limit_s: float = 60.0,
    ) -> PlanResult:
        """The plan of least accuracy cost that meets the target (the fastest such plan)."""
        budget, target = self.budget_ms(target_latency_ms, target_throughput, target_speedup)
        sol = solve_milp(self.problem, budget_ms=budget * (1 + BUDGET_RTOL), time_limit_s=time_limit_s)
        if not sol.found:
            self._unreachable(target, sol)
        return self._result(sol, target, "least accuracy cost within the latency budget")

    def fastest(self, max_accuracy_cost: float | None = None, time_limit_s: float = 60.0) -> PlanResult:
        """The fastest plan whose accuracy cost is at most ``max_accuracy_cost`` (no limit: None)."""
        if max_accuracy_cost is not None and (
            isinstance(max_accuracy_cost, bool)
            or not isinstance(max_accuracy_cost, (int, float))
            or not max_accuracy_cost >= 0
        ):
            raise PlanError(f"the accuracy-cost budget must be a number >= 0, got {max_accuracy_cost!r}")
        budget = None if max_accuracy_cost is None else float(max_accuracy_cost) * (1 + BUDGET_RTOL) + 1e-12
        sol = solve_milp(self.problem, max_acc=budget, time_limit_s=time_limit_s)
        if not sol.found:
            raise PlanError(
                f"no plan of {self.analysis.model_name} satisfies the constraints (--keep/--remove/--max-kernel); "
                f"solver status: {sol.status}"
            )
        return self._result(sol, {"max_accuracy_cost": max_accuracy_cost}, "fastest within the accuracy-cost budget")

    def _unreachable(self, target: dict, sol: Solution) -> None:
        best = solve_milp(self.problem)
        what = next(k for k in target if k != "budget_ms")
        asked = {
            "latency_ms": f"{target[what]:g} ms per batch",
            "throughput_img_s": f"{target[what]:g} img/s",
            "speedup": f"a {target[what]:g}x speed-up",
        }[what]
        constrained = " with these --keep/--remove/--max-kernel options" if self._constrained() else ""
        if not best.found:
            raise PlanError(
                f"no plan of {self.analysis.model_name} satisfies the constraints{constrained} (solver: {best.status})"
            )
        thr = self.batch / (best.time_ms / 1e3)
        raise PlanError(
            f"the target ({asked}) is unreachable for {self.analysis.model_name} on {self.device} ({self.precision}, "
            f"batch {self.batch}): the best achievable{constrained} is {thr:.0f} img/s ({best.time_ms:.2f} ms per "
            f"batch, {self.baseline_ms / best.time_ms:.2f}x the original {self.baseline_ms:.2f} ms); "
            "lower the target or allow more removals"
        )

    def _constrained(self) -> bool:
        return bool(self.keep or self.remove or self.cut_after or self.measured_only or self.max_kernel is not None)

    def _result(self, sol: Solution, target: dict, objective: str) -> PlanResult:
        a = self.analysis
        chosen = [self.edge_of[k] for k in sol.edges]
        removed, added, boundaries = self.candidates.path_plan_parts(chosen)
        source: dict[str, Any] = {"kind": "planner", "granularity": self.granularity}
        rule = "units-anywhere" if self.units_anywhere else "units-first"
        pruned = self.candidates.path_prunes(chosen)
        plan = make_plan(
            a,
            removed,
            [AddedActivation(x, t) for x, t in added],
            boundaries,
            source=source,
            segment_rule=rule,
            pruned=pruned,
        )
        want = sorted(e.segment.convs for e in chosen if e.segment is not None and e.segment.merged)
        got = sorted(tuple(s["convs"]) for s in plan.segments)
        if want != got:  # a postcondition: the plan must induce exactly the segments that were priced
            raise InternalError(f"the planned segments {want} do not match the plan's {got}")
        order = {op_id: k for k, op_id in enumerate(a.ops)}
        act_list = None
        act_list_exact = None
        if self.granularity == "block":
            act_list = tuple(act_list_of(plan, a))
            ds = plan_from_act_list(a, list(act_list))
            act_list_exact = sorted(tuple(x["convs"]) for x in ds.segments) == got and ds.added == plan.added
            source["act_list"] = list(act_list)
            source["act_list_same_segments"] = act_list_exact
        rows = tuple(
            SegmentRow(
                e.segment.members,
                e.segment.blocks,
                e.segment.convs,
                e.segment.kernel,
                e.segment.stride,
                (e.segment.in_channels, e.segment.out_channels),
                e.segment.depthwise,
                e.segment.residual,
                e.removes,
                e.added_after,
                e.baseline_ms,
                e.time_ms,
            )
            for e in sorted(chosen, key=lambda e: _order(order, e))
            if e.segment is not None
        )
        solver = {
            "name": SOLVER,
            "objective": objective,
            "status": sol.status,
            "objective_value": sol.objective,
            "mip_gap": sol.mip_gap,
            "solve_s": sol.solve_s,
            "solves": sol.solves,
            "variables": sol.variables,  # after the presolve (dominated edges dropped)
            "edges": self.problem.n_edges,
            "nodes": self.problem.n_nodes,
        }
        result = PlanResult(
            plan=plan,
            device=self.device,
            precision=self.precision,
            batch=self.batch,
            source=getattr(self.costs, "source", type(self.costs).__name__),
            granularity=self.granularity,
            baseline_ms=self.baseline_ms,
            planned_ms=sol.time_ms,
            accuracy_cost=sol.accuracy_cost,
            accuracy_proxy=self.accuracy_proxy,
            removed=plan.removed,
            segments=rows,
            solver=solver,
            target=target,
            act_list=act_list,
            act_list_exact=act_list_exact,
            bn_folded_ms=plan_ms(a, bn_folded_plan(a), self.costs),
            runtime=self.costs.runtime,
        )
        meta = {
            "prediction": result.prediction(),
            "accuracy_cost": sol.accuracy_cost,
            "accuracy_proxy": result.accuracy_proxy,
            "target": target,
            "solver": solver,
            "granularity": self.granularity,
            "max_kernel": self.max_kernel,
            "keep": sorted(self.keep),
            "remove": sorted(self.remove),
            "segment_times": [r.to_json() for r in rows if len(r.convs) > 1],
        }
        return _with_plan(result, plan.with_metadata(**meta))


def pruning_costs(a: Analysis, given: Mapping[str, float] | None, default: float) -> dict[str, float]:
    """Accuracy cost of pruning each prunable op, as the planner charges it: an importance file's ``pruned`` scores
    where given, else a pruned conv costs what a removed activation does (``default``) and a pruned residual block
    as much as its convs together."""
    kinds = prunable(a)
    blocks = prunable_blocks(a)
    costs: dict[str, float] = {}
    for name, kind in kinds.items():
        if kind == PRUNE_CONV:
            costs[name] = float(default)
        else:
            branch = blocks[a.by_name[name].id].branch
            costs[name] = float(default) * sum(a.ops[b].kind == Kind.CONV for b in branch)
    for name, v in (given or {}).items():
        if name not in kinds:
            raise PlanError(f"importance: pruned {name!r} is not a prunable op of {a.model_name}")
        if not is_cost(v):
            raise PlanError(f"importance: the cost of pruning {name!r} must be a finite number >= 0, got {v!r}")
        costs[name] = float(v)
    return costs


def _on_paths(edges: list[Edge], starts: Sequence[int], ends: Sequence[int]) -> list[Edge]:
    """The edges that lie on some start-to-end path (forcing activations can leave dead ends)."""
    fwd: dict[int, list[Edge]] = {}
    bwd: dict[int, list[Edge]] = {}
    for e in edges:
        fwd.setdefault(e.src, []).append(e)
        bwd.setdefault(e.dst, []).append(e)

    def reach(seeds: Sequence[int], adj: dict[int, list[Edge]], forward: bool) -> set[int]:
        seen, stack = set(seeds), list(seeds)
        while stack:
            for e in adj.get(stack.pop(), []):
                w = e.dst if forward else e.src
                if w not in seen:
                    seen.add(w)
                    stack.append(w)
        return seen

    alive = reach(starts, fwd, True) & reach(ends, bwd, False)
    return [e for e in edges if e.src in alive and e.dst in alive]


def _with_plan(r: PlanResult, plan: Plan) -> PlanResult:
    return replace(r, plan=plan)


def _order(order: Mapping[str, int], e: Edge) -> int:
    return min(order[o] for o in e.ops) if e.ops else 0


def plan_for_target(
    analysis: Analysis,
    device: str | rl.DeviceSpec = DEFAULT_DEVICE,
    batch: int = 128,
    precision: str = "fp32",
    *,
    target_latency_ms: float | None = None,
    target_throughput: float | None = None,
    target_speedup: float | None = None,
    **options: Any,
) -> PlanResult:
    """The plan of least accuracy cost whose predicted latency meets one target: ``target_latency_ms`` (per batch
    of ``batch`` images), ``target_throughput`` (images/s) or ``target_speedup`` (over the original network).
    ``options`` are :class:`Planner`'s keyword options (importance, keep, remove, granularity, ...).
    Raises :class:`PlanError` when the target is unreachable (saying the best achievable throughput)."""
    planner = Planner(analysis, device, batch, precision, **options)
    return planner.for_target(target_latency_ms, target_throughput, target_speedup)


def fastest_plan(
    analysis: Analysis,
    device: str | rl.DeviceSpec = DEFAULT_DEVICE,
    batch: int = 128,
    precision: str = "fp32",
    *,
    max_accuracy_cost: float | None = None,
    **options: Any,
) -> PlanResult:
    """The fastest plan whose accuracy cost is at most ``max_accuracy_cost`` (the dual of plan_for_target);
    ``options`` are :class:`Planner`'s keyword options."""
    return Planner(analysis, device, batch, precision, **options).fastest(max_accuracy_cost)


def solve_plan(
    analysis: Analysis,
    device: str | rl.DeviceSpec = DEFAULT_DEVICE,
    batch: int = 128,
    precision: str = "fp32",
    *,
    target_latency_ms: float | None = None,
    target_throughput: float | None = None,
    target_speedup: float | None = None,
    max_accuracy_cost: float | None = None,
    importance_file: str | Path | None = None,
    **options: Any,
) -> PlanResult:
    """What ``dsa plan`` solves: the fastest plan within ``max_accuracy_cost``, or the plan of least accuracy cost
    for one latency target; accuracy costs from an importance file (its per-block costs too at block granularity).
    ``options`` are :class:`Planner`'s (granularity, keep, remove, max_kernel, profile, costs)."""
    if importance_file is not None:
        imp = read_importance(importance_file)
        options |= {"importance": imp.scores, "default_cost": imp.default}
        if options.get("prune_convs") and imp.pruned:
            options["prune_costs"] = imp.pruned
        if options.get("granularity") == "block":  # dsa importance's whole-block scores, where the file has them
            options["block_importance"] = imp.segments or None
        if imp.int8 and precision == "int8":  # planning for INT8 deployment: each segment's INT8 cost too
            options |= {"int8_costs": imp.int8, "int8_runtime": imp.int8_runtime}
    planner = Planner(analysis, device, batch, precision, **options)
    if max_accuracy_cost is not None:
        return planner.fastest(max_accuracy_cost)
    return planner.for_target(target_latency_ms, target_throughput, target_speedup)
