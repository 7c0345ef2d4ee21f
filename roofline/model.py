"""Roofline latency model: per-op time from FLOPs, bytes, ceilings and efficiencies.

For one op (FLOPs = 2 * MACs; see :mod:`roofline.ops`)::

    compute_ms = flops / (peak[unit] * eff_compute[class]) * wave_factor
    memory_ms  = bytes_total / (bandwidth * eff_memory[class])
    total_ms   = max(compute_ms, memory_ms) + launch_ms

- ``unit``: which peak applies, from the op class, its channels and the precision
  (:func:`select_unit`). Tensor cores serve only GEMM-like ops (dense, pointwise and grouped
  convs, linear) whose per-group input and output channels are both at least
  :data:`TENSOR_CORE_MIN_CHANNELS`, and only at a precision the device has a tensor unit for.
- ``eff_compute`` defaults to :data:`DEFAULT_COMPUTE_EFFICIENCY`; ``eff_memory`` to
  :data:`DEFAULT_MEMORY_EFFICIENCY` (0.8 of a datasheet bandwidth) or
  :data:`MEASURED_MEMORY_EFFICIENCY` (1.0 of a measured one). A :class:`~roofline.devices.Calibration`
  replaces them with fitted values.
- ``wave_factor`` (GPUs only): ``ceil(blocks / sms) / (blocks / sms)``, the slowdown from a partly
  idle last wave of thread blocks (:func:`thread_blocks`). It scales compute time only: a partial
  wave can still saturate DRAM.
- ``launch_ms``: the device's ``launch_overhead_us`` (or the calibrated ``launch_ms``), added once
  per op.

``bound`` says which term dominated: ``"compute"``, ``"memory"``, ``"launch"`` (launch larger
than both), or ``"fused"`` for an elementwise op folded into its producer
(``fuse_elementwise=True``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from roofline.algorithms import CONV_POLICIES, Algorithm, candidate_algorithms
from roofline.devices import PRECISIONS, Calibration, DeviceSpec, load_device
from roofline.errors import RooflineError
from roofline.ops import GEMM_CLASSES, OpClass, OpSpec

__all__ = [
    "DEFAULT_COMPUTE_EFFICIENCY",
    "DEFAULT_MEMORY_EFFICIENCY",
    "ELEMENTS_PER_BLOCK",
    "GEMM_TILE_SIZES",
    "MEASURED_MEMORY_EFFICIENCY",
    "PRECISION_DTYPE_BYTES",
    "TENSOR_CORE_MIN_CHANNELS",
    "Efficiencies",
    "NetworkTime",
    "OpTime",
    "conv_policy",
    "efficiencies",
    "predict_network",
    "predict_op",
    "predict_ops",
    "select_unit",
    "thread_blocks",
    "wave_factor",
]

#: Fraction of the unit's peak an op class reaches, uncalibrated. Rough values for cuDNN/cuBLAS
#: kernels at batch sizes of 32-256; calibrate for anything better than +-30-50%.
DEFAULT_COMPUTE_EFFICIENCY: Mapping[str, float] = MappingProxyType(
    {
        OpClass.DENSE_CONV.value: 0.7,
        OpClass.POINTWISE_CONV.value: 0.7,
        OpClass.GROUPED_CONV.value: 0.4,
        OpClass.LINEAR.value: 0.7,
        OpClass.DEPTHWISE_CONV.value: 0.3,
        OpClass.ELEMENTWISE.value: 0.5,
        OpClass.POOLING.value: 0.3,
    }
)
#: Achievable fraction of a datasheet memory bandwidth (METHOD.md: ~80%).
DEFAULT_MEMORY_EFFICIENCY = 0.8
#: Memory efficiency applied to a measured bandwidth (already an achieved figure).
MEASURED_MEMORY_EFFICIENCY = 1.0
#: Minimum per-group input and output channels for a GEMM-like op to use tensor cores
#: (MMA tiles are 8-16 wide; narrower layers such as a 3-channel stem run on CUDA cores).
TENSOR_CORE_MIN_CHANNELS = 8
#: Square output tiles (M x N) tried for GEMM-like ops, largest first: the largest giving at
#: least one block per SM is used (libraries pick smaller tiles for small problems).
GEMM_TILE_SIZES: tuple[int, ...] = (128, 64, 32)
#: Output elements per thread block for the other classes (256 threads x elements per thread).
ELEMENTS_PER_BLOCK: Mapping[str, int] = MappingProxyType(
    {
        OpClass.DEPTHWISE_CONV.value: 256,
        OpClass.POOLING.value: 256,
        OpClass.ELEMENTWISE.value: 1024,
    }
)
#: Threads per warp on NVIDIA GPUs (the lanes a depthwise kernel spreads a row of outputs over).
WARP_SIZE = 32
#: Bytes per element each precision stores.
PRECISION_DTYPE_BYTES: Mapping[str, int] = MappingProxyType({"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "int8": 1})

_FUSION_PRODUCERS = frozenset(GEMM_CLASSES | {OpClass.DEPTHWISE_CONV})


@dataclass(frozen=True)
class OpTime:
    """Predicted time of one op, in milliseconds.

    ``unit`` is the compute unit used (a :data:`~roofline.devices.PEAK_UNITS` name, ``"cpu"`` for
    CPU devices, ``"fused"`` for a fused elementwise op); ``wave_factor`` is the wave-quantization
    factor applied to ``compute_ms`` (1.0 on CPUs). ``algorithm``: the convolution algorithm the runtime
    is modelled to choose (:mod:`roofline.algorithms`; empty for other ops), run as ``kernels`` kernels,
    each paying ``launch_ms``; ``compute_ms`` and ``memory_ms`` are then sums over its stages.
    """

    name: str
    op_class: str
    unit: str
    compute_ms: float
    memory_ms: float
    launch_ms: float
    total_ms: float
    bound: str
    wave_factor: float = 1.0
    algorithm: str = ""
    kernels: int = 1


@dataclass(frozen=True)
class NetworkTime:
    """Predicted time of a whole forward pass: the sum of its ops, run one after another."""

    device: str
    precision: str
    batch: int
    latency_ms: float
    throughput_img_s: float
    op_times: tuple[OpTime, ...]

    def ms_by_bound(self) -> dict[str, float]:
        """Total milliseconds of the ops in each bound category."""
        out: dict[str, float] = {}
        for t in self.op_times:
            out[t.bound] = out.get(t.bound, 0.0) + t.total_ms
        return out


@dataclass(frozen=True)
class Efficiencies:
    """The efficiencies and launch cost one prediction uses (defaults or a calibration)."""

    compute: Mapping[str, float]
    memory: Mapping[str, float]
    launch_ms: float
    calibrated: bool
    large_bytes: float | None = None  # ops moving more bytes than this are in the slow memory regime
    large_factor: float = 1.0  # ... and their memory time is multiplied by this


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise RooflineError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")


def efficiencies(device: DeviceSpec, precision: str, calibration: Calibration | None = None) -> Efficiencies:
    """Efficiencies for ``device`` at ``precision``.

    ``calibration`` (or else the device's attached calibration when fitted at this precision)
    overrides the defaults class by class; a calibration fitted at another precision is refused.
    """
    _check_precision(precision)
    if calibration is None and device.calibration is not None and device.calibration.precision == precision:
        calibration = device.calibration
    measured_bw = device.peaks_source == "measured" or device.kind == "cpu"
    mem_default = MEASURED_MEMORY_EFFICIENCY if measured_bw else DEFAULT_MEMORY_EFFICIENCY
    compute = dict(DEFAULT_COMPUTE_EFFICIENCY)
    memory = dict.fromkeys(DEFAULT_COMPUTE_EFFICIENCY, mem_default)
    launch_ms = device.launch_overhead_us / 1e3
    if calibration is None:
        return Efficiencies(compute, memory, launch_ms, calibrated=False)
    if calibration.precision != precision:
        raise RooflineError(
            f"the calibration was fitted at {calibration.precision}, but {precision} was asked for; "
            f"fit one at {precision} or pass calibration=None"
        )
    compute.update(calibration.compute_efficiency)
    memory.update(calibration.memory_efficiency)
    large = calibration.large_bytes_mb * 1e6 if calibration.large_bytes_mb else None
    return Efficiencies(compute, memory, calibration.launch_ms, True, large, calibration.large_memory_factor)


def _tensor_eligible(op: OpSpec) -> bool:
    if op.op_class not in GEMM_CLASSES:
        return False
    return op.c_in // op.groups >= TENSOR_CORE_MIN_CHANNELS and op.c_out // op.groups >= TENSOR_CORE_MIN_CHANNELS


def select_unit(op: OpSpec, device: DeviceSpec, precision: str) -> str:
    """The compute unit ``op`` runs on: a peak name, or ``"cpu"`` for a CPU device.

    - fp32: ``cuda_fp32`` for every class (PyTorch's default for convs on Ampere+ is TF32:
      model that with precision ``"tf32"``).
    - tf32: ``tensor_tf32`` for tensor-eligible ops where the device has it, else ``cuda_fp32``.
    - fp16: ``tensor_fp16`` for tensor-eligible ops where present, else ``cuda_fp16``
      (``cuda_fp32`` if the device lists no fp16 rate). Depthwise convs, elementwise and pooling
      always run on CUDA cores.
    - bf16: ``tensor_bf16`` for tensor-eligible ops where present, else ``cuda_fp32`` (PyTorch
      computes non-tensor bf16 in fp32; devices without bf16 tensor cores emulate it).
    """
    _check_precision(precision)
    if device.kind == "cpu":
        return "cpu"
    if precision == "int8":
        raise RooflineError(
            f"int8 is modelled on CPU devices (their measured int8 matmul rate); {device.name} is a GPU, whose INT8 "
            "runs under TensorRT, which dsa has no adapter for yet"
        )
    eligible = _tensor_eligible(op)
    peaks = device.peaks_tflops
    if precision == "tf32" and eligible and peaks.tensor_tf32:
        return "tensor_tf32"
    if precision == "fp16":
        if eligible and peaks.tensor_fp16:
            return "tensor_fp16"
        if peaks.cuda_fp16:
            return "cuda_fp16"
    if precision == "bf16" and eligible and peaks.tensor_bf16:
        return "tensor_bf16"
    return "cuda_fp32"


def thread_blocks(op: OpSpec, device: DeviceSpec) -> int:
    """Estimated thread blocks of the op's GPU kernel.

    GEMM-like ops: ``ceil(M / T) * ceil(N / T) * groups`` for the largest tile size T in
    :data:`GEMM_TILE_SIZES` that gives at least one block per SM (else the smallest), with
    M = batch * h_out * w_out, N = c_out / groups. Other classes: ``ceil(out_elements /
    ELEMENTS_PER_BLOCK[class])``.
    """
    if op.op_class in GEMM_CLASSES:
        sms = device.sms or 1
        blocks = 1
        for tile in GEMM_TILE_SIZES:
            blocks = math.ceil(op.gemm_m / tile) * math.ceil(op.gemm_n / tile) * op.groups
            if blocks >= sms:
                break
        return max(1, blocks)
    return max(1, math.ceil(op.out_elements / ELEMENTS_PER_BLOCK[op.op_class.value]))


def wave_factor(op: OpSpec, device: DeviceSpec) -> float:
    """``ceil(blocks / sms) / (blocks / sms)``: 1.0 for full waves, up to ``sms`` for one block.

    Always 1.0 on CPU devices.
    """
    if device.kind != "gpu" or not device.sms:
        return 1.0
    blocks = thread_blocks(op, device)
    return math.ceil(blocks / device.sms) * device.sms / blocks


def _ceilings(device: DeviceSpec, unit: str, precision: str) -> tuple[float, float]:
    """(compute peak in FLOP/ms, bandwidth in bytes/ms) at efficiency 1."""
    if device.kind == "cpu":
        matmul = device.measured.matmul_tflops or {}
        if precision == "int8" and "int8" not in matmul:
            raise RooflineError(
                f"CPU device {device.name!r} has no measured int8 matmul rate; measure it again "
                "(measure_local_device('cpu') times torch._int_mm)"
            )
        peak = matmul.get(precision, matmul.get("fp32"))
        if peak is None:
            peak = device.peaks_tflops.cuda_fp32
        if not peak:
            raise RooflineError(
                f"CPU device {device.name!r} has no measured matmul FLOP/s; build it with measure_local_device('cpu')"
            )
        bandwidth = device.measured.copy_bandwidth_gbps or device.mem_bandwidth_gbps
    else:
        peak = device.peaks_tflops.get(unit)
        if not peak:
            raise RooflineError(f"device {device.name!r} has no peak for unit {unit!r}; add it to the device file")
        bandwidth = device.mem_bandwidth_gbps
    return peak * 1e9, bandwidth * 1e6


def _check_dtype(op: OpSpec, precision: str) -> None:
    expected = PRECISION_DTYPE_BYTES[precision]
    if op.dtype_bytes != expected:
        raise RooflineError(
            f"op {op.name!r} stores {op.dtype_bytes}-byte elements but precision {precision} uses "
            f"{expected}-byte ones; build the op with dtype_bytes={expected} or use "
            f"op.with_dtype_bytes({expected})"
        )


def _raw_times(op: OpSpec, device: DeviceSpec, precision: str) -> tuple[str, float, float, float]:
    """(unit, compute_ms at efficiency 1 incl. waves, memory_ms at efficiency 1, wave factor)."""
    _check_dtype(op, precision)
    unit = select_unit(op, device, precision)
    flop_per_ms, bytes_per_ms = _ceilings(device, unit, precision)
    waves = wave_factor(op, device)
    return unit, op.flops / flop_per_ms * waves, op.bytes_total / bytes_per_ms, waves


def conv_policy(device: DeviceSpec, policy: str | None = None) -> str:
    """The conv-algorithm policy (:data:`~roofline.algorithms.CONV_POLICIES`) to price ``device`` with: ``policy``
    when given, else ``heuristic`` on GPUs (eager PyTorch's default: cuDNN's heuristics) and ``direct`` on CPUs."""
    if policy is None:
        return "heuristic" if device.kind == "gpu" else "direct"
    if policy not in CONV_POLICIES:
        raise RooflineError(f"unknown conv algorithm policy {policy!r}; use one of {', '.join(CONV_POLICIES)}")
    return policy


def _cuda_unit(device: DeviceSpec, precision: str) -> str:
    """Where non-GEMM arithmetic runs: CUDA cores at the precision (fp16 if the device lists it), else fp32."""
    if device.kind == "cpu":
        return "cpu"
    return "cuda_fp16" if precision == "fp16" and device.peaks_tflops.cuda_fp16 else "cuda_fp32"


def algorithm_stages(
    op: OpSpec, alg: Algorithm, device: DeviceSpec, precision: str, unit: str, waves: float
) -> list[tuple[float, float, str, str]]:
    """Per stage of ``alg``: (compute_ms, memory_ms) at efficiency 1 and the op classes whose compute and memory
    efficiencies apply. A GEMM stage runs on ``unit`` at the op's class efficiency (a single-stage algorithm
    with the op's wave factor), or on CUDA cores where the stage says so (FFT's complex GEMM, fused Winograd); a
    transform on CUDA cores at the elementwise efficiency."""
    flop_unit, bytes_per_ms = _ceilings(device, unit, precision)
    cuda = _cuda_unit(device, precision)
    flop_cuda = flop_unit if cuda == unit else _ceilings(device, cuda, precision)[0]
    cls = op.op_class.value
    lanes = depthwise_lane_use(op, device)
    out = []
    for st in alg.stages:
        waves_here = waves if st.gemm and alg.kernels == 1 else 1.0  # a batched GEMM fills the GPU
        c = st.flops / (flop_unit if st.gemm and not st.cuda_cores else flop_cuda) * waves_here
        stage_cls = cls if st.gemm else OpClass.ELEMENTWISE.value
        out.append((c, st.bytes / bytes_per_ms / lanes, stage_cls, stage_cls))
    return out


def depthwise_lane_use(op: OpSpec, device: DeviceSpec) -> float:
    """The share of busy lanes of a GPU depthwise conv kernel: such kernels give each warp a run of
    :data:`WARP_SIZE` outputs along a row of one channel's map, so a row of ``w_out`` outputs keeps
    ``w_out / (32 * ceil(w_out / 32))`` of the lanes busy (0.22 at 7 wide, 0.44 at 14), and the bandwidth the
    kernel draws drops with it. 1.0 for other ops and on CPUs."""
    if device.kind != "gpu" or op.op_class is not OpClass.DEPTHWISE_CONV or op.w_out <= 0:
        return 1.0
    return op.w_out / (WARP_SIZE * math.ceil(op.w_out / WARP_SIZE))


def _combine(op: OpSpec, unit: str, raw_compute: float, raw_memory: float, waves: float, eff: Efficiencies) -> OpTime:
    cls = op.op_class.value
    compute_ms = raw_compute / eff.compute[cls]
    memory_ms = raw_memory / eff.memory[cls]
    if eff.large_bytes is not None and op.bytes_total > eff.large_bytes:
        memory_ms *= eff.large_factor
    busy = max(compute_ms, memory_ms)
    bound = "launch" if eff.launch_ms > busy else "compute" if compute_ms >= memory_ms else "memory"
    return OpTime(
        name=op.name,
        op_class=cls,
        unit=unit,
        compute_ms=compute_ms,
        memory_ms=memory_ms,
        launch_ms=eff.launch_ms,
        total_ms=busy + eff.launch_ms,
        bound=bound,
        wave_factor=waves,
    )


def _algorithm_time(
    op: OpSpec, alg: Algorithm, spec: DeviceSpec, precision: str, unit: str, waves: float, eff: Efficiencies
) -> OpTime:
    compute = memory = busy = 0.0
    for c, m, c_cls, m_cls in algorithm_stages(op, alg, spec, precision, unit, waves):
        c /= eff.compute[c_cls]
        m /= eff.memory[m_cls]
        if eff.large_bytes is not None and op.bytes_total > eff.large_bytes:
            m *= eff.large_factor
        compute, memory, busy = compute + c, memory + m, busy + max(c, m)
    launch = eff.launch_ms * alg.kernels
    bound = "launch" if launch > busy else "compute" if compute >= memory else "memory"
    return OpTime(
        op.name, op.op_class.value, unit, compute, memory, launch, busy + launch, bound, waves, alg.name, alg.kernels
    )


def choose_algorithm(
    op: OpSpec, spec: DeviceSpec, precision: str, eff: Efficiencies, policy: str
) -> tuple[Algorithm | None, OpTime]:
    """The algorithm ``policy`` picks for ``op`` (the fastest it considers; None for ops that are not convs) and
    its time."""
    unit, raw_c, raw_m, waves = _raw_times(op, spec, precision)
    if op.kind != "conv":
        return None, _combine(op, unit, raw_c, raw_m, waves, eff)
    best = None
    for alg in candidate_algorithms(op, policy):
        t = _algorithm_time(op, alg, spec, precision, unit, waves, eff)
        if best is None or t.total_ms < best[1].total_ms:
            best = (alg, t)
    return best


def _resolve(device: DeviceSpec | str) -> DeviceSpec:
    return device if isinstance(device, DeviceSpec) else load_device(device)


def predict_op(
    op: OpSpec,
    device: DeviceSpec | str,
    precision: str = "fp32",
    calibration: Calibration | None = None,
    conv_algorithms: str | None = None,
) -> OpTime:
    """Predicted time of one op (never fused). ``device`` may be a name or alias. A conv is priced as the
    fastest algorithm the runtime's ``conv_algorithms`` policy considers (:func:`conv_policy`: by default
    ``heuristic`` on GPUs, ``direct`` on CPUs)."""
    spec = _resolve(device)
    eff = efficiencies(spec, precision, calibration)
    return choose_algorithm(op, spec, precision, eff, conv_policy(spec, conv_algorithms))[1]


def _fused(op: OpSpec, spec: DeviceSpec, precision: str, eff) -> OpTime:
    _check_dtype(op, precision)
    _, bytes_per_ms = _ceilings(spec, select_unit(op, spec, precision), precision)
    extra = op.bytes_input - op.bytes_output + op.bytes_weights
    memory_ms = max(0, extra) / bytes_per_ms / eff.memory[op.op_class.value]
    return OpTime(op.name, op.op_class.value, "fused", 0.0, memory_ms, 0.0, memory_ms, "fused")


def predict_fused_op(
    op: OpSpec,
    device: DeviceSpec | str,
    precision: str = "fp32",
    calibration: Calibration | None = None,
) -> OpTime:
    """Predicted time of an elementwise op run inside the kernel of the conv that produces it (as fused
    runtimes run BN, activations and residual adds): only the reads of its extra operands (the skip tensor of
    an add) and its weights, no launch; ``bound="fused"``."""
    if op.op_class is not OpClass.ELEMENTWISE:
        raise RooflineError(f"only elementwise ops fuse into their producer; {op.name} is {op.op_class.value}")
    spec = _resolve(device)
    return _fused(op, spec, precision, efficiencies(spec, precision, calibration))


def predict_ops(
    ops: Iterable[OpSpec],
    device: DeviceSpec | str,
    precision: str = "fp32",
    calibration: Calibration | None = None,
    fuse_elementwise: bool = False,
    conv_algorithms: str | None = None,
) -> list[OpTime]:
    """Predicted times of ``ops`` in execution order.

    ``fuse_elementwise=False`` (default) models eager PyTorch, which launches every op
    separately. With ``True``, an elementwise op directly after a conv/linear (or after
    elementwise ops already fused into one) is folded into it, as in TensorRT or
    ``torch.compile``: it costs only the reads of its extra operands (e.g. the skip tensor of a
    residual add) plus its weights, no launch, and reports ``bound="fused"``.
    """
    spec = _resolve(device)
    eff = efficiencies(spec, precision, calibration)
    policy = conv_policy(spec, conv_algorithms)
    times: list[OpTime] = []
    can_fuse = False
    for op in ops:
        if not isinstance(op, OpSpec):
            raise RooflineError(f"predict_ops expects OpSpec items, got {type(op).__name__}")
        if fuse_elementwise and can_fuse and op.op_class is OpClass.ELEMENTWISE:
            times.append(_fused(op, spec, precision, eff))
            continue
        times.append(choose_algorithm(op, spec, precision, eff, policy)[1])
        can_fuse = op.op_class in _FUSION_PRODUCERS
    return times


def predict_network(
    ops: Sequence[OpSpec],
    device: DeviceSpec | str,
    precision: str = "fp32",
    batch: int | None = None,
    calibration: Calibration | None = None,
    fuse_elementwise: bool = False,
    conv_algorithms: str | None = None,
) -> NetworkTime:
    """Latency of running ``ops`` one after another, and throughput ``batch / latency``.

    ``batch`` is the number of images the ops were built for; ``None`` takes it from the
    conv, linear and pooling ops (which must agree).
    """
    ops = list(ops)
    if not ops:
        raise RooflineError("predict_network got no ops; pass the network's op list")
    if batch is None:
        sized = {op.batch for op in ops if op.op_class is not OpClass.ELEMENTWISE} or {op.batch for op in ops}
        if len(sized) != 1:
            raise RooflineError(f"ops were built for different batch sizes {sorted(sized)}; pass batch= explicitly")
        batch = sized.pop()
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise RooflineError(f"batch must be a positive integer, got {batch!r}")
    spec = _resolve(device)
    times = predict_ops(ops, spec, precision, calibration, fuse_elementwise, conv_algorithms)
    latency = math.fsum(t.total_ms for t in times)
    return NetworkTime(
        device=spec.name,
        precision=precision,
        batch=batch,
        latency_ms=latency,
        throughput_img_s=batch / (latency / 1e3),
        op_times=tuple(times),
    )
