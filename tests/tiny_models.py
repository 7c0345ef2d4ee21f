"""Tiny fx-traceable networks, one per edge case, usable as ``--model tests.tiny_models:NAME``.

Every factory builds the same weights every time (its own seeded generator) and gives its BatchNorms
non-trivial running statistics, so that merges are exercised on more than identity BNs.
No ``from __future__ import annotations`` here: string annotations reach torch.fx's generated code and make the
merged network unscriptable (dsa then falls back to a traced TorchScript).
"""

import torch
import torch.nn.functional as F
from torch import nn


def _init(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in**0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model.eval()


class ConvBNAct(nn.Sequential):
    """conv + BN + activation, a Sequential subclass like torchvision's Conv2dNormActivation (so it is one block)."""

    def __init__(self, inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand 1x1 + BN + ReLU6, depthwise 3x3 + BN + ReLU6, project 1x1 + BN (+ x)."""

    def __init__(self, inp: int, out: int, stride: int, expand: int = 2) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_res_connect = stride == 1 and inp == out
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class TinyMBV2(nn.Module):
    """features.0 stem 3x3 s2; features.1 residual block (8->8); features.2 stride-2 block (8->12);
    features.3 block (12->16); features.4 head 1x1 (16->24); avg pool, flatten, Linear."""

    def __init__(self, width: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            ConvBNAct(3, w, 3, stride=2),
            InvertedResidual(w, w, 1),
            InvertedResidual(w, w + w // 2, 2),
            InvertedResidual(w + w // 2, 2 * w, 1),
            ConvBNAct(2 * w, 3 * w, 1),
        )
        self.classifier = nn.Linear(3 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, 1)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def tiny_mbv2(width: int = 8) -> nn.Module:
    return _init(TinyMBV2(width))


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            x = self.relu(x)
        return x


def tiny_untraceable() -> nn.Module:
    return _init(_Untraceable())


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.activation = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * s


class SEBlock(nn.Module):
    """expand 1x1 + BN + ReLU6, depthwise 3x3 + BN + ReLU6, SE multiply, project 1x1 + BN."""

    def __init__(self, inp: int, hidden: int, out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            SqueezeExcitation(hidden, 4),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class TinySE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(ConvBNAct(3, 8, 3, stride=2), SEBlock(8, 16, 8), ConvBNAct(8, 16, 1))
        self.classifier = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def tiny_se() -> nn.Module:
    return _init(TinySE())


class BasicBlock(nn.Module):
    """torchvision's BasicBlock with a projection shortcut: one nn.ReLU called twice."""

    def __init__(self, inp: int, out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return self.relu(out)


class TinyProjectionResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(8, 16, 2))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def tiny_projection_resnet() -> nn.Module:
    return _init(TinyProjectionResNet())


class TinyReflect(nn.Module):
    """conv1 + BN + ReLU, then conv2 with reflect padding (dsa cannot relocate it), BN, ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, 1, 1, bias=False, padding_mode="reflect")
        self.bn2 = nn.BatchNorm2d(8)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv2d(8, 8, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        return self.conv3(x)


def tiny_reflect() -> nn.Module:
    return _init(TinyReflect())


class TinyConcat(nn.Module):
    """stem conv + BN + ReLU; two branches (1x1 and 3x3 conv + BN) concatenated; 1x1 conv + BN + ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.stem_act = nn.ReLU()
        self.branch_a = nn.Conv2d(8, 4, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(4)
        self.branch_b = nn.Conv2d(8, 4, 3, 1, 1, bias=False)
        self.bn_b = nn.BatchNorm2d(4)
        self.fuse = nn.Conv2d(8, 8, 1, bias=False)
        self.fuse_bn = nn.BatchNorm2d(8)
        self.fuse_act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_bn(self.stem(x)))
        y = torch.cat([self.bn_a(self.branch_a(x)), self.bn_b(self.branch_b(x))], dim=1)
        return self.fuse_act(self.fuse_bn(self.fuse(y)))


def tiny_concat() -> nn.Module:
    return _init(TinyConcat())


def tiny_raising() -> nn.Module:
    """A user factory that fails (e.g. a missing file, a bad argument)."""
    raise RuntimeError("weights file not found: /nowhere/w.pt")
