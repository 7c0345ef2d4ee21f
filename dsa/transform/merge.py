"""Apply a plan (merge-ready network) and merge it (one conv per segment), verified numerically.

Three layers, as in PyTorch's own fusion code:

- tensors: :func:`fold_bn`, :func:`compose`, :func:`dense_kernel` (pure math on float64 tensors);
- segments: :func:`segment_conv` turns one segment of a merge-ready network into a conv;
- graphs: :func:`apply_plan` and :func:`merge` copy the network and rewrite its fx graph; merge checks the
  result against the merge-ready network and raises :class:`MergeVerificationError` instead of returning
  a wrong network.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from dsa.errors import MergeError, MergeVerificationError
from dsa.formats.plan import Plan, bn_folded_plan
from dsa.graph import analyze
from dsa.ir import Analysis, FusedUnit, Kind, Op, Segment, pruned_ops
from dsa.transform.layers import CONV_SAME, PrunedBN, RelocatedPad, RelocatedPadConv2d, conv_spec, pad_spec

_ACT_FACTORY = {"ReLU6": nn.ReLU6, "ReLU": nn.ReLU, "Hardswish": nn.Hardswish, "SiLU": nn.SiLU}


@dataclass
class Affine:
    """A linear map as a valid (unpadded) conv with bias: either dense (weight [out, in, kh, kw]) or
    depthwise (weight [C, 1, kh, kw], ``depthwise=True``)."""

    weight: torch.Tensor
    bias: torch.Tensor
    stride: tuple[int, int]
    depthwise: bool = False
    groups: int = 1  # > 1 only for a lone grouped conv kept grouped (never composed)

    def dense(self) -> torch.Tensor:
        return dense_kernel(self.weight, self.weight.shape[0]) if self.depthwise else self.weight


def dense_kernel(weight: torch.Tensor, groups: int, dilation: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """Expand a grouped (or depthwise) kernel to its block-diagonal dense form, and a dilated one to its
    zero-filled form."""
    out_c, in_per_group, kh, kw = weight.shape
    if groups > 1:
        dense = weight.new_zeros(out_c, in_per_group * groups, kh, kw)
        out_per_group = out_c // groups
        for g in range(groups):
            o, i = g * out_per_group, g * in_per_group
            dense[o : o + out_per_group, i : i + in_per_group] = weight[o : o + out_per_group]
        weight = dense
    return _spread(weight, dilation)


def _spread(weight: torch.Tensor, step: tuple[int, int]) -> torch.Tensor:
    """Insert ``step - 1`` zeros between kernel taps (dilation)."""
    if tuple(step) == (1, 1):
        return weight
    o, i, kh, kw = weight.shape
    out = weight.new_zeros(o, i, step[0] * (kh - 1) + 1, step[1] * (kw - 1) + 1)
    out[:, :, :: step[0], :: step[1]] = weight
    return out


def compose(first: Affine, second: Affine) -> Affine:
    """``second`` after ``first`` (both valid convs) as one valid conv.

    The kernel is the full convolution of the two kernels, the second's taps spread by the first's stride:
    size k1 + (k2 - 1) * s1, stride s1 * s2; the first bias passes through the sum of the second's weights.
    Depthwise and 1x1 operands take cheap paths; the result is depthwise only when both are.
    """
    s1 = first.stride
    w1, w2 = first.weight, second.weight
    stride = (s1[0] * second.stride[0], s1[1] * second.stride[1])
    if second.depthwise:
        b = second.bias + w2.sum(dim=(1, 2, 3)) * first.bias
    else:
        b = second.bias + second.dense().sum(dim=(2, 3)) @ first.bias
    if first.depthwise and second.depthwise:  # per-channel full convolution
        w = F.conv_transpose2d(w2.transpose(0, 1), w1, stride=s1, groups=w1.shape[0]).transpose(0, 1)
        return Affine(w.contiguous(), b, stride, depthwise=True)
    if first.depthwise:  # W[o,i] = spread(W2[o,i]) * w1[i]
        w = F.conv_transpose2d(w2, w1, stride=s1, groups=w1.shape[0])
    elif second.depthwise:  # W[o,i] = W1[o,i] * spread(w2[o])
        w = F.conv_transpose2d(w1.transpose(0, 1), w2, dilation=s1, groups=w2.shape[0]).transpose(0, 1)
    elif w2.shape[2:] == (1, 1):
        w = torch.einsum("om,mihw->oihw", w2[:, :, 0, 0], w1)
    elif w1.shape[2:] == (1, 1):
        w = _spread(torch.einsum("omhw,mi->oihw", w2, w1[:, :, 0, 0]), s1)
    else:
        w = F.conv_transpose2d(w1.transpose(0, 1), w2.transpose(0, 1), dilation=s1).transpose(0, 1)
    return Affine(w.contiguous(), b, stride)


def fold_bn(a: Affine, bn: nn.BatchNorm2d) -> Affine:
    """Fold an eval-mode BatchNorm (with its own eps) into the preceding affine map."""
    dt = a.weight.dtype
    var = bn.running_var.to(dt)
    mean = bn.running_mean.to(dt)
    gamma = bn.weight.to(dt) if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.to(dt) if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    return Affine(
        a.weight * scale[:, None, None, None], (a.bias - mean) * scale + beta, a.stride, a.depthwise, a.groups
    )


def conv_affine(conv: nn.Conv2d, dtype: torch.dtype = torch.float64, keep_groups: bool = False) -> Affine:
    """A conv as an Affine: depthwise kept depthwise, grouped expanded to dense unless ``keep_groups``."""
    w = conv.weight.detach().to(dtype)
    b = conv.bias.detach().to(dtype) if conv.bias is not None else w.new_zeros(w.shape[0])
    dw = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    if keep_groups and conv.groups > 1 and not dw:
        return Affine(_spread(w, tuple(conv.dilation)), b, tuple(conv.stride), groups=conv.groups)
    w = _spread(w, tuple(conv.dilation)) if dw else dense_kernel(w, conv.groups, tuple(conv.dilation))
    return Affine(w, b, tuple(conv.stride), depthwise=dw)


def add_identity(a: Affine, tap: tuple[int, int]) -> Affine:
    """Fuse an identity shortcut: add 1 at kernel position ``tap`` of each channel's own input."""
    out_c, in_c, kh, kw = a.weight.shape
    if a.depthwise:
        in_c = out_c
    if out_c != in_c or a.stride != (1, 1):
        raise MergeError(f"identity shortcut needs equal channels and stride 1 (got {in_c}->{out_c}, {a.stride})")
    if not (0 <= tap[0] < kh and 0 <= tap[1] < kw):
        raise MergeError(f"identity tap {tap} lies outside the {kh}x{kw} merged kernel")
    w = a.weight.clone()
    idx = torch.arange(out_c)
    w[idx, 0 if a.depthwise else idx, tap[0], tap[1]] += 1
    return Affine(w, a.bias, a.stride, a.depthwise)


