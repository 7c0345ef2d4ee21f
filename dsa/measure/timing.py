"""The one timing function (:func:`timed_run`: CUDA events on a GPU, ``perf_counter`` on the CPU), and the
interleaved throughput of several networks in one run on one machine (:func:`measure`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Timing:
    """Images per second over ``repeats`` timed runs (each of ``iters`` forward passes)."""

    images_per_s: float  # median
    images_per_s_min: float
    images_per_s_max: float
    iqr_images_per_s: float
    latency_ms: float  # median per batch
    runs: tuple[float, ...]

    def to_json(self) -> dict:
        return {
            "images_per_s": self.images_per_s,
            "images_per_s_min": self.images_per_s_min,
            "images_per_s_max": self.images_per_s_max,
            "iqr_images_per_s": self.iqr_images_per_s,
            "latency_ms": self.latency_ms,
            "runs_images_per_s": list(self.runs),
        }


def resolve_device(device: str, local_rank: int | None = None) -> str:
    """``auto`` (cuda when available, else cpu), ``cpu`` or ``cuda[:i]`` (plain ``cuda`` is ``cuda:<local_rank>``
    when a rank is given); raises :class:`DsaError` for anything else, or for CUDA on a machine without it."""
    from dsa.errors import DsaError

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise DsaError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        return f"cuda:{local_rank}" if device == "cuda" and local_rank is not None else device
    raise DsaError(f"--device must be auto, cpu or cuda[:i], got {device!r}")


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_run(fn: Callable[[], object], device: torch.device, iters: int = 1, wall: bool = False) -> float:
    """Milliseconds of ``iters`` calls of ``fn``: CUDA events around them on a GPU (the device's time), else (and
    with ``wall``: what a caller waits, launches included) ``perf_counter`` between syncs."""
    if device.type == "cuda" and not wall:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync(device)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3


def time_callable(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """``warmup`` untimed calls, then the milliseconds of each of ``repeats`` calls (inference mode)."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        sync(device)
        return [timed_run(fn, device) for _ in range(repeats)]


def _quantiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def round_robin(
    prepared: Mapping[str, Callable[[torch.Tensor], object]],
    x: torch.Tensor,
    device: torch.device,
    warmup: int,
    repeats: int,
    iters: int = 1,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, list[float]]:
    """Images/s samples of each prepared network on ``x``: ``warmup`` untimed calls each, then ``repeats`` rounds of
    one timed sample per network (``iters`` calls, wall time), round-robin, so that machine noise hits all alike."""
    runs: dict[str, list[float]] = {name: [] for name in prepared}
    for m in prepared.values():
        for _ in range(warmup):
            m(x)
        sync(device)
    for r in range(repeats):
        for name, m in prepared.items():
            ms = timed_run(lambda m=m: m(x), device, iters, wall=True)  # throughput: wall time, as before
            runs[name].append(x.shape[0] * iters / (ms / 1e3))
            if progress:
                progress(name, r)
    return runs


def measure(
    models: Mapping[str, nn.Module],
    batch_size: int = 32,
    input_size: int = 224,
    device: str = "cpu",
    channels_last: bool = False,
    warmup: int = 2,
    repeats: int = 5,
    iters: int = 1,
    dtype: torch.dtype = torch.float32,
    progress: Callable[[str, int], None] | None = None,
    runtime: str = "eager",
    threads: int | None = None,
    precisions: Mapping[str, str] | None = None,
    calibration: torch.Tensor | None = None,
) -> dict[str, Timing]:
    """Time each model on the same input, round-robin (model A run 1, model B run 1, A run 2, ...), so that
    machine noise hits all models alike, under ``runtime`` (:mod:`dsa.measure.runtimes`: each model is prepared
    for it and checked against eager first). ``precisions`` names the models to run in ``"int8"`` (quantized by
    the runtime's tooling, calibrated on ``calibration``); the rest run in ``dtype``. Returns the median and
    spread of images/s per model."""
    from dsa.errors import DsaError
    from dsa.measure.runtimes import prepare

    if channels_last and runtime not in ("eager", "compile"):
        raise DsaError(f"--channels-last applies to eager and compile; {runtime} chooses its own layout")
    dev = torch.device(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch_size, 3, input_size, input_size, dtype=dtype).to(dev, memory_format=fmt)
    precisions = precisions or {}
    if set(precisions.values()) - {"fp32", "int8"}:
        raise DsaError(f"precisions are fp32 or int8 here, got {sorted(set(precisions.values()))}")
    prepared = {
        name: prepare(
            runtime,
            m.eval().to(dev, dtype=dtype, memory_format=fmt),
            x,
            threads,
            precisions.get(name) == "int8",
            calibration,
        )
        for name, m in models.items()
    }
    with torch.inference_mode():
        runs = round_robin(prepared, x, dev, warmup, repeats, iters, progress)
    out = {}
    for name, vals in runs.items():
        q1, q3 = _quantiles(vals)
        med = statistics.median(vals)
        out[name] = Timing(med, min(vals), max(vals), q3 - q1, 1000.0 * batch_size / med, tuple(vals))
    return out
