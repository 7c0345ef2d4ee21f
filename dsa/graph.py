"""Graph analysis with torch.fx: activation sites, the linear ops between them, and the segments a plan induces.

The traced graph is lowered to a small IR of :class:`Op` s, one per tensor-producing node (a timm
``BatchNormAct2d`` becomes two: its BN and its activation). Ops are named by qualified module name
(``features.3.conv.0.2``), by ``name:k`` for the k-th call of a module called several times (ResNet's
shared ``relu``), or by ``<owner module>.<fx node name>`` for functions (``features.3.add``).

Segments follow the merge rules of METHOD.md:

- a segment is a chain of linear ops (conv, BN, zero padding, identity, removed activation) whose
  intermediate tensors have exactly one consumer;
- a residual block whose branch is entirely linear and whose shortcut is the identity is one unit; a unit
  may only start a segment ("a segment lies inside one residual block or covers whole blocks");
- after a strided conv at most one more conv follows in a segment (the stride rule);
- SE gating multiplies, pooling, concatenation, shuffles, norms other than BN, projection shortcuts and
  every op dsa does not know end a segment.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from dsa.errors import AnalysisError

# Activation functions that may be removed (by class name, so timm's and user copies count too).
ACTIVATION_TYPES = frozenset(
    {
        "ReLU",
        "ReLU6",
        "Hardswish",
        "HardSwish",
        "HardSwishMe",
        "SiLU",
        "Swish",
        "SwishMe",
        "GELU",
        "LeakyReLU",
        "ELU",
        "CELU",
        "SELU",
        "Mish",
        "MishMe",
        "HardMish",
        "Hardtanh",
        "PReLU",
        "Softplus",
        "Tanh",
        "QuickGELU",
    }
)
# Gates (they feed a multiply) are never removal candidates; they are leaves so they stay readable.
GATE_TYPES = frozenset({"Sigmoid", "Hardsigmoid", "HardSigmoid", "HardSigmoidMe", "GateSigmoid"})

_FUNCTIONAL_ACTIVATIONS = {
    F.relu: "relu",
    torch.relu: "relu",
    F.relu6: "relu6",
    F.hardswish: "hardswish",
    F.silu: "silu",
    F.gelu: "gelu",
    F.leaky_relu: "leaky_relu",
    F.elu: "elu",
    F.mish: "mish",
    torch.tanh: "tanh",
    F.hardtanh: "hardtanh",
}
_METHOD_ACTIVATIONS = {"relu", "relu_", "tanh"}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_IDENTITY_METHODS = {"contiguous"}


class Kind:
    INPUT = "input"
    CONV = "conv"
    BN = "bn"
    ACT = "act"
    ADD = "add"
    PAD = "pad"
    IDENTITY = "identity"
    OTHER = "other"
    OUTPUT = "output"


LINEAR_KINDS = frozenset({Kind.CONV, Kind.BN, Kind.PAD, Kind.IDENTITY})


@dataclass(frozen=True)
class ConvInfo:
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    padding: tuple[int, int, int, int] | str  # (top, bottom, left, right) or "same" (TF, input-size dependent)
    bias: bool

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    @property
    def strided(self) -> bool:
        return self.stride != (1, 1)


@dataclass
class Op:
    """One tensor-producing step of the traced network."""

    id: str  # fx node name, or "<node>/act" for the activation half of a BN+act module
    name: str  # user-facing name (see module docstring)
    kind: str
    node: str  # fx node name
    inputs: list[str]  # ids of tensor-producing ops this op reads
    module_type: str = ""
    block: str = ""
    shape: tuple[int, ...] | None = None  # output shape at batch 1 and the analysis resolution
    conv: ConvInfo | None = None
    pad: tuple[int, int, int, int] | None = None
    bn_eps: float | None = None
    note: str = ""  # why an op is OTHER when it looks mergeable, or why an activation is not removable


@dataclass(frozen=True)
class ActivationSite:
    name: str
    type: str
    block: str
    index: int  # order among all activation sites
    position: int  # order inside its block
    removable: bool
    reason: str = ""  # why it is not removable

    def to_json(self) -> dict:
        d = {
            "name": self.name,
            "type": self.type,
            "block": self.block,
            "index": self.index,
            "position": self.position,
            "removable": self.removable,
        }
        if self.reason:
            d["reason"] = self.reason
        return d


@dataclass(frozen=True)
class Finding:
    """Something the analysis could not handle, by op name, with the reason."""

    node: str
    reason: str


@dataclass(frozen=True)
class Segment:
    """A chain of linear ops that merges into one convolution."""

    members: tuple[str, ...]  # op names, in order (a residual unit lists its branch, then its add)
    member_ids: tuple[str, ...]
    input_id: str  # id of the op whose output the segment reads
    output_id: str  # id of the segment's last op
    convs: tuple[str, ...]
    residual: bool  # starts with a whole residual block (identity shortcut fused into the kernel)
    residual_add: str  # id of that block's add ("" when not residual)
    skip_ids: tuple[str, ...]  # identity ops on that block's shortcut
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    depthwise: bool
    groups: int  # of the merged conv: the member's own groups for a lone conv, else C (depthwise) or 1
    in_shape: tuple[int, ...]  # (C, H, W) at the analysis resolution
    out_shape: tuple[int, ...]
    blocks: tuple[str, ...]

    @property
    def merged(self) -> bool:
        """True when the segment collapses more than one conv."""
        return len(self.convs) > 1

    def to_json(self) -> dict:
        return {
            "members": list(self.members),
            "convs": list(self.convs),
            "residual": self.residual,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel": list(self.kernel),
            "stride": list(self.stride),
            "depthwise": self.depthwise,
            "groups": self.groups,
            "in_shape": list(self.in_shape),
            "out_shape": list(self.out_shape),
            "blocks": list(self.blocks),
        }


@dataclass
class Analysis:
    """The result of :func:`analyze`: IR ops, activation sites, findings, fingerprint."""

    model_name: str
    input_size: int
    ops: dict[str, Op]  # by id, in topological order
    activations: list[ActivationSite]
    findings: list[Finding]
    fingerprint: str
    graph_module: fx.GraphModule = field(repr=False)
    by_name: dict[str, Op] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.by_name = {op.name: op for op in self.ops.values()}

    @property
    def removable(self) -> list[str]:
        return [a.name for a in self.activations if a.removable]

    def site(self, name: str) -> ActivationSite:
        for a in self.activations:
            if a.name == name:
                return a
        raise KeyError(name)

    def blocks(self) -> list[str]:
        """Blocks that hold activation sites, in network order (DepthShrinker's keep-list entries)."""
        seen: list[str] = []
        for a in self.activations:
            if a.block not in seen:
                seen.append(a.block)
        return seen

    def block_output(self, block: str) -> Op:
        """The last op of a block (its output; after the residual add)."""
        last = None
        for op in self.ops.values():
            if op.block == block:
                last = op
        if last is None:
            raise KeyError(block)
        return last

    def users(self) -> dict[str, list[str]]:
        users: dict[str, list[str]] = {i: [] for i in self.ops}
        for op in self.ops.values():
            for i in op.inputs:
                users[i].append(op.id)
        return users

    def segments(
        self,
        removed: Iterable[str] = (),
        added_after: Iterable[str] = (),
        boundaries: Iterable[str] = (),
        max_convs_after_stride: int = 1,
    ) -> list[Segment]:
        """Segments induced by removing ``removed`` activations, adding an activation after each op named in
        ``added_after`` and cutting after each op named in ``boundaries``."""
        return _segments(self, set(removed), set(added_after), set(boundaries), max_convs_after_stride)


# --------------------------------------------------------------------------------------------- tracing


def _timm_notrace() -> tuple[tuple[type, ...], list]:
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:  # pragma: no cover
        return (), []
    return tuple(timm_fx.get_notrace_modules()), list(timm_fx.get_notrace_functions())


class _Tracer(fx.Tracer):
    """symbolic_trace, plus: activations and gates stay leaves; timm's no-trace modules are leaves and its
    no-trace functions are wrapped (timm's "same" padding is data dependent)."""

    def __init__(self, leaf_types: tuple[type, ...], wrap_functions: Sequence) -> None:
        super().__init__(autowrap_functions=tuple(wrap_functions))
        self._leaf_types = leaf_types

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        name = type(m).__name__
        if name in ACTIVATION_TYPES or name in GATE_TYPES:
            return True
        if self._leaf_types and isinstance(m, self._leaf_types):
            return True
        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """Trace ``model`` (in eval mode) with torch.fx; raise :class:`AnalysisError` naming what failed."""
    uses_timm = any(type(m).__module__.startswith("timm.") for m in model.modules())
    leaf_types, wrap_functions = _timm_notrace() if uses_timm else ((), [])
    was_training = model.training
    model.eval()
    try:
        tracer = _Tracer(leaf_types, wrap_functions)
        graph = tracer.trace(model)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise AnalysisError(
            f"torch.fx cannot trace {type(model).__name__}: {type(e).__name__}: {first} "
            "(data-dependent control flow? make that module a leaf or rewrite it with torch.where)"
        ) from e
    finally:
        model.train(was_training)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


# ------------------------------------------------------------------------------------------- lowering


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _is_timm(m: nn.Module, cls_name: str) -> bool:
    return type(m).__name__ == cls_name and type(m).__module__.startswith("timm.")


def conv_info(m: nn.Module) -> tuple[ConvInfo | None, str]:
    """ConvInfo of a conv dsa can merge, or (None, reason)."""
    if type(m) is nn.Conv2d or _is_timm(m, "Conv2dSame") or type(m).__name__ == "RelocatedPadConv2d":
        if m.padding_mode != "zeros":
            return None, f"padding_mode={m.padding_mode!r} cannot be relocated (only zero padding merges)"
        kh, kw = _pair(m.kernel_size)
        if _is_timm(m, "Conv2dSame"):
            padding: tuple[int, int, int, int] | str = "same"
        elif isinstance(m.padding, str):
            if m.padding == "valid":
                padding = (0, 0, 0, 0)
            else:  # PyTorch "same" (stride 1 only): extra pad goes to the end
                dh, dw = _pair(m.dilation)
                th, tw = dh * (kh - 1), dw * (kw - 1)
                padding = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        else:
            ph, pw = _pair(m.padding)
            padding = (ph, ph, pw, pw)
        info = ConvInfo(
            m.in_channels,
            m.out_channels,
            (kh, kw),
            _pair(m.stride),
            _pair(m.dilation),
            m.groups,
            padding,
            m.bias is not None,
        )
        return info, ""
    return None, f"{type(m).__name__} is a conv subclass with its own forward; dsa does not merge it"


def _bn_ok(m: nn.Module) -> tuple[bool, str]:
    if not (type(m) is nn.BatchNorm2d or _is_timm(m, "BatchNormAct2d")):
        return False, ""
    if not m.track_running_stats or m.running_mean is None:
        return False, "BatchNorm without running statistics cannot be folded"
    return True, ""


def _owner(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    last = list(stack.values())[-1]
    return last[0] if isinstance(last, tuple) else str(last)


def _block_of(root: nn.Module, path: str) -> str:
    """The block an op belongs to: the shallowest ancestor that is an element of a plain container
    (Sequential / ModuleList / ModuleDict) without being one itself; else the top-level child."""
    if not path:
        return ""
    parts = path.split(".")
    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    parent = root
    for i in range(1, len(parts) + 1):
        try:
            m = root.get_submodule(".".join(parts[:i]))
        except AttributeError:
            break
        if type(parent) in containers and type(m) not in containers:
            return ".".join(parts[:i])
        parent = m
    return parts[0]


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.all_input_nodes if a.meta.get("tensor_meta") is not None or a.op == "placeholder"]


def _lower(gm: fx.GraphModule, root: nn.Module) -> tuple[dict[str, Op], list[Finding]]:
    """Lower the traced graph to IR ops; ``root`` is the traced model (its container types name blocks)."""
    modules = dict(gm.named_modules())
    ops: dict[str, Op] = {}
    findings: list[Finding] = []
    # node name -> id of the op producing that node's tensor (BN+act nodes map to their act half)
    out_id: dict[str, str] = {}
    call_counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            call_counts[node.target] = call_counts.get(node.target, 0) + 1
    seen_calls: dict[str, int] = {}

    for node in gm.graph.nodes:
        shape = None
        tm = node.meta.get("tensor_meta")
        if tm is not None and hasattr(tm, "shape"):
            shape = tuple(int(s) for s in tm.shape)
        if node.op == "placeholder":
            ops[node.name] = Op(node.name, node.name, Kind.INPUT, node.name, [], shape=shape)
            out_id[node.name] = node.name
            continue
        if node.op == "get_attr" or (tm is None and node.op != "output"):
            continue  # shapes, constants, tuples: not tensors of the data path
        inputs = [out_id[a.name] for a in node.all_input_nodes if a.name in out_id]
        if node.op == "output":
            ops[node.name] = Op(node.name, "output", Kind.OUTPUT, node.name, inputs)
            continue
        owner = _owner(node)
        op = Op(node.name, "", Kind.OTHER, node.name, inputs, shape=shape)
        if node.op == "call_module":
            m = modules[node.target]
            k = seen_calls.get(node.target, 0)
            seen_calls[node.target] = k + 1
            op.name = node.target if call_counts[node.target] == 1 else f"{node.target}:{k}"
            op.module_type = type(m).__name__
            op.block = _block_of(root, node.target)
            tname = type(m).__name__
            if call_counts[node.target] > 1 and isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.ZeroPad2d)):
                op.note = f"called {call_counts[node.target]} times; dsa merges only unshared layers"
                findings.append(Finding(op.name, op.note))
            elif isinstance(m, nn.Conv2d):
                info, why = conv_info(m)
                if info is not None:
                    op.kind, op.conv = Kind.CONV, info
                else:
                    op.note = why
                    findings.append(Finding(op.name, why))
            elif isinstance(m, nn.BatchNorm2d):
                ok, why = _bn_ok(m)
                if ok:
                    op.kind, op.bn_eps = Kind.BN, float(m.eps)
                    if _is_timm(m, "BatchNormAct2d") and not isinstance(m.act, nn.Identity):
                        ops[op.id] = op
                        act_name = f"{op.name}.act"
                        act = Op(
                            f"{node.name}/act",
                            act_name,
                            Kind.ACT,
                            node.name,
                            [op.id],
                            module_type=type(m.act).__name__,
                            block=op.block,
                            shape=shape,
                        )
                        if type(m.act).__name__ not in ACTIVATION_TYPES:
                            act.kind = Kind.OTHER
                            act.note = f"{act_name} is a {type(m.act).__name__}, not a known activation"
                        ops[act.id] = act
                        out_id[node.name] = act.id
                        continue
                elif why:
                    op.note = why
                    findings.append(Finding(op.name, why))
            elif tname in ACTIVATION_TYPES:
                op.kind = Kind.ACT
            elif isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout2d)):
                op.kind = Kind.IDENTITY
            elif isinstance(m, nn.ZeroPad2d) or (isinstance(m, nn.ConstantPad2d) and m.value == 0):
                op.kind, op.pad = Kind.PAD, _pad4(m.padding)
            elif tname == "RelocatedPad":
                op.kind = Kind.IDENTITY  # a merge-ready form's shortcut pad: handled by apply_plan/merge
        else:
            op.block = _block_of(root, owner)
            fname = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
            op.name = f"{owner}.{node.name}" if owner else node.name
            op.module_type = fname
            tensor_args = [a for a in node.args if isinstance(a, fx.Node)]
            if (
                node.op == "call_function"
                and node.target in _FUNCTIONAL_ACTIVATIONS
                and len(tensor_args) == 1
                or node.op == "call_method"
                and node.target in _METHOD_ACTIVATIONS
            ):
                op.kind = Kind.ACT
            elif node.op == "call_method" and node.target in _IDENTITY_METHODS:
                op.kind = Kind.IDENTITY
            elif (
                node.op == "call_function"
                and node.target in _ADD_FUNCTIONS
                and len(node.args) == 2
                and all(isinstance(a, fx.Node) for a in node.args)
                and not node.kwargs
                and len(set(inputs)) == 2
            ):
                op.kind = Kind.ADD
            elif node.op == "call_function" and node.target is F.pad:
                pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
                mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
                value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else 0.0)
                if (
                    isinstance(pad, (list, tuple))
                    and len(pad) == 4
                    and all(isinstance(p, int) for p in pad)
                    and mode == "constant"
                    and not value
                ):
                    op.kind = Kind.PAD
                    left, right, top, bottom = pad
                    op.pad = (top, bottom, left, right)
        if op.kind == Kind.ACT:
            op.inputs = op.inputs[:1]
        ops[op.id] = op
        out_id[node.name] = op.id
    return ops, findings


