"""Measuring this machine's device with torch (imported only here): achieved matmul FLOP/s, copy bandwidth and per-op
dispatch overhead, as a :class:`~roofline.devices.DeviceSpec` (``dsa devices --measure``)."""

from __future__ import annotations

import datetime as _dt
import math
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from roofline.devices import DeviceSpec, Measured, Peaks, _normalize, list_devices, load_device
from roofline.errors import RooflineError

DEFAULT_CPU_NAME = "local-cpu"


_CUDA_MATMUL_N = 8192


def measure_local_device(
    device: str = "cpu",
    seconds: float = 5.0,
    *,
    base: str | DeviceSpec | None = None,
    name: str | None = None,
) -> DeviceSpec:
    """Measure this machine with torch and return a :class:`DeviceSpec`.

    Measures the achieved FLOP/s of a large square matmul (fp32 on CPU; fp32, tf32 on Ampere+,
    fp16 and bf16 on CUDA), the bandwidth of a large tensor copy (bytes read + bytes written), and
    the per-op dispatch overhead (median time of a tiny in-place add), spending about ``seconds``.

    - ``device="cpu"``: a ``kind="cpu"`` spec whose ceilings are the measured ones
      (``peaks_source="measured"``).
    - ``device="cuda"`` / ``"cuda:1"``: the packaged spec matching the GPU's name (or ``base``)
      with ``measured`` filled and ``launch_overhead_us`` replaced by the measurement. A GPU
      matching no packaged spec gets one built from the measurements (``peaks_source="measured"``).

    Tensors are a fixed size (CPU: matmul up to 1024, 64 MiB copy; GPU: 8192 and 1 GiB), so the
    budget only sets how many repeats run; the best repeat is kept (ceilings are maxima).
    """
    if not (isinstance(seconds, int | float) and seconds > 0):
        raise RooflineError(f"seconds must be a positive number, got {seconds!r}")
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency of the project
        raise RooflineError("measure_local_device needs torch; install it first") from exc

    if device == "cpu":
        return _measure_cpu(torch, float(seconds), name or DEFAULT_CPU_NAME)
    if isinstance(device, str) and (device == "cuda" or device.startswith("cuda:")):
        if not torch.cuda.is_available():
            raise RooflineError(f"device {device!r} asked for, but torch sees no CUDA GPU; use 'cpu'")
        return _measure_cuda(torch, device, float(seconds), base, name)
    raise RooflineError(f"device must be 'cpu', 'cuda' or 'cuda:<index>', got {device!r}")


def _best_time(fn: Callable[[], float], budget_s: float, min_reps: int = 3, max_reps: int = 200) -> float:
    """Smallest of repeated timings of ``fn`` (which returns seconds) within ``budget_s``."""
    best = math.inf
    start = time.perf_counter()
    reps = 0
    while reps < max_reps and (reps < min_reps or time.perf_counter() - start < budget_s):
        best = min(best, fn())
        reps += 1
    return best


def _cpu_int8_tops(torch: Any, n: int, budget_s: float) -> float | None:
    """Achieved int8 x int8 -> int32 matmul TOPS (``torch._int_mm``, oneDNN's VNNI kernels where the CPU has
    them), or None where this torch has no CPU int8 matmul."""
    try:
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        torch._int_mm(a, b)
    except (AttributeError, RuntimeError, NotImplementedError):
        return None

    def run() -> float:
        t0 = time.perf_counter()
        torch._int_mm(a, b)
        return time.perf_counter() - t0

    return 2.0 * n**3 / _best_time(run, budget_s) / 1e12