def _module(gm: fx.GraphModule, op: Op) -> nn.Module:
    node = _node(gm, op.node)
    return gm.get_submodule(node.target)


def _node(gm: fx.GraphModule, name: str) -> fx.Node:
    for n in gm.graph.nodes:
        if n.name == name:
            return n
    raise MergeError(f"node {name} is missing from the merge-ready graph (was it edited after apply_plan?)")


def _padding_top_left(op: Op) -> tuple[int, int]:
    info = op.conv
    if op.kind == Kind.PAD:
        return op.pad[0], op.pad[2]
    if info.padding == "same":  # stride 1 inside a residual branch: TF pads (k-1)*d, the smaller half on top
        return (info.dilation[0] * (info.kernel[0] - 1)) // 2, (info.dilation[1] * (info.kernel[1] - 1)) // 2
    return info.padding[0], info.padding[2]


def _identity_affine(channels: int, dtype: torch.dtype) -> Affine:
    """The identity map as a 1x1 depthwise conv (what a BN folds into when no conv precedes it)."""
    return Affine(torch.ones(channels, 1, 1, 1, dtype=dtype), torch.zeros(channels, dtype=dtype), (1, 1), True)


def segment_conv(
    ready: fx.GraphModule, analysis: Analysis, seg: Segment, dtype: torch.dtype = torch.float64
) -> tuple[Affine, list[list[int]]]:
    """The affine map of one segment of a merge-ready network, and its relocated padding specs.

    Ops outside residual blocks compose into the running map. A residual block's branch composes into a map of
    its own; its identity shortcut adds 1 at the tap of the branch's own padding (stride 1), and the block's map
    ``y + f(y)`` then composes into the running map like any conv."""
    ops = analysis.ops
    unit_of = {b: u for u in seg.units for b in u.branch}
    adds = {u.add for u in seg.units}
    skip = set(seg.skip_ids)
    affine: Affine | None = None  # the running map, segment input -> here
    branch: Affine | None = None  # the map of the residual branch being read, block input -> here
    tap = [0, 0]
    for mid in seg.member_ids:
        op = ops[mid]
        if mid in skip:
            continue
        if mid in adds:
            if branch is None:
                raise MergeError(f"segment starting at {seg.members[0]}: residual block {op.name} has no conv")
            block = add_identity(branch, (tap[0], tap[1]))
            affine = block if affine is None else compose(affine, block)
            branch, tap = None, [0, 0]
            continue
        in_branch = mid in unit_of
        cur = branch if in_branch else affine
        if op.kind == Kind.CONV:
            conv = _module(ready, op)
            a = conv_affine(conv, dtype, keep_groups=seg.groups > 1 and not seg.depthwise)
            cur = a if cur is None else compose(cur, a)
            if in_branch:
                t, left = _padding_top_left(op)
                tap[0] += t
                tap[1] += left
        elif op.kind == Kind.BN:
            bn = _module(ready, op)
            if cur is None:
                if not in_branch:
                    raise MergeError(f"segment starting at {seg.members[0]}: BN {op.name} before any conv")
                cur = _identity_affine(bn.num_features, dtype)
            cur = fold_bn(cur, bn)
        elif op.kind == Kind.PAD and in_branch:
            t, left = _padding_top_left(op)
            tap[0] += t
            tap[1] += left
        if in_branch:
            branch = cur
        else:
            affine = cur
    if affine is None:
        raise MergeError(f"segment starting at {seg.members[0]} has no conv")
    # the relocated padding sits on the first conv or pad (a segment may start with a pruned conv: an identity)
    first = next(ops[i] for i in seg.member_ids if ops[i].kind in (Kind.CONV, Kind.PAD) and i not in skip)
    mod = _module(ready, first)
    specs = [list(s) for s in getattr(mod, "specs", [])]
    return affine, specs