@dataclass(frozen=True)
class _TensorMeta:
    shape: tuple[int, ...]


class _ShapeRecorder(fx.Interpreter):
    """Record each tensor-valued node's shape in ``node.meta["tensor_meta"]`` (torch's ShapeProp prints
    tracebacks itself, which a CLI must not)."""

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta["tensor_meta"] = _TensorMeta(tuple(result.shape))
        elif isinstance(result, (tuple, list)) and any(isinstance(r, torch.Tensor) for r in result):
            n.meta["tensor_meta"] = tuple(result)  # several tensors: not a data-path op dsa follows
        return result


def _pad4(padding) -> tuple[int, int, int, int]:
    left, right, top, bottom = (padding,) * 4 if isinstance(padding, int) else padding
    return (int(top), int(bottom), int(left), int(right))


def _fingerprint(ops: dict[str, Op]) -> str:
    rows = []
    for op in ops.values():
        row: list = [op.name, op.kind, op.module_type, op.shape[1:2] if op.shape else None]
        if op.conv is not None:
            c = op.conv
            row += [c.in_channels, c.out_channels, c.kernel, c.stride, c.dilation, c.groups, c.padding]
        rows.append(row)
    return hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()[:16]


def _removability(ops: dict[str, Op], users: dict[str, list[str]], op: Op) -> str:
    """Empty string when removing activation ``op`` can enable a merge, else the reason it cannot."""
    src = ops[op.inputs[0]] if op.inputs else None
    while src is not None and src.kind in (Kind.IDENTITY,) and src.inputs:
        src = ops[src.inputs[0]]
    if src is None or src.kind not in (Kind.CONV, Kind.BN, Kind.ADD, Kind.PAD):
        return f"its input comes from {src.name if src else 'nothing'} ({src.kind if src else '-'}), not a conv/BN/add"

    def consumers(i: str) -> list[Op]:
        out = []
        for u in users[i]:
            uo = ops[u]
            if uo.kind == Kind.IDENTITY:
                out += consumers(u)
            else:
                out.append(uo)
        return out

    cons = consumers(op.id)
    bad = [c for c in cons if c.kind not in (Kind.CONV, Kind.PAD, Kind.ADD, Kind.BN)]
    if not cons:
        return "nothing reads its output"
    if bad:
        who = bad[0]
        if who.kind == Kind.OUTPUT:
            return "it feeds the network output, so no conv follows"
        if who.note:
            return f"it feeds {who.name}, which dsa cannot merge ({who.note})"
        return f"it feeds {who.name} ({who.module_type}), so no conv follows"
    return ""


