"""Graph analysis on tiny networks, one per edge case: activation sites, segments and the merge rules, findings,
fingerprints. Kernel/stride numbers are worked out by hand in the comments (k = k1 + (k2 - 1) * s1, s = s1 * s2).
"""

from __future__ import annotations

import pytest
from torch import nn

from dsa import AnalysisError, analyze
from dsa.ir import Kind
from tests import tiny_models as tm

SIZE = 32
MBV2_ACTS = [
    "features.0.2",
    "features.1.conv.2",
    "features.1.conv.5",
    "features.2.conv.2",
    "features.2.conv.5",
    "features.3.conv.2",
    "features.3.conv.5",
    "features.4.2",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mbv2():
    return analyze(tm.tiny_mbv2(), "tiny_mbv2", SIZE)


def _seg_starting(segments, first: str):
    found = [s for s in segments if s.members[0] == first]
    assert len(found) == 1, [s.members for s in segments]
    return found[0]


def _segment_holding(segments, member: str):
    found = [s for s in segments if member in s.members]
    assert len(found) <= 1
    return found[0] if found else None


# ------------------------------------------------------------------------------------------ activation sites


def test_activation_sites_of_tiny_mbv2(mbv2) -> None:
    assert [s.name for s in mbv2.activations] == MBV2_ACTS
    assert {s.type for s in mbv2.activations} == {"ReLU6"}
    assert [s.block for s in mbv2.activations] == [
        "features.0",
        "features.1",
        "features.1",
        "features.2",
        "features.2",
        "features.3",
        "features.3",
        "features.4",
    ]
    assert [s.index for s in mbv2.activations] == list(range(8))
    assert [s.position for s in mbv2.activations] == [0, 0, 1, 0, 1, 0, 1, 0]
    assert mbv2.blocks() == [f"features.{i}" for i in range(5)]
    assert mbv2.site("features.2.conv.5").position == 1
    with pytest.raises(KeyError):
        mbv2.site("features.9.conv.2")


def test_head_activation_feeding_pooling_is_not_removable(mbv2) -> None:
    head = mbv2.site("features.4.2")
    assert not head.removable
    assert "adaptive_avg_pool2d" in head.reason
    assert "no conv follows" in head.reason
    assert head.to_json()["reason"] == head.reason
    assert mbv2.removable == MBV2_ACTS[:-1]
    for s in mbv2.activations[:-1]:
        assert s.removable and s.reason == ""
        assert "reason" not in s.to_json()


def test_activation_feeding_an_se_block_is_not_removable() -> None:
    a = analyze(tm.tiny_se(), "tiny_se", SIZE)
    dw_act = a.site("features.1.conv.5")
    assert not dw_act.removable
    assert "features.1.conv.6.avgpool" in dw_act.reason
    assert a.site("features.1.conv.2").removable
    # the sigmoid gate is never a removal candidate
    assert all(s.type != "Sigmoid" for s in a.activations)


def test_shared_module_calls_are_named_by_call_index() -> None:
    a = analyze(tm.tiny_projection_resnet(), "tiny_projection_resnet", SIZE)
    names = [s.name for s in a.activations]
    assert names == ["relu", "layer1.0.relu:0", "layer1.0.relu:1"]
    first, second = a.site("layer1.0.relu:0"), a.site("layer1.0.relu:1")
    assert (first.block, first.position) == ("layer1.0", 0)
    assert (second.block, second.position) == ("layer1.0", 1)
    assert first.removable  # bn1 -> relu -> conv2
    assert not second.removable and "adaptive_avg_pool2d" in second.reason  # after the add, feeds pooling
    assert "layer1.0.relu" not in a.by_name  # no bare name for a module called twice


# ------------------------------------------------------------------------------------------ segments


def test_segments_without_removals_are_one_conv_each_except_linear_neighbours(mbv2) -> None:
    segs = mbv2.segments()
    assert [len(s.convs) for s in segs] == [1, 1, 1, 1, 1, 1, 2, 1, 2]
    # a block ending in BN (no activation) runs straight into the next non-residual block's 1x1 conv
    assert segs[6].convs == ("features.2.conv.6", "features.3.conv.0")
    assert segs[8].convs == ("features.3.conv.6", "features.4.0")
    assert not any(s.residual for s in segs)
    stem = segs[0]
    assert stem.members == ("features.0.0", "features.0.1")
    assert (stem.kernel, stem.stride) == ((3, 3), (2, 2))
    assert (stem.in_channels, stem.out_channels) == (3, 8)
    assert (stem.in_shape, stem.out_shape) == ((3, 32, 32), (8, 16, 16))
    dw = _seg_starting(segs, "features.1.conv.3")
    assert dw.depthwise and dw.kernel == (3, 3) and not dw.merged
    assert not stem.depthwise


def test_segments_with_every_removable_activation_removed(mbv2) -> None:
    segs = mbv2.segments(mbv2.removable)
    assert [len(s.convs) for s in segs] == [1, 6, 4]
    stem, unit, tail = segs
    # a residual unit only starts a segment, so the stem stays alone although its activation is gone
    assert stem.members == ("features.0.0", "features.0.1", "features.0.2")
    assert not stem.residual
    # block 1 (1x1, dw 3x3, 1x1, + x) then block 2 (1x1, dw 3x3 s2, 1x1): k = 1+2 = 3, then +2*1 = 5; s = 2
    assert unit.residual
    assert "features.1.add" in unit.members
    assert unit.convs[:3] == ("features.1.conv.0", "features.1.conv.3", "features.1.conv.6")
    assert (unit.kernel, unit.stride) == ((5, 5), (2, 2))
    assert (unit.in_channels, unit.out_channels) == (8, 12)
    assert (unit.in_shape, unit.out_shape) == ((8, 16, 16), (12, 8, 8))
    assert not unit.depthwise
    # the stride rule cuts before block 3: block 3 (k 3) and the head 1x1 merge, the head activation is kept
    assert tail.convs == ("features.3.conv.0", "features.3.conv.3", "features.3.conv.6", "features.4.0")
    assert (tail.kernel, tail.stride, tail.residual) == ((3, 3), (1, 1), False)
    assert "features.4.2" not in tail.members


def test_strided_3x3_then_1x1_gives_kernel_3_stride_2(mbv2) -> None:
    segs = mbv2.segments(["features.2.conv.5"])
    seg = _seg_starting(segs, "features.2.conv.3")
    assert seg.convs == ("features.2.conv.3", "features.2.conv.6")
    assert (seg.kernel, seg.stride) == ((3, 3), (2, 2))
    assert seg.members[-1] == "features.2.conv.7"


def test_stride_rule_allows_one_conv_after_a_strided_conv(mbv2) -> None:
    # dw 3x3 s2 -> 1x1 -> (BN, no activation) -> block 3's 1x1 -> ... : only one conv may follow the strided one
    removed = ["features.2.conv.5", "features.3.conv.2"]
    segs = mbv2.segments(removed)
    assert _seg_starting(segs, "features.2.conv.3").convs == ("features.2.conv.3", "features.2.conv.6")
    assert _seg_starting(segs, "features.3.conv.0").convs == ("features.3.conv.0", "features.3.conv.3")
    # the limit is a parameter: with two, block 3's 1x1 joins (1x1 after the stride: k stays 3, s 2)
    loose = mbv2.segments(removed, max_convs_after_stride=2)
    seg = _seg_starting(loose, "features.2.conv.3")
    assert seg.convs == ("features.2.conv.3", "features.2.conv.6", "features.3.conv.0")
    assert (seg.kernel, seg.stride) == ((3, 3), (2, 2))


@pytest.mark.parametrize(
    "removed",
    [
        [],
        MBV2_ACTS[:-1],
        ["features.2.conv.2", "features.2.conv.5", "features.3.conv.2", "features.3.conv.5"],
        ["features.0.2", "features.2.conv.5", "features.3.conv.2"],
    ],
)
def test_no_segment_has_more_than_one_conv_after_a_strided_conv(mbv2, removed) -> None:
    for seg in mbv2.segments(removed):
        strided = [mbv2.by_name[c].conv.strided for c in seg.convs]
        if True in strided:
            assert len(strided) - strided.index(True) - 1 <= 1, seg.convs


def test_boundary_cuts_a_segment(mbv2) -> None:
    segs = mbv2.segments(mbv2.removable, boundaries=["features.1.add"])
    unit = _seg_starting(segs, "features.1.conv.0")
    assert unit.residual and unit.members[-1] == "features.1.add"
    assert (unit.kernel, unit.stride) == ((3, 3), (1, 1))
    assert _seg_starting(segs, "features.2.conv.0").convs == (
        "features.2.conv.0",
        "features.2.conv.3",
        "features.2.conv.6",
    )


def test_added_activation_ends_a_segment(mbv2) -> None:
    segs = mbv2.segments(mbv2.removable, added_after=["features.1.add"])
    assert _seg_starting(segs, "features.1.conv.0").members[-1] == "features.1.add"
    assert _segment_holding(segs, "features.2.conv.0").members[0] == "features.2.conv.0"


def test_se_multiply_ends_a_segment() -> None:
    a = analyze(tm.tiny_se(), "tiny_se", SIZE)
    segs = a.segments(a.removable)
    # stem 3x3 s2 + expand 1x1: k 3, s 2 (one conv after the strided one)
    first = _seg_starting(segs, "features.0.0")
    assert first.convs == ("features.0.0", "features.1.conv.0")
    assert (first.kernel, first.stride) == ((3, 3), (2, 2))
    # the project conv reads the SE product: it starts its own segment, nothing before the multiply joins it
    project = _segment_holding(segs, "features.1.conv.7")
    assert project.members[0] == "features.1.conv.7"
    assert _segment_holding(segs, "features.1.conv.3").convs == ("features.1.conv.3",)
    mul = [op for op in a.ops.values() if op.module_type == "mul"]
    assert len(mul) == 1 and mul[0].kind == Kind.OTHER
    assert all(mul[0].name not in s.members for s in segs)


def test_concat_ends_segments() -> None:
    a = analyze(tm.tiny_concat(), "tiny_concat", SIZE)
    segs = a.segments(a.removable)
    assert [s.convs for s in segs] == [("stem",), ("branch_a",), ("branch_b",), ("fuse",)]
    # the stem activation is removable (both readers are convs) but its output has two readers: no merge
    assert a.site("stem_act").removable
    assert _seg_starting(segs, "fuse").members == ("fuse", "fuse_bn")


def test_projection_shortcut_is_not_a_residual_unit() -> None:
    a = analyze(tm.tiny_projection_resnet(), "tiny_projection_resnet", SIZE)
    segs = a.segments(a.removable)
    assert [s.convs for s in segs] == [
        ("conv1",),
        ("layer1.0.downsample.0",),
        ("layer1.0.conv1", "layer1.0.conv2"),
    ]
    assert not any(s.residual for s in segs)
    shortcut = segs[1]
    assert (shortcut.kernel, shortcut.stride) == ((1, 1), (2, 2))
    # 3x3 s2 then 3x3: k = 3 + 2 * 2 = 7, s = 2
    branch = segs[2]
    assert branch.members == ("layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu:0", "layer1.0.conv2", "layer1.0.bn2")
    assert (branch.kernel, branch.stride) == ((7, 7), (2, 2))
    assert (branch.in_shape, branch.out_shape) == ((8, 32, 32), (16, 16, 16))
    adds = [op.name for op in a.ops.values() if op.kind == Kind.ADD]
    assert len(adds) == 1
    assert all(adds[0] not in s.members for s in segs)


# ------------------------------------------------------------------------------------------ findings, errors


def test_reflect_padding_is_reported_by_node() -> None:
    a = analyze(tm.tiny_reflect(), "tiny_reflect", SIZE)
    assert len(a.findings) == 1
    finding = a.findings[0]
    assert finding.node == "conv2"
    assert "padding_mode='reflect'" in finding.reason
    assert a.by_name["conv2"].kind == Kind.OTHER
    segs = a.segments(a.removable)
    assert all("conv2" not in s.members for s in segs)
    assert [s.convs for s in segs] == [("conv1",), ("conv3",)]
    assert not a.site("act1").removable  # it feeds the unmergeable conv
    assert a.site("act2").removable


def test_clean_model_has_no_findings(mbv2) -> None:
    assert mbv2.findings == []


def test_untraceable_model_raises_analysis_error() -> None:
    with pytest.raises(AnalysisError, match=r"torch\.fx cannot trace _Untraceable: TraceError") as exc:
        analyze(tm.tiny_untraceable(), "tiny_untraceable", SIZE)
    assert "control flow" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_shape_propagation_failure_raises_analysis_error() -> None:
    # reflect padding needs an input larger than the pad
    with pytest.raises(
        AnalysisError, match=r"running tiny_reflect on a 1x3x1x1 input failed: RuntimeError: .*Padding size"
    ):
        analyze(tm.tiny_reflect(), "tiny_reflect", 1)


# ------------------------------------------------------------------------------------------ fingerprint


def test_fingerprint_is_stable_and_structural(mbv2) -> None:
    again = analyze(tm.tiny_mbv2(), "tiny_mbv2", SIZE)
    assert again.fingerprint == mbv2.fingerprint
    assert len(mbv2.fingerprint) == 16
    # weights do not matter
    other_weights = tm._init(tm.TinyMBV2(), seed=1)
    assert analyze(other_weights, "tiny_mbv2", SIZE).fingerprint == mbv2.fingerprint
    # structure does
    assert analyze(tm.tiny_mbv2(width=12), "tiny_mbv2", SIZE).fingerprint != mbv2.fingerprint
    assert analyze(tm.tiny_se(), "tiny_se", SIZE).fingerprint != mbv2.fingerprint


def test_fingerprint_sees_conv_channels() -> None:
    def net(c: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, c, 1))

    assert analyze(net(4), "n", SIZE).fingerprint == analyze(net(4), "n", SIZE).fingerprint
    assert analyze(net(4), "n", SIZE).fingerprint != analyze(net(6), "n", SIZE).fingerprint
