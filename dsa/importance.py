"""Accuracy proxies: how much removing each activation (or merging each candidate block) costs in accuracy,
estimated without full training. Scores are costs: higher = more harmful to remove. They feed the planner
(`dsa plan --importance FILE`), whose file format is ``{"scores": {activation name: cost}, "default": cost}``;
this module's files add a schema version, the method, data metadata, and per-segment (block) scores.

Methods (all deterministic for a fixed seed and calibration batch):

- ``linearity``: how much of an activation's input lies where it acts as the identity (ReLU: x >= 0;
  ReLU6 / Hardtanh: 0 <= x <= 6 / -1 <= x <= 1; smooth ones: 1 - E|f(x) - x| / E|x|). Cost = 1 - linearity.
  With ``pruned=True``, the same local question of each prunable op (LayerMerge): how far the op is from the
  identity it would become, ``E|y - y_pruned| / (E|y| + E|y_pruned|)`` in [0, 1] (0: the op is the identity; a
  conv with its BN: ``y_pruned`` is its input; a residual block: its shortcut).
- ``removal-kl``: KL divergence of the network's output distribution when the activation (or a whole block,
  DepthShrinker style) is removed in the merge-ready form (padding relocation included), vs the original; with
  ``pruned=True`` also when each prunable conv or residual branch is pruned (LayerMerge; ``pruned`` scores).
- ``gates``: DepthShrinker's stage 1 — a learnable keep score per activation, hard top-k mask in the forward
  pass with straight-through gradients, trained to match the original network's outputs (KD) plus a
  latency-aware term that rewards removing where the predicted saving is large. Cost = final keep probability.
- ``finetune``: the successors' method — for each candidate, remove it, finetune the merge-ready network a few
  steps on the calibration data (KD from the original), and score the KL from the original on a held-out part;
  with ``pruned=True`` each prunable op pruned is a candidate too.

``gates`` scores activations only: with ``dsa plan --prune-convs`` its pruned convs cost the planner's default.

Every method scores each removable activation (``scores``, what the planner reads) and each interior block
merged DepthShrinker style (``segments``): removal-kl and finetune measure blocks directly; linearity and
gates sum the block's activation costs.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.fx as fx
from torch import nn

from dsa.errors import DsaError, InternalError
from dsa.formats.importance import METHODS, Importance
from dsa.formats.plan import Plan, make_plan
from dsa.ir import PRUNE_CONV, Analysis, Op, bn_of, prunable, prunable_blocks
from dsa.train.losses import kd_loss

#: the methods whose scores are KL divergences of the output (nats per image), the units of INT8 costs
INT8_METHODS = ("removal-kl", "finetune")

_RANGES = {"ReLU": (0.0, math.inf), "ReLU6": (0.0, 6.0), "Hardtanh": (-1.0, 1.0)}


Progress = Callable[[str, int, int], None]


def _site_ops(a: Analysis) -> list[Op]:
    return [a.by_name[s.name] for s in a.activations if s.removable]


def activation_candidates(a: Analysis, names: Sequence[str] | None = None) -> dict[str, Plan]:
    """One single-activation removal plan per removable activation (or per name in ``names``)."""
    names = a.removable if names is None else list(names)
    unknown = [n for n in names if n not in a.removable]
    if unknown:
        raise DsaError(f"{a.model_name} has no removable activation {unknown[0]!r}; see `dsa analyze`")
    return {name: make_plan(a, [name]) for name in names}


def pruning_candidates(a: Analysis) -> dict[str, Plan]:
    """One plan per prunable op (:func:`dsa.ir.prunable`: a conv, or a residual block's whole branch) pruning it
    alone."""
    return {name: make_plan(a, pruned=[name]) for name in prunable(a)}


def block_candidates(a: Analysis, blocks: bool | Sequence[str] = True) -> dict[str, Plan]:
    """One DepthShrinker-style block merge per interior block (``True``), per named block, or none
    (``False``): the block's activations removed and a ReLU6 added after its output, so it merges into one
    conv. Blocks that cannot merge that way are skipped when all are asked for, an error when named."""
    from dsa.formats.plan import plan_from_act_list

    if blocks is False:
        return {}
    all_blocks = a.blocks()
    wanted = all_blocks[1:-1] if blocks is True else list(blocks)
    out = {}
    for block in wanted:
        if block not in all_blocks[1:-1]:
            inner = ", ".join(all_blocks[1:-1])
            raise DsaError(f"{block!r} is not an interior block of {a.model_name}: one of {inner}")
        keep = [1] * len(all_blocks)
        keep[all_blocks.index(block)] = 0
        try:
            out[block] = plan_from_act_list(a, keep)
        except DsaError:
            if blocks is not True:
                raise
    return out


def block_sums(a: Analysis, scores: Mapping[str, float], blocks: bool | Sequence[str] = True) -> dict[str, float]:
    """Per-block costs of per-activation methods: the sum of the block's activation costs, for the same blocks
    :func:`block_candidates` gives (those that merge DepthShrinker style)."""
    wanted = list(block_candidates(a, blocks))
    return {b: sum(v for name, v in scores.items() if a.site(name).block == b) for b in wanted}


class _ActInputs(fx.Interpreter):
    """Runs the traced network and hands each activation's input tensor to ``sink``."""

    def __init__(self, gm: fx.GraphModule, nodes: dict[str, str], sink: Callable[[str, torch.Tensor], None]):
        super().__init__(gm)
        self.nodes, self.sink = nodes, sink

    def run_node(self, n: fx.Node):
        if n.name in self.nodes:
            args, _ = self.fetch_args_kwargs_from_env(n)
            self.sink(self.nodes[n.name], args[0])
        return super().run_node(n)


def _pruning_deviation(a: Analysis, batches: Sequence[torch.Tensor]) -> dict[str, float]:
    """Per prunable op (:func:`dsa.ir.prunable`): ``E|y - y_pruned| / (E|y| + E|y_pruned|)`` over ``batches`` (in
    [0, 1] by the triangle inequality; 0 when the op is the identity there), where ``y`` is
    what the op (a conv with its BN, or a residual block's add) outputs and ``y_pruned`` what the pruned network
    computes there: the conv's input (through the activation of a timm BN+act, which pruning keeps), the block's
    shortcut."""
    from dsa.transform.merge import NodeValues

    gm = a.graph_module.eval()
    users = a.users()
    kinds = prunable(a)
    blocks = prunable_blocks(a, users)
    nodes = {n.name: n for n in gm.graph.nodes}
    pairs: dict[str, tuple[str, str, Callable[[torch.Tensor], torch.Tensor] | None]] = {}
    for name, kind in kinds.items():
        op = a.by_name[name]
        if kind == PRUNE_CONV:
            bn = bn_of(a, users, op.id)
            out_node = a.ops[bn].node if bn is not None else op.node
            node = nodes[out_node]
            act = getattr(gm.get_submodule(node.target), "act", None) if node.op == "call_module" else None
            pairs[name] = (out_node, a.ops[op.inputs[0]].node, act)
        else:
            pairs[name] = (op.node, a.ops[blocks[op.id].input_id].node, None)
    interp = NodeValues(gm, {n for out, inp, _ in pairs.values() for n in (out, inp)})
    dev = {name: [0.0, 0.0] for name in pairs}
    with torch.no_grad():
        for x in batches:
            interp.run(x)
            v = interp.values
            for name, (out, inp, act) in pairs.items():
                y, y_pruned = v[out], v[inp] if act is None else act(v[inp].clone())  # timm acts work in place
                dev[name][0] += float((y - y_pruned).abs().sum())
                dev[name][1] += float(y.abs().sum() + y_pruned.abs().sum())
    return {name: d / n if n > 0 else 0.0 for name, (d, n) in dev.items()}


def _linearity_of(act_type: str, x: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]) -> tuple[float, float]:
    """(sum of per-element linearity contributions, count) for one batch."""
    if act_type in _RANGES:
        lo, hi = _RANGES[act_type]
        inside = ((x >= lo) & (x <= hi)).float()
        return float(inside.sum()), x.numel()
    dev = (act(x.clone()) - x).abs().sum()  # a copy: in-place activations (inplace=True) would change x
    return float(x.numel() * (1.0 - dev / x.abs().sum().clamp_min(1e-12))), x.numel()