def _min_spatial(gm: fx.GraphModule) -> int | None:
    sizes = [
        min(m.shape[2:])
        for n in gm.graph.nodes
        if isinstance(m := n.meta.get("tensor_meta"), _TensorMeta) and len(m.shape) == 4 and min(m.shape[2:]) > 1
    ]
    return min(sizes, default=1)


class _MinSpatial(fx.Interpreter):
    """The smallest spatial size (above 1: global pooling) of any 4-D tensor in a forward pass (nothing recorded
    on the graph)."""

    def run(self, *args):
        self.smallest = None
        return super().run(*args)

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        if isinstance(result, torch.Tensor) and result.dim() == 4 and min(result.shape[2:]) > 1:
            m = min(result.shape[2:])
            self.smallest = m if self.smallest is None else min(self.smallest, m)
        return result


_STRIDE_PROBE = 256


def _check_input_size(gm: fx.GraphModule, example: torch.Tensor, name: str, input_size: int) -> None:
    """Refuse an input smaller than the network's total stride (its deepest feature maps would be sub-pixel and
    padding-dominated). The stride is probed at 256 px, only when the deepest map at ``input_size`` is tiny."""
    if _min_spatial(gm) > 2 or input_size >= _STRIDE_PROBE:
        return
    probe = _MinSpatial(gm)
    try:
        with torch.no_grad():
            probe.run(example.new_zeros(1, 3, _STRIDE_PROBE, _STRIDE_PROBE))
    except Exception:  # a network fixed to one input size: nothing to compare with
        return
    if not probe.smallest:
        return
    stride = _STRIDE_PROBE // probe.smallest
    if input_size < stride:
        raise AnalysisError(
            f"input size {input_size} px is below {name}'s total stride ({stride} px): its deepest layers would see "
            f"mostly padding; give --input-size {stride} or more"
        )