def _measure_cpu(torch: Any, seconds: float, name: str) -> DeviceSpec:
    # 512 after a warm-up; 1024 when a 512 product is short against the budget.
    matmul_budget = 0.55 * seconds
    n = 512
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)  # warm-up: thread pool start, allocator
    t0 = time.perf_counter()
    torch.mm(a, b)
    if 8 * (time.perf_counter() - t0) < matmul_budget / 40:
        n = 1024
        a = torch.randn(n, n)
        b = torch.randn(n, n)
        torch.mm(a, b)

    def run_mm() -> float:
        t0 = time.perf_counter()
        torch.mm(a, b)
        return time.perf_counter() - t0

    mm_s = _best_time(run_mm, matmul_budget)
    matmul_tflops = {"fp32": round(2.0 * n**3 / mm_s / 1e12, 6)}
    int8_tops = _cpu_int8_tops(torch, n, 0.15 * seconds)
    if int8_tops is not None:
        matmul_tflops["int8"] = round(int8_tops, 6)

    numel = 16 * 2**20  # 64 MiB of fp32: beyond any CPU cache
    src = torch.ones(numel)
    dst = torch.empty(numel)
    dst.copy_(src)

    def run_copy() -> float:
        t0 = time.perf_counter()
        dst.copy_(src)
        return time.perf_counter() - t0

    copy_s = _best_time(run_copy, 0.35 * seconds)
    copy_gbps = 2.0 * src.numel() * src.element_size() / copy_s / 1e9

    tiny = torch.zeros(8)
    launch_us = _median_dispatch_us(lambda: tiny.add_(1.0), 0.05 * seconds, sync=lambda: None)

    details = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul {n}x{n} fp32 best of "
        f"repeats{'' if int8_tops is None else f', int8 {n}x{n} torch._int_mm (int32 accumulation)'}; "
        "copy 64 MiB fp32 (read+write bytes); dispatch = median tiny add_; "
        f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}"
    )
    return DeviceSpec(
        name=name,
        kind="cpu",
        sms=os.cpu_count(),
        boost_mhz=None,
        mem_bandwidth_gbps=round(copy_gbps, 3),
        l2_mb=None,
        mem_gb=None,
        launch_overhead_us=round(launch_us, 3),
        peaks_tflops=Peaks(),
        peaks_source="measured",
        aliases=(),
        measured=Measured(
            matmul_tflops=matmul_tflops,
            copy_bandwidth_gbps=round(copy_gbps, 3),
            details=details,
        ),
        calibration=None,
        confidence="M",
        notes=(
            "Measured by roofline.measure_local_device on this machine; sms holds the CPU core count.",
            "The model uses measured matmul FLOP/s as the single compute peak and the measured "
            "copy bandwidth as the memory ceiling.",
        ),
    )


