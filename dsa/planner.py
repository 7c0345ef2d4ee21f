"""The planner: the best activation-removal plan for a latency target, exactly, with an integer program.

Formulation (details in docs/planner.md). :mod:`dsa.candidates` turns the network into one DAG per linear run,
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

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

import roofline as rl
from dsa.candidates import (
    GRANULARITIES,
    KEEP,
    Candidates,
    CostModel,
    Edge,
    ProfileCosts,
    RooflineCosts,
    build_candidates,
    plan_ms,
)
from dsa.costs import prediction_record
from dsa.errors import DsaError, InternalError, PlanError
from dsa.graph import Analysis
from dsa.io import read_json
from dsa.plan import AddedActivation, Plan, act_list_of, bn_folded_plan, make_plan, plan_from_act_list
from dsa.vocab import DEFAULT_DEVICE

SOLVER = "scipy.optimize.milp (HiGHS)"
DEFAULT_ACTIVATION_COST = 1.0
#: Relative slack on the time budget: a plan within 1e-9 of the target counts as meeting it.
BUDGET_RTOL = 1e-9
_STATUS = {0: "optimal", 1: "time limit reached", 2: "infeasible", 3: "unbounded", 4: "error"}

# -------------------------------------------------------------------------------------- the problem


@dataclass(frozen=True)
class Tie:
    """One block of a block-granular problem: ``y`` (1 = removed) ties its activations together.

    For each activation, the edges that keep it sum to ``1 - y``; the edges that add the block's ReLU6 sum to
    ``y``; ``fixed_ms`` is the time of that ReLU6 when it lies outside every run (paid when ``y = 1``)."""

    name: str
    keep_groups: tuple[tuple[int, ...], ...]
    remove_edges: tuple[int, ...]  # edges removing any of its activations
    added_edges: tuple[int, ...]
    plain_edges: tuple[int, ...]  # the copies of the added edges without the ReLU6
    fixed_ms: float = 0.0
    fixed: int | None = None  # forced value of y


@dataclass(frozen=True)
class PathProblem:
    """A shortest-path-with-budget problem: one path per run through a DAG of ``n_nodes`` nodes."""

    n_nodes: int
    src: tuple[int, ...]
    dst: tuple[int, ...]
    time_ms: tuple[float, ...]
    acc: tuple[float, ...]
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    fixed_ms: float = 0.0
    ties: tuple[Tie, ...] = ()

    @property
    def n_edges(self) -> int:
        return len(self.src)


@dataclass(frozen=True)
class Solution:
    status: str
    edges: tuple[int, ...]  # chosen edge indices
    accuracy_cost: float
    time_ms: float  # including fixed_ms
    objective: float
    mip_gap: float | None
    solve_s: float
    solves: int

    @property
    def found(self) -> bool:
        """Whether the solver returned a plan (optimal, or the best one at the time limit)."""
        return not math.isnan(self.time_ms)


@contextlib.contextmanager
def quiet_fd1() -> Iterator[None]:
    """Point file descriptor 1 at /dev/null (HiGHS writes there even with disp=False), so that a JSON document
    written to stdout stays valid."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 at all
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None).fflush(None)  # C stdio buffers of the solver go to /dev/null too
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _milp_once(
    p: PathProblem, objective: str, budget_ms: float | None, max_acc: float | None, time_limit_s: float
) -> tuple[Any, float]:
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix, vstack

    ne, nt = p.n_edges, len(p.ties)
    nv = ne + nt
    time_vec = np.concatenate([np.asarray(p.time_ms, float), [t.fixed_ms for t in p.ties]])
    acc_vec = np.concatenate([np.asarray(p.acc, float), np.zeros(nt)])
    rows, cols, vals = [], [], []
    for e in range(ne):
        rows += [p.src[e], p.dst[e]]
        cols += [e, e]
        vals += [1.0, -1.0]
    flow = coo_matrix((vals, (rows, cols)), shape=(p.n_nodes, nv))
    rhs = np.zeros(p.n_nodes)
    for s, t in zip(p.starts, p.ends, strict=True):
        rhs[s] += 1.0
        rhs[t] -= 1.0
    blocks = [flow]
    lo, hi = [rhs], [rhs]
    tie_rows, tie_cols, tie_vals, tie_rhs = [], [], [], []
    r = 0
    for k, tie in enumerate(p.ties):
        for group in tie.keep_groups:  # sum(keep) + y = 1
            for e in group:
                tie_rows.append(r)
                tie_cols.append(e)
                tie_vals.append(1.0)
            tie_rows.append(r)
            tie_cols.append(ne + k)
            tie_vals.append(1.0)
            tie_rhs.append(1.0)
            r += 1
        if tie.added_edges:  # sum(added) - y = 0
            for e in tie.added_edges:
                tie_rows.append(r)
                tie_cols.append(e)
                tie_vals.append(1.0)
            tie_rows.append(r)
            tie_cols.append(ne + k)
            tie_vals.append(-1.0)
            tie_rhs.append(0.0)
            r += 1
    if r:
        blocks.append(coo_matrix((tie_vals, (tie_rows, tie_cols)), shape=(r, nv)))
        lo.append(np.asarray(tie_rhs))
        hi.append(np.asarray(tie_rhs))
    if budget_ms is not None:
        blocks.append(coo_matrix(time_vec.reshape(1, -1)))
        lo.append(np.array([-np.inf]))
        hi.append(np.array([budget_ms - p.fixed_ms]))
    if max_acc is not None:
        blocks.append(coo_matrix(acc_vec.reshape(1, -1)))
        lo.append(np.array([-np.inf]))
        hi.append(np.array([max_acc]))
    a_mat = vstack(blocks).tocsr()
    lb = np.zeros(nv)
    ub = np.ones(nv)
    for k, tie in enumerate(p.ties):
        if tie.fixed is not None:
            lb[ne + k] = ub[ne + k] = float(tie.fixed)
    c = acc_vec if objective == "acc" else time_vec
    t0 = time.perf_counter()
    with quiet_fd1():
        res = milp(
            c,
            integrality=np.ones(nv),
            bounds=Bounds(lb, ub),
            constraints=[LinearConstraint(a_mat, np.concatenate(lo), np.concatenate(hi))],
            options={"disp": False, "mip_rel_gap": 0.0, "time_limit": time_limit_s},
        )
    return res, time.perf_counter() - t0