def analyze(model: nn.Module, model_name: str = "", input_size: int = 224, *, strict_size: bool = False) -> Analysis:
    """Trace ``model`` and lower it to the IR; find activation sites and what cannot be analysed. With
    ``strict_size`` (the CLI's ``--input-size``), an input smaller than the network's total stride is refused
    (the merge math holds at any size; a network run on it mostly sees padding)."""
    gm = trace(model)
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise AnalysisError(f"input size must be a positive integer, got {input_size!r}")
    param = next(model.parameters(), None)
    example = torch.zeros(1, 3, input_size, input_size, dtype=param.dtype if param is not None else torch.float32)
    try:
        with torch.no_grad():
            _ShapeRecorder(gm).run(example)
    except Exception as e:
        raise AnalysisError(
            f"running {model_name or type(model).__name__} on a 1x3x{input_size}x{input_size} input failed: "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} (try another --input-size)"
        ) from e
    if strict_size:
        _check_input_size(gm, example, model_name or type(model).__name__, input_size)
    ops, findings = _lower(gm, model)
    users: dict[str, list[str]] = {i: [] for i in ops}
    for op in ops.values():
        for i in op.inputs:
            users[i].append(op.id)
    sites: list[ActivationSite] = []
    per_block: dict[str, int] = {}
    for op in ops.values():
        if op.kind != Kind.ACT:
            continue
        reason = _removability(ops, users, op)
        op.note = reason
        pos = per_block.get(op.block, 0)
        per_block[op.block] = pos + 1
        sites.append(ActivationSite(op.name, op.module_type, op.block, len(sites), pos, not reason, reason))
    return Analysis(model_name or type(model).__name__, input_size, ops, sites, findings, _fingerprint(ops), gm)