def linearity(
    model: nn.Module,
    a: Analysis,
    batches: Sequence[torch.Tensor],
    blocks: bool | Sequence[str] = True,
    progress: Progress | None = None,
    pruned: bool = False,
) -> Importance:
    """Cost = 1 - share of each removable activation's input in its linear region; a block's cost is the sum
    of its activations'. With ``pruned``, each prunable op costs how far it is from the identity it would become
    (the file's ``pruned`` scores; see the module docstring)."""
    t0 = time.perf_counter()
    sites = _site_ops(a)
    gm = a.graph_module.eval()
    modules = dict(gm.named_modules())
    acc = {op.name: [0.0, 0] for op in sites}
    fns: dict[str, Callable] = {}
    hooks = []
    node_names: dict[str, str] = {}
    op_types = {op.name: op.module_type for op in sites}
    nodes = {n.name: n for n in gm.graph.nodes}
    for op in sites:
        node = nodes[op.node]
        if op.id.endswith("/act"):  # timm BN+act: the activation is a submodule; hook it for its input
            act_mod = gm.get_submodule(f"{node.target}.act")
            fns[op.name] = act_mod.forward  # not the module: calling it would run this pre-hook again
            hooks.append(
                act_mod.register_forward_pre_hook(
                    lambda m, args, name=op.name: _add(acc, name, op_types[name], args[0], fns[name])
                )
            )
        else:
            node_names[op.node] = op.name
            fns[op.name] = modules[node.target] if node.op == "call_module" else node.target
    interp = _ActInputs(gm, node_names, lambda name, x: _add(acc, name, op_types[name], x, fns[name]))
    try:
        with torch.no_grad():
            for i, x in enumerate(batches):
                interp.run(x)
                if progress:
                    progress("linearity", i + 1, len(batches))
    finally:
        for h in hooks:
            h.remove()
    scores = {name: max(0.0, 1.0 - s / n) if n else 1.0 for name, (s, n) in acc.items()}
    segs = block_sums(a, scores, blocks)
    pruned_scores = _pruning_deviation(a, batches) if pruned else {}
    return Importance(
        "linearity", a.model_name, a.fingerprint, scores, segs, seconds=time.perf_counter() - t0, pruned=pruned_scores
    )