def merged_conv(
    ready: fx.GraphModule, analysis: Analysis, seg: Segment, dtype: torch.dtype = torch.float32
) -> RelocatedPadConv2d:
    """The one conv ``seg`` of a merge-ready network merges into (its relocated padding included), in ``dtype``
    (composed in float64). Unverified on its own: :func:`merge` checks every one it places."""
    return _to_conv(*segment_conv(ready, analysis, seg), dtype)


def _to_conv(affine: Affine, specs: list[list[int]], dtype: torch.dtype) -> RelocatedPadConv2d:
    w, b = affine.weight, affine.bias
    out_c, in_c, kh, kw = w.shape
    groups = affine.groups
    if affine.depthwise:
        in_c = groups = out_c
    elif groups > 1:
        in_c = in_c * groups
    conv = RelocatedPadConv2d(in_c, out_c, (kh, kw), affine.stride, groups=groups, bias=True, specs=specs).to(dtype)
    with torch.no_grad():
        conv.weight.copy_(w.to(dtype))
        conv.bias.copy_(b.to(dtype))
    return conv


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    if not gm.add_submodule(target, module):
        raise MergeError(f"cannot place a module at {target}")


def _fresh_name(gm: fx.GraphModule, base: str) -> str:
    names = {n for n, _ in gm.named_modules()}
    if base not in names:
        return base
    k = 1
    while f"{base}_{k}" in names:
        k += 1
    return f"{base}_{k}"


def _identity_node(gm: fx.GraphModule, node: fx.Node, target: str) -> None:
    """Turn ``node`` (a module call or a function) into a call of an nn.Identity at ``target``."""
    _set_module(gm, target, nn.Identity())
    node.op, node.target = "call_module", target
    node.args, node.kwargs = (node.args[0],), {}