# ------------------------------------------------------------------------------------------- segments


def segment_signature(c_in: int, c_out: int, kernel, stride, groups: int, h_in: int, w_in: int) -> str:
    """Key of a merged conv's shape: the same shape costs the same, whichever layers it came from."""
    return f"c{c_in}-{c_out}_k{kernel[0]}x{kernel[1]}_s{stride[0]}x{stride[1]}_g{groups}_in{h_in}x{w_in}"


def signature_of(seg: Segment) -> str:
    groups = seg.groups
    return segment_signature(
        seg.in_channels, seg.out_channels, seg.kernel, seg.stride, groups, seg.in_shape[1], seg.in_shape[2]
    )


@dataclass
class ResidualUnit:
    """A residual block with a linear branch and identity shortcut: x -> branch -> add(x)."""

    input_id: str
    branch: list[str]
    skip: list[str]  # identity ops on the shortcut
    add: str


def residual_units(ops: dict[str, Op], users: dict[str, list[str]], linear: set[str]) -> dict[str, ResidualUnit]:
    units: dict[str, ResidualUnit] = {}
    for add in ops.values():
        if add.kind != Kind.ADD:
            continue
        for branch_end, skip_end in (add.inputs, add.inputs[::-1]):
            skip: list[str] = []
            x = skip_end
            while ops[x].kind == Kind.IDENTITY and len(users[x]) == 1 and ops[x].inputs:
                skip.append(x)
                x = ops[x].inputs[0]
            branch: list[str] = []
            cur = branch_end
            ok = True
            while cur != x:
                op = ops[cur]
                if cur not in linear or len(op.inputs) != 1 or len(users[cur]) != 1:
                    ok = False
                    break
                branch.append(cur)
                cur = op.inputs[0]
            branch.reverse()
            if not ok or not any(ops[b].kind == Kind.CONV for b in branch):
                continue
            first_users = set(users[x])
            expected = {branch[0], (skip[-1] if skip else add.id)}
            if first_users != expected or ops[x].shape != ops[branch_end].shape:
                continue
            units[add.id] = ResidualUnit(x, branch, skip[::-1], add.id)
            break
    return units