def _add(acc: dict, name: str, act_type: str, x: torch.Tensor, act: Callable) -> None:
    s, n = _linearity_of(act_type, x.detach(), act)
    acc[name][0] += s
    acc[name][1] += n


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """Mean KL(p || q) of softmax distributions, per sample."""
    return float(kd_loss(q_logits, p_logits))


def removal_kl(
    model: nn.Module,
    a: Analysis,
    batches: Sequence[torch.Tensor],
    blocks: bool | Sequence[str] = True,
    names: Sequence[str] | None = None,
    progress: Progress | None = None,
    pruned: bool = False,
) -> Importance:
    """KL of the output when each removable activation (or each of ``names``), and each block DepthShrinker
    style (or each of ``blocks``), is removed in the merge-ready network, against the original network; with
    ``pruned``, also when each prunable op (:func:`dsa.ir.prunable`: a conv, or a residual block's branch) is
    pruned (the file's ``pruned`` scores, what ``dsa plan --prune-convs`` charges)."""
    from dsa.transform.merge import apply_plan

    t0 = time.perf_counter()
    acts, blks = activation_candidates(a, names), block_candidates(a, blocks)
    prunes = pruning_candidates(a) if pruned else {}
    model = model.eval()
    with torch.no_grad():
        ref = [model(x) for x in batches]

    def kl_of(plan) -> float:
        ready = apply_plan(model, plan, a).eval()
        with torch.no_grad():
            return sum(_kl(r, ready(x)) for r, x in zip(ref, batches, strict=True)) / len(batches)

    scores, segs, pruned_scores = {}, {}, {}
    todo = [(scores, n, p) for n, p in acts.items()] + [(segs, n, p) for n, p in blks.items()]
    todo += [(pruned_scores, n, p) for n, p in prunes.items()]
    for i, (into, name, plan) in enumerate(todo):
        into[name] = max(0.0, kl_of(plan))
        if progress:
            progress(name, i + 1, len(todo))
    return Importance(
        "removal-kl",
        a.model_name,
        a.fingerprint,
        scores,
        segs,
        seconds=time.perf_counter() - t0,
        pruned=pruned_scores,
    )


