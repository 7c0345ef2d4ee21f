"""Graph analysis with torch.fx: tracing, lowering to the IR of :mod:`dsa.ir`, activation sites."""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from dsa.errors import AnalysisError
from dsa.ir import (  # re-exported: the IR is part of dsa.graph's public API
    ACTIVATION_TYPES,
    GATE_TYPES,
    ActivationSite,
    Analysis,
    ConvInfo,
    Finding,
    Kind,
    Op,
)

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


# -------------------------------------------------------------------- lowering rules (first match applies)


def _found(op: Op, findings: list[Finding], why: str) -> None:
    op.note = why
    findings.append(Finding(op.name, why))


def _lower_conv(op: Op, m: nn.Module, findings: list[Finding]) -> Op | None:
    info, why = conv_info(m)
    if info is not None:
        op.kind, op.conv = Kind.CONV, info
    else:
        _found(op, findings, why)
    return None


def _lower_bn(op: Op, m: nn.Module, findings: list[Finding]) -> Op | None:
    """A foldable BN; a timm BatchNormAct2d also yields its activation half (returned, the node's output)."""
    ok, why = _bn_ok(m)
    if not ok:
        if why:
            _found(op, findings, why)
        return None
    op.kind, op.bn_eps = Kind.BN, float(m.eps)
    if not (_is_timm(m, "BatchNormAct2d") and not isinstance(m.act, nn.Identity)):
        return None
    name = f"{op.name}.act"
    act = Op(f"{op.node}/act", name, Kind.ACT, op.node, [op.id], type(m.act).__name__, op.block, op.shape)
    if act.module_type not in ACTIVATION_TYPES:
        act.kind, act.note = Kind.OTHER, f"{name} is a {act.module_type}, not a known activation"
    return act


def _lower_pad_module(op: Op, m: nn.Module, findings: list[Finding]) -> Op | None:
    op.kind, op.pad = Kind.PAD, _pad4(m.padding)
    return None


def _kind(kind: str):
    def lower(op: Op, m: nn.Module, findings: list[Finding]) -> Op | None:
        op.kind = kind
        return None

    return lower


# (applies to the module, lowering): a module call is the first rule's kind; unmatched modules are OTHER
_MODULE_RULES = (
    (lambda m: isinstance(m, nn.Conv2d), _lower_conv),
    (lambda m: isinstance(m, nn.BatchNorm2d), _lower_bn),
    (lambda m: type(m).__name__ in ACTIVATION_TYPES, _kind(Kind.ACT)),
    (lambda m: isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout2d)), _kind(Kind.IDENTITY)),
    (lambda m: isinstance(m, nn.ZeroPad2d) or (isinstance(m, nn.ConstantPad2d) and m.value == 0), _lower_pad_module),
    (lambda m: type(m).__name__ == "RelocatedPad", _kind(Kind.IDENTITY)),  # a merge-ready shortcut pad
)


def _is_activation_call(node: fx.Node, inputs: list[str]) -> bool:
    if node.op == "call_method":
        return node.target in _METHOD_ACTIVATIONS
    tensor_args = [a for a in node.args if isinstance(a, fx.Node)]
    return node.op == "call_function" and node.target in _FUNCTIONAL_ACTIVATIONS and len(tensor_args) == 1


def _is_add(node: fx.Node, inputs: list[str]) -> bool:
    return (
        node.op == "call_function"
        and node.target in _ADD_FUNCTIONS
        and len(node.args) == 2
        and all(isinstance(a, fx.Node) for a in node.args)
        and not node.kwargs
        and len(set(inputs)) == 2
    )


def _zero_pad_of(node: fx.Node) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of an ``F.pad`` call that zero-pads by constant ints, else None."""
    if node.op != "call_function" or node.target is not F.pad:
        return None
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
    value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else 0.0)
    ints = isinstance(pad, (list, tuple)) and len(pad) == 4 and all(isinstance(p, int) for p in pad)
    if not (ints and mode == "constant" and not value):
        return None
    left, right, top, bottom = pad
    return (top, bottom, left, right)


def _lower_call(op: Op, node: fx.Node, inputs: list[str]) -> None:
    """Functions and methods: activations, identity methods, adds of two tensors, zero ``F.pad``; else OTHER."""
    if _is_activation_call(node, inputs):
        op.kind = Kind.ACT
    elif node.op == "call_method" and node.target in _IDENTITY_METHODS:
        op.kind = Kind.IDENTITY
    elif _is_add(node, inputs):
        op.kind = Kind.ADD
    elif (pad := _zero_pad_of(node)) is not None:
        op.kind, op.pad = Kind.PAD, pad


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
        op = Op(node.name, "", Kind.OTHER, node.name, inputs, shape=shape)
        extra = None
        if node.op == "call_module":
            m = modules[node.target]
            k = seen_calls.get(node.target, 0)
            seen_calls[node.target] = k + 1
            op.name = node.target if call_counts[node.target] == 1 else f"{node.target}:{k}"
            op.module_type = type(m).__name__
            op.block = _block_of(root, node.target)
            if call_counts[node.target] > 1 and isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.ZeroPad2d)):
                _found(op, findings, f"called {call_counts[node.target]} times; dsa merges only unshared layers")
            else:
                lower = next((rule for applies, rule in _MODULE_RULES if applies(m)), None)
                extra = lower(op, m, findings) if lower is not None else None
        else:
            owner = _owner(node)
            op.block = _block_of(root, owner)
            op.name = f"{owner}.{node.name}" if owner else node.name
            target = node.target
            op.module_type = target if isinstance(target, str) else getattr(target, "__name__", str(target))
            _lower_call(op, node, inputs)
        if op.kind == Kind.ACT:
            op.inputs = op.inputs[:1]
        ops[op.id] = op
        out_id[node.name] = op.id
        if extra is not None:  # a BN+act module: its activation half is the node's output
            ops[extra.id] = extra
            out_id[node.name] = extra.id
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
