"""The planner's decision structure: for every linear run of a network, a DAG whose paths are its valid plans.

Remove every removable activation: the linear elements (linear ops, and residual units; see
:mod:`dsa.ir`) chain into maximal **runs**. Inside a run, the elements other than activations are
``u_0 .. u_{m-1}``; the **junctions** ``J_0 .. J_m`` lie between them (``J_0`` before the first, ``J_m`` after
the last) and hold the activation sites that sit there (usually none or one). A plan of the run is a path
from ``J_0`` to ``J_m``:

- a **segment edge** ``J_i -> J_j`` is the piece ``u_i .. u_{j-1}`` merged into one conv (every activation at
  ``J_{i+1} .. J_{j-1}`` removed). It exists only when the piece is one valid segment under the merge rules
  (stride rule, residual units whole, ``max_kernel`` on merged kernels); a piece without a conv (a BN
  after a concat) is an edge too, its ops run as they are;
- a junction with activations is two nodes joined by a **keep** edge (the activations stay: a natural cut)
  and a **cut** edge (they are removed, but the run is cut there: a plan boundary);
- a junction without activations is one node; visiting it is a free **boundary** (not merging across it),
  so the fastest segmentation of a purely linear run is a choice too (merging is not always faster);
- a residual unit whose branch holds removable activations has an alternative: an **enter** edge into its
  branch (its own junctions and edges, in two layers so that at least one activation of the branch is kept:
  with none kept the block would be a unit again), then an **add** edge (the residual add, run as it is)
  to the junction after the unit.

Every op of a run is paid for by exactly one edge of any path; everything outside the runs (kept-for-good
activations, pooling, the classifier, adds with projection shortcuts, ...) is a fixed time. So the planned
latency of a plan is ``fixed_ms + sum of its edges' time_ms``, exactly what
:func:`~dsa.latency.evaluate.evaluate` predicts for the plan (checked in tests).

``granularity="block"`` (DepthShrinker's per-block decisions) uses the same DAG with: no edge across the
output of a middle block (each kept block is cut after its output, each removed one gets a ReLU6 there), and
each edge into that junction duplicated with the added ReLU6 (``added_after``); :mod:`dsa.planner.planner` ties the
activations of a block together.

Times come from a :class:`CostModel`: :class:`~dsa.latency.costs.RooflineCosts` (the roofline) or
:class:`~dsa.latency.costs.ProfileCosts` (measured times of a profile where it has them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from dsa.errors import PlanError
from dsa.ir import (
    LINEAR_KINDS,
    PRUNE_BLOCK,
    PRUNE_CONV,
    Analysis,
    Kind,
    Op,
    ResidualUnit,
    Segment,
    bn_of,
    cut_run,
    linear_runs,
    make_segment,
    prunable,
)
from dsa.latency.costs import CostModel, RooflineCosts
from dsa.vocab import DEFAULT_DEVICE

SEGMENT, KEEP, CUT, ENTER, ADD = "segment", "keep", "cut", "enter", "add"


GRANULARITIES = ("activation", "block")


@dataclass(frozen=True)
class Node:
    index: int
    run: int
    label: str  # "<run>:<junction>[.in|.out][/<layer>]", for messages
    boundary: str = ""  # op to cut after when a path visits this (activation-free) junction


@dataclass(frozen=True)
class Edge:
    index: int
    run: int
    src: int
    dst: int
    kind: str  # SEGMENT, KEEP, CUT, ENTER or ADD
    time_ms: float  # planned time of the ops this edge accounts for
    baseline_ms: float  # the same ops in the original network
    removes: tuple[str, ...] = ()  # activation names this edge removes
    keeps: tuple[str, ...] = ()  # activation names this edge keeps
    ops: tuple[str, ...] = ()  # op ids this edge accounts for
    segment: Segment | None = None
    boundary: str = ""  # CUT edges: op to cut after
    added_after: str = ""  # block granularity: name of the op after which this edge adds a ReLU6
    cut_block: str = ""  # block granularity: the block whose output junction this edge ends at
    prunes: tuple[str, ...] = ()  # ops this edge prunes (dsa.ir.prunable: convs, or residual adds)


@dataclass
class Candidates:
    """Every run's DAG; see the module docstring."""

    analysis: Analysis
    granularity: str
    max_kernel: int | None
    nodes: list[Node]
    edges: list[Edge]
    starts: list[int]  # per run
    ends: list[int]
    fixed_ms: float  # ops outside every run
    fixed_ops: tuple[str, ...]
    baseline_ms: float  # the original network
    source: str  # where the times come from
    # block granularity
    block_acts: dict[str, tuple[str, ...]] = field(default_factory=dict)  # block -> its removable activations
    block_fixed: dict[str, tuple[str, float]] = field(default_factory=dict)  # block -> (op, ms) of an added act
    block_locked: dict[str, str] = field(default_factory=dict)  # block -> why it cannot be removed
    units_anywhere: bool = True  # the segment rule (dsa.ir): residual units anywhere in a segment, or only first

    @property
    def n_runs(self) -> int:
        return len(self.starts)

    def out_edges(self) -> dict[int, list[Edge]]:
        out: dict[int, list[Edge]] = {n.index: [] for n in self.nodes}
        for e in self.edges:
            out[e.src].append(e)
        return out

    def least_path(
        self, run: int, cost: Callable[[Edge], float], out_edges: Mapping[int, list[Edge]] | None = None
    ) -> tuple[float, list[Edge]]:
        """(total, edges) of the least-``cost`` path (a sum over its edges) from run ``run``'s start to its end."""
        out_edges = self.out_edges() if out_edges is None else out_edges
        nodes = [n.index for n in self.nodes if n.run == run]
        indeg = dict.fromkeys(nodes, 0)
        for v in nodes:
            for e in out_edges[v]:
                indeg[e.dst] = indeg.get(e.dst, 0) + 1
        best: dict[int, tuple[float, list[Edge]]] = {self.starts[run]: (0, [])}
        ready = [v for v in nodes if indeg[v] == 0]
        while ready:  # in topological order
            v = ready.pop()
            for e in out_edges[v]:
                if v in best:
                    c = best[v][0] + cost(e)
                    if e.dst not in best or c < best[e.dst][0]:
                        best[e.dst] = (c, [*best[v][1], e])
                indeg[e.dst] -= 1
                if indeg[e.dst] == 0:
                    ready.append(e.dst)
        return best[self.ends[run]]

    @staticmethod
    def path_prunes(chosen: Sequence[Edge]) -> list[str]:
        """The ops a set of chosen edges prunes (a plan's ``pruned``)."""
        return list(dict.fromkeys(n for e in chosen for n in e.prunes))

    def path_plan_parts(self, chosen: Sequence[Edge]) -> tuple[list[str], list[tuple[str, str]], list[str]]:
        """(removed activations, added activations (after, op), boundaries) of a set of chosen edges that
        forms one path per run."""
        by_src: dict[int, Edge] = {}
        for e in chosen:
            if e.src in by_src:
                raise PlanError(f"chosen edges branch at node {self.nodes[e.src].label}")
            by_src[e.src] = e
        removed: list[str] = []
        added: list[tuple[str, str]] = []
        boundaries: list[str] = []
        for r in range(self.n_runs):
            path: list[Edge] = []
            v = self.starts[r]
            while v != self.ends[r]:
                if v not in by_src:
                    raise PlanError(f"chosen edges do not reach the end of run {r} (stuck at {self.nodes[v].label})")
                path.append(by_src[v])
                v = by_src[v].dst
            for t, e in enumerate(path):
                prev = path[t - 1] if t > 0 else None
                nxt = path[t + 1] if t + 1 < len(path) else None
                removed += e.removes
                if e.added_after:
                    added.append((e.added_after, "ReLU6"))
                # a cut edge (activation removed, run cut) and an activation-free junction need a boundary,
                # unless the run is cut there anyway: at its ends, next to a residual block taken apart, or
                # where a ReLU6 is added
                if e.kind == CUT and e.boundary and prev is not None and not _cut_anyway(prev, nxt):
                    boundaries.append(e.boundary)
                node = self.nodes[e.dst]
                if node.boundary and nxt is not None and not _cut_anyway(e, nxt):
                    boundaries.append(node.boundary)
        return removed, added, list(dict.fromkeys(boundaries))