@dataclass(frozen=True)
class MergeReady:
    """What :func:`apply_plan` knows of the merge-ready network it returns (``merge_ready_record(module)``)."""

    plan: Plan
    analysis: Analysis
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class Merged:
    """What :func:`merge` verified of the network it returns (``merge_record(module)``)."""

    plan: Plan
    max_rel_error: float  # against the merge-ready network, in float64
    max_rel_error_model_dtype: float  # the same, in the model's dtype


_READY_KEY, _MERGED_KEY = "dsa.merge_ready", "dsa.merged"


def merge_ready_record(model: nn.Module) -> MergeReady | None:
    """The :class:`MergeReady` record of a network :func:`apply_plan` returned (kept in ``GraphModule.meta``,
    which copies carry), or None."""
    return getattr(model, "meta", {}).get(_READY_KEY) if isinstance(model, fx.GraphModule) else None


def merge_record(model: nn.Module) -> Merged | None:
    """The :class:`Merged` record (plan, verified errors) of a network :func:`merge` returned, or None."""
    return getattr(model, "meta", {}).get(_MERGED_KEY) if isinstance(model, fx.GraphModule) else None


def apply_plan(model: nn.Module, plan: Plan, analysis: Analysis | None = None) -> fx.GraphModule:
    """A merge-ready copy of ``model``: removed activations are nn.Identity (names kept), DepthShrinker's
    activations are added, and each segment's zero padding is moved onto its first conv (residual shortcuts
    are padded to match), so that the network merges exactly. ``model`` is not modified."""
    if merge_ready_record(model) is not None:
        raise MergeError("this model is already merge-ready; apply_plan takes the original network")
    if analysis is None or analysis.graph_module is None:  # a cached analysis has no traced graph to copy
        analysis = analyze(model, plan.model, plan.input_size)
    plan.check(analysis)
    gm = copy.deepcopy(analysis.graph_module)
    gm.eval()
    segments = plan.induced_segments(analysis)
    view = plan.view(analysis)
    _prune(gm, analysis, plan.pruned)

    for name in plan.removed:
        op = analysis.by_name[name]
        if op.id not in view.ops:
            continue  # inside a pruned residual branch: gone with it
        node = _node(gm, op.node)
        if op.id.endswith("/act"):
            _set_module(gm, f"{node.target}.act", nn.Identity())
        elif node.op == "call_module" and ":" not in op.name:
            _set_module(gm, node.target, nn.Identity())
        else:  # a shared module's call, or a function: give this call an Identity of its own
            _identity_node(gm, node, _fresh_name(gm, op.name.replace(":", "_")))

    for add in plan.added:
        op = analysis.by_name[add.after]
        node = _node(gm, op.node)
        target = _fresh_name(gm, f"{op.block}.ds_act" if op.block else "ds_act")
        _set_module(gm, target, _ACT_FACTORY[add.type]())
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(target, (node,))
        node.replace_all_uses_with(new, delete_user_cb=lambda user, new=new: user is not new)

    for seg in segments:
        _relocate_padding(gm, view, seg)

    if plan.pruned:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    gm.meta.pop(_MERGED_KEY, None)
    gm.meta[_READY_KEY] = MergeReady(plan, view, tuple(segments))
    return gm


def _prune(gm: fx.GraphModule, analysis: Analysis, pruned: Sequence[str]) -> None:
    """Pruned convs become nn.Identity, their BNs too (a BN+activation module keeps its activation: PrunedBN); a
    pruned block's add becomes an nn.Identity of its shortcut, leaving its branch dead."""
    as_identity, gone = pruned_ops(analysis, pruned)
    for op_id in as_identity:
        op = analysis.ops[op_id]
        node = _node(gm, op.node)
        if op.kind == Kind.ADD:
            shortcut = next(analysis.ops[i].node for i in op.inputs if i not in gone)
            keep = next(a for a in node.args if isinstance(a, fx.Node) and a.name == shortcut)
            target = _fresh_name(gm, op.name)
            _set_module(gm, target, nn.Identity())
            node.op, node.target, node.args, node.kwargs = "call_module", target, (keep,), {}
        elif op.kind == Kind.BN and node.op == "call_module":
            act = getattr(gm.get_submodule(node.target), "act", None)
            _set_module(gm, node.target, PrunedBN(act) if act is not None else nn.Identity())
        elif node.op == "call_module":
            _set_module(gm, node.target, nn.Identity())
        else:
            _identity_node(gm, node, _fresh_name(gm, op.name))


