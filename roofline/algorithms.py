"""Convolution algorithms: what a GPU library would run for one conv, each with its own arithmetic and traffic.

A convolution's MACs say what a *direct* convolution computes. GPU libraries choose among algorithms that
compute the same result with other arithmetic (docs/roofline.md, "Convolution algorithms", has the formulas
and sources):

- ``implicit_gemm``: the direct convolution as one GEMM (cuDNN IMPLICIT_(PRECOMP_)GEMM, TensorRT's
  implicit-GEMM tactics); for depthwise convs the library's dedicated depthwise kernel (same arithmetic).
- ``winograd``: minimal filtering F(m x m, r x r) (Lavin & Gray, CVPR 2016) for r x r stride-1 dense convs:
  alpha = m + r - 1; alpha^2 multiplies per m x m output tile and channel pair instead of m^2 r^2. cuDNN runs
  F(2x2,3x3) fused in one kernel (WINOGRAD) and larger tiles as four kernels with transformed tensors in a
  workspace (WINOGRAD_NONFUSED: filter, input, batched GEMM, output), for 3x3 and 5x5 filters.
- ``fft`` / ``fft_tiling``: convolution theorem (Mathieu et al., ICLR 2014; Vasilache et al., ICLR 2015):
  transform input and filters, multiply per frequency (a batched complex GEMM), transform back. cuDNN FFT
  transforms the whole (padded) map, at most 256 per side; FFT_TILING splits it into 32 x 32 tiles.
- ``polyphase+...``: a stride-s conv is the stride-1 conv of its s x s polyphase components (space-to-depth:
  s^2 x the input channels on an s-times smaller map, kernel ceil(k / s); Vaidyanathan, "Multirate Systems and
  Filter Banks", 1993), so the stride-1 algorithms above apply to strided convs after one reshuffle of the
  input. Only the ``fastest`` policy (a runtime that times its candidates) considers it.

Each algorithm is a sequence of :class:`Stage` s (one kernel each); :mod:`roofline.model` prices a stage as
``max(compute, memory)`` and an algorithm as the sum of its stages plus one launch per kernel, and a runtime's
choice by its :data:`CONV_POLICIES` entry: the fastest of the algorithms it considers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from roofline.errors import RooflineError
from roofline.ops import OpClass, OpSpec

__all__ = [
    "CONV_POLICIES",
    "FFT_MAX_SIZE",
    "FFT_TILE",
    "WINOGRAD_TILES",
    "Algorithm",
    "Stage",
    "candidate_algorithms",
    "fft_size",
]

#: How a runtime chooses a conv's algorithm:
#: - ``direct``: implicit GEMM / direct only (CPU runtimes as dsa models them: oneDNN and MLAS run direct or
#:   im2col-GEMM convolutions; see docs/roofline.md);
#: - ``heuristic``: cuDNN's heuristics, as eager PyTorch with ``cudnn.benchmark`` off (its default) and
#:   torch.compile use them: implicit GEMM or Winograd, never FFT (whose workspace heuristics avoid);
#: - ``fastest``: every algorithm, the fastest wins (TensorRT's tactic timing, ``cudnn.benchmark=True``).
CONV_POLICIES: tuple[str, ...] = ("direct", "heuristic", "fastest")

#: Winograd F(m x m, r x r) variants considered, as (m, r, fused): cuDNN's fused F(2x2,3x3) and its nonfused
#: (workspace) tiles for 3x3 and 5x5 filters, alpha = m + r - 1 <= 8 (fp32 accuracy degrades beyond).
WINOGRAD_TILES: tuple[tuple[int, int, bool], ...] = ((2, 3, True), (4, 3, False), (2, 5, False))
#: cuDNN FFT: padded input height and width of at most 256.
FFT_MAX_SIZE = 256
#: cuDNN FFT_TILING: 32 x 32 tiles (so the filter must be smaller than 32).
FFT_TILE = 32


@dataclass(frozen=True)
class Stage:
    """One kernel of an algorithm: its FLOPs and DRAM bytes, and what it runs as.

    ``gemm``: the stage is a (batched) GEMM, priced at the op's compute unit and its class's efficiency;
    otherwise it is a transform, priced on CUDA cores at the elementwise efficiency (transforms are
    memory-bound in practice). ``cuda_cores``: a GEMM stage that runs on CUDA cores even where the op could use
    tensor cores: FFT's complex GEMM, and the fused Winograd kernel (a SIMT kernel, transforms included)."""

    name: str
    flops: float
    bytes: float
    gemm: bool
    cuda_cores: bool = False