def _cut_anyway(before: Edge, after: Edge | None) -> bool:
    """Whether a run is cut between these consecutive edges of a path without a boundary (``after`` None: the
    run ends later, after more junction edges)."""
    return before.kind == ADD or bool(before.added_after) or (after is not None and after.kind == ENTER)


@dataclass
class _Chain:
    """The junction structure of a chain of elements (a run, or a residual branch)."""

    elements: list[str]
    u: list[str]  # non-activation elements
    u_pos: list[int]  # index of each in ``elements``
    acts: list[list[str]]  # junction i -> activation ids there


def _chain(ops: dict[str, Op], elements: list[str]) -> _Chain:
    u, pos, acts = [], [], [[]]
    for k, e in enumerate(elements):
        if ops[e].kind == Kind.ACT:
            acts[-1].append(e)
        else:
            u.append(e)
            pos.append(k)
            acts.append([])
    return _Chain(elements, u, pos, acts)


class _Builder:
    def __init__(
        self,
        a: Analysis,
        costs: CostModel,
        granularity: str,
        max_kernel: int | None,
        units_anywhere: bool = True,
        prune_cost: Mapping[str, float] | None = None,
    ) -> None:
        self.a = a
        self.units_anywhere = units_anywhere
        self.prune_cost = prune_cost
        self.prunable = prunable(a) if prune_cost is not None else {}
        self.users = a.users() if prune_cost is not None else {}  # only pruned variants read it
        self.ops = a.ops
        self.costs = costs
        self.granularity = granularity
        self.max_kernel = max_kernel
        self.nodes: list[Node] = []
        self.edges: list[Edge] = []
        self.run = 0
        self.junction_in: dict[tuple[int, int], int] = {}  # (run, junction of the run itself) -> its in node
        self.span: dict[int, tuple[int, int]] = {}  # segment edge of a run itself -> (first, last junction)

    # --- primitives
    def node(self, label: str, boundary: str = "") -> int:
        self.nodes.append(Node(len(self.nodes), self.run, f"{self.run}:{label}", boundary))
        return len(self.nodes) - 1

    def edge(self, src: int, dst: int, kind: str, time_ms: float, baseline_ms: float, **kw) -> None:
        self.edges.append(Edge(len(self.edges), self.run, src, dst, kind, time_ms, baseline_ms, **kw))

    def unit_ops(self, elem: str, units: Mapping[str, ResidualUnit]) -> list[str]:
        if elem in units:
            u = units[elem]
            return [*u.branch, *u.skip, u.add]
        return [elem]

    # --- one chain: junction nodes (per layer), keep/cut edges and segment edges
    def chain(
        self, ch: _Chain, units: Mapping[str, ResidualUnit], layers: tuple[int, ...], tag: str
    ) -> tuple[dict[tuple[int, int], int], dict[tuple[int, int], int]]:
        m = len(ch.u)
        node_in: dict[tuple[int, int], int] = {}
        node_out: dict[tuple[int, int], int] = {}
        for i in range(m + 1):
            # cut after the element before the junction (a unit is keyed by its add op)
            boundary = self.ops[ch.u[i - 1]].name if 0 < i < m or (i == m and ch.acts[i] and m > 0) else ""
            for layer in layers:
                sfx = f"/{layer}" if len(layers) > 1 else ""
                if ch.acts[i]:
                    node_in[i, layer] = self.node(f"{tag}J{i}.in{sfx}")
                    node_out[i, layer] = self.node(f"{tag}J{i}.out{sfx}")
                else:
                    node_in[i, layer] = node_out[i, layer] = self.node(f"{tag}J{i}{sfx}", boundary if 0 < i < m else "")
            if ch.acts[i]:
                act_ms = sum(self.costs.op_ms(self.ops[x]) for x in ch.acts[i])
                names = tuple(self.ops[x].name for x in ch.acts[i])
                for layer in layers:
                    kept_layer = layers[-1]
                    self.edge(
                        node_in[i, layer],
                        node_out[i, kept_layer],
                        KEEP,
                        act_ms,
                        act_ms,
                        keeps=names,
                        ops=tuple(ch.acts[i]),
                    )
                    self.edge(
                        node_in[i, layer],
                        node_out[i, layer],
                        CUT,
                        0.0,
                        act_ms,
                        removes=names,
                        ops=tuple(ch.acts[i]),
                        boundary=boundary if i > 0 else "",
                    )
        for i in range(m):
            for j in range(i + 1, m + 1):
                piece = ch.elements[ch.u_pos[i] : ch.u_pos[j - 1] + 1]
                made = self.piece(piece, units)
                if made is None:
                    break  # longer pieces are invalid too (stride/unit rules and kernels only grow)
                seg, time_ms, baseline_ms, op_ids, removes = made
                variants = [(seg, time_ms, removes, ())] + self.pruned_variants(piece, units, seg, made)
                for v_seg, v_ms, v_removes, prunes in variants:
                    for layer in layers:
                        if not tag:
                            self.span[len(self.edges)] = (i, j)
                        self.edge(
                            node_out[i, layer],
                            node_in[j, layer],
                            SEGMENT,
                            v_ms,
                            baseline_ms,
                            removes=v_removes,
                            ops=op_ids,
                            segment=v_seg,
                            prunes=prunes,
                        )
        if not tag:
            for i in range(m + 1):
                self.junction_in[self.run, i] = node_in[i, 0]
        return node_in, node_out

    def piece(self, piece: list[str], units: Mapping[str, ResidualUnit]):
        """(segment or None, time, baseline time, op ids, removed activation names), or None if invalid."""
        pieces = cut_run(self.ops, dict(units), piece, set(), 1, self.units_anywhere)
        if len(pieces) > 1:
            return None
        seg = None
        if pieces:
            p = pieces[0]
            seg = make_segment(self.a, dict(units), p)
            if self.max_kernel is not None and max(seg.kernel) > self.max_kernel:
                lone_linear_unit = len(p) == 1 and p[0] in units and not self._unit_acts(units[p[0]])
                if seg.merged and not lone_linear_unit:
                    return None
        op_ids = [o for e in piece for o in self.unit_ops(e, units)]
        covered = set(seg.member_ids) if seg is not None else set()
        time_ms = self.costs.segment_ms(seg) if seg is not None else 0.0
        baseline_ms = 0.0
        for o in op_ids:
            op = self.ops[o]
            t = self.costs.op_ms(op)
            baseline_ms += t
            if o not in covered and op.kind != Kind.ACT:
                time_ms += t
        removes = tuple(self.ops[o].name for o in op_ids if self.ops[o].kind == Kind.ACT)
        return seg, time_ms, baseline_ms, tuple(op_ids), removes

    # --- LayerMerge: pruned variants of a piece
    def pruned_variants(self, piece: list[str], units: Mapping[str, ResidualUnit], seg: Segment | None, made):
        """[(segment or None, time, removed activations, pruned op names)] of ``piece`` with some of its convs pruned
        (:func:`dsa.ir.prunable`): a lone prunable conv or residual block pruned away, or, in a merged piece, for
        each smaller merged kernel that pruning stride-1 convs reaches, the cheapest set of them (by
        ``prune_cost``) that reaches it. Off (no variants) without ``prune_cost``."""
        if self.prune_cost is None or seg is None:
            return []
        _, _, _, op_ids, removes = made
        core = [e for e in piece if self.ops[e].kind != Kind.ACT]
        out = []
        if len(core) == 1:
            e = core[0]
            name = self.ops[e].name
            if e in units and self.prunable.get(name) == PRUNE_BLOCK:
                out.append((None, 0.0, (), (name,)))  # the block is the identity; its activations go with the branch
            elif self.prunable.get(name) == PRUNE_CONV:
                return [self._variant(piece, units, op_ids, removes, [e])]
            elif e not in units:
                return []
        # merged kernels shrink by the reach of each pruned stride-1 conv (scaled by the strides before it)
        items: list[tuple[str, tuple[int, int]]] = []
        sh = sw = 1
        for e in core:
            for c in _convs_of(self.ops, units, e):
                info = c.conv
                if self.prunable.get(c.name) == PRUNE_CONV and max(info.kernel) > 1:
                    items.append(
                        (
                            c.id,
                            (
                                info.dilation[0] * (info.kernel[0] - 1) * sh,
                                info.dilation[1] * (info.kernel[1] - 1) * sw,
                            ),
                        )
                    )
                sh *= info.stride[0]
                sw *= info.stride[1]
        best: dict[tuple[int, int], tuple[float, tuple[str, ...]]] = {(0, 0): (0.0, ())}
        for cid, (dh, dw) in items:
            cost = self.prune_cost.get(self.ops[cid].name, 1.0)
            for (rh, rw), (c0, chosen) in list(best.items()):
                key = (rh + dh, rw + dw)
                if key not in best or c0 + cost < best[key][0]:
                    best[key] = (c0 + cost, (*chosen, cid))
        out += [
            self._variant(piece, units, op_ids, removes, list(chosen))
            for key, (_, chosen) in best.items()
            if key != (0, 0)
        ]
        return out

    def _variant(self, piece, units, op_ids, removes, pruned_ids: list[str]):
        """The piece with convs ``pruned_ids`` (and their BNs) made identities."""
        ops = dict(self.ops)
        gone = set()
        for cid in pruned_ids:
            gone.add(cid)
            bn = bn_of(self.a, self.users, cid)
            if bn is not None:
                gone.add(bn)
        for g in gone:
            ops[g] = replace(ops[g], kind=Kind.IDENTITY, conv=None)
        pieces = cut_run(ops, dict(units), piece, set(), 1, self.units_anywhere)
        seg = make_segment(_OpsView(ops), dict(units), pieces[0]) if pieces else None
        covered = set(seg.member_ids) if seg is not None else set()
        time_ms = self.costs.segment_ms(seg) if seg is not None else 0.0
        for o in op_ids:
            if o not in covered and o not in gone and self.ops[o].kind != Kind.ACT:
                time_ms += self.costs.op_ms(self.ops[o])
        return seg, time_ms, removes, tuple(self.ops[c].name for c in pruned_ids)

    def _unit_acts(self, unit: ResidualUnit) -> list[str]:
        return [b for b in unit.branch if self.ops[b].kind == Kind.ACT]

    # --- a run, with the dissolved alternative of each residual unit that has activations
    def main_run(self, elements: list[str], units: Mapping[str, ResidualUnit]) -> tuple[int, int]:
        ch = _chain(self.ops, elements)
        node_in, node_out = self.chain(ch, units, (0,), "")
        for k, e in enumerate(ch.u):
            if e not in units or not self._unit_acts(units[e]):
                continue
            unit = units[e]
            bch = _chain(self.ops, list(unit.branch))
            b_in, b_out = self.chain(bch, {}, (0, 1), f"{self.ops[e].name}|")
            self.edge(node_out[k, 0], b_in[0, 0], ENTER, 0.0, 0.0)
            add_ids = (unit.add, *unit.skip)
            add_ms = sum(self.costs.op_ms(self.ops[o]) for o in add_ids)
            self.edge(b_out[len(bch.u), 1], node_in[k + 1, 0], ADD, add_ms, add_ms, ops=add_ids)
        return node_in[0, 0], node_out[len(ch.u), 0]


