"""The analysed network as plain data (no torch): ops, activation sites, segments, and the merge rules.

:func:`dsa.graph.analyze` (torch.fx) produces an :class:`Analysis`; everything above it -- plans, latency, the
planner -- reads only this module, so a cached analysis (``dsa.cache``) plans without importing torch.

The traced graph is lowered to a small IR of :class:`Op` s, one per tensor-producing node (a timm
``BatchNormAct2d`` becomes two: its BN and its activation). Ops are named by qualified module name
(``features.3.conv.0.2``), by ``name:k`` for the k-th call of a module called several times (ResNet's
shared ``relu``), or by ``<owner module>.<fx node name>`` for functions (``features.3.add``).

Segments follow the merge rules of METHOD.md:

- a segment is a chain of linear ops (conv, BN, zero padding, identity, removed activation) whose
  intermediate tensors have exactly one consumer;
- a residual block whose branch is entirely linear and whose shortcut is the identity is one unit; a segment
  covers units whole, anywhere in it (Kim et al.'s rule; ``units_anywhere=False`` is the rule of version-1
  plans: a unit may only start a segment);
- after a strided conv at most one more conv follows in a segment (the stride rule);
- SE gating multiplies, pooling, concatenation, shuffles, norms other than BN, projection shortcuts and
  every op dsa does not know end a segment.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from dsa.errors import InternalError

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
GATE_TYPES = frozenset(
    {"Sigmoid", "Hardsigmoid", "HardSigmoid", "HardSigmoidMe", "GateSigmoid", "sigmoid", "hardsigmoid"}
)
# Pooling, by module class or function name, and its kind.
POOL_TYPES = {
    "AdaptiveAvgPool2d": "avg",
    "AvgPool2d": "avg",
    "MaxPool2d": "max",
    "adaptive_avg_pool2d": "avg",
    "avg_pool2d": "avg",
    "max_pool2d": "max",
    "mean": "avg",
    "adaptive_max_pool2d": "max",
}
# Ops that launch no kernel (views, shape queries, eval-mode dropout).
NO_KERNEL_TYPES = frozenset(
    {
        "flatten",
        "view",
        "reshape",
        "size",
        "getattr",
        "getitem",
        "contiguous",
        "Flatten",
        "squeeze",
        "unsqueeze",
        "Identity",
        "Dropout",
        "Dropout2d",
    }
)


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
# ops a fused runtime (ONNX Runtime, OpenVINO, torch.compile) runs inside the kernel of the conv producing them
FUSABLE_KINDS = frozenset({Kind.BN, Kind.ACT, Kind.ADD, Kind.IDENTITY})


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
class FusedUnit:
    """A whole residual block inside a segment: its identity shortcut is fused into the merged kernel."""

    add: str  # id of the block's add
    branch: tuple[str, ...]  # ids of the branch's ops, in order
    skip: tuple[str, ...]  # identity ops on the shortcut
    first: bool  # the segment starts with this block (its shortcut reads the segment's unpadded input)


@dataclass(frozen=True)
class Segment:
    """A chain of linear ops that merges into one convolution."""

    members: tuple[str, ...]  # op names, in order (a residual unit lists its branch, its shortcut, then its add)
    member_ids: tuple[str, ...]
    input_id: str  # id of the op whose output the segment reads
    output_id: str  # id of the segment's last op
    convs: tuple[str, ...]
    units: tuple[FusedUnit, ...]  # the whole residual blocks it covers, in order
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

    @property
    def residual(self) -> bool:
        """Whether identity shortcuts are fused into the merged kernel (the segment covers residual blocks)."""
        return bool(self.units)

    @property
    def skip_ids(self) -> tuple[str, ...]:
        """Identity ops on the shortcuts of its residual blocks."""
        return tuple(i for u in self.units for i in u.skip)

    def to_json(self) -> dict:
        return {
            "members": list(self.members),
            "convs": list(self.convs),
            "residual": self.residual,
            "residual_blocks": len(self.units),
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
    graph_module: Any = field(default=None, repr=False, compare=False)  # torch.fx.GraphModule; None when cached
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
        units_anywhere: bool = True,
    ) -> list[Segment]:
        """Segments induced by removing ``removed`` activations, adding an activation after each op named in
        ``added_after`` and cutting after each op named in ``boundaries``; ``units_anywhere=False``: a residual
        unit only starts a segment (the rule of version-1 plans)."""
        return _segments(self, set(removed), set(added_after), set(boundaries), max_convs_after_stride, units_anywhere)


# ------------------------------------------------------------------------------------------- segments


def fused_into(a: Analysis, op: Op) -> Op:
    """The op whose kernel ``op`` runs inside in a fused runtime: back through BNs, activations, identities and
    residual adds (along the branch: the later of an add's inputs) to the conv that produces it; ``op`` itself
    when it is not fusable or no conv produces it."""
    order = {k: i for i, k in enumerate(a.ops)}
    cur = op
    while cur.kind in FUSABLE_KINDS and cur.inputs:
        cur = a.ops[max(cur.inputs, key=order.__getitem__)]
    return cur if cur.kind == Kind.CONV else op


def act_after(a: Analysis, op_id: str) -> Op | None:
    """The activation that reads the output of op ``op_id`` (the one a segment ending there keeps), if any."""
    return next((op for op in a.ops.values() if op_id in op.inputs and op.kind == Kind.ACT), None)


def segment_signature(c_in: int, c_out: int, kernel, stride, groups: int, h_in: int, w_in: int) -> str:
    """Key of a merged conv's shape: the same shape costs the same, whichever layers it came from."""
    return f"c{c_in}-{c_out}_k{kernel[0]}x{kernel[1]}_s{stride[0]}x{stride[1]}_g{groups}_in{h_in}x{w_in}"


def signature_of(seg: Segment) -> str:
    groups = seg.groups
    return segment_signature(
        seg.in_channels, seg.out_channels, seg.kernel, seg.stride, groups, seg.in_shape[1], seg.in_shape[2]
    )


def segment_key(seg: Segment, pruned: Sequence[str] = ()) -> str:
    """A candidate segment named by its place in the network: its first and last ops (a segment is a contiguous
    piece of one linear run) and, for a pruned variant, the ops it prunes. The keys of per-segment accuracy
    costs (an importance file's ``int8``)."""
    key = f"{seg.members[0]}..{seg.members[-1]}"
    return key + (f" pruned {','.join(sorted(pruned))}" if pruned else "")


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
    a: Analysis,
    removed: set[str],
    added_after: set[str],
    boundaries: set[str],
    max_convs_after_stride: int,
    units_anywhere: bool = True,
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
        for piece in cut_run(ops, units, run, cut_after, max_convs_after_stride, units_anywhere):
            segments.append(make_segment(a, units, piece))
    return segments


def _unit_convs(ops: dict[str, Op], unit: ResidualUnit) -> list[Op]:
    return [ops[b] for b in unit.branch if ops[b].kind == Kind.CONV]


def cut_run(
    ops: dict[str, Op],
    units: dict[str, ResidualUnit],
    run: list[str],
    cut_after: set[str],
    max_after_stride: int,
    units_anywhere: bool = True,
) -> list[list[str]]:
    """Cut a run of elements into segment pieces: after each element in ``cut_after``, before a conv that would
    break the stride rule (a residual unit is never split: the cut goes before it), and, unless
    ``units_anywhere``, before a residual unit that would not start its piece."""
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
        if is_unit:
            if any(c.conv.strided for c in convs):
                raise InternalError(f"residual unit {ops[e].name} has a strided conv")
            after_units = not units_anywhere and any(x in units or ops[x].kind == Kind.CONV for x in cur)
            if after_units or (convs_after_stride is not None and convs_after_stride + len(convs) > max_after_stride):
                flush()
            if convs_after_stride is not None:
                convs_after_stride += len(convs)
        for c in convs if not is_unit else ():
            if convs_after_stride is not None and convs_after_stride + 1 > max_after_stride:
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
    fused: list[FusedUnit] = []
    for e in piece:
        if e in units:
            u = units[e]
            member_ids += [*u.branch, *u.skip, u.add]
            convs += _unit_convs(ops, u)
            fused.append(FusedUnit(u.add, tuple(u.branch), tuple(u.skip), first=e == piece[0]))
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
        units=tuple(fused),
        in_channels=convs[0].conv.in_channels,
        out_channels=convs[-1].conv.out_channels,
        kernel=(kh, kw),
        stride=(sh, sw),
        depthwise=all(c.conv.depthwise for c in convs),
        groups=_merged_groups(convs, bool(fused)),
        in_shape=tuple(in_shape[1:]),
        out_shape=tuple(out_shape[1:]),
        blocks=tuple(blocks),
    )


