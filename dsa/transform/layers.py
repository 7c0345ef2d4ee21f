"""Layers of merge-ready and merged networks: convolutions whose zero padding was relocated onto them.

The padding of a segment is described by one spec per padded op along it (a pad, a conv with fixed padding,
or a conv with TF "same" padding whose amount depends on its input size). The total padding of the segment's
input is computed from the input size at run time, so merges stay exact at every resolution.
Both layers are TorchScript-compatible (so no ``from __future__ import annotations`` here) and keep
``nn.Conv2d`` 's state_dict keys.
"""

import torch
import torch.nn.functional as F
from torch import nn

from dsa.ir import ConvInfo

# spec row: [kind, kh, kw, sh, sw, dh, dw, top, bottom, left, right]; kind 0 = pad, 1 = conv (fixed), 2 = conv "same"
PAD, CONV_FIXED, CONV_SAME = 0, 1, 2  # literals below too: TorchScript cannot read globals


def pad_spec(pad: tuple[int, int, int, int]) -> list[int]:
    return [PAD, 1, 1, 1, 1, 1, 1, *pad]


def conv_spec(info: ConvInfo) -> list[int]:
    (kh, kw), (sh, sw), (dh, dw) = info.kernel, info.stride, info.dilation
    if info.padding == "same":
        return [CONV_SAME, kh, kw, sh, sw, dh, dw, 0, 0, 0, 0]
    return [CONV_FIXED, kh, kw, sh, sw, dh, dw, *info.padding]


def _same(size: int, k: int, s: int, d: int) -> list[int]:
    total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return [total // 2, total - total // 2]


def relocated_padding(specs: list[list[int]], h: int, w: int) -> list[int]:
    """Total zero padding ``[left, right, top, bottom]`` (F.pad order) of a segment's input of size h x w."""
    top, bottom, left, right = 0, 0, 0, 0
    scale_h, scale_w = 1, 1
    for s in specs:
        kind, kh, kw, sh, sw, dh, dw = s[0], s[1], s[2], s[3], s[4], s[5], s[6]
        if kind == 2:  # CONV_SAME
            pt_pb = _same(h, kh, sh, dh)
            pl_pr = _same(w, kw, sw, dw)
            pt, pb, pl, pr = pt_pb[0], pt_pb[1], pl_pr[0], pl_pr[1]
        else:
            pt, pb, pl, pr = s[7], s[8], s[9], s[10]
        top += pt * scale_h
        bottom += pb * scale_h
        left += pl * scale_w
        right += pr * scale_w
        h += pt + pb
        w += pl + pr
        if kind != 0:  # a conv, not a pad
            h = (h - dh * (kh - 1) - 1) // sh + 1
            w = (w - dw * (kw - 1) - 1) // sw + 1
            scale_h *= sh
            scale_w *= sw
    return [left, right, top, bottom]


def _static(specs: list[list[int]]) -> list[int] | None:
    if any(s[0] == CONV_SAME for s in specs):
        return None
    return relocated_padding(specs, 1 << 20, 1 << 20)  # fixed paddings do not depend on the size


class RelocatedPad(nn.Module):
    """Zero padding of a segment's input (or of a residual shortcut), computed from the input size; with ``crop``
    it removes that border instead (the shortcut of a residual block inside a segment, whose input is larger than
    the block's original input by the padding of its stride-1 branch)."""

    specs: list[list[int]]
    crop: bool

    def __init__(self, specs: list[list[int]], crop: bool = False) -> None:
        super().__init__()
        self.specs = [list(map(int, s)) for s in specs]
        self.crop = crop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = relocated_padding(self.specs, x.shape[-2], x.shape[-1])
        if pad == [0, 0, 0, 0]:
            return x
        if self.crop:  # a slice, not F.pad with negative amounts (exporters differ on those)
            h, w = x.shape[-2], x.shape[-1]
            return x[:, :, pad[2] : h - pad[3], pad[0] : w - pad[1]]
        return F.pad(x, pad)

    def extra_repr(self) -> str:
        return f"specs={self.specs}" + (", crop=True" if self.crop else "")


class RelocatedPadConv2d(nn.Conv2d):
    """A conv that first applies the relocated padding of its segment (state_dict keys of ``nn.Conv2d``).

    Static symmetric padding uses the conv's own ``padding`` (no extra copy); the rest pads with ``F.pad``.
    """

    specs: list[list[int]]
    use_pad: bool

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        dilation: tuple[int, int] = (1, 1),
        groups: int = 1,
        bias: bool = True,
        specs: list[list[int]] | None = None,
    ) -> None:
        specs = [list(map(int, s)) for s in (specs or [])]
        static = _static(specs)
        padding = (0, 0)
        use_pad = True
        if static is not None and static[0] == static[1] and static[2] == static[3]:
            padding, use_pad = (static[2], static[0]), False
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.specs = specs
        self.use_pad = use_pad

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, specs: list[list[int]]) -> "RelocatedPadConv2d":
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            specs,
        )
        new.weight = conv.weight
        if conv.bias is not None:
            new.bias = conv.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_pad:
            pad = relocated_padding(self.specs, x.shape[-2], x.shape[-1])
            if pad != [0, 0, 0, 0]:
                x = F.pad(x, pad)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", relocated_pad_specs={self.specs}"


class PrunedBN(nn.Module):
    """A pruned conv's BN+activation module (timm's ``BatchNormAct2d``): the BN is gone, its activation stays (it
    keeps the ``act`` attribute, so a plan can still remove that activation)."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x)