def _relocate_padding(gm: fx.GraphModule, analysis: Analysis, seg: Segment) -> None:
    ops = analysis.ops
    padded = [ops[i] for i in seg.member_ids if ops[i].kind in (Kind.CONV, Kind.PAD) and i not in seg.skip_ids]
    specs = [conv_spec(op.conv) if op.kind == Kind.CONV else pad_spec(op.pad) for op in padded]
    for k, op in enumerate(padded):
        node = _node(gm, op.node)
        if op.kind == Kind.CONV:
            conv = gm.get_submodule(node.target)
            new = RelocatedPadConv2d.from_conv(conv, specs if k == 0 else [])
            _set_module(gm, node.target, new)
        elif k == 0:
            if node.op == "call_module":
                _set_module(gm, node.target, RelocatedPad(specs))
            else:
                target = _fresh_name(gm, op.name)
                _set_module(gm, target, RelocatedPad(specs))
                node.op, node.target, node.args, node.kwargs = "call_module", target, (node.args[0],), {}
        elif node.op == "call_module":
            _set_module(gm, node.target, nn.Identity())
        else:
            _identity_node(gm, node, _fresh_name(gm, op.name))
    for unit in seg.units:
        _align_shortcut(gm, analysis, seg, unit)


def _specs_of(ops: Sequence[Op]) -> list[list[int]]:
    return [
        conv_spec(o.conv) if o.kind == Kind.CONV else pad_spec(o.pad) for o in ops if o.kind in (Kind.CONV, Kind.PAD)
    ]


def _align_shortcut(gm: fx.GraphModule, analysis: Analysis, seg: Segment, unit: FusedUnit) -> None:
    """Make a residual block's shortcut match its branch after padding relocation (docs/design.md).

    With the segment's padding moved onto its first conv, every map inside the segment is larger than the
    original by the padding of the ops after it. The branch (now unpadded, stride 1) shrinks its input by its own
    padding. A block that starts the segment reads the unpadded input: its shortcut is padded by what the ops
    after the block need. A later block reads a map already larger by its branch's padding and the later ops':
    its shortcut is cropped by its branch's own padding. Either way branch and shortcut stay aligned."""
    ops = analysis.ops
    if unit.first:
        add_pos = seg.member_ids.index(unit.add)
        specs, crop = _specs_of([ops[i] for i in seg.member_ids[add_pos + 1 :] if i not in seg.skip_ids]), False
        what = "shortcut_pad"
    else:
        specs, crop = _specs_of([ops[i] for i in unit.branch]), True
        what = "shortcut_crop"
    if all(sp[0] != CONV_SAME and not any(sp[7:]) for sp in specs):  # no padding at any size
        return
    add_node = _node(gm, ops[unit.add].node)
    src_op = ops[unit.skip[-1]] if unit.skip else ops[_unit_input(analysis, unit)]
    src = _node(gm, src_op.node)
    target = _fresh_name(gm, f"{ops[unit.add].block}.{what}")
    _set_module(gm, target, RelocatedPad(specs, crop=crop))
    with gm.graph.inserting_before(add_node):
        pad_node = gm.graph.call_module(target, (src,))
    add_node.replace_input_with(src, pad_node)


def _unit_input(analysis: Analysis, unit: FusedUnit) -> str:
    """Id of the op whose output a residual block (and its shortcut) reads."""
    return analysis.ops[unit.branch[0]].inputs[0]


def max_rel_error(
    a: nn.Module, b: nn.Module, inputs: Sequence[torch.Tensor], a_dtype: torch.dtype | None = None
) -> float:
    """max |a(x) - b(x)| / max |b(x)| over the inputs (``a`` is fed ``x`` cast to ``a_dtype``)."""
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            ya = a(x.to(a_dtype) if a_dtype else x).to(x.dtype)
            yb = b(x)
            worst = max(worst, float((ya - yb).abs().max() / yb.abs().max().clamp_min(1e-30)))
    return worst


def _copy_as(m: nn.Module, dtype: torch.dtype) -> nn.Module:
    if next(m.parameters()).dtype == dtype:
        return m.eval()
    return (_bare_copy(m) if isinstance(m, fx.GraphModule) else copy.deepcopy(m)).to(dtype).eval()