# ------------------------------------------------------------------------------------------- pruning (LayerMerge)

PRUNE_CONV, PRUNE_BLOCK = "conv", "block"


def prunable(a: Analysis) -> dict[str, str]:
    """What a plan may prune, by op name: ``"conv"`` for a conv whose removal keeps shapes (stride 1, as many
    channels out as in, an output map the size of its input: a depthwise conv, or a dense one like it), which then
    becomes an identity with its BN; ``"block"`` for a residual add with an identity shortcut and a single-consumer
    branch holding a conv, whose whole branch is then dropped (the block becomes the identity)."""
    out: dict[str, str] = {}
    for op in a.ops.values():
        if op.kind != Kind.CONV or op.conv.strided or op.conv.in_channels != op.conv.out_channels or not op.inputs:
            continue
        if op.shape is not None and a.ops[op.inputs[0]].shape == op.shape:
            out[op.name] = PRUNE_CONV
    for add in prunable_blocks(a):
        out[a.ops[add].name] = PRUNE_BLOCK
    return out


def prunable_blocks(a: Analysis, users: dict[str, list[str]] | None = None) -> dict[str, ResidualUnit]:
    """The residual blocks whose whole branch a plan may prune, by add id: identity shortcut, single-consumer
    branch of linear ops and activations holding a conv."""
    branchy = {i for i, op in a.ops.items() if op.kind in LINEAR_KINDS or op.kind == Kind.ACT}
    return residual_units(a.ops, users if users is not None else a.users(), branchy)


