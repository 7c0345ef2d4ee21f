"""Convolution algorithms (roofline.algorithms): each algorithm's arithmetic and traffic on hand-computed cases,
the algorithm each runtime policy picks for known shapes, and how a multi-kernel algorithm is priced."""

from __future__ import annotations

import math

import pytest
from pytest import approx

import roofline as rl
from roofline.algorithms import CONV_POLICIES, candidate_algorithms, fft_size
from roofline.model import algorithm_stages, depthwise_lane_use


def _alg(op, name, policy="fastest"):
    return next(a for a in candidate_algorithms(op, policy) if a.name == name)


def test_implicit_gemm_is_the_direct_conv() -> None:
    op = rl.conv2d_op("c", 2, 16, 32, 10, 10, 10, 10, kernel=3)
    (alg,) = candidate_algorithms(op, "direct")
    assert alg.name == "implicit_gemm" and alg.kernels == 1
    assert alg.flops == op.flops and alg.bytes == op.bytes_total


def test_fused_winograd_2x2_3x3_arithmetic() -> None:
    # 64 -> 64, 3x3 stride 1, 56 x 56, batch 1: T = 28 * 28 = 784 tiles of 2x2 outputs, alpha = 4
    op = rl.conv2d_op("c", 1, 64, 64, 56, 56, 56, 56, kernel=3)
    alg = _alg(op, "winograd_2x2_3x3", "heuristic")
    gemm = 2 * 16 * 784 * 64 * 64  # alpha^2 multiplies per tile and channel pair: 102,760,448
    inp = 4 * 4**3 * 784 * 64  # B^T d B: 12,845,056
    outp = 2 * (2 * 16 + 4 * 4) * 784 * 64  # A^T M A: 4,816,896
    filt = 2 * (4 * 9 + 16 * 3) * 64 * 64  # G g G^T
    assert alg.kernels == 1
    assert alg.flops == gemm + inp + outp + filt == 121_110_528
    assert alg.bytes == op.bytes_total  # transforms in shared memory
    assert alg.flops < op.flops  # 2.25x fewer multiplies than direct (231,211,008 FLOPs)


def test_nonfused_winograd_4x4_3x3_stages_and_workspace() -> None:
    op = rl.conv2d_op("c", 1, 64, 64, 56, 56, 56, 56, kernel=3)
    alg = _alg(op, "winograd_4x4_3x3_nonfused", "heuristic")
    assert [s.name for s in alg.stages] == ["filter_transform", "input_transform", "batched_gemm", "output_transform"]
    tiles, a2, e = 14 * 14, 36, 4  # 56 / 4 = 14 tiles per side, alpha = 6
    t_in, t_filt, t_out = tiles * 64 * a2 * e, 64 * 64 * a2 * e, tiles * 64 * a2 * e
    gemm = alg.stages[2]
    assert gemm.flops == 2 * a2 * tiles * 64 * 64
    assert gemm.bytes == t_in + t_filt + t_out
    assert alg.stages[1].bytes == op.bytes_input + t_in
    assert alg.stages[3].bytes == t_out + op.bytes_output


def test_fft_arithmetic_for_a_13x13_conv() -> None:
    # Kim et al.'s 64 -> 576 13x13 conv at 14 x 14 (batch 128): the padded extent 14 + 12 = 26 -> a 32-point FFT
    op = rl.conv2d_op("c", 128, 64, 576, 26, 26, 14, 14, kernel=13, stride=1)
    alg = _alg(op, "fft")
    freqs = 32 * 17
    cgemm = alg.stages[2]
    assert cgemm.cuda_cores and cgemm.flops == 8 * freqs * 128 * 64 * 576
    assert cgemm.bytes == (128 * 64 + 64 * 576 + 128 * 576) * freqs * 8
    fft = 2.5 * 32 * 32 * math.log2(32 * 32)
    assert alg.stages[1].flops == approx(128 * 64 * fft)
    assert alg.flops < op.flops / 5  # its direct conv needs 312 GFLOP


@pytest.mark.parametrize(("n", "size"), [(1, 1), (26, 32), (32, 32), (33, 64), (200, 256)])
def test_fft_sizes_are_powers_of_two(n: int, size: int) -> None:
    assert fft_size(n) == size


def _chosen(op, policy, device="rtx2080ti"):
    return rl.predict_op(op, device, "fp32", None, policy).algorithm


def test_algorithm_chosen_for_known_shapes() -> None:
    dense3 = rl.conv2d_op("d", 64, 256, 256, 56, 56, 56, 56, kernel=3)
    assert _chosen(dense3, "heuristic").startswith("winograd")
    k13 = rl.conv2d_op("k13", 128, 64, 576, 26, 26, 14, 14, kernel=13, stride=1)
    assert _chosen(k13, "fastest") in ("fft", "fft_tiling")
    assert _chosen(k13, "heuristic") == "implicit_gemm"  # heuristics never pick FFT; no Winograd for 13x13
    dw = rl.conv2d_op("dw", 128, 144, 144, 56, 56, 56, 56, kernel=3, groups=144)
    assert _chosen(dw, "fastest") == "depthwise_direct"
    pw = rl.conv2d_op("pw", 128, 96, 576, 14, 14, 14, 14, kernel=1)
    assert _chosen(pw, "fastest") == "implicit_gemm"
    strided = rl.conv2d_op("s2", 128, 64, 576, 14, 14, 7, 7, kernel=15, stride=2)
    assert _chosen(strided, "fastest").startswith("polyphase+")
    assert _chosen(strided, "heuristic") == "implicit_gemm"
    small = rl.conv2d_op("s", 128, 3, 32, 224, 224, 112, 112, kernel=3, stride=2)
    assert _chosen(small, "fastest") == "implicit_gemm"