def linear_runs(
    a: Analysis, linear: set[str], barrier_after: set[str] = frozenset()
) -> tuple[list[list[str]], dict[str, ResidualUnit]]:
    """Maximal chains of linear elements (op ids; a residual unit by its add id) when the ops ``linear`` are
    linear: consecutive elements are linked through a tensor read by nothing else, and never across an op in
    ``barrier_after`` (an added activation follows it). Returns the runs and the residual units."""
    ops = a.ops
    users = a.users()
    units = residual_units(ops, users, linear)
    in_unit = {i: u.add for u in units.values() for i in [*u.branch, *u.skip]}
    elements: list[str] = []  # linear ops outside units, and units (keyed by their add id)
    elem_input: dict[str, str] = {}
    for i, op in ops.items():
        if i in units:
            elements.append(i)
            elem_input[i] = units[i].input_id
        elif i in linear and i not in in_unit and op.inputs:
            elements.append(i)
            elem_input[i] = op.inputs[0]
    elem_set = set(elements)
    succ: dict[str, str] = {}
    has_pred: set[str] = set()
    for e in elements:
        t = elem_input[e]
        if t in elem_set and t not in barrier_after and {in_unit.get(u, u) for u in users[t]} == {e}:
            succ[t] = e
            has_pred.add(e)
    runs = []
    for e in elements:
        if e in has_pred:
            continue
        run = [e]
        while run[-1] in succ:
            run.append(succ[run[-1]])
        runs.append(run)
    return runs, units