def _solution(p: PathProblem, res, solve_s: float, solves: int) -> Solution:
    status = _STATUS.get(res.status, "error")
    if res.x is None:
        return Solution(status, (), math.nan, math.nan, math.nan, None, solve_s, solves)
    x = np.round(res.x[: p.n_edges]).astype(int)
    y = np.round(res.x[p.n_edges :]).astype(int)
    chosen = tuple(int(e) for e in np.flatnonzero(x))
    acc = math.fsum(p.acc[e] for e in chosen)
    t = (
        p.fixed_ms
        + math.fsum(p.time_ms[e] for e in chosen)
        + math.fsum(tie.fixed_ms for tie, v in zip(p.ties, y, strict=True) if v)
    )
    gap = getattr(res, "mip_gap", None)
    return Solution(status, chosen, acc, t, float(res.fun), None if gap is None else float(gap), solve_s, solves)


def solve_milp(
    p: PathProblem,
    *,
    budget_ms: float | None = None,
    max_acc: float | None = None,
    time_limit_s: float = 60.0,
) -> Solution:
    """With ``budget_ms``: the least accuracy cost within the time budget, then the fastest plan at that cost.
    Otherwise: the fastest plan (within ``max_acc`` if given), then the least accuracy cost at that time."""
    if p.n_edges == 0 and not p.ties:  # nothing to decide
        ok = all(s == t for s, t in zip(p.starts, p.ends, strict=True))
        ok = ok and (budget_ms is None or p.fixed_ms <= budget_ms) and (max_acc is None or max_acc >= 0)
        t = p.fixed_ms if ok else math.nan
        return Solution("optimal" if ok else "infeasible", (), 0.0 if ok else math.nan, t, 0.0, 0.0, 0.0, 0)
    if budget_ms is not None:
        res, s1 = _milp_once(p, "acc", budget_ms, max_acc, time_limit_s)
        if res.x is None:
            return _solution(p, res, s1, 1)
        best = float(res.fun)
        res2, s2 = _milp_once(p, "time", budget_ms, best + 1e-6 * max(1.0, abs(best)), time_limit_s)
        sol = _solution(p, res2 if res2.x is not None else res, s1 + s2, 2)
        return Solution(sol.status, sol.edges, sol.accuracy_cost, sol.time_ms, best, sol.mip_gap, sol.solve_s, 2)
    res, s1 = _milp_once(p, "time", None, max_acc, time_limit_s)
    if res.x is None:
        return _solution(p, res, s1, 1)
    fastest = float(res.fun) + p.fixed_ms
    res2, s2 = _milp_once(p, "acc", fastest + 1e-9 * max(1.0, fastest), max_acc, time_limit_s)
    sol = _solution(p, res2 if res2.x is not None else res, s1 + s2, 2)
    return Solution(sol.status, sol.edges, sol.accuracy_cost, sol.time_ms, fastest, sol.mip_gap, sol.solve_s, 2)


