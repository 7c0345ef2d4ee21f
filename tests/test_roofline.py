"""Tests of the standalone roofline package, against hand-computed numbers.

Conventions used in the comments: FLOPs = 2 * MACs; GB/s = 1e9 bytes/s; TFLOP/s = 1e12 FLOP/s.
V100-SXM2 datasheet: 80 SMs, 900 GB/s, fp32 15.7, CUDA-core fp16 31.4, tensor fp16 125 TFLOP/s.
Default efficiencies: memory 0.8, dense/pointwise/linear 0.7, depthwise 0.3; launch 5 us.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import replace
from pathlib import Path

import pytest

import roofline as rl
from roofline import devices as rl_devices
from roofline import measure as rl_measure
from roofline.errors import RooflineError

REL = 1e-9


def approx(x: float, rel: float = REL):  # noqa: ANN201
    return pytest.approx(x, rel=rel)


# --------------------------------------------------------------------------------------------
# (a) hand-computed ops on V100 fp32


def test_depthwise_3x3_on_v100_fp32_is_memory_bound() -> None:
    # depthwise 3x3, C=144, 56x56 -> 56x56 (stride 1, pad 1), batch 128, fp32, no bias
    op = rl.conv2d_op("dw", 128, 144, 144, 56, 56, 56, 56, kernel=3, groups=144)
    assert op.op_class is rl.OpClass.DEPTHWISE_CONV
    # MACs = 128 * 56*56 * 144 * (144/144) * 3*3 = 520,224,768; FLOPs = 1,040,449,536
    assert op.macs == 520_224_768
    assert op.flops == 1_040_449_536
    # input = output = 128*144*56*56*4 B = 231,211,008 B; weights = 144*9*4 = 5,184 B
    assert (op.bytes_input, op.bytes_output, op.bytes_weights) == (231_211_008, 231_211_008, 5_184)
    assert op.bytes_total == 462_427_200
    # intensity = 1,040,449,536 / 462,427,200 = 2.24997 FLOP/B (METHOD.md: "about 2.25")
    assert op.intensity == approx(1_040_449_536 / 462_427_200)
    assert op.intensity == pytest.approx(2.25, abs=1e-4)

    t = rl.predict_op(op, "v100", "fp32")
    assert t.unit == "cuda_fp32"
    # memory: 462,427,200 B / (0.8 * 900e9 B/s) = 0.642260 ms, at 56 / 64 busy lanes (rows of 56 outputs on
    # two 32-lane warps): 0.734011 ms
    assert t.memory_ms == approx(0.642260 / (56 / 64))
    # blocks = 57,802,752 outputs / 256 = 225,792; waves = ceil(225,792/80 = 2822.4) = 2823
    # compute: 1.040449536e9 / (15.7e12 * 0.3) = 0.2209022 ms, x 2823*80/225,792 = 0.2209492 ms
    assert t.wave_factor == approx(2823 * 80 / 225_792)
    assert t.compute_ms == approx(1_040_449_536 / (15.7e12 * 0.3) * 1e3 * 2823 * 80 / 225_792)
    assert t.bound == "memory"
    # total = 0.734011 + 0.005 launch = 0.739011 ms
    assert t.total_ms == approx(0.642260 / (56 / 64) + 0.005)
    assert t.algorithm == "depthwise_direct" and t.kernels == 1


def test_pointwise_1x1_on_v100_fp32_is_compute_bound() -> None:
    # 1x1 conv 256 -> 256 at 28x28, batch 128, fp32
    op = rl.conv2d_op("pw", 128, 256, 256, 28, 28, 28, 28, kernel=1)
    assert op.op_class is rl.OpClass.POINTWISE_CONV
    # MACs = 128*28*28 * 256 * 256 = 6,576,668,672
    assert op.macs == 6_576_668_672
    # bytes = 2 * 128*256*28*28*4 + 256*256*4 = 205,783,040; intensity = 63.918 FLOP/B
    assert op.bytes_total == 205_783_040
    assert op.intensity == approx(13_153_337_344 / 205_783_040)
    t = rl.predict_op(op, "v100-sxm2", "fp32")
    # GEMM M = 100,352, N = 256: 128x128 tiles -> 784 * 2 = 1,568 blocks, 19.6 waves -> 20
    assert rl.thread_blocks(op, rl.load_device("v100")) == 1568
    assert t.wave_factor == approx(20 / 19.6)
    # compute: 13,153,337,344 / (15.7e12 * 0.7) = 1.196846 ms, x 20/19.6 = 1.221271 ms
    assert t.compute_ms == approx(13_153_337_344 / (15.7e12 * 0.7) * 1e3 * 20 / 19.6)
    assert t.compute_ms == pytest.approx(1.221271, abs=1e-6)
    # memory: 205,783,040 / 720e9 = 0.285810 ms  -> compute bound (ridge 15.7e12/720e9 = 21.8)
    assert t.memory_ms == approx(205_783_040 / 720e9 * 1e3)
    assert t.bound == "compute"
    assert t.total_ms == approx(t.compute_ms + 0.005)


def test_launch_bound_tiny_op() -> None:
    op = rl.elementwise_op("relu", "act", numel=1000)
    t = rl.predict_op(op, "v100", "fp32")
    # memory: 8,000 B / 720e9 = 1.1e-5 ms; compute: 2,000 FLOP on 1 block of 80 SMs
    # = 2000 / (15.7e12 * 0.5) * 80 = 2.04e-5 ms; both far below the 0.005 ms launch
    assert t.memory_ms == approx(8000 / 720e9 * 1e3)
    assert t.compute_ms == approx(2000 / (15.7e12 * 0.5) * 1e3 * 80)
    assert t.bound == "launch"
    assert t.total_ms == approx(0.005 + t.compute_ms)


# --------------------------------------------------------------------------------------------
# (b) wave quantization


def test_wave_quantization_one_block_over_a_full_wave() -> None:
    v100 = rl.load_device("v100")
    # pointwise 4096 -> 128, batch 81 at 8x16: M = 81*128 = 10,368 = 81 tiles of 128, N = 1 tile
    op81 = rl.conv2d_op("pw81", 81, 4096, 128, 8, 16, 8, 16, kernel=1)
    op80 = rl.conv2d_op("pw80", 80, 4096, 128, 8, 16, 8, 16, kernel=1)
    assert rl.thread_blocks(op81, v100) == 81
    assert rl.thread_blocks(op80, v100) == 80
    # 81 blocks on 80 SMs: 2 waves where 81/80 would do -> factor 160/81 = 1.975
    assert rl.wave_factor(op81, v100) == approx(160 / 81)
    assert rl.wave_factor(op80, v100) == 1.0
    t81 = rl.predict_op(op81, v100, "fp32")
    t80 = rl.predict_op(op80, v100, "fp32")
    assert t81.bound == t80.bound == "compute"
    # one more image costs almost 2x the compute time
    assert t81.compute_ms / t80.compute_ms == approx(81 / 80 * 160 / 81)


def test_wave_quantization_small_gemm_falls_back_to_small_tiles() -> None:
    v100 = rl.load_device("v100")
    # M = 10*10*10 = 1000, N = 64: 128-tiles 8 blocks, 64-tiles 16, 32-tiles 32*2 = 64 (< 80 SMs,
    # smallest tile kept) -> factor 80/64 = 1.25
    op = rl.conv2d_op("small", 10, 64, 64, 10, 10, 10, 10, kernel=1)
    assert rl.thread_blocks(op, v100) == 64
    assert rl.wave_factor(op, v100) == approx(1.25)
    cpu = replace(v100, kind="cpu", measured=rl.Measured(matmul_tflops={"fp32": 1.0}))
    assert rl.wave_factor(op, cpu) == 1.0


# --------------------------------------------------------------------------------------------
# (c) compute-unit selection


def test_fp16_tensor_core_path_on_v100() -> None:
    dense = rl.conv2d_op("dense", 128, 64, 64, 56, 56, 56, 56, kernel=3, dtype_bytes=2)
    t = rl.predict_op(dense, "v100", "fp16", conv_algorithms="direct")  # the implicit GEMM, as it was
    assert t.unit == "tensor_fp16"
    v100 = rl.load_device("v100")
    assert t.compute_ms == approx(dense.flops / (125e12 * 0.7) * 1e3 * rl.wave_factor(dense, v100))

    dw = rl.conv2d_op("dw", 128, 64, 64, 56, 56, 56, 56, kernel=3, groups=64, dtype_bytes=2)
    t_dw = rl.predict_op(dw, "v100", "fp16")
    assert t_dw.unit == "cuda_fp16"  # depthwise never uses tensor cores
    assert t_dw.compute_ms == approx(dw.flops / (31.4e12 * 0.3) * 1e3 * rl.wave_factor(dw, v100))

    stem = rl.conv2d_op("stem", 128, 3, 32, 224, 224, 112, 112, kernel=3, dtype_bytes=2)
    assert rl.predict_op(stem, "v100", "fp16").unit == "cuda_fp16"  # 3 input channels < 8


def test_unit_selection_across_devices_and_precisions() -> None:
    dense32 = rl.conv2d_op("d", 32, 64, 64, 28, 28, 28, 28, kernel=3)
    dense16 = dense32.with_dtype_bytes(2)
    assert dense16.bytes_total * 2 == dense32.bytes_total
    assert rl.predict_op(dense32, "a100", "fp32").unit == "cuda_fp32"
    assert rl.predict_op(dense32, "a100", "tf32").unit == "tensor_tf32"
    assert rl.predict_op(dense32, "v100", "tf32").unit == "cuda_fp32"  # Volta has no TF32
    assert rl.predict_op(dense16, "a100", "bf16").unit == "tensor_bf16"
    assert rl.predict_op(dense16, "v100", "bf16").unit == "cuda_fp32"  # no bf16 tensor cores
    assert rl.predict_op(dense16, "h100", "fp16").unit == "tensor_fp16"
    assert rl.predict_op(dense16, "jetson-tx2", "fp16").unit == "cuda_fp16"  # no tensor cores
    grouped = rl.conv2d_op("g", 32, 64, 64, 28, 28, 28, 28, kernel=3, groups=8, dtype_bytes=2)
    assert grouped.op_class is rl.OpClass.GROUPED_CONV
    assert rl.predict_op(grouped, "v100", "fp16").unit == "tensor_fp16"  # 8 channels per group
    narrow = rl.conv2d_op("g16", 32, 64, 64, 28, 28, 28, 28, kernel=3, groups=16, dtype_bytes=2)
    assert rl.predict_op(narrow, "v100", "fp16").unit == "cuda_fp16"  # 4 channels per group
    with pytest.raises(RooflineError, match="with_dtype_bytes"):
        rl.predict_op(dense32, "v100", "fp16")
    with pytest.raises(RooflineError, match="precision"):
        rl.predict_op(dense32, "v100", "fp64")


def test_fusion_of_elementwise_ops() -> None:
    n, c, hw = 32, 64, 28
    numel = n * c * hw * hw
    ops = [
        rl.conv2d_op("conv", n, c, c, hw, hw, hw, hw, kernel=3),
        rl.elementwise_op("bn", "bn", numel, batch=n, channels=c),
        rl.elementwise_op("act", "act", numel, batch=n),
        rl.elementwise_op("add", "add", numel, n_inputs=2, batch=n),
        rl.pooling_op("pool", n, c, hw, hw, 1, 1, kernel=hw),
        rl.elementwise_op("act2", "act", n * c, batch=n),
    ]
    eager = rl.predict_ops(ops, "v100", "fp32")
    fused = rl.predict_ops(ops, "v100", "fp32", fuse_elementwise=True)
    assert [t.bound for t in fused[1:4]] == ["fused"] * 3
    assert fused[2].total_ms == 0.0  # activation: nothing extra to read
    # residual add reads only the skip tensor: numel * 4 B / 720e9 B/s
    assert fused[3].total_ms == approx(numel * 4 / 720e9 * 1e3)
    assert fused[5].bound != "fused"  # after pooling: not fusable
    assert eager[0] == fused[0]
    assert sum(t.total_ms for t in fused) < sum(t.total_ms for t in eager)


def test_predict_network_is_fast_and_sums_ops() -> None:
    ops = []
    for i in range(50):
        ops += [
            rl.conv2d_op(f"pw{i}", 128, 96, 576, 14, 14, 14, 14),
            rl.elementwise_op(f"bn{i}", "bn", 128 * 576 * 14 * 14, batch=128, channels=576),
            rl.conv2d_op(f"dw{i}", 128, 576, 576, 14, 14, 14, 14, kernel=3, groups=576),
            rl.linear_op(f"fc{i}", 128, 1280, 1000),
        ]
    v100 = rl.load_device("v100")
    start = time.perf_counter()
    net = rl.predict_network(ops, v100, "fp32", batch=128)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.05
    assert len(net.op_times) == 200
    assert net.latency_ms == approx(math.fsum(t.total_ms for t in net.op_times))
    assert net.throughput_img_s == approx(128 / (net.latency_ms / 1e3))
    assert sum(net.ms_by_bound().values()) == approx(net.latency_ms)
    assert rl.predict_network(ops, v100, "fp32").batch == 128  # taken from the ops
    with pytest.raises(RooflineError, match="different batch sizes"):
        rl.predict_network([*ops, rl.linear_op("fc", 1, 8, 8)], v100, "fp32")


# --------------------------------------------------------------------------------------------
# (d) MACs against fvcore and torch's FlopCounterMode


def _out_hw(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


@pytest.mark.parametrize(
    ("c_in", "c_out", "k", "stride", "pad", "groups", "hw", "expected_class"),
    [
        (16, 32, 3, 2, 1, 1, 32, "dense_conv"),  # dense 3x3 stride 2
        (24, 24, 5, 1, 2, 24, 14, "depthwise_conv"),  # depthwise 5x5
        (32, 64, 1, 1, 0, 1, 8, "pointwise_conv"),
        (32, 64, 3, 1, 1, 4, 8, "grouped_conv"),
    ],
)
def test_conv_macs_match_fvcore_and_flop_counter(c_in, c_out, k, stride, pad, groups, hw, expected_class):  # noqa: ANN001
    torch = pytest.importorskip("torch")
    fvcore_nn = pytest.importorskip("fvcore.nn")
    from torch.utils.flop_counter import FlopCounterMode

    batch = 2
    conv = torch.nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, groups=groups, bias=True).eval()
    x = torch.randn(batch, c_in, hw, hw)
    h_out = _out_hw(hw, k, stride, pad)
    op = rl.conv2d_op("conv", batch, c_in, c_out, hw, hw, h_out, h_out, kernel=k, groups=groups, bias=True)
    assert op.op_class.value == expected_class
    analysis = fvcore_nn.FlopCountAnalysis(conv, x).unsupported_ops_warnings(False)
    assert analysis.total() == op.macs  # fvcore: one "flop" per MAC
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        conv(x)
    assert counter.get_total_flops() == 2 * op.macs == op.flops  # torch: 2 per MAC


def test_linear_macs_match_fvcore_and_flop_counter() -> None:
    torch = pytest.importorskip("torch")
    fvcore_nn = pytest.importorskip("fvcore.nn")
    from torch.utils.flop_counter import FlopCounterMode

    fc = torch.nn.Linear(128, 10).eval()
    x = torch.randn(4, 128)
    op = rl.linear_op("fc", 4, 128, 10)
    assert op.macs == 4 * 128 * 10
    assert fvcore_nn.FlopCountAnalysis(fc, x).unsupported_ops_warnings(False).total() == op.macs
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fc(x)
    assert counter.get_total_flops() == op.flops


def test_op_constructors_reject_bad_shapes() -> None:
    with pytest.raises(RooflineError, match="groups=3 must divide"):
        rl.conv2d_op("bad", 1, 16, 16, 8, 8, 8, 8, kernel=3, groups=3)
    with pytest.raises(RooflineError, match="c_in must be a positive integer"):
        rl.conv2d_op("bad", 1, 0, 16, 8, 8, 8, 8)
    with pytest.raises(RooflineError, match="elementwise kind"):
        rl.elementwise_op("bad", "softmax", 10)
    assert rl.conv2d_op("mult", 1, 16, 32, 8, 8, 8, 8, kernel=3, groups=16).op_class is rl.OpClass.GROUPED_CONV


# --------------------------------------------------------------------------------------------
# (e) device files


def test_all_packaged_devices_load_with_aliases() -> None:
    devices = rl.list_devices()
    names = [d.name for d in devices]
    assert len(names) == 16 and names == sorted(names)
    assert rl.load_device("v100").name == "v100-sxm2"
    assert rl.load_device("A100").name == "a100-40gb-sxm"
    assert rl.load_device("h100").name == "h100-sxm"
    assert rl.load_device("H200").name == "h200"
    assert rl.load_device("Tesla T4").name == "t4"
    for spec in devices:
        assert spec.kind == "gpu" and spec.sms and spec.peaks_tflops.cuda_fp32
        assert spec.schema_version == 1 and spec.calibration is None
        assert spec.measured == rl.Measured()
        assert spec.notes and spec.confidence in ("S", "D", "V")
    v100 = rl.load_device("v100")
    assert v100.peaks_tflops.tensor_fp16 == 125.0 and v100.peaks_tflops.tensor_tf32 is None
    tx2 = rl.load_device("jetson-tx2")
    assert tx2.peaks_tflops.tensor_fp16 is None and tx2.peaks_tflops.cuda_fp16 == 1.33


def test_unknown_device_lists_known_names() -> None:
    with pytest.raises(RooflineError) as info:
        rl.load_device("v200")
    message = str(info.value)
    assert "unknown device 'v200'" in message
    for name in ("v100-sxm2", "a100-40gb-sxm", "h200", "jetson-tx2"):
        assert name in message


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_corrupted_device_files_are_rejected_naming_the_field(tmp_path: Path) -> None:
    good = rl.load_device("v100").to_dict()

    missing = dict(good)
    del missing["mem_bandwidth_gbps"]
    with pytest.raises(RooflineError, match=r"missing\.json: field 'mem_bandwidth_gbps' is missing"):
        rl.load_device(_write(tmp_path / "missing.json", missing))

    version = dict(good, schema_version=2)
    with pytest.raises(RooflineError, match=r"version\.json: field 'schema_version' is 2"):
        rl.load_device(_write(tmp_path / "version.json", version))

    wrong_type = dict(good, sms="eighty")
    with pytest.raises(RooflineError, match="field 'sms' must be an integer"):
        rl.load_device(_write(tmp_path / "type.json", wrong_type))

    nested = json.loads(json.dumps(good))
    nested["peaks_tflops"]["tensor_fp16"] = "fast"
    with pytest.raises(RooflineError, match=r"field 'peaks_tflops\.tensor_fp16' must be a finite number"):
        rl.load_device(_write(tmp_path / "nested.json", nested))

    typo = dict(good, mem_bandwith_gbps=1.0)
    with pytest.raises(RooflineError, match="field 'mem_bandwith_gbps' is not part of the schema"):
        rl.load_device(_write(tmp_path / "typo.json", typo))

    (tmp_path / "broken.json").write_text('{"name": "x",', encoding="utf-8")
    with pytest.raises(RooflineError, match=r"broken\.json is not valid JSON"):
        rl.load_device(tmp_path / "broken.json")

    with pytest.raises(RooflineError, match="does not exist"):
        rl.load_device(tmp_path / "absent.json")


def _calibration(**overrides: object) -> rl.Calibration:
    fields = {
        "device": "v100-sxm2",
        "precision": "fp32",
        "compute_efficiency": {"pointwise_conv": 0.6, "dense_conv": 0.5},
        "memory_efficiency": {"pointwise_conv": 0.75, "dense_conv": 0.75},
        "launch_ms": 0.007,
        "n_ops": 12,
        "median_abs_pct_error": 3.5,
        "median_abs_pct_error_uncalibrated": 31.0,
        "date": "2026-01-02",
        "notes": "synthetic",
    }
    fields.update(overrides)
    return rl.Calibration(**fields)  # type: ignore[arg-type]


def test_save_load_round_trip_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = rl.load_device("v100").with_calibration(_calibration())
    spec = spec.with_measured(rl.Measured(matmul_tflops={"fp32": 14.1, "fp16": 98.0}, copy_bandwidth_gbps=810.0))
    target = tmp_path / "mine.json"
    assert rl.save_device(spec, target) == target
    loaded = rl.load_device(target)
    assert loaded == spec
    assert loaded.source == str(target)
    assert rl.load_device(str(target)) == spec
    assert sorted(os.listdir(tmp_path)) == ["mine.json"]  # no temp file left

    # a failing replace leaves the old file intact and no temp file behind
    before = target.read_bytes()

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(rl_devices.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        rl.save_device(spec.with_calibration(None), target)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["mine.json"]

    with pytest.raises(RooflineError, match="does not exist"):
        rl.save_device(spec, tmp_path / "nowhere" / "x.json")


def test_calibration_attached_to_device_is_used(tmp_path: Path) -> None:
    op = rl.conv2d_op("pw", 128, 256, 256, 28, 28, 28, 28)
    cal = _calibration()
    plain = rl.predict_op(op, "v100", "fp32")
    explicit = rl.predict_op(op, "v100", "fp32", calibration=cal)
    attached = rl.load_device(rl.save_device(rl.load_device("v100").with_calibration(cal), tmp_path / "c.json"))
    assert rl.predict_op(op, attached, "fp32") == explicit
    # compute-bound: time scales with 0.7 / 0.6
    assert explicit.compute_ms == approx(plain.compute_ms * 0.7 / 0.6)
    assert explicit.launch_ms == 0.007
    # a calibration at another precision is ignored when attached, refused when passed explicitly
    assert rl.predict_op(op.with_dtype_bytes(2), attached, "fp16").launch_ms == 0.005
    with pytest.raises(RooflineError, match="fitted at fp32"):
        rl.predict_op(op.with_dtype_bytes(2), "v100", "fp16", calibration=cal)


# --------------------------------------------------------------------------------------------
# (f) calibration on synthetic measurements


TRUE_COMPUTE = {"pointwise_conv": 0.62, "dense_conv": 0.55, "depthwise_conv": 0.12, "linear": 0.5}
TRUE_MEMORY = 0.72
TRUE_LAUNCH_MS = 0.008


def _synthetic_ops() -> list[rl.OpSpec]:
    ops: list[rl.OpSpec] = []
    for c in (16, 32, 64, 128, 256, 512):
        for hw in (7, 14, 28, 56):
            ops.append(rl.conv2d_op(f"pw{c}_{hw}", 32, c, c, hw, hw, hw, hw))
    for c in (16, 32, 64, 128, 256):
        for hw in (7, 14, 28):
            ops.append(rl.conv2d_op(f"d3_{c}_{hw}", 32, c, c, hw, hw, hw, hw, kernel=3))
    for k in (3, 5, 7):
        for c in (32, 96, 192):
            for hw in (7, 14, 28, 56):
                ops.append(rl.conv2d_op(f"dw{k}_{c}_{hw}", 32, c, c, hw, hw, hw, hw, kernel=k, groups=c))
    for numel in (10**3, 10**4, 10**5, 10**6, 10**7):
        ops.append(rl.elementwise_op(f"act{numel}", "act", numel, batch=32))
        ops.append(rl.elementwise_op(f"add{numel}", "add", numel, n_inputs=2, batch=32))
    for fin, fout in ((256, 10), (1280, 1000), (2048, 1000), (4096, 4096)):
        ops.append(rl.linear_op(f"fc{fin}_{fout}", 32, fin, fout))
    return ops


def _synthetic_times(ops: list[rl.OpSpec], noise: float, seed: int) -> list[float]:
    truth = rl.Calibration(
        device="v100-sxm2",
        precision="fp32",
        compute_efficiency=TRUE_COMPUTE,
        memory_efficiency=dict.fromkeys(rl.OP_CLASSES, TRUE_MEMORY),
        launch_ms=TRUE_LAUNCH_MS,
        n_ops=1,
        median_abs_pct_error=0.0,
        date="2026-01-01",
    )
    rng = random.Random(seed)
    return [t.total_ms * math.exp(rng.gauss(0.0, noise)) for t in rl.predict_ops(ops, "v100", "fp32", truth)]


def test_calibration_recovers_known_efficiencies() -> None:
    ops = _synthetic_ops()
    measured = _synthetic_times(ops, noise=0.02, seed=1)
    cal = rl.fit_calibration("v100", ops, measured, "fp32", date="2026-01-03")
    assert cal.n_ops == len(ops) and cal.date == "2026-01-03" and cal.precision == "fp32"
    for cls, true in TRUE_COMPUTE.items():
        assert cal.compute_efficiency[cls] == pytest.approx(true, rel=0.03), cls
    assert cal.memory_efficiency["elementwise"] == pytest.approx(TRUE_MEMORY, rel=0.03)
    assert cal.launch_ms == pytest.approx(TRUE_LAUNCH_MS, rel=0.05)
    assert cal.median_abs_pct_error < 3.0
    assert cal.median_abs_pct_error_uncalibrated > 10.0


def test_calibration_reduces_error_on_held_out_ops() -> None:
    ops = _synthetic_ops()
    measured = _synthetic_times(ops, noise=0.03, seed=2)
    train = list(range(0, len(ops), 2))
    test = list(range(1, len(ops), 2))
    cal = rl.fit_calibration("v100", [ops[i] for i in train], [measured[i] for i in train], "fp32")
    held_ops = [ops[i] for i in test]
    held_meas = [measured[i] for i in test]
    before = [t.total_ms for t in rl.predict_ops(held_ops, "v100", "fp32")]
    after = [t.total_ms for t in rl.predict_ops(held_ops, "v100", "fp32", calibration=cal)]
    err_before = rl.median_abs_pct_error(before, held_meas)
    err_after = rl.median_abs_pct_error(after, held_meas)
    assert err_after < 5.0
    assert err_after < err_before / 3


def test_calibration_input_errors() -> None:
    ops = _synthetic_ops()[:5]
    with pytest.raises(RooflineError, match="5 ops but 4 measurements"):
        rl.fit_calibration("v100", ops, [1.0] * 4, "fp32")
    with pytest.raises(RooflineError, match=r"measured_ms\[2\]"):
        rl.fit_calibration("v100", ops, [1.0, 1.0, -1.0, 1.0, 1.0], "fp32")
    with pytest.raises(RooflineError, match="at least 3"):
        rl.fit_calibration("v100", ops[:2], [1.0, 1.0], "fp32")


# --------------------------------------------------------------------------------------------
# (g) plots


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        assert img.getextrema() != ((255, 255), (255, 255), (255, 255), (255, 255))  # not blank
        return img.size


def test_plot_roofline_png_and_svg(tmp_path: Path) -> None:
    ops = _synthetic_ops()
    times = rl.predict_ops(ops, "v100", "fp32")
    points = rl.points_from_ops(ops[:40], times[:40], "original")
    points += rl.points_from_ops(ops[40:], times[40:], "merged")
    png = rl.plot_roofline("v100", "fp32", points, tmp_path / "roof.png")
    assert _png_size(png) == (1600, 1000)
    assert png.stat().st_size > 20_000
    fp16_points = [("conv", 50.0, 60.0, 1.2, "merged"), ("dw", 2.0, 1.0, 0.4, "original")]
    svg = rl.plot_roofline("v100", "fp16", fp16_points, tmp_path / "roof16.svg")
    assert "<svg" in svg.read_text(encoding="utf-8")
    with pytest.raises(RooflineError, match=r"\.png or \.svg"):
        rl.plot_roofline("v100", "fp32", points, tmp_path / "roof.jpg")
    with pytest.raises(RooflineError, match="must be positive"):
        rl.plot_roofline("v100", "fp32", [("zero", 0.0, 1.0, 1.0, "g")], tmp_path / "z.png")


def test_plot_latency_bars(tmp_path: Path) -> None:
    labels = [f"features.{i}" for i in range(18)]
    before = [0.5 + 0.1 * i for i in range(18)]
    after = [None if i % 3 == 1 else 0.3 + 0.05 * i for i in range(18)]
    png = rl.plot_latency_bars(labels, before, after, tmp_path / "bars.png", "MobileNetV2 blocks, V100 fp32")
    assert _png_size(png) == (1600, 1000)
    svg = rl.plot_latency_bars(labels, before, after, tmp_path / "bars.svg", "bars")
    assert "<svg" in svg.read_text(encoding="utf-8")
    with pytest.raises(RooflineError, match="one value"):
        rl.plot_latency_bars(labels, before[:-1], after, tmp_path / "x.png", "t")


# --------------------------------------------------------------------------------------------
# (h) measuring this machine


def test_measure_local_cpu_device(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    start = time.perf_counter()
    spec = rl.measure_local_device("cpu", seconds=1.0)
    assert time.perf_counter() - start < 10.0
    assert spec.kind == "cpu" and spec.peaks_source == "measured" and spec.confidence == "M"
    assert spec.measured.matmul_tflops and spec.measured.matmul_tflops["fp32"] > 0
    assert spec.measured.copy_bandwidth_gbps and spec.measured.copy_bandwidth_gbps > 0
    assert spec.launch_overhead_us > 0
    assert rl.load_device(rl.save_device(spec, tmp_path / "cpu.json")) == spec
    op = rl.conv2d_op("pw", 8, 64, 64, 28, 28, 28, 28)
    t = rl.predict_op(op, spec, "fp32")
    assert t.unit == "cpu" and t.wave_factor == 1.0
    # memory ceiling is the measured copy bandwidth at efficiency 1.0
    assert t.memory_ms == approx(op.bytes_total / (spec.measured.copy_bandwidth_gbps * 1e9) * 1e3)
    with pytest.raises(RooflineError, match="'cpu', 'cuda'"):
        rl.measure_local_device("tpu")


@pytest.mark.parametrize(
    ("reported", "expected"),
    [
        ("NVIDIA H200", "h200"),
        ("Tesla V100-SXM2-16GB", "v100-sxm2"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb-sxm"),
        ("NVIDIA A100-SXM4-80GB", "a100-80gb-sxm"),
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA A10G", "a10g"),
        ("NVIDIA GeForce RTX 4090", "rtx4090"),
        ("Tesla T4", "t4"),
        ("NVIDIA B200", None),
    ],
)
def test_gpu_names_reported_by_torch_match_packaged_devices(reported: str, expected: str | None) -> None:
    match = rl_measure._match_packaged(reported)
    assert (match.name if match else None) == expected


def test_roofline_never_imports_dsa() -> None:
    package = Path(rl.__file__).parent
    for path in package.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "import dsa" not in text and "from dsa" not in text, path
        assert "print(" not in text, path


def test_calibration_options_per_class_memory_and_fixed_launch() -> None:
    ops = _synthetic_ops()
    measured = _synthetic_times(ops, noise=0.0, seed=3)
    device = replace(rl.load_device("v100"), launch_overhead_us=TRUE_LAUNCH_MS * 1e3)
    cal = rl.fit_calibration(device, ops, measured, "fp32", per_class_memory=True, fit_launch=False)
    assert cal.launch_ms == TRUE_LAUNCH_MS  # the device's own launch cost, kept
    assert set(cal.memory_efficiency) == {op.op_class.value for op in ops}
    # elementwise ops are all memory-bound: their own memory efficiency is determined
    assert cal.memory_efficiency["elementwise"] == pytest.approx(TRUE_MEMORY, rel=0.05)


def test_calibration_finds_a_slow_memory_regime_for_large_ops() -> None:
    ops = _synthetic_ops()
    truth = rl.Calibration(
        device="v100-sxm2",
        precision="fp32",
        compute_efficiency=TRUE_COMPUTE,
        memory_efficiency=dict.fromkeys(rl.OP_CLASSES, TRUE_MEMORY),
        launch_ms=TRUE_LAUNCH_MS,
        n_ops=1,
        median_abs_pct_error=0.0,
        date="2026-01-01",
        large_bytes_mb=32.0,
        large_memory_factor=4.0,
    )
    measured = [t.total_ms for t in rl.predict_ops(ops, "v100", "fp32", truth)]
    assert measured != [
        t.total_ms
        for t in rl.predict_ops(
            ops,
            "v100",
            "fp32",
            truth.__class__(**{**truth.__dict__, "large_bytes_mb": None, "large_memory_factor": 1.0}),
        )
    ]
    plain = rl.fit_calibration("v100", ops, measured, "fp32")
    cal = rl.fit_calibration("v100", ops, measured, "fp32", large_thresholds_mb=(8.0, 32.0, 128.0), time_weighted=True)
    assert cal.large_bytes_mb == 32.0
    assert cal.large_memory_factor == pytest.approx(4.0, rel=0.05)
    assert cal.median_abs_pct_error < plain.median_abs_pct_error
    again = rl.Calibration.from_dict(cal.to_dict(), "round trip")
    assert (again.large_bytes_mb, again.large_memory_factor) == (cal.large_bytes_mb, cal.large_memory_factor)