def segment_candidates(
    a: Analysis, prune_cost: Mapping[str, float] | None = None
) -> dict[str, tuple[tuple[str, ...], Plan]]:
    """Every segment the planner can choose (each merged conv, each lone conv; with ``prune_cost`` the pruned
    variants it builds from those costs too), by :func:`dsa.ir.segment_key`: (its members, the plan that merges
    just that segment -- everything else as in the original network)."""
    from dsa.formats.plan import AddedActivation
    from dsa.ir import segment_key
    from dsa.latency.costs import RooflineCosts
    from dsa.planner.candidates import SEGMENT, build_candidates
    from dsa.vocab import DEFAULT_DEVICE

    cands = build_candidates(a, RooflineCosts(a, DEFAULT_DEVICE), "activation", prune_cost=prune_cost)
    out_edges = cands.out_edges()

    def change(e) -> float:  # what merging, removing or pruning an edge changes in the original network
        merged = len(e.segment.convs) if e.segment is not None and e.segment.merged else 0
        return len(e.removes) + len(e.prunes) + merged

    plain = [cands.least_path(r, change, out_edges)[1] for r in range(cands.n_runs)]
    out: dict[str, tuple[tuple[str, ...], Plan]] = {}
    for edge in cands.edges:
        if edge.kind != SEGMENT or edge.segment is None or not edge.segment.convs:
            continue
        key = segment_key(edge.segment, edge.prunes)
        if key in out:
            continue
        path = cands.least_path(edge.run, lambda e, edge=edge: -1e9 if e is edge else change(e), out_edges)[1]
        edges = [x for r, p in enumerate(plain) for x in (path if r == edge.run else p)]
        removed, added, boundaries = cands.path_plan_parts(edges)
        added_acts = [AddedActivation(x, t) for x, t in added]
        plan = make_plan(a, removed, added_acts, boundaries, pruned=cands.path_prunes(edges))
        out[key] = (edge.segment.members, plan)
    return out