# ------------------------------------------------------------------------------------- the exact DP

Frontier = list[tuple[float, float]]  # (accuracy cost, time), sorted by cost, times strictly decreasing


def _pareto(points: Iterable[tuple[float, float]]) -> Frontier:
    out: Frontier = []
    for acc, t in sorted(points):
        if not out or t < out[-1][1]:
            if out and out[-1][0] == acc:
                continue
            out.append((acc, t))
    return out


def _frontier_sum(a: Frontier, b: Frontier) -> Frontier:
    return _pareto((x[0] + y[0], x[1] + y[1]) for x in a for y in b)


def _topological(p: PathProblem) -> list[int]:
    indeg = [0] * p.n_nodes
    out: list[list[int]] = [[] for _ in range(p.n_nodes)]
    for e in range(p.n_edges):
        indeg[p.dst[e]] += 1
        out[p.src[e]].append(e)
    queue = [v for v in range(p.n_nodes) if indeg[v] == 0]
    order = []
    while queue:
        v = queue.pop()
        order.append(v)
        for e in out[v]:
            w = p.dst[e]
            indeg[w] -= 1
            if indeg[w] == 0:
                queue.append(w)
    if len(order) != p.n_nodes:
        raise DsaError("the candidate graph has a cycle")
    return order


def _reach(seeds: Iterable[int], adj: Sequence[Sequence[int]]) -> set[int]:
    seen = set(seeds)
    stack = list(seen)
    while stack:
        for w in adj[stack.pop()]:
            if w not in seen:
                seen.add(w)
                stack.append(w)
    return seen


def _stages(p: PathProblem, pos: Mapping[int, int]) -> list[tuple[int, int, list[int]]] | None:
    """Split every run at the nodes that all its paths visit: (first node, last node, edges) per stage; None
    when some run has no path at all. Only nodes on some start-to-end path count, so that a node is visited by
    every path exactly when no edge jumps over it in topological order."""
    fwd: list[list[int]] = [[] for _ in range(p.n_nodes)]
    bwd: list[list[int]] = [[] for _ in range(p.n_nodes)]
    for e in range(p.n_edges):
        fwd[p.src[e]].append(p.dst[e])
        bwd[p.dst[e]].append(p.src[e])
    stages = []
    for s, t in zip(p.starts, p.ends, strict=True):
        alive = _reach([s], fwd) & _reach([t], bwd)
        if t not in alive:
            return None  # this run has no path: infeasible
        nodes = sorted(alive, key=pos.__getitem__)
        rank = {v: k for k, v in enumerate(nodes)}
        edges = [e for e in range(p.n_edges) if p.src[e] in alive and p.dst[e] in alive]
        jump = [0] * (len(nodes) + 1)  # edges jumping over each position
        for e in edges:
            a, b = rank[p.src[e]], rank[p.dst[e]]
            if b > a + 1:
                jump[a + 1] += 1
                jump[b] -= 1
        cuts, running = [], 0
        for k, v in enumerate(nodes):
            running += jump[k]
            if running == 0:
                cuts.append(v)
        for a, b in zip(cuts, cuts[1:], strict=False):
            lo, hi = rank[a], rank[b]
            stages.append((a, b, [e for e in edges if lo <= rank[p.src[e]] and rank[p.dst[e]] <= hi]))
    return stages