@dataclass
class _OpsView:
    """What :func:`dsa.ir.make_segment` reads of an analysis: its ops (here with some convs pruned)."""

    ops: dict[str, Op]


def _convs_of(ops: Mapping[str, Op], units: Mapping[str, ResidualUnit], elem: str) -> list[Op]:
    if elem in units:
        return [ops[b] for b in units[elem].branch if ops[b].kind == Kind.CONV]
    return [ops[elem]] if ops[elem].kind == Kind.CONV else []


def _runs(a: Analysis) -> tuple[list[list[str]], dict[str, ResidualUnit]]:
    """The maximal runs (every removable activation removed) and their residual units (by add id)."""
    removable = {a.by_name[n].id for n in a.removable}
    return linear_runs(a, {i for i, op in a.ops.items() if op.kind in LINEAR_KINDS} | removable)


def build_candidates(
    analysis: Analysis,
    costs: CostModel,
    granularity: str = "activation",
    max_kernel: int | None = None,
    units_anywhere: bool = True,
    prune_cost: Mapping[str, float] | None = None,
) -> Candidates:
    """The DAG of every run of ``analysis`` with edge times from ``costs`` (see the module docstring);
    ``units_anywhere=False`` narrows segments to the version-1 rule (a residual unit only first). With
    ``prune_cost`` (op name -> accuracy cost; missing: 1) segment edges get pruned variants (LayerMerge)."""
    if granularity not in GRANULARITIES:
        raise PlanError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    if max_kernel is not None and (isinstance(max_kernel, bool) or not isinstance(max_kernel, int) or max_kernel < 1):
        raise PlanError(f"--max-kernel must be a positive integer, got {max_kernel!r}")
    a = analysis
    runs, units = _runs(a)
    b = _Builder(a, costs, granularity, max_kernel, units_anywhere, prune_cost)
    starts, ends = [], []
    in_dag: set[str] = set()
    for r, run in enumerate(runs):
        b.run = r
        s, t = b.main_run(run, units)
        starts.append(s)
        ends.append(t)
        for e in run:
            in_dag.update(b.unit_ops(e, units))
    fixed_ops = tuple(i for i in a.ops if i not in in_dag)
    fixed_ms = sum(costs.op_ms(a.ops[i]) for i in fixed_ops)
    baseline_ms = sum(costs.op_ms(op) for op in a.ops.values())
    source = getattr(costs, "source", type(costs).__name__)
    cands = Candidates(
        a,
        granularity,
        max_kernel,
        b.nodes,
        b.edges,
        starts,
        ends,
        fixed_ms,
        fixed_ops,
        baseline_ms,
        source,
        units_anywhere=units_anywhere,
    )
    if granularity == "block":
        _block_structure(cands, b, runs, units)
    _prune(cands)
    return cands