@dataclass(frozen=True)
class Algorithm:
    """A way to compute one conv: its stages in order."""

    name: str
    stages: tuple[Stage, ...]

    @property
    def kernels(self) -> int:
        return len(self.stages)

    @property
    def flops(self) -> float:
        return math.fsum(s.flops for s in self.stages)

    @property
    def bytes(self) -> float:
        return math.fsum(s.bytes for s in self.stages)


def fft_size(n: int) -> int:
    """The transform size for ``n`` points: the next power of two (cuDNN's FFT convolutions transform
    power-of-two sizes, as FFT_TILING's 32 x 32 tiles; so the cost is flat over kernel sizes that pad to the
    same size, as Kim et al.'s table shows for 7x7 to 13x13 kernels on 14 x 14 maps)."""
    if n < 1:
        raise RooflineError(f"FFT size must be positive, got {n}")
    return 1 << (n - 1).bit_length()


def _real_fft_flops(nh: int, nw: int) -> float:
    """FLOPs of one real-input 2-D FFT of nh x nw points: half of a complex FFT's 5 N log2 N."""
    points = nh * nw
    return 2.5 * points * math.log2(points) if points > 1 else 0.0


def _direct(op: OpSpec) -> Algorithm:
    if op.op_class is OpClass.DEPTHWISE_CONV:
        return Algorithm("depthwise_direct", (Stage("depthwise_direct", float(op.flops), float(op.bytes_total), True),))
    stage = Stage("implicit_gemm", float(op.flops), float(op.bytes_total), True)
    return Algorithm("implicit_gemm", (stage,))


def _winograd(op: OpSpec, m: int, r: int, fused: bool) -> Algorithm:
    e = op.dtype_bytes
    alpha = m + r - 1
    a2 = alpha * alpha
    n, c, k = op.batch, op.c_in, op.c_out
    tiles = n * math.ceil(op.h_out / m) * math.ceil(op.w_out / m)
    gemm_flops = 2.0 * a2 * tiles * c * k
    in_tf_flops = 4.0 * alpha**3 * tiles * c  # B^T d B: two alpha x alpha products per tile and channel
    out_tf_flops = 2.0 * (m * a2 + m * m * alpha) * tiles * k  # A^T M A
    filt_tf_flops = 2.0 * (alpha * r * r + a2 * r) * c * k  # G g G^T
    name = f"winograd_{m}x{m}_{r}x{r}"
    if fused:  # transforms in shared memory: the tensors cross DRAM once, as in the direct conv
        flops = gemm_flops + in_tf_flops + out_tf_flops + filt_tf_flops
        return Algorithm(name, (Stage(name, flops, float(op.bytes_total), True, True),))
    t_in, t_filt, t_out = tiles * c * a2 * e, c * k * a2 * e, tiles * k * a2 * e
    return Algorithm(
        f"{name}_nonfused",
        (
            Stage("filter_transform", filt_tf_flops, op.bytes_weights + t_filt, gemm=False),
            Stage("input_transform", in_tf_flops, op.bytes_input + t_in, gemm=False),
            Stage("batched_gemm", gemm_flops, t_in + t_filt + t_out, True),
            Stage("output_transform", out_tf_flops, t_out + op.bytes_output, gemm=False),
        ),
    )


