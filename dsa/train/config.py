"""The training run's configuration and results."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from dsa.errors import (
    TrainingError,
)
from dsa.models import input_size
from dsa.vocab import DEFAULT_MODEL

CHECKPOINT_NAME = "last.pt"


METRICS_NAME = "metrics.jsonl"


RESULT_NAME = "result.json"


OPTIMIZERS = ("sgd", "adamw")


DEFAULT_WEIGHT_DECAY = {"sgd": 4e-5, "adamw": 0.05}


Callback = Callable[[str, dict], None]


# config fields that may change between a run and its resumption (they do not change the weights)
_RESUMABLE_CHANGES = frozenset({"out", "num_workers", "bench_batch_size", "bench_repeats", "onnx", "eval_batch_size"})


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``batch_size`` is per process; ``image_size`` None means the model's default."""

    data: str
    out: str
    model: str = DEFAULT_MODEL
    pretrained: bool = False
    checkpoint: str | None = None
    plan: str | None = None
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float | None = None  # None: 4e-5 for SGD, 0.05 for AdamW
    image_size: int | None = None
    distill: bool = True
    kd_weight: float = 0.7
    temperature: float = 1.0
    amp: bool = False
    channels_last: bool = False
    num_workers: int = 0
    seed: int = 0
    max_steps_per_epoch: int | None = None
    device: str = "auto"
    eval_batch_size: int = 64
    bench_batch_size: int = 32
    bench_repeats: int = 5
    onnx: bool = True

    def validated(self) -> TrainConfig:
        """A copy with defaults resolved; raises :class:`TrainingError` naming a bad field."""
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 2, "batch size must be >= 2 (BatchNorm trains on batches)"),
            (self.lr > 0 and math.isfinite(self.lr), "lr must be a positive number"),
            (
                self.weight_decay is None or (self.weight_decay >= 0 and math.isfinite(self.weight_decay)),
                f"weight-decay must be a number >= 0, got {self.weight_decay}",
            ),
            (self.momentum >= 0 and math.isfinite(self.momentum), "momentum must be a number >= 0"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (0.0 <= self.kd_weight <= 1.0, "kd-weight must lie in [0, 1]"),
            (self.temperature > 0, "temperature must be > 0"),
            (self.num_workers >= 0, "num-workers must be >= 0"),
            (self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1, "max-steps-per-epoch must be >= 1"),
            (self.image_size is None or self.image_size >= 8, "image size must be >= 8"),
            (self.bench_repeats >= 0 and self.bench_batch_size >= 1, "bench repeats >= 0 and bench batch >= 1"),
            (not (self.pretrained and self.checkpoint), "give --pretrained or --checkpoint, not both"),
        ]
        for ok, msg in checks:
            if not ok:
                raise TrainingError(msg)
        wd = DEFAULT_WEIGHT_DECAY[self.optimizer] if self.weight_decay is None else self.weight_decay
        size = input_size(self.model) if self.image_size is None else self.image_size
        return replace(self, weight_decay=wd, image_size=size)


@dataclass(frozen=True)
class Accuracy:
    top1: float  # percent
    top5: float | None  # percent; None with fewer than 5 classes
    n: int
    predictions: torch.Tensor = field(repr=False, compare=False, default_factory=lambda: torch.empty(0))

    def to_json(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "n": self.n}


@dataclass(frozen=True)
class TrainResult:
    """What rank 0 returns; ``summary`` is also written to ``RUN/result.json`` when the run finished."""

    run_dir: Path
    finished: bool  # False when stopped early (stop_after_epochs)
    epochs_done: int
    summary: dict


def _config_differences(saved: dict, cfg: TrainConfig) -> list[str]:
    now = asdict(cfg)
    return [
        f"{k} ({saved.get(k)!r} -> {now[k]!r})" for k in now if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k]
    ]
