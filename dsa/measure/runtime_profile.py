"""Profiles taken under a deployment runtime (ONNX Runtime, OpenVINO), with the runtime's own profiler.

A runtime does not run the network op by op: the ONNX export folds every BN into its conv, and the runtime
fuses activations and residual adds into the conv that produces them. So the profile records what the runtime
runs:

- ``ops``: the whole original network under the runtime's profiler (:func:`dsa.measure.runtimes.node_times`);
  each executed node is attributed to the analysis op it comes from (ONNX node names carry the module path),
  and a node that ends in an activation, BN or add is charged to the conv that produces it. The analysis ops
  that ran inside another op's node are listed in ``fused`` (op -> the op it is charged to); layout conversions
  and nodes that belong to no op are summed in ``end_to_end.unattributed_ms``;
- ``segments``: every candidate merged segment, as a standalone graph in the runtime with the real shapes: the
  merged conv (with the activation after it, when it keeps one, fused as the runtime fuses it: ``conv``) and
  the original ops it replaces (``original``: its convs, BNs, activations and add, and the kept activation);
- ``end_to_end``: the original network (and a merged one, with a plan) timed whole under the runtime;
- with ``in_network``, every segment's merged conv is also timed *inside* a merged network
  (:func:`covering_plans`: a few plans whose merged networks hold every candidate segment between them, each run
  whole under the runtime's profiler, each merged conv's node matched to its segment): ``segments.<sig>.in_network``.
  Inside a network a merged conv pays no quantize/dequantize or layout conversions at its edges, which a
  standalone graph does (INT8 graphs most of all); costs use the in-network time where there is one.

Standalone graphs are timed with the runtime's profiler too; their layout conversions at the graph's edges
(which the network pays once, not per segment) are left out.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import platform
from collections.abc import Callable, Sequence

import torch
import torch.fx as fx
from torch import nn

import roofline as rl
from dsa.errors import DsaError
from dsa.export import scope_of
from dsa.formats.plan import AddedActivation, Plan, make_plan
from dsa.formats.profile import Profile, Stat
from dsa.ir import FUSABLE_KINDS, POOL_TYPES, Analysis, Kind, Op, Segment, act_after, fused_into, signature_of
from dsa.measure.runtimes import NodeTime, check_runtime, node_times, runtime_info
from dsa.vocab import DEFAULT_DEVICE, PROFILED_RUNTIMES

# runtime node types -> the analysis op they may stand for when the name does not say (functional calls)
_TYPE_KINDS = {
    "Add": "add",
    "Sum": "add",
    "Eltwise": "add",
    "GlobalAveragePool": "pool",
    "ReduceMean": "pool",
    "AveragePool": "pool",
    "MaxPool": "pool",
    "Gemm": "linear",
    "MatMul": "linear",
    "FullyConnected": "linear",
    # INT8 graphs: ONNX Runtime's QDQ-fused kernels, OpenVINO's quantized fully connected layer
    "QLinearAdd": "add",
    "QLinearGlobalAveragePool": "pool",
    "QLinearAveragePool": "pool",
    "QGemm": "linear",
    "QLinearMatMul": "linear",
    "FullyConnectedQuantized": "linear",
    "FullyConnectedQuantizedLegacy": "linear",
}


def _kind_of(op: Op) -> str:
    if op.kind == Kind.ADD:
        return "add"
    if op.module_type in POOL_TYPES or "pool" in op.module_type.lower():
        return "pool"
    if op.module_type in ("Linear", "linear"):
        return "linear"
    return op.kind


def _op_of(a: Analysis, node: NodeTime) -> Op | None:
    """The analysis op a runtime node comes from: the longest module path of its name that names an op (the
    node's own module, or one inside it); else the one op of the node's type in that scope."""
    scope = scope_of(node.name)
    parts = scope.split(".") if scope else []
    for n in range(len(parts), 0, -1):
        op = a.by_name.get(".".join(parts[:n]))
        if op is not None:
            return op
    want = _TYPE_KINDS.get(node.op_type)
    if want is None:
        return None
    under = [
        op
        for op in a.ops.values()
        if _kind_of(op) == want and (not scope or op.name.startswith(scope + ".") or op.block == scope)
    ]
    return under[0] if len(under) == 1 else None


def attribute(a: Analysis, nodes: Sequence[NodeTime]) -> tuple[dict[str, list[float]], dict[str, str], dict]:
    """Runtime nodes -> (per-run times by op name, fused ops -> the op charged, unattributed node times)."""
    from dsa.latency.ops import op_spec

    runs: dict[str, list[float]] = {}
    other: dict[str, float] = {}
    for node in nodes:
        op = None if node.layout_only else _op_of(a, node)
        if op is None:
            other[node.name] = node.median_ms
            continue
        target = fused_into(a, op)
        samples = node.runs_ms or (node.median_ms,)
        acc = runs.setdefault(target.name, [0.0] * len(samples))
        for i, v in enumerate(samples[: len(acc)]):
            acc[i] += v
    fused = {}
    for op in a.ops.values():
        if op.name in runs or op.kind not in FUSABLE_KINDS or op_spec(a, op, 1, 4) is None:
            continue
        into = fused_into(a, op)
        if into is not op:
            fused[op.name] = into.name
    return runs, fused, other


#: runtime node types that are a conv (ONNX Runtime fp32 and QDQ-fused INT8, OpenVINO)
CONV_NODE_TYPES = frozenset({"Conv", "FusedConv", "QLinearConv", "ConvInteger", "Convolution", "GroupConvolution"})


def covering_plans(a: Analysis, signatures: Sequence[str]) -> list[Plan]:
    """Few plans whose merged networks hold, between them, a merged segment of every signature in
    ``signatures``: per linear run of the candidate DAG (activation granularity), paths that each take as many
    not yet covered segments as they can (a longest path over the DAG), until no path takes a new one; plan k
    follows the k-th path of every run (the path merging the fewest convs where a run needs fewer)."""
    from dsa.latency.costs import RooflineCosts
    from dsa.planner.candidates import build_candidates

    cands = build_candidates(a, RooflineCosts(a, DEFAULT_DEVICE), "activation")  # only the DAG's shape is read
    want = set(signatures)
    out_edges = cands.out_edges()

    def merged_sig(e) -> str | None:
        return signature_of(e.segment) if e.segment is not None and e.segment.merged else None

    per_run: list[list[list]] = []
    for r in range(cands.n_runs):
        paths: list[list] = []
        while True:
            left = frozenset(want)
            score, path = cands.least_path(r, lambda e, left=left: -int(merged_sig(e) in left), out_edges)
            if score == 0:
                break
            paths.append(path)
            want -= {merged_sig(e) for e in path}
        per_run.append(paths)

    def convs_merged(e) -> int:
        return len(e.segment.convs) if merged_sig(e) else 0

    plans = []
    for k in range(max((len(p) for p in per_run), default=0)):
        chosen = []
        for r, paths in enumerate(per_run):
            chosen += paths[k] if k < len(paths) else cands.least_path(r, convs_merged, out_edges)[1]
        removed, added, boundaries = cands.path_plan_parts(chosen)
        plans.append(make_plan(a, removed, [AddedActivation(x, t) for x, t in added], boundaries))
    return plans


def in_network_times(
    a: Analysis,
    model: nn.Module,
    runtime: str,
    plans: Sequence[Plan],
    *,
    batch_size: int,
    threads: int | None = None,
    repeats: int = 5,
    int8: bool = False,
    tick: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Per segment signature, the times of its merged conv's node inside the merged network of each plan that
    holds it, under ``runtime`` (nodes matched to the planned network's convs in execution order)."""
    from dsa.latency.ops import planned_ops
    from dsa.transform.merge import merge

    x = torch.randn(batch_size, 3, a.input_size, a.input_size)
    out: dict[str, list[float]] = {}
    for plan in plans:
        merged = merge(copy.deepcopy(model), plan)
        with torch.inference_mode():
            nodes = [
                n for n in node_times(runtime, merged, x, repeats, threads, int8=int8) if n.op_type in CONV_NODE_TYPES
            ]
        _, planned, _ = planned_ops(a, plan, batch_size)
        convs = [c for c in planned if c.kind == "segment" or (c.op is not None and c.op.kind == Kind.CONV)]
        if len(nodes) != len(convs):
            raise DsaError(
                f"the merged network under {runtime} ran {len(nodes)} conv nodes for its {len(convs)} convs; "
                "cannot match them to segments (profile without in-network timing)"
            )
        for c, n in zip(convs, nodes, strict=True):
            if c.kind == "segment" and c.seg is not None and c.seg.merged:
                out.setdefault(signature_of(c.seg), []).append(n.median_ms)
        if tick:
            tick(f"merged network {len(out)} segments")
    return out


def plan_in_context(
    a: Analysis,
    model: nn.Module,
    profile: Profile,
    solve: Callable,
    *,
    threads: int | None = None,
    repeats: int = 5,
    rounds: int = 4,
) -> tuple[object, Profile, list[dict]]:
    """The planner's choice checked in the network it will run in: solve (``solve(costs) -> PlanResult``, priced by
    the profile with in-network times), time that plan's own merged network under the profile's runtime and record
    each of its merged convs' times there (``in_network``), and solve again with them, until the plan stops changing
    (or after ``rounds`` solves). Returns the last result, the profile with the in-context times, and per round
    the result, its removed activations and predicted speed-up."""
    from dsa.latency.costs import ProfileCosts

    prof, history, last, result = profile, [], None, None
    for _ in range(rounds):
        result = solve(ProfileCosts(a, prof, in_network=True))
        plan = result.plan
        key = (tuple(sorted(plan.removed)), tuple(x.after for x in plan.added), tuple(sorted(plan.boundaries)))
        history.append({"result": result, "removed": len(plan.removed), "predicted_speedup": result.speedup})
        if key == last:
            break
        last = key
        times = in_network_times(
            a,
            model,
            prof.runtime_name,
            [plan],
            batch_size=prof.batch_size,
            threads=threads,
            repeats=repeats,
            int8=prof.precision == "int8",
        )
        segs = {
            sig: ({**e, "in_network": Stat.of(times[sig])} if sig in times else e) for sig, e in prof.segments.items()
        }
        prof = dataclasses.replace(prof, segments=segs)
    return result, prof, history


def original_subgraph(a: Analysis, seg: Segment, act: bool) -> fx.GraphModule:
    """The ops of the original network that ``seg`` replaces (and the activation it keeps after it), as a
    network of their own that reads the segment's input."""
    gm = a.graph_module
    if gm is None:
        raise DsaError("the analysis carries no traced network (it came from the cache); analyse the model again")
    ids = list(seg.member_ids) + list(seg.skip_ids)
    after = act_after(a, seg.output_id) if act else None
    if after is not None:
        ids.append(after.id)
    wanted = {a.ops[i].node for i in ids}
    source = a.ops[seg.input_id].node
    graph = fx.Graph()
    env: dict[str, fx.Node] = {source: graph.placeholder("x")}
    last = None
    for n in gm.graph.nodes:
        if n.name not in wanted:
            continue
        try:
            env[n.name] = last = graph.node_copy(n, lambda m: env[m.name])
        except KeyError as e:
            raise DsaError(f"segment {seg.members[0]}..{seg.members[-1]} reads {e} from outside itself") from e
    if last is None:
        raise DsaError(f"segment {seg.members[0]}: none of its ops is in the traced network")
    graph.output(last)
    return fx.GraphModule(gm, graph)


def _subgraph_stat(
    runtime: str, module: nn.Module, x: torch.Tensor, repeats: int, threads: int | None, int8: bool = False
) -> Stat:
    """The runtime's own per-node times of a standalone graph (quantized first with ``int8``), summed per run
    (layout conversions left out)."""
    nodes = [n for n in node_times(runtime, module, x, repeats, threads, int8=int8) if not n.layout_only]
    if not nodes:
        raise DsaError(f"{runtime} reported no executed node for a standalone graph")
    n_runs = min(len(n.runs_ms) for n in nodes) or 1
    totals = [sum(n.runs_ms[i] if n.runs_ms else n.median_ms for n in nodes) for i in range(n_runs)]
    return Stat.of(totals)


def _environment(runtime: str, threads: int | None, precision: str = "fp32") -> dict:
    return {
        "device": "cpu",
        "device_name": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "layout": "nchw",
        "dtype": precision,
        "runtime": runtime_info(runtime, threads).to_json(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def check_profiled(runtime: str) -> str:
    """``runtime`` if dsa can profile under it (installed, with a per-node profiler); else a DsaError."""
    check_runtime(runtime)
    if runtime not in PROFILED_RUNTIMES:
        raise DsaError(
            f"dsa profile measures under {', '.join(r for r in PROFILED_RUNTIMES if r != 'eager')} with their own "
            f"profilers (and eager with torch.profiler); {runtime} has no per-node profiler here: time it with "
            f"`dsa bench --runtime {runtime}`"
        )
    return runtime


def profile_runtime(
    model: nn.Module,
    a: Analysis,
    runtime: str,
    *,
    batch_size: int = 32,
    threads: int | None = None,
    warmup: int = 2,
    repeats: int = 5,
    plan: Plan | None = None,
    segments: Sequence[tuple[Segment, bool]] | None = None,
    device_spec: rl.DeviceSpec | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    precision: str = "fp32",
    in_network: bool = False,
) -> Profile:
    """Measure ``model`` (analysed as ``a``, CPU float32) under ``runtime``; see the module docstring. With
    ``precision="int8"`` every graph timed (the network, each segment both ways, the merged network) is first
    quantized by the runtime's own tooling (:func:`dsa.quantize.quantize`, calibrated on its random input): a
    network with random weights needs settled BN statistics (:func:`dsa.quantize.settle_random_weights`). A
    KeyboardInterrupt stops measuring and returns what was measured so far, with ``complete=False``."""
    from dsa.formats.profile import segment_entry
    from dsa.measure.profiler import Steps, candidate_segments, end_to_end_rows, segment_module
    from dsa.measure.timing import measure
    from dsa.transform.merge import merge

    if check_profiled(runtime) == "eager":
        raise DsaError("eager profiles come from dsa.measure.profiler.profile_model (torch.profiler)")
    if precision not in ("fp32", "int8"):
        raise DsaError(f"--runtime {runtime} is profiled in fp32 or int8 here, not {precision}")
    int8 = precision == "int8"
    if int8:
        from dsa.quantize import check_quantizable

        check_quantizable(runtime)
    model = model.float().cpu().eval()
    a.graph_module.float().cpu().eval()
    spec = device_spec or rl.measure_local_device("cpu", seconds=2.0)
    size = a.input_size
    x = torch.randn(batch_size, 3, size, size)
    segments = list(segments) if segments is not None else candidate_segments(a)
    plans = covering_plans(a, [signature_of(s) for s, _ in segments]) if in_network else []
    steps = Steps(1 + len(segments) + len(plans) + 1, progress)
    ops: dict[str, Stat] = {}
    fused: dict[str, str] = {}
    segs: dict[str, dict] = {}
    e2e: dict[str, dict] = {}
    complete = True
    try:
        with torch.inference_mode():
            runs, fused, other = attribute(a, node_times(runtime, model, x, repeats, threads, int8=int8))
        ops = {name: Stat.of(v) for name, v in runs.items()}
        e2e["unattributed_ms"] = sum(other.values())
        steps.tick("whole network, per node")
        for seg, act in segments:
            conv, act_mod = segment_module(seg, act)
            merged = conv.eval() if act_mod is None else nn.Sequential(conv, act_mod).eval()
            xin = torch.randn(batch_size, *seg.in_shape)
            with torch.inference_mode():
                entry = {
                    **segment_entry(seg),
                    "conv": _subgraph_stat(runtime, merged, xin, repeats, threads, int8),
                    "act": None,
                    "act_fused": act_mod is not None,
                    "original": _subgraph_stat(runtime, original_subgraph(a, seg, act), xin, repeats, threads, int8),
                }
            segs[signature_of(seg)] = entry
            steps.tick(f"segment {seg.members[0]}")
        if plans:
            inside = in_network_times(
                a,
                model,
                runtime,
                plans,
                batch_size=batch_size,
                threads=threads,
                repeats=repeats,
                int8=int8,
                tick=steps.tick,
            )
            for sig, times in inside.items():
                if sig in segs:
                    segs[sig]["in_network"] = Stat.of(times)
        nets = {"original": model}
        if plan is not None:
            nets["merged"] = merge(copy.deepcopy(model), plan)
        res = measure(
            nets,
            batch_size,
            size,
            "cpu",
            False,
            warmup,
            repeats,
            runtime=runtime,
            threads=threads,
            precisions=dict.fromkeys(nets, precision),
        )
        e2e |= end_to_end_rows(res, batch_size, plan)
        steps.tick("end to end")
    except KeyboardInterrupt:
        complete = False
    if ops:
        e2e["sum_of_ops_ms"] = sum(s.median_ms for s in ops.values())
    return Profile(
        model=a.model_name,
        fingerprint=a.fingerprint,
        input_size=size,
        batch_size=batch_size,
        precision=precision,
        layout="nchw",
        environment=_environment(runtime, threads, precision),
        device_spec=spec.to_dict(),
        ops=ops,
        segments=segs,
        end_to_end=e2e,
        warmup=warmup,
        repeats=repeats,
        complete=complete,
        runtime=runtime_info(runtime, threads).to_json(),
        fused=fused,
    )