def _stage_frontier(p: PathProblem, pos: Mapping[int, int], first: int, last: int, edges: Iterable[int]) -> Frontier:
    """Pareto labels from ``first`` to ``last`` over ``edges``, nodes in topological order (``pos``)."""
    out: dict[int, list[int]] = {}
    nodes = {first, last}
    for e in edges:
        out.setdefault(p.src[e], []).append(e)
        nodes.update((p.src[e], p.dst[e]))
    labels: dict[int, list[tuple[float, float]]] = {first: [(0.0, 0.0)]}
    for v in sorted(nodes, key=pos.__getitem__):
        if v not in labels:
            continue
        front = labels[v] = _pareto(labels[v])
        for e in out.get(v, []):
            labels.setdefault(p.dst[e], []).extend((acc + p.acc[e], t + p.time_ms[e]) for acc, t in front)
    return _pareto(labels.get(last, []))


def dp_frontier(p: PathProblem, max_enumerated_blocks: int = 16) -> Frontier:
    """Every Pareto-optimal (accuracy cost, time) of the problem, exactly (times include ``fixed_ms``).

    Each run is split into stages at the nodes all its paths visit; a stage's frontier comes from Pareto labels
    in topological order, and independent frontiers add up (min-plus). Block ties couple stages: the stages a
    block touches form one group, whose block decisions are enumerated (at most ``max_enumerated_blocks``)."""
    pos = {v: k for k, v in enumerate(_topological(p))}
    stages = _stages(p, pos)
    if stages is None:
        return []
    stage_of_edge = {e: k for k, (_, _, es) in enumerate(stages) for e in es}
    # union-find over stages (0..S-1) and ties (S..S+T-1)
    n_st = len(stages)
    parent = list(range(n_st + len(p.ties)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, tie in enumerate(p.ties):
        es = [e for g in tie.keep_groups for e in g]
        es += [*tie.remove_edges, *tie.added_edges, *tie.plain_edges]
        for k in {stage_of_edge[e] for e in es}:
            parent[find(k)] = find(n_st + i)
    groups: dict[int, list[int]] = {}
    for k in range(n_st + len(p.ties)):
        groups.setdefault(find(k), []).append(k)
    total: Frontier = [(0.0, p.fixed_ms)]
    for members in groups.values():
        st = [k for k in members if k < n_st]
        ties = [k - n_st for k in members if k >= n_st]
        if len(ties) > max_enumerated_blocks:
            raise DsaError(f"the DP would enumerate 2^{len(ties)} block decisions in one group; too many")
        points: list[tuple[float, float]] = []
        for bits in range(1 << len(ties)):
            y = {ties[i]: (bits >> i) & 1 for i in range(len(ties))}
            if any(p.ties[i].fixed is not None and p.ties[i].fixed != v for i, v in y.items()):
                continue
            banned: set[int] = set()
            for i, v in y.items():
                tie = p.ties[i]
                if v:
                    banned.update(e for g in tie.keep_groups for e in g)
                    banned.update(tie.plain_edges)
                else:
                    banned.update(tie.remove_edges)
                    banned.update(tie.added_edges)
            front: Frontier = [(0.0, math.fsum(p.ties[i].fixed_ms for i, v in y.items() if v))]
            for k in st:
                first, last, es = stages[k]
                front = _frontier_sum(front, _stage_frontier(p, pos, first, last, [e for e in es if e not in banned]))
            points += front
        total = _frontier_sum(total, _pareto(points))
    return total


def solve_dp(p: PathProblem, *, budget_ms: float | None = None, max_acc: float | None = None) -> tuple[float, float]:
    """(accuracy cost, time) of the optimum :func:`solve_milp` finds, by :func:`dp_frontier`; (nan, nan) when
    infeasible."""
    front = dp_frontier(p)
    if budget_ms is not None:
        ok = [(acc, t) for acc, t in front if t <= budget_ms and (max_acc is None or acc <= max_acc)]
        return min(ok) if ok else (math.nan, math.nan)
    ok = [(t, acc) for acc, t in front if max_acc is None or acc <= max_acc]
    if not ok:
        return (math.nan, math.nan)
    t, acc = min(ok)
    return acc, t


# ----------------------------------------------------------------------------------- the planner


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
            self.device, self.precision, self.batch, self.source, self.baseline_ms, self.planned_ms, self.bn_folded_ms
        )


def _cost_label(importance: Mapping[str, float] | None, default_cost: float) -> str:
    return "importance scores" if importance else f"removed activations (each costs {default_cost:g})"


def _is_cost(v: object) -> bool:
    """An accuracy cost: a finite number >= 0 (not a bool)."""
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0


def load_block_importance(path: str | Path) -> dict[str, float]:
    """The whole-block costs of an importance file (``"segments": {block name: cost}``, as `dsa importance`
    writes them), or {} when it has none. Block-granular planning uses them (see :class:`Planner`)."""
    doc = read_json(path, "importance", PlanError)
    segs = doc.get("segments", {}) if isinstance(doc, dict) else {}
    if not isinstance(segs, dict):
        raise PlanError(f'importance {path}: "segments" must map block names to costs')
    for name, v in segs.items():
        if not _is_cost(v):
            raise PlanError(f"importance {path}: the cost of block {name!r} must be a finite number >= 0, got {v!r}")
    return {k: float(v) for k, v in segs.items()}


def load_importance(path: str | Path) -> tuple[dict[str, float], float]:
    """Read an importance file: ``{"scores": {activation name: cost}, "default": cost}`` (``default``, for
    activations the file does not list, is optional and 1 when absent). Costs are finite and >= 0."""
    doc = read_json(path, "importance", PlanError)
    if not isinstance(doc, dict) or not isinstance(doc.get("scores"), dict):
        raise PlanError(f'importance {path}: expected an object {{"scores": {{activation name: cost}}}}')
    default = doc.get("default", DEFAULT_ACTIVATION_COST)
    scores = dict(doc["scores"])
    for name, v in [*scores.items(), ("default", default)]:
        if not _is_cost(v):
            raise PlanError(f"importance {path}: the cost of {name!r} must be a finite number >= 0, got {v!r}")
    return {k: float(v) for k, v in scores.items()}, float(default)


class Planner:
    """Candidates and costs of one network on one device, ready to solve any number of targets.

    ``importance`` maps activation names to the accuracy cost of removing them (``default_cost`` for the rest;
    without it every removed activation costs 1); at block granularity, ``block_importance`` maps blocks to the
    cost of merging each as a whole (a block's activations then cost that much together). ``keep`` / ``remove``
    force activations (or whole blocks, by
    block name). ``costs`` overrides the time model (default: the roofline of ``device``, or the measured
    ``profile`` where it has times).
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
    ) -> None:
        if granularity not in GRANULARITIES:
            raise PlanError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise PlanError(f"batch size must be a positive integer, got {batch!r}")
        self.analysis = analysis
        self.granularity = granularity
        self.max_kernel = max_kernel
        if costs is None:
            costs = (
                ProfileCosts(analysis, profile, batch, precision)
                if profile is not None
                else RooflineCosts(analysis, device, batch, precision)
            )
        self.costs = costs
        self.device = getattr(getattr(costs, "device", None), "name", str(device))
        self.batch = getattr(costs, "batch", batch)
        self.precision = getattr(costs, "precision", precision)
        self.importance = dict(importance) if importance else None
        self.accuracy_proxy = _cost_label(importance, default_cost)
        self.act_cost = self._act_costs(importance, default_cost)
        if block_importance:
            self._block_costs(block_importance)
            self.accuracy_proxy += " + whole-block scores"
        self.keep, self.remove = self._forced(keep, remove)
        self.candidates: Candidates = build_candidates(analysis, costs, granularity, max_kernel)
        self.problem, self.edge_of = self._problem()

    # --- inputs
    def _act_costs(self, importance: Mapping[str, float] | None, default: float) -> dict[str, float]:
        names = {s.name for s in self.analysis.activations}
        costs = dict.fromkeys(self.analysis.removable, float(default))
        for name, v in (importance or {}).items():
            if name not in names:
                raise PlanError(
                    f"importance: {name!r} is not an activation of {self.analysis.model_name} (see `dsa analyze`)"
                )
            if not _is_cost(v):
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
            if not _is_cost(v):
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
            acc=tuple(math.fsum(self.act_cost[n] for n in e.removes) for e in edges),
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
        return bool(self.keep or self.remove or self.max_kernel is not None)

    def _result(self, sol: Solution, target: dict, objective: str) -> PlanResult:
        a = self.analysis
        chosen = [self.edge_of[k] for k in sol.edges]
        removed, added, boundaries = self.candidates.path_plan_parts(chosen)
        source: dict[str, Any] = {"kind": "planner", "granularity": self.granularity}
        plan = make_plan(a, removed, [AddedActivation(x, t) for x, t in added], boundaries, source=source)
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
            "variables": self.problem.n_edges + len(self.problem.ties),
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


# ------------------------------------------------------------------------------------- public API


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


@dataclass(frozen=True)
class FrontierPoint:
    granularity: str
    max_accuracy_cost: float
    accuracy_cost: float
    latency_ms: float
    speedup: float
    throughput_img_s: float
    removed: int

    def to_json(self) -> dict:
        return {
            "granularity": self.granularity,
            "max_accuracy_cost": self.max_accuracy_cost,
            "accuracy_cost": self.accuracy_cost,
            "latency_ms": self.latency_ms,
            "speedup": self.speedup,
            "throughput_img_s": self.throughput_img_s,
            "removed": self.removed,
        }


def pareto_points(planner: Planner, points: int = 20) -> list[FrontierPoint]:
    """The predicted speed-up vs accuracy-cost frontier: the fastest plan at ``points`` accuracy-cost budgets
    evenly spaced from 0 to that of the fastest plan overall (deduplicated)."""
    if points < 2:
        raise PlanError(f"--points must be at least 2, got {points}")
    top = planner.fastest(None)
    budgets = sorted({round(top.accuracy_cost * k / (points - 1), 9) for k in range(points)})
    seen: dict[tuple[float, float], FrontierPoint] = {}
    for b in budgets:
        r = top if b >= top.accuracy_cost else planner.fastest(b)
        key = (round(r.accuracy_cost, 9), round(r.planned_ms, 9))
        if key not in seen:
            seen[key] = FrontierPoint(
                planner.granularity, b, r.accuracy_cost, r.planned_ms, r.speedup, r.planned_throughput, len(r.removed)
            )
    return sorted(seen.values(), key=lambda p: (p.accuracy_cost, p.latency_ms))


__all__ = [
    "BUDGET_RTOL",
    "DEFAULT_ACTIVATION_COST",
    "SOLVER",
    "FrontierPoint",
    "PathProblem",
    "PlanResult",
    "Planner",
    "SegmentRow",
    "Solution",
    "Tie",
    "dp_frontier",
    "fastest_plan",
    "load_importance",
    "load_block_importance",
    "pareto_points",
    "plan_for_target",
    "quiet_fd1",
    "solve_dp",
    "solve_milp",
]