def _fft(op: OpSpec, name: str, nh: int, nw: int, tiles_per_image: int) -> Algorithm:
    """Transform (tiled) input and filters, per-frequency complex GEMMs, inverse transform."""
    ce = 2 * op.dtype_bytes  # a complex element
    n, c, k = op.batch, op.c_in, op.c_out
    freqs = nh * (nw // 2 + 1)  # real-input FFT: half the spectrum
    rows = n * tiles_per_image
    fft = _real_fft_flops(nh, nw)
    t_in, t_filt, t_out = rows * c * freqs * ce, c * k * freqs * ce, rows * k * freqs * ce
    return Algorithm(
        name,
        (
            Stage("filter_fft", c * k * fft, op.bytes_weights + t_filt, gemm=False),
            Stage("input_fft", rows * c * fft, op.bytes_input + t_in, gemm=False),
            Stage("pointwise_cgemm", 8.0 * freqs * rows * c * k, t_in + t_filt + t_out, True, True),
            Stage("inverse_fft", rows * k * fft, t_out + op.bytes_output, gemm=False),
        ),
    )


def _stride1_fast(op: OpSpec, policy: str) -> list[Algorithm]:
    """The fast (non-direct) algorithms for a stride-1 dense conv under ``policy``."""
    kh, kw = op.kernel
    out = [_winograd(op, m, r, fused) for m, r, fused in WINOGRAD_TILES if kh == kw == r]
    if policy != "fastest":
        return out
    ph, pw = op.h_out + kh - 1, op.w_out + kw - 1  # the padded input extent the output needs
    if ph <= FFT_MAX_SIZE and pw <= FFT_MAX_SIZE:
        out.append(_fft(op, "fft", fft_size(ph), fft_size(pw), 1))
    if kh < FFT_TILE and kw < FFT_TILE:
        th, tw = FFT_TILE - kh + 1, FFT_TILE - kw + 1  # outputs per tile
        out.append(_fft(op, "fft_tiling", FFT_TILE, FFT_TILE, math.ceil(op.h_out / th) * math.ceil(op.w_out / tw)))
    return out


def _polyphase(op: OpSpec, policy: str) -> list[Algorithm]:
    """Stride-1 fast algorithms on the space-to-depth form of a strided conv, after one input reshuffle."""
    sh, sw = op.stride
    kh, kw = op.kernel
    if sh != sw or kh < sh or kw < sw:
        return []
    s = sh
    k = (math.ceil(kh / s), math.ceil(kw / s))
    stride1 = replace(
        op,
        c_in=op.c_in * s * s,
        kernel=k,
        stride=(1, 1),
        macs=op.out_elements * op.c_in * s * s * k[0] * k[1],
        gemm_k=op.c_in * s * s * k[0] * k[1],
        bytes_weights=op.c_out * op.c_in * s * s * k[0] * k[1] * op.dtype_bytes,
    )
    shuffle = Stage("space_to_depth", 0.0, 2.0 * op.bytes_input, gemm=False)
    return [Algorithm(f"polyphase+{a.name}", (shuffle, *a.stages)) for a in _stride1_fast(stride1, policy)]


def candidate_algorithms(op: OpSpec, policy: str) -> list[Algorithm]:
    """The algorithms a runtime with ``policy`` (:data:`CONV_POLICIES`) considers for ``op``; implicit GEMM /
    direct is always among them, and is the only one for ops that are not convs or whose output map is
    unknown (``h_out == 0``)."""
    if policy not in CONV_POLICIES:
        raise RooflineError(f"unknown conv algorithm policy {policy!r}; use one of {', '.join(CONV_POLICIES)}")
    out = [_direct(op)]
    dense = op.kind == "conv" and op.op_class is OpClass.DENSE_CONV and op.h_out > 0 and op.w_out > 0
    if policy == "direct" or not dense:
        return out
    if op.stride == (1, 1):
        return out + _stride1_fast(op, policy)
    return out + (_polyphase(op, policy) if policy == "fastest" else [])