def bn_of(a: Analysis, users: dict[str, list[str]], conv_id: str) -> str | None:
    """The BN that is the only reader of a conv's output, if any (it becomes an identity with a pruned conv)."""
    nxt = users[conv_id]
    return nxt[0] if len(nxt) == 1 and a.ops[nxt[0]].kind == Kind.BN else None


def pruned_ops(a: Analysis, pruned: Iterable[str]) -> tuple[dict[str, str], set[str]]:
    """(op id -> what it becomes: "identity", for pruned convs, their BNs and pruned blocks' adds; op ids that
    vanish: the branches of pruned blocks)."""
    users = a.users()
    kinds = prunable(a)
    as_identity: dict[str, str] = {}
    gone: set[str] = set()
    units = None
    for name in pruned:
        op = a.by_name[name]
        if kinds.get(name) == PRUNE_CONV:
            as_identity[op.id] = "identity"
            bn = bn_of(a, users, op.id)
            if bn is not None:
                as_identity[bn] = "identity"
        elif kinds.get(name) == PRUNE_BLOCK:
            units = units if units is not None else prunable_blocks(a, users)
            as_identity[op.id] = "identity"
            gone.update(units[op.id].branch)
        else:
            raise InternalError(f"{name} is not prunable")
    return as_identity, gone


def pruned_view(a: Analysis, pruned: Iterable[str]) -> Analysis:
    """The analysis of the network with ``pruned`` ops pruned (see :func:`prunable`): pruned convs and their BNs are
    identities, a pruned block's add is an identity of its shortcut and its branch is gone (with the activation
    sites in it). ``a`` itself when nothing is pruned."""
    pruned = list(pruned)
    if not pruned:
        return a
    as_identity, gone = pruned_ops(a, pruned)
    ops: dict[str, Op] = {}
    for i, op in a.ops.items():
        if i in gone:
            continue
        if i in as_identity:
            inputs = op.inputs
            if op.kind == Kind.ADD:  # the shortcut: the input that is not the (dropped) branch's end
                inputs = [x for x in op.inputs if x not in gone]
            op = replace(op, kind=Kind.IDENTITY, conv=None, inputs=list(inputs), note="pruned")
        ops[i] = op
    names = {ops[i].name for i in ops}
    acts = [s for s in a.activations if s.name in names and ops[a.by_name[s.name].id].kind == Kind.ACT]
    return Analysis(a.model_name, a.input_size, ops, acts, a.findings, a.fingerprint, a.graph_module)