def merged_segments(a: Analysis, granularity: str | None = None, units_anywhere: bool = True) -> list[Segment]:
    """Every merged segment the planner may choose: the merged-segment edges of its DAGs at ``granularity`` (both
    when None), in DAG order, repeats included. Priced on the default device: only the segments are read."""
    costs = RooflineCosts(a, DEFAULT_DEVICE)
    return [
        e.segment
        for g in ((granularity,) if granularity else GRANULARITIES)
        for e in build_candidates(a, costs, g, units_anywhere=units_anywhere).edges
        if e.segment is not None and e.segment.merged
    ]


def _block_structure(c: Candidates, b: _Builder, runs: list[list[str]], units: Mapping[str, ResidualUnit]) -> None:
    """DepthShrinker's per-block decisions, as plan_from_act_list makes them: no merge across a middle block's
    output, and a ReLU6 after it when the block is removed (edges into that junction come in two copies)."""
    a = c.analysis
    blocks = a.blocks()
    junction_after: dict[str, tuple[int, int]] = {}  # element of a run -> (run, junction after it)
    for r, run in enumerate(runs):
        for i, e in enumerate(_chain(a.ops, run).u):
            junction_after[e] = (r, i + 1)
    edges = list(c.edges)
    for i, block in enumerate(blocks):
        sites = [s for s in a.activations if s.block == block]
        c.block_acts[block] = tuple(s.name for s in sites if s.removable)
        bad = [s for s in sites if not s.removable]
        if bad:
            c.block_locked[block] = f"{bad[0].name} cannot be removed: {bad[0].reason}"
        if not 0 < i < len(blocks) - 1:
            continue  # stem and head: no boundary and no added activation
        out = a.block_output(block)
        if out.kind == Kind.ACT:
            c.block_locked.setdefault(block, f"block {block} ends in an activation; nothing to add after it")
            continue
        if out.id not in junction_after:  # not in a run: the added activation is a fixed op, nothing to cut
            c.block_fixed[block] = (out.name, b.costs.added_act_ms(out, None))
            continue
        run, junction = junction_after[out.id]
        in_node = b.junction_in[run, junction]
        spans = [(e, b.span.get(e.index)) for e in edges]
        edges = [e for e, sp in spans if not (e.run == run and sp is not None and sp[0] < junction < sp[1])]
        out_edges = []
        for e in edges:
            if e.dst == in_node:
                out_edges.append(replace(e, cut_block=block))
                added_ms = b.costs.added_act_ms(out, e.segment)
                out_edges.append(replace(e, cut_block=block, added_after=out.name, time_ms=e.time_ms + added_ms))
            else:
                out_edges.append(e)
        edges = out_edges
    c.edges = [replace(e, index=k) for k, e in enumerate(edges)]