def test_cpu_devices_price_the_direct_conv_whatever_the_policy_default() -> None:
    cpu = rl.DeviceSpec.from_dict(
        {**rl.load_device("v100").to_dict(), "kind": "cpu", "measured": {"matmul_tflops": {"fp32": 0.3}}}, "cpu"
    )
    op = rl.conv2d_op("d", 8, 256, 256, 28, 28, 28, 28, kernel=3)
    assert rl.conv_policy(cpu) == "direct"
    assert rl.predict_op(op, cpu).algorithm == "implicit_gemm"
    assert depthwise_lane_use(rl.conv2d_op("dw", 8, 64, 64, 7, 7, 7, 7, kernel=3, groups=64), cpu) == 1.0


def test_multi_kernel_algorithm_is_the_sum_of_its_stages() -> None:
    gpu = rl.load_device("rtx2080ti")
    op = rl.conv2d_op("k13", 128, 64, 576, 26, 26, 14, 14, kernel=13, stride=1)
    t = rl.predict_op(op, gpu, "fp32", None, "fastest")
    alg = _alg(op, t.algorithm)
    stages = algorithm_stages(op, alg, gpu, "fp32", "cuda_fp32", rl.wave_factor(op, gpu))
    eff = rl.DEFAULT_COMPUTE_EFFICIENCY
    mem = 0.8  # of a datasheet bandwidth
    busy = sum(max(c / eff[cc], m / mem) for c, m, cc, _ in stages)
    assert t.kernels == alg.kernels == 4
    assert t.total_ms == approx(busy + 4 * gpu.launch_overhead_us / 1e3)
    assert t.total_ms == min(
        rl.predict_op(op, gpu, "fp32", None, "fastest").total_ms,
        rl.predict_op(op, gpu, "fp32", None, "direct").total_ms,
    )


@pytest.mark.parametrize(("w", "share"), [(7, 7 / 32), (14, 14 / 32), (32, 1.0), (56, 56 / 64), (112, 112 / 128)])
def test_depthwise_lanes_on_gpus(w: int, share: float) -> None:
    op = rl.conv2d_op("dw", 128, 64, 64, w, w, w, w, kernel=3, groups=64)
    assert depthwise_lane_use(op, rl.load_device("v100")) == approx(share)


def test_unknown_policy_is_refused() -> None:
    op = rl.conv2d_op("c", 1, 8, 8, 8, 8, 8, 8, kernel=3)
    with pytest.raises(rl.RooflineError, match="policy"):
        rl.predict_op(op, "v100", conv_algorithms="benchmark")
    assert CONV_POLICIES == ("direct", "heuristic", "fastest")


def test_calibration_fits_multi_kernel_algorithms() -> None:
    """Times generated by the model itself at other efficiencies are fitted back (FFT and Winograd rows too)."""
    gpu = rl.load_device("rtx2080ti")
    ops = []
    for c in (16, 32, 64, 128):
        for k, hw in ((1, 28), (3, 28), (3, 14), (5, 14), (7, 14), (9, 14), (13, 14)):
            ops.append(rl.conv2d_op(f"c{c}k{k}", 64, c, 2 * c, hw + k - 1, hw + k - 1, hw, hw, kernel=k, stride=1))
        ops.append(rl.conv2d_op(f"dw{c}", 64, c, c, 28, 28, 28, 28, kernel=3, groups=c))
    truth = rl.Calibration(
        device=gpu.name,
        precision="fp32",
        compute_efficiency={"dense_conv": 0.5, "pointwise_conv": 0.6, "depthwise_conv": 0.3, "elementwise": 0.5},
        memory_efficiency=dict.fromkeys(("dense_conv", "pointwise_conv", "depthwise_conv", "elementwise"), 0.6),
        launch_ms=0.005,
        n_ops=len(ops),
        median_abs_pct_error=0.0,
        median_abs_pct_error_uncalibrated=0.0,
        date="2026-12-02",
        notes="synthetic",
    )
    measured = [rl.predict_op(op, gpu, "fp32", truth, "fastest").total_ms for op in ops]
    cal = rl.fit_calibration(
        gpu, ops, measured, "fp32", fit_launch=False, large_thresholds_mb=(), conv_algorithms="fastest"
    )
    assert cal.median_abs_pct_error < 5.0
    assert cal.compute_efficiency["dense_conv"] == approx(0.5, rel=0.15)


def test_algorithm_choice_follows_the_precision() -> None:
    """Tensor cores serve implicit GEMM and the nonfused Winograd GEMM, never the fused (SIMT) Winograd kernel: in
    fp32 a V100 runs a large 3x3 conv as Winograd on CUDA cores; in fp16 the fused kernel is out of the race."""
    fp32 = rl.conv2d_op("d", 64, 256, 256, 56, 56, 56, 56, kernel=3)
    fp16 = fp32.with_dtype_bytes(2)
    assert _alg(fp32, "winograd_2x2_3x3").stages[0].cuda_cores
    assert rl.predict_op(fp32, "v100", "fp32").algorithm.startswith("winograd")
    assert rl.predict_op(fp16, "v100", "fp16").algorithm != "winograd_2x2_3x3"
    fused16 = rl.predict_op(fp16, "v100", "fp16", None, "heuristic")
    direct16 = rl.predict_op(fp16, "v100", "fp16", None, "direct")
    assert direct16.unit == "tensor_fp16" and fused16.total_ms <= direct16.total_ms
