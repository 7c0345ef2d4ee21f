"""An independent exact dynamic program over the planner's DAGs (Pareto staircases of (accuracy cost, time) per
node, no discretisation; block decisions enumerated per independent stage), used in tests to cross-check the MILP."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from dsa.errors import DsaError
from dsa.planner.solver import PathProblem

Staircase = list[tuple[float, float]]  # (accuracy cost, time), sorted by cost, times strictly decreasing


def _pareto(points: Iterable[tuple[float, float]]) -> Staircase:
    out: Staircase = []
    for acc, t in sorted(points):
        if not out or t < out[-1][1]:
            if out and out[-1][0] == acc:
                continue
            out.append((acc, t))
    return out


def _frontier_sum(a: Staircase, b: Staircase) -> Staircase:
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


def _stage_frontier(p: PathProblem, pos: Mapping[int, int], first: int, last: int, edges: Iterable[int]) -> Staircase:
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


def dp_frontier(p: PathProblem, max_enumerated_blocks: int = 16) -> Staircase:
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
    total: Staircase = [(0.0, p.fixed_ms)]
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
            front: Staircase = [(0.0, math.fsum(p.ties[i].fixed_ms for i, v in y.items() if v))]
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