def _median_dispatch_us(
    fn: Callable[[], Any], budget_s: float, sync: Callable[[], None], per_sample: int = 10
) -> float:
    """Median per-call time of ``fn`` (a tiny op), timed ``per_sample`` calls at a time, in us."""
    for _ in range(20):
        fn()
    sync()
    samples = []
    start = time.perf_counter()
    while len(samples) < 50 or (time.perf_counter() - start < budget_s and len(samples) < 2000):
        t0 = time.perf_counter()
        for _ in range(per_sample):
            fn()
        sync()
        samples.append((time.perf_counter() - t0) / per_sample)
    samples.sort()
    return samples[len(samples) // 2] * 1e6


def _match_packaged(gpu_name: str) -> DeviceSpec | None:
    """The packaged spec whose name or alias tokens all appear in the GPU's reported name."""
    words = set(_normalize(gpu_name.replace("NVIDIA", "").replace("Tesla", "")).split("-"))
    words |= {w.replace("sxm4", "sxm").replace("sxm5", "sxm") for w in words}
    best: tuple[int, DeviceSpec] | None = None
    for spec in list_devices():
        for key in (spec.name, *spec.aliases):
            tokens = set(_normalize(key).split("-"))
            if tokens <= words and (best is None or len(tokens) > best[0]):
                best = (len(tokens), spec)
    return None if best is None else best[1]


def _measure_cuda(
    torch: Any, device: str, seconds: float, base: str | DeviceSpec | None, name: str | None
) -> DeviceSpec:
    dev = torch.device(device)
    props = torch.cuda.get_device_properties(dev)
    major = props.major
    with torch.cuda.device(dev):  # events, streams and bf16 checks on the measured GPU
        matmul, copy_gbps, launch_us = _cuda_ceilings(torch, dev, major, seconds)
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    details = (
        f"{props.name}; torch {torch.__version__}, CUDA {torch.version.cuda}; "
        f"matmul {_CUDA_MATMUL_N}x{_CUDA_MATMUL_N} (fp32 with TF32 off), CUDA events; "
        f"copy 1 GiB fp32 (read+write bytes); dispatch = median "
        f"tiny add_ with synchronize; {stamp}"
    )
    measured = Measured(matmul_tflops=matmul, copy_bandwidth_gbps=copy_gbps, details=details)
    spec = load_device(base) if base is not None else _match_packaged(props.name)
    if spec is not None:
        return replace(
            spec,
            name=name or spec.name,
            launch_overhead_us=launch_us,
            measured=measured,
            notes=(*spec.notes, f"launch_overhead_us measured on {props.name} ({stamp})."),
            source=None,
        )
    l2 = getattr(props, "L2_cache_size", 0) or 0
    return DeviceSpec(
        name=name or _normalize(props.name.replace("NVIDIA", "")),
        kind="gpu",
        sms=props.multi_processor_count,
        boost_mhz=None,
        mem_bandwidth_gbps=copy_gbps,
        l2_mb=round(l2 / 2**20, 3) if l2 else None,
        mem_gb=round(props.total_memory / 1e9, 1),
        launch_overhead_us=launch_us,
        peaks_tflops=Peaks(
            cuda_fp32=matmul["fp32"],
            tensor_tf32=matmul.get("tf32"),
            tensor_fp16=matmul.get("fp16") if major >= 7 else None,
            tensor_bf16=matmul.get("bf16") if major >= 8 else None,
        ),
        peaks_source="measured",
        measured=measured,
        confidence="M",
        notes=(
            f"{props.name} matched no packaged device: peaks are measured matmul rates and the "
            "bandwidth is the measured copy bandwidth.",
        ),
    )


def _cuda_ceilings(torch: Any, dev: Any, major: int, seconds: float) -> tuple[dict[str, float], float, float]:
    """(matmul TFLOP/s by precision, copy GB/s, dispatch us) on the current CUDA device."""

    def timed(fn: Callable[[], Any], reps: int) -> float:
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        fn()
        torch.cuda.synchronize(dev)
        start.record()
        for _ in range(reps):
            fn()
        stop.record()
        torch.cuda.synchronize(dev)
        return start.elapsed_time(stop) / 1e3 / reps

    precisions = {"fp32": torch.float32, "fp16": torch.float16}
    if torch.cuda.is_bf16_supported():
        precisions["bf16"] = torch.bfloat16
    if major >= 8:
        precisions["tf32"] = torch.float32
    n = _CUDA_MATMUL_N
    share = 0.7 * seconds / len(precisions)
    matmul: dict[str, float] = {}
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        for precision, dtype in precisions.items():
            torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
            a = torch.randn(n, n, device=dev, dtype=dtype)
            b = torch.randn(n, n, device=dev, dtype=dtype)
            one = timed(lambda a=a, b=b: torch.mm(a, b), 1)
            reps = max(1, min(50, int(share / 3 / max(one, 1e-6))))
            best = _best_time(lambda a=a, b=b, reps=reps: timed(lambda: torch.mm(a, b), reps), share)
            matmul[precision] = round(2.0 * n**3 / best / 1e12, 3)
            del a, b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32

    numel = 256 * 2**20  # 1 GiB of fp32: far beyond any L2
    src = torch.ones(numel, device=dev)
    dst = torch.empty(numel, device=dev)
    copy_s = _best_time(lambda s=src, d=dst: timed(lambda: d.copy_(s), 5), 0.25 * seconds)
    copy_gbps = round(2.0 * numel * 4 / copy_s / 1e9, 3)
    del src, dst
    tiny = torch.zeros(8, device=dev)
    launch_us = round(
        _median_dispatch_us(
            lambda: tiny.add_(1.0), 0.05 * seconds, sync=lambda: torch.cuda.synchronize(dev), per_sample=100
        ),
        3,
    )
    return matmul, copy_gbps, launch_us