class NodeValues(fx.Interpreter):
    """Runs a traced network and keeps copies of the outputs of the ``keep`` nodes (``values``, by node name)."""

    def __init__(self, gm: fx.GraphModule, keep: set[str]) -> None:
        super().__init__(gm)
        self.keep = keep
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.name in self.keep:
            # later in-place ops (ReLU(inplace=True)) must not change it
            self.values[n.name] = out.clone() if isinstance(out, torch.Tensor) else out
        return out


def segment_errors(
    ready: fx.GraphModule,
    merged: fx.GraphModule,
    analysis: Analysis,
    segments: Sequence[Segment],
    size: int,
    seed: int = 0,
) -> tuple[float, str]:
    """Check every merged conv on its own against the merge-ready ops it replaces, fed with the tensors the
    merge-ready network computes on a random input (a whole-network check alone can be fooled by a head
    that saturates). Returns the worst relative error and the first member of that segment."""
    wires = []
    for seg in segments:
        first = _node(ready, analysis.ops[seg.member_ids[0]].node)
        out = _node(ready, analysis.ops[seg.output_id].node)
        target = _node(ready, analysis.by_name[seg.convs[0]].node).target
        wires.append((seg, first.args[0].name, out.name, target))
    cap = NodeValues(ready, {w[1] for w in wires} | {w[2] for w in wires})
    gen = torch.Generator().manual_seed(seed)
    dtype = next(ready.parameters()).dtype
    with torch.no_grad():
        cap.run(torch.randn(1, 3, size, size, generator=gen, dtype=dtype))
        worst, where = 0.0, ""
        for seg, src, out, target in wires:
            y = merged.get_submodule(target)(cap.values[src])
            ref = cap.values[out]
            out_op = analysis.ops[seg.output_id]
            if out_op.kind in (Kind.BN, Kind.IDENTITY):
                act = getattr(ready.get_submodule(_node(ready, out_op.node).target), "act", None)
                if act is not None:
                    y = act(y)
            err = float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
            if err > worst:
                worst, where = err, seg.members[0]
    return worst, where


def verify(
    ready: nn.Module,
    merged: nn.Module,
    input_sizes: Sequence[int],
    dtype: torch.dtype = torch.float64,
    batch: int = 2,
    seed: int = 0,
) -> float:
    """Max relative error of ``merged`` run in ``dtype`` against the merge-ready network run in float64
    (its exact function), on random inputs. In float32 this measures how well the merged network computes
    the merge-ready function; comparing two float32 runs would also count the merge-ready network's own
    rounding, which grows with the length of its linear chains."""
    gen = torch.Generator().manual_seed(seed)
    a = _copy_as(merged, dtype)
    b = _copy_as(ready, torch.float64)
    inputs = [torch.randn(batch, 3, s, s, generator=gen, dtype=torch.float64) for s in input_sizes]
    return max_rel_error(a, b, inputs, a_dtype=dtype)