def _segments(
    a: Analysis, removed: set[str], added_after: set[str], boundaries: set[str], max_convs_after_stride: int
) -> list[Segment]:
    ops = a.ops
    act_ids = {op.name: op.id for op in ops.values() if op.kind == Kind.ACT}
    linear = {i for i, op in ops.items() if op.kind in LINEAR_KINDS}
    linear |= {act_ids[n] for n in removed if n in act_ids}
    cut_after = {a.by_name[n].id for n in boundaries | added_after if n in a.by_name}
    barrier_after = {a.by_name[n].id for n in added_after if n in a.by_name}
    runs, units = linear_runs(a, linear, barrier_after)
    segments: list[Segment] = []
    for run in runs:
        for piece in cut_run(ops, units, run, cut_after, max_convs_after_stride):
            segments.append(make_segment(a, units, piece))
    return segments


def _unit_convs(ops: dict[str, Op], unit: ResidualUnit) -> list[Op]:
    return [ops[b] for b in unit.branch if ops[b].kind == Kind.CONV]


def cut_run(
    ops: dict[str, Op], units: dict[str, ResidualUnit], run: list[str], cut_after: set[str], max_after_stride: int
) -> list[list[str]]:
    pieces: list[list[str]] = []
    cur: list[str] = []
    convs_after_stride: int | None = None  # None: no strided conv yet in this piece

    def flush() -> None:
        nonlocal cur, convs_after_stride
        if cur:
            pieces.append(cur)
        cur, convs_after_stride = [], None

    for e in run:
        is_unit = e in units
        convs = _unit_convs(ops, units[e]) if is_unit else ([ops[e]] if ops[e].kind == Kind.CONV else [])
        if is_unit and any(x in units or ops[x].kind == Kind.CONV for x in cur):
            flush()
        for c in convs:
            if convs_after_stride is not None and convs_after_stride + 1 > max_after_stride:
                if is_unit:
                    raise AssertionError("unit inside a strided segment")  # units always start a piece
                flush()
            if convs_after_stride is not None:
                convs_after_stride += 1
            if c.conv.strided:
                convs_after_stride = 0
        cur.append(e)
        if e in cut_after:
            flush()
    flush()
    # trim: a segment starts at a conv, pad or unit and ends at its last conv-side op (no trailing pad)
    out = []
    for p in pieces:
        while p and not (p[0] in units or ops[p[0]].kind in (Kind.CONV, Kind.PAD)):
            p = p[1:]
        while p and p[-1] not in units and ops[p[-1]].kind == Kind.PAD:
            p = p[:-1]
        if any(x in units or ops[x].kind == Kind.CONV for x in p):
            out.append(p)
    return out