def _prune(c: Candidates) -> None:
    """Drop nodes and edges on no start-to-end path (dead ends of the two-layer branches), renumbering."""
    fwd: dict[int, list[Edge]] = {n.index: [] for n in c.nodes}
    bwd: dict[int, list[Edge]] = {n.index: [] for n in c.nodes}
    for e in c.edges:
        fwd[e.src].append(e)
        bwd[e.dst].append(e)

    def reach(seeds: list[int], adj: dict[int, list[Edge]], forward: bool) -> set[int]:
        seen = set(seeds)
        stack = list(seeds)
        while stack:
            v = stack.pop()
            for e in adj[v]:
                w = e.dst if forward else e.src
                if w not in seen:
                    seen.add(w)
                    stack.append(w)
        return seen

    alive = reach(c.starts, fwd, True) & reach(c.ends, bwd, False)
    remap: dict[int, int] = {}
    nodes = []
    for n in c.nodes:
        if n.index in alive:
            remap[n.index] = len(nodes)
            nodes.append(Node(len(nodes), n.run, n.label, n.boundary))
    edges = []
    for e in c.edges:
        if e.src in alive and e.dst in alive:
            edges.append(replace(e, index=len(edges), src=remap[e.src], dst=remap[e.dst]))
    c.nodes, c.edges = nodes, edges
    c.starts = [remap[s] for s in c.starts]
    c.ends = [remap[t] for t in c.ends]