def merge(
    model: nn.Module,
    plan: Plan | None = None,
    *,
    verify_sizes: Sequence[int] | None = None,
    tolerance: float = 1e-9,
    tolerance_fp32: float = 1e-4,
) -> fx.GraphModule:
    """Merge every segment into one conv (BNs folded, identity shortcuts fused, depthwise kept when every
    member is depthwise). ``model`` is the original network (the plan is applied first) or the merge-ready
    one from :func:`apply_plan` (e.g. after finetuning). The result is checked against the merge-ready
    network in float64 at ``verify_sizes`` (default: the plan's input size) and again in the model's dtype;
    a relative error above ``tolerance`` (float64) or ``tolerance_fp32`` raises
    :class:`MergeVerificationError`. The errors are kept in the result's :class:`Merged` record
    (:func:`merge_record`).
    """
    info = merge_ready_record(model)
    if info is not None:
        ready = model
        plan = plan or info.plan
        if plan.fingerprint != info.plan.fingerprint or plan.removed != info.plan.removed:
            raise MergeError("the plan given differs from the one this merge-ready model was made with")
    else:
        if plan is None:
            raise MergeError("merge needs a plan for an original (not merge-ready) model")
        ready = apply_plan(model, plan)
        info = merge_ready_record(ready)
    if ready.training:
        raise MergeError("merge needs the model in eval mode (BN statistics are folded); call model.eval()")
    dtype = next(ready.parameters()).dtype
    # merge in float64 (exact math), verify there, then cast to the model's dtype and verify again
    ready64 = _bare_copy(ready).to(torch.float64)
    merged64 = _merge_graph(ready64, info.analysis, info.segments)
    sizes = list(verify_sizes) if verify_sizes else [plan.input_size]
    seg_err, seg_name = segment_errors(ready64, merged64, info.analysis, info.segments, sizes[0])
    if not seg_err <= tolerance:
        raise MergeVerificationError(
            f"merged segment starting at {seg_name} differs from its merge-ready ops by max relative error "
            f"{seg_err:.3g} in float64 (tolerance {tolerance:g}); this is a dsa bug, please report it with the plan"
        )
    err = max(seg_err, verify(ready64, merged64, sizes))
    if not err <= tolerance:
        raise MergeVerificationError(
            f"merged network differs from the merge-ready one by max relative error {err:.3g} in float64 "
            f"(tolerance {tolerance:g}) at input sizes {sizes}; this is a dsa bug, please report it with the plan"
        )
    merged = merged64.to(dtype)
    err_model = verify(ready64, merged, sizes, dtype=dtype) if dtype != torch.float64 else err
    if dtype == torch.float32 and not err_model <= tolerance_fp32:
        # long linear chains can be ill-conditioned in float32: accept what the merge-ready network itself
        # achieves in float32 against its exact function
        own = verify(ready64, ready, sizes, dtype=dtype)
        if not err_model <= 2 * own:
            raise MergeVerificationError(
                f"merged network in float32 differs from the merge-ready one (exact) by max relative error "
                f"{err_model:.3g}, above {tolerance_fp32:g} and twice the merge-ready network's own float32 error "
                f"{own:.3g}; the merged kernels may be too large for float32"
            )
    merged.meta[_MERGED_KEY] = Merged(plan, err, err_model)
    return merged.eval()


def _merge_graph(ready: fx.GraphModule, analysis: Analysis, segments: Sequence[Segment]) -> fx.GraphModule:
    """Rewrite a copy of a merge-ready graph: each segment becomes one conv (in ``ready``'s dtype)."""
    dtype = next(ready.parameters()).dtype
    merged = _bare_copy(ready)
    graph = merged.graph
    for seg in segments:
        conv = merged_conv(ready, analysis, seg, dtype)
        target = _node(merged, analysis.by_name[seg.convs[0]].node).target
        _set_module(merged, target, conv)
        # read the input the first member reads now (it may be an added activation or a merged conv)
        src = _node(merged, analysis.ops[seg.member_ids[0]].node).args[0]
        out_op = analysis.ops[seg.output_id]
        out = _node(merged, out_op.node)
        with graph.inserting_before(out):
            new = graph.call_module(target, (src,))
        result = new
        if out_op.kind in (Kind.BN, Kind.IDENTITY) and out.op == "call_module":
            act = getattr(merged.get_submodule(out.target), "act", None)
            if act is not None and not isinstance(act, nn.Identity):  # a kept activation inside BN+act
                act_target = _fresh_name(merged, f"{out.target}_act")
                _set_module(merged, act_target, act)
                with graph.inserting_after(new):
                    result = graph.call_module(act_target, (new,))
        out.replace_all_uses_with(result)
    graph.eliminate_dead_code()
    graph.lint()
    merged.recompile()
    merged.delete_all_unused_submodules()
    return merged


def _bare_copy(gm: fx.GraphModule) -> fx.GraphModule:
    """Deep copy of a GraphModule without dsa's records (the analysis holds a whole model)."""
    saved = {k: gm.meta.pop(k) for k in (_READY_KEY, _MERGED_KEY) if k in gm.meta}
    try:
        return copy.deepcopy(gm)
    finally:
        gm.meta.update(saved)


def conv_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


def bn_folded_network(model: nn.Module, name: str, input_size: int) -> fx.GraphModule:
    """A float32 CPU copy of ``model`` with every BN folded into its conv and nothing else changed (the plan that
    removes nothing, :func:`dsa.formats.plan.bn_folded_plan`): the baseline a merged network's speed-up must beat."""
    net = copy.deepcopy(model).float().cpu().eval()
    return merge(net, bn_folded_plan(analyze(net, name, input_size)))
