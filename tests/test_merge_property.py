"""Property tests of the merge math: random conv chains and residual blocks, random removals.

Each example builds a small network (kernels 1/3/5/7; dense, depthwise and grouped convs; stride 1/2; bias
or BN; residual or not; symmetric, per-axis and asymmetric zero padding, explicit and TF "same"), removes a
random subset of its removable activations, and checks that merge() returns a network equal to the
merge-ready one in float64 at two resolutions, and that it did collapse every segment into one conv.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from torch import nn

from dsa.errors import AnalysisError
from dsa.formats.plan import make_plan
from dsa.graph import analyze
from dsa.transform.merge import Affine, apply_plan, compose, conv_affine, conv_count, merge, merge_record, verify

KERNELS = (1, 3, 5, 7)


class Chain(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class Residual(nn.Module):
    def __init__(self, branch: list[nn.Module]) -> None:
        super().__init__()
        self.branch = nn.Sequential(*branch)

    def forward(self, x):
        return x + self.branch(x)


def _bn(c: int, eps: float) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, eps=eps)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.3, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn


@st.composite
def conv_unit(draw, c_in: int, stride_ok: bool, same_size: bool):
    """Layers of one conv (+ optional pad, BN, activation); returns (layers, c_out)."""
    k = draw(st.sampled_from(KERNELS))
    kind = draw(st.sampled_from(["dense", "depthwise", "grouped"]))
    stride = draw(st.sampled_from([1, 2])) if stride_ok and not same_size else 1
    if kind == "depthwise":
        c_out, groups = c_in, c_in
    elif kind == "grouped" and c_in % 2 == 0:
        c_out, groups = (c_in if same_size else draw(st.sampled_from([4, 6, 8]))), 2
    else:
        c_out, groups = (c_in if same_size else draw(st.sampled_from([3, 4, 6, 8]))), 1
    layers: list[nn.Module] = []
    pad_style = draw(st.sampled_from(["symmetric", "per-axis", "asymmetric", "tf-same"]))
    if pad_style == "tf-same" and not same_size:
        from timm.layers import Conv2dSame

        conv = Conv2dSame(c_in, c_out, k, stride=stride, groups=groups, bias=draw(st.booleans()))
    elif pad_style == "asymmetric" and k > 1:
        top = draw(st.integers(0, k - 1))
        left = draw(st.integers(0, k - 1))
        layers.append(nn.ZeroPad2d((left, k - 1 - left, top, k - 1 - top)))
        conv = nn.Conv2d(c_in, c_out, k, stride=stride, groups=groups, bias=draw(st.booleans()))
    elif pad_style == "per-axis" and not same_size:
        conv = nn.Conv2d(
            c_in,
            c_out,
            k,
            stride=stride,
            padding=(k // 2, draw(st.integers(max(k // 2 - 1, 0), k // 2))),
            groups=groups,
            bias=draw(st.booleans()),
        )
    else:
        conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=draw(st.booleans()))
    with torch.no_grad():
        conv.weight.mul_(2.0)
    layers.append(conv)
    if draw(st.booleans()):
        layers.append(_bn(c_out, draw(st.sampled_from([1e-5, 1e-3]))))
    if draw(st.booleans()):
        layers.append(draw(st.sampled_from([nn.ReLU6, nn.ReLU, nn.Hardswish]))())
    return layers, c_out


@st.composite
def networks(draw):
    c = c0 = draw(st.sampled_from([4, 6, 8]))
    layers: list[nn.Module] = [nn.Conv2d(3, c0, 1)]
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            branch: list[nn.Module] = []
            for _ in range(draw(st.integers(1, 3))):
                unit, c = draw(conv_unit(c, stride_ok=False, same_size=True))
                branch += unit
            # odd kernels with 'same' padding keep the size; ZeroPad2d pairs do too (k - 1 in total)
            layers.append(Residual(branch))
            if draw(st.booleans()):
                layers.append(nn.ReLU())
        else:
            unit, c = draw(conv_unit(c, stride_ok=True, same_size=False))
            layers += unit
    return Chain(layers)


def _is_block_diagonal_ok(net: nn.Module) -> bool:
    return all(m.in_channels % m.groups == 0 for m in net.modules() if isinstance(m, nn.Conv2d))


@settings(max_examples=320, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(net=networks(), data=st.data(), size=st.integers(12, 21))
def test_random_networks_merge_exactly(net, data, size):
    assert _is_block_diagonal_ok(net)
    net = net.double().eval()  # float64 throughout: any error above roundoff is a merge bug
    try:
        analysis = analyze(net, "random", input_size=size)
    except AnalysisError as e:  # the drawn network shrinks a small input below a kernel size
        assume("Kernel size can't be greater" not in str(e.__cause__))
        raise
    removable = analysis.removable
    removed = [n for n in removable if data.draw(st.booleans(), label=f"remove {n}")]
    plan = make_plan(analysis, removed)
    ready = apply_plan(net, plan, analysis)
    merged = merge(ready, verify_sizes=[size, size + 5])  # raises MergeVerificationError if wrong
    assert merge_record(merged).max_rel_error <= 1e-9
    # independent check at a third resolution, and one conv per segment
    assert verify(ready, merged, [size + 2], dtype=torch.float64) <= 1e-9
    segments = plan.induced_segments(analysis)
    n_segments = len(segments)
    event(f"convs merged into one: max {max((len(s.convs) for s in segments), default=0)}")
    event("a residual block fused" if any(s.residual for s in segments) else "no residual fused")
    if any(not u.first for s in segments for u in s.units):
        event("a residual block fused after other elements (shortcut cropped)")
    convs_outside = conv_count(net) - sum(len(s.convs) for s in plan.induced_segments(analysis))
    assert conv_count(merged) == n_segments + convs_outside


@settings(max_examples=200, deadline=None)
@given(
    k1=st.sampled_from(KERNELS),
    k2=st.sampled_from(KERNELS),
    s1=st.sampled_from([1, 2]),
    s2=st.sampled_from([1, 2]),
    g1=st.sampled_from([1, 2, 4]),
    g2=st.sampled_from([1, 2, 4]),
    d1=st.sampled_from([1, 2]),
)
def test_compose_equals_sequential_convs(k1, k2, s1, s2, g1, g2, d1):
    torch.manual_seed(k1 * 100 + k2 * 10 + s1)
    c = 4
    a = nn.Conv2d(c, c, k1, stride=s1, groups=g1, dilation=d1).double()
    b = nn.Conv2d(c, c, k2, stride=s2, groups=g2).double()
    fused: Affine = compose(conv_affine(a), conv_affine(b))
    x = torch.randn(2, c, 31, 29, dtype=torch.float64)
    ref = b(a(x))
    groups = c if fused.depthwise else 1
    got = torch.nn.functional.conv2d(x, fused.weight, fused.bias, fused.stride, groups=groups)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-10, rtol=0)
    assert fused.weight.shape[-1] == (k1 - 1) * d1 + 1 + (k2 - 1) * s1
    assert fused.depthwise == (g1 == c and g2 == c)


def test_a_lone_grouped_conv_stays_grouped():
    net = (
        Chain(
            [
                nn.Conv2d(3, 8, 1),
                nn.ReLU(),
                nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False),
                _bn(8, 1e-5),
                nn.ReLU(),
                nn.Conv2d(8, 8, 1),
                nn.ReLU(),
            ]
        )
        .double()
        .eval()
    )
    a = analyze(net, "grouped", 16)
    merged = merge(net, make_plan(a), verify_sizes=[16, 19])  # no removals: BN folds, groups stay
    grouped = [m for m in merged.modules() if isinstance(m, nn.Conv2d) and m.groups == 2]
    assert len(grouped) == 1 and grouped[0].weight.shape == (8, 4, 3, 3)
    merged_all = merge(net, make_plan(a, a.removable), verify_sizes=[16])  # composed with others: dense
    assert all(m.groups == 1 for m in merged_all.modules() if isinstance(m, nn.Conv2d))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(net=networks(), data=st.data(), size=st.integers(12, 21))
def test_random_networks_with_pruned_convs_merge_exactly(net, data, size):
    """LayerMerge pruning: random prunable convs (identities with their BNs) and residual blocks (branch dropped),
    random removals; merge equals the pruned merge-ready network in float64, pruned convs are gone."""
    from dsa.ir import PRUNE_BLOCK, prunable, pruned_ops

    net = net.double().eval()
    try:
        analysis = analyze(net, "random", input_size=size)
    except AnalysisError as e:
        assume("Kernel size can't be greater" not in str(e.__cause__))
        raise
    kinds = prunable(analysis)
    assume(kinds)
    blocks = [n for n in kinds if kinds[n] == PRUNE_BLOCK and data.draw(st.booleans(), label=f"prune block {n}")]
    _, gone = pruned_ops(analysis, blocks)
    convs = [
        n
        for n in kinds
        if kinds[n] != PRUNE_BLOCK
        and analysis.by_name[n].id not in gone
        and data.draw(st.booleans(), label=f"prune conv {n}")
    ]
    assume(blocks or convs)
    removed = [n for n in analysis.removable if data.draw(st.booleans(), label=f"remove {n}")]
    plan = make_plan(analysis, removed, pruned=blocks + convs)
    ready = apply_plan(net, plan, analysis)
    merged = merge(ready, verify_sizes=[size, size + 5])
    assert merge_record(merged).max_rel_error <= 1e-9
    assert verify(ready, merged, [size + 2], dtype=torch.float64) <= 1e-9
    as_identity, gone = pruned_ops(analysis, blocks + convs)
    pruned_convs = {i for i in [*as_identity, *gone] if analysis.ops[i].kind == "conv"}
    view = plan.view(analysis)
    segments = plan.induced_segments(analysis)
    assert not pruned_convs & {view.by_name[c].id for s in segments for c in s.convs}
    convs_left = conv_count(net) - len(pruned_convs)
    assert conv_count(merged) == len(segments) + convs_left - sum(len(s.convs) for s in segments)
    event(f"pruned: {len(blocks)} blocks, {len(convs)} convs")