def int8_costs(
    model: nn.Module,
    a: Analysis,
    runtime: str,
    batches: Sequence[torch.Tensor],
    prune_cost: Mapping[str, float] | None = None,
    progress: Progress | None = None,
) -> dict[str, float]:
    """What deploying each candidate segment in INT8 costs in accuracy: for every segment the planner can choose
    (each merged conv, and each lone conv as it runs unmerged, BN folded; with ``prune_cost`` the pruned variants
    ``dsa plan --prune-convs`` builds from those costs too), the KL of the network's output when the INT8 rounding
    error of that one conv is added at the segment's output in the float network, against the float network.
    The error is scaled to the float network's signal there (``||v|| / ||y||``, ``v`` the float network's value,
    ``y`` the merged conv's): a merged conv without its activations computes values of another scale until it is
    finetuned (towards the original's, by distillation), and its INT8 error is relative to its own output.
    The error is :func:`dsa.quantize.emulate_conv`'s (``runtime``'s scheme; the conv's input range over the first
    half of ``batches``, the KL over the other half: held out, as a deployed network meets new images; one batch
    serves both), on the inputs the segment reads in the float network; the rest of the network stays float, and
    only the part after the segment is run again. Keys: :func:`dsa.ir.segment_key`. Nats per image, like
    removal-kl and finetune, so the planner adds them to a plan's accuracy cost when it plans for INT8 (a plan's
    INT8 cost is the sum over its segments: one quantized conv each)."""
    from dsa.graph import analyze
    from dsa.ir import Kind
    from dsa.quantize import emulate_conv
    from dsa.transform.merge import NodeValues, apply_plan, merge_ready_record, merged_conv

    model = model.eval()
    if a.graph_module is None:  # a cached analysis: trace the network again
        a = analyze(model, a.model_name, a.input_size)
    gm = copy.deepcopy(a.graph_module).eval()
    for m in gm.modules():  # cached values are shared by every rerun: nothing may change them in place
        if getattr(m, "inplace", False):
            m.inplace = False
    candidates = segment_candidates(a, prune_cost)
    nodes = {n.name: n for n in gm.graph.nodes}
    n_ranges = max(1, len(batches) // 2)  # ranges from the first half, the KL on the other (held out, as deployed)
    lows: dict[str, torch.Tensor] = {}
    highs: dict[str, torch.Tensor] = {}
    checks = []
    with torch.no_grad():
        for k, x in enumerate(batches):
            cap = NodeValues(gm, set(nodes))
            logits = cap.run(x)
            if k < n_ranges:  # per-channel ranges of every 4-d value (a conv's input is one)
                for name, v in cap.values.items():
                    if isinstance(v, torch.Tensor) and v.dim() == 4:
                        lo, hi = v.amin((0, 2, 3)), v.amax((0, 2, 3))
                        lows[name] = torch.minimum(lows[name], lo) if name in lows else lo
                        highs[name] = torch.maximum(highs[name], hi) if name in highs else hi
            if k >= n_ranges or len(batches) == 1:
                checks.append((x, cap.values, logits))
    costs: dict[str, float] = {}
    for i, (key, (members, plan)) in enumerate(candidates.items()):
        ready = apply_plan(model, plan, a)
        view = merge_ready_record(ready).analysis
        seg = next((s for s in merge_ready_record(ready).segments if s.members == members), None)
        if seg is None:
            raise InternalError(f"the plan made to score segment {key} does not induce it")
        conv = merged_conv(ready, view, seg)
        ready_nodes = {n.name: n for n in ready.graph.nodes}
        src = ready_nodes[view.ops[seg.member_ids[0]].node].args[0].name
        out_op = view.ops[seg.output_id]
        out = out_op.node
        act = None  # a kept activation inside the segment's last module (timm's BN+act)
        if out_op.kind in (Kind.BN, Kind.IDENTITY) and nodes[out].op == "call_module":
            act = getattr(gm.get_submodule(nodes[out].target), "act", None)
            act = None if isinstance(act, nn.Identity) else act
        quantized = emulate_conv(conv, lows[src], highs[src], runtime)
        later = _descendants(nodes[out])
        edge_in = {n for d in later for n in d.all_input_nodes if n not in later}  # read by the rerun: cloned
        total = 0.0
        with torch.no_grad():
            for x, values, ref in checks:
                y, yq = conv(values[src]), quantized(values[src])
                if yq.shape != values[out].shape:
                    want = tuple(values[out].shape)
                    raise InternalError(f"the merged conv of {key} gives {tuple(yq.shape)}, not {want}")
                env = {}
                for n in gm.graph.nodes:
                    if n not in later:
                        value = values[n.name]
                        env[n] = value.clone() if n in edge_in and isinstance(value, torch.Tensor) else value
                # the error at the float network's own signal level (before a kept activation): a finetuned merged
                # conv computes values like the original's there (distillation), with the relative error its INT8
                # form has
                v = _pre_activation(gm, nodes[out], values) if act is not None else values[out]
                scale = float(v.double().norm() / y.double().norm().clamp_min(1e-30))
                hurt = v + (yq - y) * scale
                env[nodes[out]] = act(hurt) if act is not None else hurt
                total += _kl(ref.double(), fx.Interpreter(gm).run(x, initial_env=env).double())
        costs[key] = max(0.0, total / len(checks))
        if progress:
            progress(key, i + 1, len(candidates))
    return costs


def with_int8_costs(
    imp: Importance,
    model: nn.Module,
    a: Analysis,
    runtime: str,
    batches: Sequence[torch.Tensor],
    progress: Progress | None = None,
) -> Importance:
    """``imp`` with :func:`int8_costs` for ``runtime`` added (the pruned variants too where ``imp`` scores
    pruning: built from its pruning costs, as the planner builds them). Its scores must be KL-like (removal-kl or
    finetune: nats per image), the units of INT8 costs, which the planner adds to them."""
    from dsa.quantize import EMULATION

    if imp.method not in INT8_METHODS:
        raise DsaError(
            f"INT8 costs are KL divergences (nats per image): they add to the scores of --method "
            f"{' or '.join(INT8_METHODS)}, not {imp.method}"
        )
    from dsa.planner.planner import pruning_costs

    t0 = time.perf_counter()
    prune_cost = pruning_costs(a, imp.pruned, imp.default) if imp.pruned else None  # as the planner fills them
    costs = int8_costs(model, a, runtime, batches, prune_cost=prune_cost, progress=progress)
    emulation = {"weights": EMULATION["weights"], "activations": EMULATION["activations"][runtime]}
    return dataclasses.replace(
        imp,
        int8=costs,
        int8_runtime=runtime,
        metadata={**imp.metadata, "int8_emulation": emulation, "int8_seconds": time.perf_counter() - t0},
        seconds=imp.seconds + time.perf_counter() - t0,
    )


def _pre_activation(gm: fx.GraphModule, node: fx.Node, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The value a BN+activation module (timm's) computes before its activation, in the float network."""
    module = gm.get_submodule(node.target)
    if not isinstance(module, nn.BatchNorm2d):
        raise InternalError(f"{node.target}: a {type(module).__name__} with an activation inside, not a BN")
    return nn.BatchNorm2d.forward(module, values[node.args[0].name])


def _descendants(node: fx.Node) -> set[fx.Node]:
    """``node`` and every node that reads it, directly or not."""
    seen, todo = {node}, [node]
    while todo:
        for user in todo.pop().users:
            if user not in seen:
                seen.add(user)
                todo.append(user)
    return seen


class _Gate(nn.Module):
    """act(x) * m + x * (1 - m) with m the hard mask of this site (straight-through to its score)."""

    def __init__(self, act: nn.Module, index: int, gates: _Gates) -> None:
        super().__init__()
        self.act, self.index = act, index
        self.gates = [gates]  # a list: not registered as a submodule of every gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.gates[0].mask()[self.index]
        return m * self.act(x) + (1 - m) * x


class _Gates(nn.Module):
    def __init__(self, n: int, keep: int) -> None:
        super().__init__()
        self.scores = nn.Parameter(torch.full((n,), 2.0))
        self.keep = keep

    def probs(self) -> torch.Tensor:
        return torch.sigmoid(self.scores)

    def mask(self) -> torch.Tensor:
        p = self.probs()
        hard = torch.zeros_like(p)
        hard[torch.topk(p, self.keep).indices] = 1.0
        return hard + p - p.detach()  # straight-through


def _gated_copy(a: Analysis, gates: _Gates) -> fx.GraphModule:
    gm = copy.deepcopy(a.graph_module).eval()
    for i, op in enumerate(_site_ops(a)):
        node = next(n for n in gm.graph.nodes if n.name == op.node)
        if op.id.endswith("/act"):
            target = f"{node.target}.act"
            gm.add_submodule(target, _Gate(gm.get_submodule(target), i, gates))
        elif node.op == "call_module":
            name = f"dsa_gate_{i}"
            gm.add_submodule(name, _Gate(gm.get_submodule(node.target), i, gates))
            node.target = name
        else:  # a functional activation: wrap the function in a module
            fn = node.target
            name = f"dsa_gate_{i}"
            gm.add_submodule(name, _Gate(_Fn(fn), i, gates))
            node.op, node.target, node.args, node.kwargs = "call_module", name, (node.args[0],), {}
    gm.recompile()
    return gm


class _Fn(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def gates(
    model: nn.Module,
    a: Analysis,
    batches: Sequence[torch.Tensor],
    keep_fraction: float = 0.5,
    steps: int = 50,
    lr: float = 0.1,
    savings_ms: Mapping[str, float] | None = None,
    latency_weight: float = 0.01,
    seed: int = 0,
    blocks: bool | Sequence[str] = True,
    progress: Progress | None = None,
) -> Importance:
    """DepthShrinker's stage 1 as a proxy: learn keep scores with a hard top-k mask (straight-through) so
    that the gated network matches the original's outputs; ``savings_ms`` (predicted time saved by removing
    each activation) adds a term that pushes removal where the saving is large. Network weights are frozen."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    sites = _site_ops(a)
    if not sites:
        raise DsaError(f"{a.model_name} has no removable activation to score")
    g = _Gates(len(sites), max(1, round(keep_fraction * len(sites))))
    gm = _gated_copy(a, g)
    for p in gm.parameters():
        p.requires_grad_(False)
    g.scores.requires_grad_(True)
    saving = torch.tensor([float((savings_ms or {}).get(op.name, 0.0)) for op in sites])
    latency_term = bool(saving.abs().max() > 0) and latency_weight > 0
    if saving.abs().max() > 0:
        saving = saving / saving.abs().max()  # negative: removing it alone is predicted to slow the network
    with torch.no_grad():  # break the initial tie without favouring network order
        g.scores.add_(0.01 * torch.randn(len(sites), generator=torch.Generator().manual_seed(seed)))
    model = model.eval()
    with torch.no_grad():
        ref = [model(x) for x in batches]
    for step in range(steps):
        x, r = batches[step % len(batches)], ref[step % len(batches)]
        out = gm(x)
        loss = kd_loss(out, r) + latency_weight * (g.probs() * saving).sum()
        g.scores.grad = None
        loss.backward()
        with torch.no_grad():
            # gradient descent normalised by the largest component, not per parameter (as Adam would): a kept
            # gate sees only the small latency gradient (the KD gradient vanishes where the gated network equals
            # the original), and a per-parameter normalisation would move every gate at the same full rate
            grad = g.scores.grad
            g.scores.sub_(lr * grad / grad.abs().max().clamp_min(1e-12))
        if progress:
            progress("gates", step + 1, steps)
    probs = g.probs().detach()
    scores = {op.name: float(p) for op, p in zip(sites, probs, strict=True)}
    return Importance(
        "gates",
        a.model_name,
        a.fingerprint,
        scores,
        block_sums(a, scores, blocks),
        seconds=time.perf_counter() - t0,
        metadata={
            "keep": g.keep,
            "steps": steps,
            "lr": lr,
            "latency_weight": latency_weight,
            "latency_term": latency_term,
        },
    )


def finetune_proxy(
    model: nn.Module,
    a: Analysis,
    batches: Sequence[torch.Tensor],
    steps: int = 10,
    lr: float = 0.01,
    heldout: int = 1,
    time_budget_s: float | None = None,
    names: Sequence[str] | None = None,
    blocks: bool | Sequence[str] = True,
    progress: Progress | None = None,
    pruned: bool = False,
) -> Importance:
    """For each candidate — each removable activation (or each of ``names``), then each block merge (or each
    of ``blocks``), then with ``pruned`` each prunable op pruned (the file's ``pruned`` scores) — remove it,
    finetune the merge-ready network ``steps`` KD steps from the original on the first ``len(batches) - heldout``
    batches, and score the KL of its output from the original network's on the
    held-out batches (top-1 agreement there is recorded in the metadata). The held-out batches are training
    images the finetunes never see, so a dataset's val and test splits stay clean. Stops at ``time_budget_s``
    (checked between candidates): unscored activations are listed in the metadata and cost the largest scored
    value (the file's ``default``; unscored prunable ops are listed too and cost the same); a budget that scores
    nothing is an error."""
    from dsa.transform.merge import apply_plan

    if len(batches) <= heldout:
        raise DsaError(f"finetune needs more than {heldout} calibration batches, got {len(batches)}")
    t0 = time.perf_counter()
    acts, blks = activation_candidates(a, names), block_candidates(a, blocks)
    prunes = pruning_candidates(a) if pruned else {}
    train, held = list(batches[:-heldout]), list(batches[-heldout:])
    model = model.eval()
    with torch.no_grad():
        ref_train = [model(x) for x in train]
        ref_held = [model(x) for x in held]
    scores, segs, pruned_scores, agreement = {}, {}, {}, {}
    candidates = [(scores, n, p) for n, p in acts.items()] + [(segs, n, p) for n, p in blks.items()]
    candidates += [(pruned_scores, n, p) for n, p in prunes.items()]
    for i, (into, name, plan) in enumerate(candidates):
        if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
            break
        ready = apply_plan(model, plan, a)
        ready.train()
        opt = torch.optim.SGD([p for p in ready.parameters() if p.requires_grad], lr=lr, momentum=0.9)
        for step in range(steps):
            x, r = train[step % len(train)], ref_train[step % len(train)]
            loss = kd_loss(ready(x), r)
            opt.zero_grad()
            loss.backward()
            opt.step()
        ready.eval()
        with torch.no_grad():
            outs = [ready(x) for x in held]
        agree = sum(float((o.argmax(1) == r.argmax(1)).sum()) for o, r in zip(outs, ref_held, strict=True))
        key = f"pruned:{name}" if into is pruned_scores else name  # a pruned block's add vs the block's merge
        agreement[key] = agree / sum(int(r.shape[0]) for r in ref_held)
        kl = sum(_kl(r, o) for o, r in zip(outs, ref_held, strict=True)) / len(held)
        into[name] = max(0.0, kl)
        if progress:
            progress(name, i + 1, len(candidates))
    if candidates and not agreement:
        raise DsaError(
            f"finetune scored no candidate within the time budget of {time_budget_s} s (the budget is checked "
            "between candidates; one takes a few seconds to minutes): raise it or leave it out"
        )
    unscored = [n for n in acts if n not in scores]
    unscored_pruned = [n for n in prunes if n not in pruned_scores]
    worst = max([*scores.values(), *segs.values(), *pruned_scores.values()], default=1.0)
    # what the budget left unscored costs as much as the worst scored candidate (not a fixed 1, which is on another
    # scale than KL): activations through the file's default, prunable ops by an explicit score
    pruned_scores |= {n: worst for n in unscored_pruned}
    return Importance(
        "finetune",
        a.model_name,
        a.fingerprint,
        scores,
        segs,
        seconds=time.perf_counter() - t0,
        default=worst if unscored else 1.0,
        pruned=pruned_scores,
        metadata={
            "steps": steps,
            "lr": lr,
            "heldout_batches": heldout,
            "scored": len(scores) + len(segs) + len(pruned_scores) - len(unscored_pruned),
            "candidates": len(candidates),
            "unscored_activations": unscored,
            **({"unscored_pruned": unscored_pruned} if prunes else {}),
            "heldout_top1_agreement": agreement,
        },
    )


def calibration_batches(
    data: str | Path, image_size: int, samples: int = 64, batch_size: int = 16, seed: int = 0, split: str = "train"
) -> tuple[list[torch.Tensor], dict]:
    """A deterministic subset of a dataset the trainer reads (ImageFolder directory or "elpv"), as normalised
    batches: the first ``samples`` images of a seeded permutation of ``split``."""
    from dsa.data import load_data, prepare_batch

    bundle = load_data(data, image_size)
    ds = bundle.split(split)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[: min(samples, len(ds))]
    images = torch.stack([ds[int(i)][0] for i in order])
    batches = [
        prepare_batch(images[i : i + batch_size], "cpu", bundle.mean, bundle.std)
        for i in range(0, len(images), batch_size)
    ]
    meta = {
        "data": str(data),
        "split": split,
        "samples": len(order),
        "seed": seed,
        "image_size": image_size,
        "classes": list(bundle.classes),
    }
    return batches, meta


def score(
    method: str, model: nn.Module, a: Analysis, batches: Sequence[torch.Tensor], progress: Progress | None = None, **kw
) -> Importance:
    """Dispatch to a method by name; stamps the date."""
    if method not in METHODS:
        raise DsaError(f"unknown importance method {method!r}; choose one of {', '.join(METHODS)}")
    fn = {"linearity": linearity, "removal-kl": removal_kl, "gates": gates, "finetune": finetune_proxy}[method]
    imp = fn(model, a, batches, progress=progress, **kw)
    meta = {
        **imp.metadata,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "samples": sum(int(x.shape[0]) for x in batches),
    }
    return dataclasses.replace(imp, metadata=meta)