def _merged_groups(convs: list[Op], residual: bool) -> int:
    """Groups of a segment's merged conv: a lone grouped conv stays grouped (only BN folds into it) unless an
    identity shortcut is fused into it; a composite stays depthwise only if every member is, else dense."""
    if all(c.conv.depthwise for c in convs):
        return convs[0].conv.in_channels
    if len(convs) == 1 and not residual:
        return convs[0].conv.groups
    return 1


def make_segment(a: Analysis, units: dict[str, ResidualUnit], piece: list[str]) -> Segment:
    ops = a.ops
    member_ids: list[str] = []
    convs: list[Op] = []
    for e in piece:
        if e in units:
            u = units[e]
            member_ids += [*u.branch, *u.skip, u.add]
            convs += _unit_convs(ops, u)
        else:
            member_ids.append(e)
            if ops[e].kind == Kind.CONV:
                convs.append(ops[e])
    kh = kw = 1
    sh = sw = 1
    for c in convs:
        ci = c.conv
        kh += (ci.dilation[0] * (ci.kernel[0] - 1)) * sh
        kw += (ci.dilation[1] * (ci.kernel[1] - 1)) * sw
        sh *= ci.stride[0]
        sw *= ci.stride[1]
    first = piece[0]
    input_id = units[first].input_id if first in units else ops[first].inputs[0]
    in_shape = ops[input_id].shape or ()
    out_shape = ops[piece[-1]].shape or ()
    blocks: list[str] = []
    for i in member_ids:
        if ops[i].block not in blocks:
            blocks.append(ops[i].block)
    return Segment(
        members=tuple(ops[i].name for i in member_ids),
        member_ids=tuple(member_ids),
        input_id=input_id,
        output_id=piece[-1],
        convs=tuple(c.name for c in convs),
        residual=first in units,
        residual_add=units[first].add if first in units else "",
        skip_ids=tuple(units[first].skip) if first in units else (),
        in_channels=convs[0].conv.in_channels,
        out_channels=convs[-1].conv.out_channels,
        kernel=(kh, kw),
        stride=(sh, sw),
        depthwise=all(c.conv.depthwise for c in convs),
        groups=_merged_groups(convs, first in units),
        in_shape=tuple(in_shape[1:]),
        out_shape=tuple(out_shape[1:]),
        blocks=tuple(blocks),
    )
