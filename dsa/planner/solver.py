"""The path problem of the planner and its integer program (scipy.optimize.milp, HiGHS)."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

SOLVER = "scipy.optimize.milp (HiGHS)"


#: Relative slack on the time budget: a plan within 1e-9 of the target counts as meeting it.
BUDGET_RTOL = 1e-9


_STATUS = {0: "optimal", 1: "time limit reached", 2: "infeasible", 3: "unbounded", 4: "error"}


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
    variables: int = 0  # binaries of the integer program after the presolve

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


def dominated_edges(p: PathProblem) -> frozenset[int]:
    """Edges that no optimal plan needs, for every objective and budget :func:`solve_milp` takes: an edge is
    dominated when a parallel edge, or a path of two edges between the same nodes, is at most as slow and at most as
    costly (equal ones: the lower index stays). Both objectives and both budgets are sums of time or cost, minimised
    or bounded above, so swapping a dominated edge for what dominates it never makes a plan worse or infeasible.
    Every removed edge is dominated by a path of kept ones (by induction on how far the edge jumps in topological
    order: what dominates it jumps less). Edges of block ties are left alone: their choice is coupled to others."""
    tied: set[int] = set()
    for tie in p.ties:
        for group in tie.keep_groups:
            tied.update(group)
        tied.update(tie.remove_edges, tie.added_edges, tie.plain_edges)
    free = [e for e in range(p.n_edges) if e not in tied and p.src[e] != p.dst[e]]  # (the planner makes no loops)
    dead: set[int] = set()
    by_pair: dict[tuple[int, int], list[int]] = {}
    for e in free:
        by_pair.setdefault((p.src[e], p.dst[e]), []).append(e)
    for group in by_pair.values():
        front: list[int] = []
        for e in sorted(group, key=lambda e: (p.time_ms[e], p.acc[e], e)):
            if any(p.acc[f] <= p.acc[e] for f in front):
                dead.add(e)  # a kept edge is as fast (sorted by time) and as cheap
            else:
                front.append(e)
    out: dict[int, list[int]] = {}
    for e in free:
        if e not in dead:
            out.setdefault(p.src[e], []).append(e)
    two_hop: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for f in free:
        if f in dead:
            continue
        for g in out.get(p.dst[f], ()):
            two_hop.setdefault((p.src[f], p.dst[g]), []).append((p.time_ms[f] + p.time_ms[g], p.acc[f] + p.acc[g]))
    for e in free:
        if e not in dead and any(t <= p.time_ms[e] and a <= p.acc[e] for t, a in two_hop.get((p.src[e], p.dst[e]), ())):
            dead.add(e)
    return frozenset(dead)


def _reduced(p: PathProblem, dead: frozenset[int]) -> tuple[PathProblem, list[int]]:
    """``p`` without the ``dead`` edges, and the original index of each remaining edge."""
    keep = [e for e in range(p.n_edges) if e not in dead]
    new = {e: k for k, e in enumerate(keep)}

    def remap(edges: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(new[e] for e in edges)  # tie edges are never dead

    ties = tuple(
        replace(
            t,
            keep_groups=tuple(remap(g) for g in t.keep_groups),
            remove_edges=remap(t.remove_edges),
            added_edges=remap(t.added_edges),
            plain_edges=remap(t.plain_edges),
        )
        for t in p.ties
    )
    q = replace(
        p,
        src=tuple(p.src[e] for e in keep),
        dst=tuple(p.dst[e] for e in keep),
        time_ms=tuple(p.time_ms[e] for e in keep),
        acc=tuple(p.acc[e] for e in keep),
        ties=ties,
    )
    return q, keep


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
    n_vars = p.n_edges + len(p.ties)
    if res.x is None:
        return Solution(status, (), math.nan, math.nan, math.nan, None, solve_s, solves, n_vars)
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
    return Solution(
        status, chosen, acc, t, float(res.fun), None if gap is None else float(gap), solve_s, solves, n_vars
    )


def solve_milp(
    p: PathProblem,
    *,
    budget_ms: float | None = None,
    max_acc: float | None = None,
    time_limit_s: float = 60.0,
    presolve: bool = True,
) -> Solution:
    """With ``budget_ms``: the least accuracy cost within the time budget, then the fastest plan at that cost.
    Otherwise: the fastest plan (within ``max_acc`` if given), then the least accuracy cost at that time.
    ``presolve`` first drops the :func:`dominated_edges` (same optimum, a smaller program; its time counts in
    ``solve_s``); the edges of the solution are indices into ``p`` either way."""
    if not presolve:
        return _solve(p, budget_ms, max_acc, time_limit_s)
    t0 = time.perf_counter()
    q, keep = _reduced(p, dominated_edges(p))
    presolve_s = time.perf_counter() - t0
    sol = _solve(q, budget_ms, max_acc, time_limit_s)
    return replace(sol, edges=tuple(sorted(keep[e] for e in sol.edges)), solve_s=sol.solve_s + presolve_s)


def _solve(p: PathProblem, budget_ms: float | None, max_acc: float | None, time_limit_s: float) -> Solution:
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
        return replace(sol, objective=best, solves=2)
    res, s1 = _milp_once(p, "time", None, max_acc, time_limit_s)
    if res.x is None:
        return _solution(p, res, s1, 1)
    fastest = float(res.fun) + p.fixed_ms
    res2, s2 = _milp_once(p, "acc", fastest + 1e-9 * max(1.0, fastest), max_acc, time_limit_s)
    sol = _solution(p, res2 if res2.x is not None else res, s1 + s2, 2)
    return replace(sol, objective=fastest, solves=2)
