"""Finetuning: the baseline, and a planned network with distillation, then merge, export and measure.

:func:`train` runs one training run described by a :class:`TrainConfig`:

- without a plan, an ordinary finetune of the model (the baseline);
- with a plan, the merge-ready network (:func:`dsa.apply_plan`) is finetuned with knowledge distillation from
  the original network (frozen, eval mode): ``kd_weight * KL(teacher || student at temperature T) * T^2 +
  (1 - kd_weight) * CE``; at the end it is merged (:func:`dsa.merge` verifies the merge), exported (merged
  checkpoint, TorchScript, ONNX), the merged and merge-ready networks are evaluated on the same data (their
  accuracies must agree; both are recorded) and images/s of the original and merged networks are measured in
  one interleaved run (:func:`dsa.bench.measure`).

If the dataset has another number of classes than the model, the classifier (timm ``reset_classifier``, else the
last ``nn.Linear``) is replaced before the plan is applied. That changes the model's fingerprint (it covers the
classifier's output width), so the plan is checked against the original model and then re-derived for the new
head with the same removed / added / boundary names (:func:`dsa.make_plan`); the segments are unchanged.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the run uses DistributedDataParallel (gloo on CPU, nccl on
CUDA) and a DistributedSampler; ``batch_size`` is per process. Rank 0 validates, writes checkpoints and metrics,
and does the final merge; it alone calls ``callback``.

Durability: after every epoch ``RUN/last.pt`` is written atomically (model, optimizer, scheduler, grad scaler,
epoch, sampler epoch, every rank's RNG states, the config) and a line is appended to ``RUN/metrics.jsonl``.
``resume=True`` continues from ``RUN/last.pt`` and ends with the same weights as an uninterrupted run:
augmentation and shuffling are pure functions of (seed, epoch, step, rank), and the RNG states are restored.
A non-finite loss (or non-finite weights at the end of an epoch) raises :class:`TrainingError` before anything
is saved, so the last checkpoint stays the last good one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from dsa.data import DataBundle, dataset_classes, flip_generator, load_data, prepare_batch
from dsa.errors import (
    ArtifactError,
    DataError,
    ExportError,
    InterruptedRunError,
    ModelError,
    PlanError,
    TrainingError,
)
from dsa.io import Outputs, atomic_torch_save, atomic_write_json
from dsa.models import DEFAULT_MODEL, classifier_head, create_model, input_size, replace_head

CHECKPOINT_KIND = "dsa.train"
CHECKPOINT_SCHEMA_VERSION = 1
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


# ------------------------------------------------------------------------------------------ distributed


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this process initialised the process group (and destroys it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise TrainingError(f"environment variable {name}={raw!r} is not an integer") from e


def _resolve_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        return torch.device("cuda", local_rank) if device == "cuda" else torch.device(device)
    if device != "cpu":
        raise TrainingError(f"--device must be auto, cpu or cuda[:i], got {device!r}")
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> DistInfo:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun); with WORLD_SIZE > 1 join the process group
    (nccl on CUDA, gloo on CPU). A single process without torchrun needs nothing."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    dev = _resolve_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        owns = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world, local, dev, owns)


def _barrier(d: DistInfo) -> None:
    if d.distributed:
        dist.barrier()


# ------------------------------------------------------------------------------------------ models


def _read_torch(path: Path, what: str) -> Any:
    from dsa.io import read_torch

    return read_torch(path, what)


def _state_of(obj: Any, path: Path) -> dict:
    """The state_dict inside a loaded checkpoint (plain, {'model': ...}, {'state_dict': ...})."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"checkpoint {path} does not hold a state_dict of tensors")
    return obj


def _load_state(model: nn.Module, state: dict, path: Path) -> None:
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise ModelError(f"checkpoint {path} does not fit the model: {first}") from e
    bad = result.missing_keys or result.unexpected_keys
    if bad:
        raise ModelError(
            f"checkpoint {path} does not fit the model: {len(result.missing_keys)} missing and "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. {bad[0]})"
        )


def _load_start_weights(model: nn.Module, path: Path, num_classes: int) -> bool:
    """Load --checkpoint (a state_dict, or a plain `dsa train` checkpoint such as the baseline's), replacing the
    head before or after loading as the checkpoint's head width requires. Returns whether the head was replaced."""
    ckpt = _read_torch(path, "checkpoint")
    if isinstance(ckpt, dict) and ckpt.get("kind") == "dsa.merged":
        raise ModelError(f"{path} is a merged checkpoint; training starts from an unmerged network (e.g. the baseline)")
    if isinstance(ckpt, dict) and ckpt.get("kind") == CHECKPOINT_KIND and ckpt.get("plan") is not None:
        raise ModelError(
            f"{path} is a merge-ready training checkpoint (trained with a plan); start from a plain one "
            "(the baseline's RUN/last.pt), or continue that run with --out RUN --resume"
        )
    state = _state_of(ckpt, path)
    name, head = classifier_head(model)
    ckpt_classes = state.get(f"{name}.weight", torch.empty(0, 0)).shape[0]
    if ckpt_classes == num_classes:
        replaced = replace_head(model, num_classes)
        _load_state(model, state, path)
    else:
        _load_state(model, state, path)
        replaced = replace_head(model, num_classes)
    return replaced


@dataclass
class Networks:
    student: nn.Module  # the network to train (merge-ready with a plan)
    original: nn.Module  # the starting network (the teacher with a plan)
    plan: Any  # the effective Plan (re-derived for a new head) or None
    head_replaced: bool


def build_networks(
    model: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    checkpoint: str | Path | None = None,
    plan: str | Path | None = None,
) -> Networks:
    """The original network with a ``num_classes`` head (weights from ``pretrained`` / ``checkpoint``) and, with a
    plan, its merge-ready copy. ``plan`` is checked against the model as built (before the head is replaced)."""
    from dsa.graph import analyze
    from dsa.merge import apply_plan
    from dsa.plan import load_plan, make_plan

    base = create_model(model, pretrained=pretrained)
    p = load_plan(plan) if plan is not None else None
    first_error = None
    if p is not None:
        try:
            p.check(analyze(base, model, p.input_size))
        except PlanError as e:  # retried below against the new head (a plan made for num_classes classes)
            first_error = e
    if checkpoint is not None:
        replaced = _load_start_weights(base, Path(checkpoint), num_classes)
    else:
        replaced = replace_head(base, num_classes)
    if p is None:
        return Networks(base, base, None, replaced)
    analysis = analyze(base, model, p.input_size)
    if first_error is not None and (not replaced or p.fingerprint != analysis.fingerprint):
        raise first_error
    if p.fingerprint != analysis.fingerprint:
        derived = make_plan(analysis, p.removed, p.added, p.boundaries, source=p.source)
        p = derived.with_metadata(
            **p.metadata,
            derived_from={"fingerprint": p.fingerprint, "reason": f"classifier replaced for {num_classes} classes"},
        )
    base.eval()
    student = apply_plan(base, p, analysis)
    return Networks(student, base, p, replaced)


# ------------------------------------------------------------------------------------------ evaluation


def _loader(ds: Dataset, batch_size: int, num_workers: int, sampler=None, drop_last: bool = False) -> DataLoader:
    # a generator of its own: creating an iterator then never draws from the global RNG (dropout's), so a resumed
    # run continues the global RNG exactly where the checkpoint left it
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    num_workers: int = 0,
    mean=None,
    std=None,
    num_classes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Accuracy:
    """Top-1 (and top-5 with >= 5 classes) accuracy in percent of ``model`` in eval mode; the model's mode is
    restored afterwards. Keeps the top-1 predictions (for comparing two networks on the same data).
    ``progress(batches_done, batches)`` is called after every batch."""
    from dsa.data import IMAGENET_MEAN, IMAGENET_STD

    was_training = model.training
    model.eval()
    preds, labels, correct5, k = [], [], 0, num_classes
    try:
        loader = _loader(dataset, batch_size, num_workers)
        for i, (x, y) in enumerate(loader):
            if progress:
                progress(i, len(loader))
            x = prepare_batch(x, device, mean or IMAGENET_MEAN, std or IMAGENET_STD, channels_last=channels_last)
            logits = model(x).float().cpu()
            k = k or int(logits.shape[1])
            preds.append(logits.argmax(1))
            labels.append(y)
            if k >= 5:
                correct5 += int((logits.topk(5, 1).indices == y.view(-1, 1)).any(1).sum())
    finally:
        model.train(was_training)
    if not preds:
        raise DataError("the evaluation split is empty")
    p, y = torch.cat(preds), torch.cat(labels)
    n = len(y)
    return Accuracy(100.0 * float((p == y).sum()) / n, 100.0 * correct5 / n if k >= 5 else None, n, p)


# ------------------------------------------------------------------------------------------ checkpoints


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [str(np_state[0]), torch.from_numpy(np_state[1].astype(np.int64)), *map(_plain, np_state[2:])],
        "python": _plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _plain(x: Any) -> Any:
    if isinstance(x, tuple | list):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def load_training_checkpoint(path: str | Path) -> dict:
    """Read and validate a `dsa train` checkpoint (``kind`` ``dsa.train``)."""
    path = Path(path)
    ckpt = _read_torch(path, "training checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("kind") != CHECKPOINT_KIND:
        raise ArtifactError(f"{path} is not a dsa training checkpoint (field 'kind')")
    if ckpt.get("schema_version") != CHECKPOINT_SCHEMA_VERSION:
        raise ArtifactError(
            f"{path}: field 'schema_version' is {ckpt.get('schema_version')!r}, this dsa reads "
            f"{CHECKPOINT_SCHEMA_VERSION}"
        )
    return ckpt


def _config_differences(saved: dict, cfg: TrainConfig) -> list[str]:
    now = asdict(cfg)
    return [
        f"{k} ({saved.get(k)!r} -> {now[k]!r})" for k in now if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k]
    ]


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


# ------------------------------------------------------------------------------------------ the run


class _Metrics:
    """RUN/metrics.jsonl: one JSON object per line, appended and fsynced (rank 0 only)."""

    def __init__(self, path: Path, keep_epochs_upto: int | None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if keep_epochs_upto is not None and path.exists():
            # resuming: drop lines of epochs after the checkpoint (written by the interrupted run)
            kept = []
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec.get("event") != "epoch" or rec.get("epoch", 0) <= keep_epochs_upto:
                    kept.append(line)
            path.write_text("".join(k + "\n" for k in kept))
        elif keep_epochs_upto is None and path.exists():
            path.unlink()

    def write(self, rec: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions, times T^2 (Hinton et al.)."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


@contextlib.contextmanager
def _deterministic():
    """torch.use_deterministic_algorithms(True, warn_only=True) for the run; the previous setting is restored."""
    was = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    bench = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=was_warn)
        torch.backends.cudnn.benchmark = bench


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    stop_after_epochs: int | None = None,
    callback: Callback | None = None,
) -> TrainResult | None:
    """Run (or with ``resume`` continue) one training run; returns the result on rank 0, None on other ranks.

    ``stop_after_epochs`` ends this process after that many epochs (the run can be resumed later).
    ``callback(event, info)`` is called on rank 0 with events ``setup``, ``step``, ``epoch``, ``phase``, ``done``.
    """
    cfg = config.validated()
    d = init_distributed(cfg.device)
    notify: Callback = callback if (callback is not None and d.main) else (lambda event, info: None)
    try:
        with _deterministic():
            return _run(cfg, d, resume, stop_after_epochs, notify)
    finally:
        if d.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _saved_run(cfg: TrainConfig, resume: bool) -> dict | None:
    """The checkpoint to continue (with ``resume``), after checking it belongs to this run."""
    path = Path(cfg.out) / CHECKPOINT_NAME
    if not path.exists():
        if resume:
            raise TrainingError(
                f"--resume: {cfg.out} holds no training checkpoint ({path} does not exist); leave out --resume to "
                "start a new run there, or give the run directory of the run to continue"
            )
        return None
    if not resume:
        raise TrainingError(
            f"{cfg.out} already holds a training checkpoint; pass --resume to continue it or choose another --out"
        )
    saved = load_training_checkpoint(path)
    diffs = _config_differences(saved["config"], cfg)
    if diffs:
        raise TrainingError(
            f"cannot resume {path}: the options differ from the run's: {', '.join(diffs)}; rerun with the same options"
        )
    return saved


def _kept(path: Path, epochs_done: int) -> str:
    if path.exists():
        return f"the last good checkpoint {path} (epoch {epochs_done}) is kept"
    return "no checkpoint was written yet"


def _continue_hint(path: Path) -> str:
    if path.exists():
        return "continue with the same options and --resume"
    return "run the same command again (without --resume) to start over"


class _Loop:
    """The state of one training process: networks, optimizer, schedule, scaler, and one step of training."""

    def __init__(self, cfg: TrainConfig, d: DistInfo, nets: Networks, steps: int) -> None:
        self.cfg, self.d = cfg, d
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.student = nets.student.to(d.device, memory_format=fmt).train()
        self.teacher = None
        if nets.plan is not None and cfg.distill and cfg.kd_weight > 0:
            self.teacher = nets.original.to(d.device, memory_format=fmt).eval().requires_grad_(False)
        self.model = self.student
        if d.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(self.student, device_ids=[d.device.index] if d.device.type == "cuda" else None)
        params = [p for p in self.student.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=cfg.epochs * steps)
        self.use_scaler = cfg.amp and d.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_scaler)
        self.amp_dtype = torch.float16 if d.device.type == "cuda" else torch.bfloat16
        self.epoch, self.step = 0, 0  # epochs completed, optimizer steps taken

    def restore(self, saved: dict) -> None:
        self.student.load_state_dict(saved["model"])
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        self.epoch, self.step = int(saved["epoch"]), int(saved["step"])
        states = saved["rng"]
        same_world = saved.get("world_size") == self.d.world_size
        _set_rng_state(states[self.d.rank] if same_world and self.d.rank < len(states) else states[0])

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step; returns [loss, ce, kd] averaged over processes (non-finite: nothing is applied)."""
        cfg = self.cfg
        with torch.autocast(self.d.device.type, dtype=self.amp_dtype, enabled=cfg.amp):
            logits = self.model(x)
            if self.teacher is not None:
                with torch.no_grad():
                    t_logits = self.teacher(x)
        ce = F.cross_entropy(logits.float(), y)
        if self.teacher is not None:
            kd = kd_loss(logits.float(), t_logits.float(), cfg.temperature)
            loss = cfg.kd_weight * kd + (1.0 - cfg.kd_weight) * ce
        else:
            kd, loss = torch.zeros((), device=ce.device), ce
        stats = torch.stack([loss.detach(), ce.detach(), kd.detach()]).float()
        if self.d.distributed:
            dist.all_reduce(stats)  # every rank sees a non-finite loss on any rank, and stops with it
            stats /= self.d.world_size
        if not bool(torch.isfinite(stats).all()):
            return stats.cpu()
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.step += 1
        return stats.cpu()

    def checkpoint(self, plan: Any, data: DataBundle, rng: list, val: Accuracy) -> dict:
        return {
            "kind": CHECKPOINT_KIND,
            "schema_version": CHECKPOINT_SCHEMA_VERSION,
            "config": asdict(self.cfg),
            "plan": plan.to_json() if plan is not None else None,
            "classes": list(data.classes),
            "num_classes": data.num_classes,
            "model": {k: v.detach().cpu().clone() for k, v in self.student.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict() if self.use_scaler else None,
            "epoch": self.epoch,
            "step": self.step,
            "sampler_epoch": self.epoch - 1,
            "world_size": self.d.world_size,
            "rng": rng,
            "val": val.to_json(),
        }


def _run(cfg: TrainConfig, d: DistInfo, resume: bool, stop_after: int | None, notify: Callback) -> TrainResult | None:
    run_dir = Path(cfg.out)
    ckpt_path = run_dir / CHECKPOINT_NAME
    saved = _saved_run(cfg, resume)
    if cfg.plan is not None and not Path(cfg.plan).is_file():
        raise TrainingError(f"plan {cfg.plan} does not exist")

    _seed_everything(cfg.seed)
    data = load_data(cfg.data, cfg.image_size)
    nets = build_networks(
        cfg.model, data.num_classes, pretrained=cfg.pretrained, checkpoint=cfg.checkpoint, plan=cfg.plan
    )
    train_set = data.split("train")
    sampler = DistributedSampler(train_set, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=cfg.seed)
    if len(sampler) < cfg.batch_size:
        raise TrainingError(
            f"the training split has {len(sampler)} images per process, fewer than one batch of {cfg.batch_size}; "
            "lower --batch-size"
        )
    loader = _loader(train_set, cfg.batch_size, cfg.num_workers, sampler=sampler, drop_last=True)
    steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
    loop = _Loop(cfg, d, nets, steps)
    if saved is not None:
        loop.restore(saved)
    start_epoch = loop.epoch
    metrics = _Metrics(run_dir / METRICS_NAME, start_epoch if saved is not None else None) if d.main else None

    plan = nets.plan
    notify(
        "setup",
        {
            "model": cfg.model,
            "plan": cfg.plan,
            "removed": len(plan.removed) if plan else 0,
            "segments": len(plan.segments) if plan else 0,
            "head_replaced": nets.head_replaced,
            "data": data.describe(),
            "world_size": d.world_size,
            "device": str(d.device),
            "epochs": cfg.epochs,
            "start_epoch": start_epoch,
            "steps_per_epoch": steps,
            "distill": loop.teacher is not None,
        },
    )
    try:
        return _epochs(cfg, d, data, nets, loop, sampler, loader, steps, start_epoch, stop_after, metrics, notify)
    except KeyboardInterrupt:
        where = (
            "after the last epoch, while merging and exporting"
            if loop.epoch >= cfg.epochs
            else (f"in epoch {loop.epoch + 1}/{cfg.epochs}")
        )
        raise InterruptedRunError(
            f"interrupted {where}; {_kept(ckpt_path, loop.epoch)}; {_continue_hint(ckpt_path)}"
        ) from None


def _epochs(cfg, d, data, nets, loop, sampler, loader, steps, start_epoch, stop_after, metrics, notify):
    """The epochs of :func:`_run` from ``start_epoch``, then (rank 0) :func:`_finish`."""
    run_dir = Path(cfg.out)
    ckpt_path = run_dir / CHECKPOINT_NAME
    plan = nets.plan
    for epoch in range(start_epoch, cfg.epochs):
        if stop_after is not None and loop.epoch - start_epoch >= stop_after:
            break
        sampler.set_epoch(epoch)
        loop.student.train()
        t0 = time.perf_counter()
        sums = torch.zeros(3, dtype=torch.float64)
        lr = loop.opt.param_groups[0]["lr"]
        for step, (x, y) in enumerate(loader):
            if step >= steps:
                break
            gen = flip_generator(cfg.seed, epoch, step, d.rank)
            x = prepare_batch(
                x, d.device, data.mean, data.std, channels_last=cfg.channels_last, flips=data.flips, generator=gen
            )
            stats = loop.train_step(x, y.to(d.device, non_blocking=True))
            if not bool(torch.isfinite(stats).all()):
                raise TrainingError(
                    f"the loss is {float(stats[0]):g} (cross-entropy {float(stats[1]):g}, distillation "
                    f"{float(stats[2]):g}) at epoch {epoch + 1} step {step + 1}; the run stopped without saving, "
                    f"{_kept(ckpt_path, loop.epoch)}; lower --lr (now {cfg.lr:g}) or turn off --amp"
                )
            sums += stats.double()
            notify("step", {"epoch": epoch + 1, "step": step + 1, "steps": steps, "loss": float(stats[0])})
        if not _all_finite(loop.student):
            raise TrainingError(
                f"the weights became non-finite in epoch {epoch + 1}; the run stopped without saving, "
                f"{_kept(ckpt_path, loop.epoch)}; lower --lr (now {cfg.lr:g})"
            )
        seconds = time.perf_counter() - t0
        loop.epoch = epoch + 1
        rng = [None] * d.world_size
        if d.distributed:
            dist.all_gather_object(rng, _rng_state())
        else:
            rng = [_rng_state()]
        if d.main:  # validation draws nothing from the global RNG (eval mode, own loader generator)
            notify("phase", {"what": f"epoch {loop.epoch}/{cfg.epochs}: validating"})
            val = evaluate(
                loop.student,
                data.split("val"),
                batch_size=cfg.eval_batch_size,
                device=d.device,
                channels_last=cfg.channels_last,
                num_workers=cfg.num_workers,
                mean=data.mean,
                std=data.std,
                num_classes=data.num_classes,
                progress=lambda i, n: notify("progress", {"completed": i, "total": n}),
            )
            notify("phase", {"what": f"epoch {loop.epoch}/{cfg.epochs}: saving {CHECKPOINT_NAME}"})
            atomic_torch_save(loop.checkpoint(plan, data, rng, val), ckpt_path)
            rec = {
                "event": "epoch",
                "epoch": loop.epoch,
                "step": loop.step,
                "loss": float(sums[0]) / steps,
                "ce": float(sums[1]) / steps,
                "kd": float(sums[2]) / steps if loop.teacher is not None else None,
                "lr": lr,
                "val_top1": val.top1,
                "val_top5": val.top5,
                "seconds": seconds,
                "train_images_per_s": steps * cfg.batch_size * d.world_size / seconds,
            }
            metrics.write(rec)
            notify("epoch", rec)
        _barrier(d)

    finished = loop.epoch >= cfg.epochs
    if not d.main:
        _barrier(d)
        return None
    try:
        summary = _finish(cfg, d, nets, data, loop.epoch, notify) if finished else {}
    finally:
        _barrier(d)
    notify("done", {"finished": finished, "epochs_done": loop.epoch, **summary})
    return TrainResult(run_dir, finished, loop.epoch, summary)


def _finish(cfg: TrainConfig, d: DistInfo, nets: Networks, data: DataBundle, epochs: int, notify: Callback):
    """Rank 0 after the last epoch (see :func:`_finish_staged`). The run's final files appear together or not at
    all: an error or Ctrl-C on the way leaves no temp file and no half-written export."""
    with Outputs() as outputs:
        return _finish_staged(outputs, cfg, d, nets, data, epochs, notify)


def _finish_staged(
    outputs: Outputs, cfg: TrainConfig, d: DistInfo, nets: Networks, data: DataBundle, epochs: int, notify: Callback
):
    """Rank 0 after the last epoch: evaluate; with a plan merge, export, compare and measure. Writes result.json."""
    from dsa.bench import measure

    run_dir = Path(cfg.out)
    dev = d.device
    student = nets.student.to(dev, memory_format=torch.contiguous_format).eval()
    eval_kw = {
        "batch_size": cfg.eval_batch_size,
        "device": dev,
        "num_workers": cfg.num_workers,
        "mean": data.mean,
        "std": data.std,
        "num_classes": data.num_classes,
        "progress": lambda i, n: notify("progress", {"completed": i, "total": n}),
    }
    eval_splits = [s for s in ("val", "test") if s in data.splits]
    summary: dict = {
        "model": cfg.model,
        "plan": cfg.plan,
        "data": data.describe(),
        "epochs": epochs,
        "image_size": cfg.image_size,
        "checkpoint": str(run_dir / CHECKPOINT_NAME),
        "world_size": d.world_size,
    }
    plan = nets.plan
    if plan is None:
        summary["accuracy"] = {}
        for s in eval_splits:
            notify("phase", {"what": f"evaluating ({s})"})
            summary["accuracy"][s] = evaluate(student, data.split(s), **eval_kw).to_json()
        timed = {"original": nets.original}
    else:
        from dsa.export import save_merged, to_onnx, to_torchscript
        from dsa.merge import bn_folded_network, conv_count, merge

        notify("phase", {"what": "merging"})
        sizes = sorted({cfg.image_size, plan.input_size})
        # merge on the CPU (it verifies there, in float64), evaluate both networks on the training device
        merged = merge(student.cpu(), verify_sizes=sizes).requires_grad_(False)
        student, merged = student.to(dev), merged.to(dev)
        acc: dict = {}
        for s in eval_splits:
            notify("phase", {"what": f"evaluating the merge-ready network ({s})"})
            ready_acc = evaluate(student, data.split(s), **eval_kw)
            notify("phase", {"what": f"evaluating the merged network ({s})"})
            merged_acc = evaluate(merged, data.split(s), **eval_kw)
            acc[s] = {
                "merged": merged_acc.to_json(),
                "merge_ready": ready_acc.to_json(),
                "prediction_disagreements": int((ready_acc.predictions != merged_acc.predictions).sum()),
                "equal": ready_acc.top1 == merged_acc.top1,
            }
        summary["accuracy"] = acc
        summary["merged_equals_merge_ready"] = all(a["equal"] for a in acc.values())
        notify("phase", {"what": "exporting merged.pt"})
        merged = merged.cpu()  # exports are made and checked on the CPU
        example = torch.randn(1, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
        merged_path = run_dir / "merged.pt"
        save_merged(
            merged,
            plan,
            outputs.stage(merged_path),
            model_name=cfg.model,
            num_classes=data.num_classes,
            classes=list(data.classes),
            image_size=cfg.image_size,
            verified_max_rel_error=merged.dsa_merge_error,
            accuracy={s: a["merged"] for s, a in acc.items()},
        )
        ts_path = run_dir / "merged.torchscript.pt"
        notify("phase", {"what": "exporting TorchScript"})
        how = to_torchscript(merged, example, outputs.stage(ts_path), plan)
        export: dict = {"checkpoint": str(merged_path), "torchscript": str(ts_path), "torchscript_mode": how}
        if cfg.onnx:
            notify("phase", {"what": "exporting ONNX (checked in onnxruntime)"})
            onnx_path = run_dir / "merged.onnx"
            try:
                export["onnxruntime_max_rel_error"] = to_onnx(merged, example, outputs.stage(onnx_path))
                export["onnx"] = str(onnx_path)
            except ExportError as e:
                export["onnx_error"] = str(e)
        plan.save(outputs.stage(run_dir / "plan.json"))
        summary["export"] = export
        summary["merge"] = {
            "convs_before": conv_count(nets.original),
            "convs_after": conv_count(merged),
            "verified_max_rel_error_fp64": merged.dsa_merge_error,
            "verified_max_rel_error_model_dtype": merged.dsa_merge_error_model_dtype,
            "verified_sizes": sizes,
            "segments": len(plan.segments),
            "removed_activations": len(plan.removed),
        }
        # what BN folding alone gives, so that the speed-up is not read against an unfolded baseline
        bn_folded = bn_folded_network(nets.original, cfg.model, cfg.image_size)
        timed = {"original": nets.original, "bn_folded": bn_folded, "merged": merged}
    if cfg.bench_repeats > 0:
        notify("phase", {"what": "measuring images/s"})
        timed = {k: v.to(dev, memory_format=torch.contiguous_format).eval() for k, v in timed.items()}
        total = cfg.bench_repeats * len(timed)
        done = iter(range(1, total + 1))
        res = measure(
            timed,
            cfg.bench_batch_size,
            cfg.image_size,
            str(dev),
            cfg.channels_last,
            warmup=2,
            repeats=cfg.bench_repeats,
            progress=lambda *_: notify("progress", {"completed": next(done), "total": total}),
        )
        summary["bench"] = {
            "device": str(dev),
            "batch_size": cfg.bench_batch_size,
            "input_size": cfg.image_size,
            "layout": "channels_last" if cfg.channels_last else "NCHW",
            "threads": torch.get_num_threads(),
            "repeats": cfg.bench_repeats,
            **{k: v.to_json() for k, v in res.items()},
            "speedup": res["merged"].images_per_s / res["original"].images_per_s if "merged" in res else None,
            "speedup_over_bn_folded": (
                res["merged"].images_per_s / res["bn_folded"].images_per_s if "bn_folded" in res else None
            ),
            "measured": "inference images/s of each network (eval mode, random input), interleaved runs",
        }
    atomic_write_json(outputs.stage(run_dir / RESULT_NAME), summary)
    return summary


# ------------------------------------------------------------------------------------------ eval


@dataclass
class LoadedModel:
    module: nn.Module
    kind: str  # "train" (plain), "train-merge-ready", "merged" or "state_dict"
    model: str
    image_size: int
    classes: tuple[str, ...] | None
    plan: Any = None


def load_for_eval(
    checkpoint: str | Path,
    *,
    model: str | None = None,
    plan: str | Path | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
) -> LoadedModel:
    """Rebuild a network from a `dsa train` checkpoint (plain or merge-ready), a merged checkpoint
    (:func:`dsa.export.save_merged`, also with a replaced head) or a plain state_dict (needs ``model``; with
    ``plan``, it holds the merge-ready network's weights), detected by the checkpoint's ``kind`` field."""
    from dsa.merge import apply_plan, merge
    from dsa.plan import load_plan, plan_from_json

    path = Path(checkpoint)
    ckpt = _read_torch(path, "checkpoint")
    kind = ckpt.get("kind") if isinstance(ckpt, dict) else None
    if kind == CHECKPOINT_KIND:
        ckpt = load_training_checkpoint(path)
        cfg = ckpt["config"]
        name = cfg["model"]
        if model is not None and model != name:
            raise ModelError(f"{path} was trained as --model {name}, not {model}")
        p = plan_from_json(ckpt["plan"], str(path)) if ckpt.get("plan") else None
        if plan is not None:
            given = load_plan(plan)
            if p is None or (given.removed, given.added, given.boundaries) != (p.removed, p.added, p.boundaries):
                raise ModelError(f"{path} was not trained with the plan {plan}; leave out --plan")
        net = create_model(name)
        replace_head(net, int(ckpt["num_classes"]))
        if p is not None:
            net = apply_plan(net, p)
        _load_state(net, ckpt["model"], path)
        return LoadedModel(
            net.eval(),
            "train-merge-ready" if p is not None else "train",
            name,
            image_size or int(cfg["image_size"]),
            tuple(ckpt["classes"]),
            p,
        )
    if kind == "dsa.merged":
        from dsa.export import CHECKPOINT_SCHEMA_VERSION as MERGED_VERSION

        if ckpt.get("schema_version") != MERGED_VERSION:
            raise ArtifactError(f"{path}: field 'schema_version' is {ckpt.get('schema_version')!r}")
        p = plan_from_json(ckpt["plan"], str(path))
        meta = ckpt.get("metadata") or {}
        name = meta.get("model_name", p.model)
        if model is not None and model != name:
            raise ModelError(f"{path} holds a merged {name}, not {model}")
        net = create_model(name)
        if meta.get("num_classes"):
            replace_head(net, int(meta["num_classes"]))
        merged = merge(net, p)
        try:
            merged.load_state_dict(ckpt["state_dict"])
        except RuntimeError as e:
            raise ArtifactError(f"{path}: state_dict does not fit the merged {name}: {str(e).splitlines()[0]}") from e
        classes = tuple(meta["classes"]) if meta.get("classes") else None
        return LoadedModel(
            merged.eval(), "merged", name, image_size or int(meta.get("image_size", p.input_size)), classes, p
        )
    if model is None:
        raise ModelError(f"{path} is a plain state_dict; give --model (and --plan if it holds a merge-ready network)")
    state = _state_of(ckpt, path)
    net = create_model(model)
    if num_classes is not None:
        name, _ = classifier_head(net)
        if f"{name}.weight" in state and state[f"{name}.weight"].shape[0] == num_classes:
            replace_head(net, num_classes)
    p = None
    if plan is not None:
        p = load_plan(plan)
        net = apply_plan(net, p)
    _load_state(net, state, path)
    return LoadedModel(net.eval(), "state_dict", model, image_size or input_size(model), None, p)


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str,
    *,
    model: str | None = None,
    plan: str | Path | None = None,
    split: str = "val",
    image_size: int | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    num_workers: int = 0,
) -> dict:
    """Accuracy of a checkpoint on one split of a dataset (see :func:`load_for_eval`)."""
    if split not in ("train", "val", "test"):
        raise DataError(f"split must be train, val or test, got {split!r}")
    if str(data) != "elpv" and not Path(data).is_dir():
        raise DataError(f"--data {data}: not a known dataset name (elpv) and not an existing directory")
    dev = _resolve_device(device, 0)
    classes = dataset_classes(data)  # a plain state_dict may need the head width before any image is read
    loaded = load_for_eval(checkpoint, model=model, plan=plan, num_classes=len(classes), image_size=image_size)
    bundle = load_data(data, loaded.image_size)
    _, head = classifier_head(loaded.module)
    if head.out_features != bundle.num_classes:
        raise DataError(
            f"the network has {head.out_features} outputs but {data} has {bundle.num_classes} classes; "
            "evaluate on the dataset it was trained on"
        )
    if loaded.classes is not None and tuple(loaded.classes) != tuple(bundle.classes):
        raise DataError(f"the network was trained on classes {list(loaded.classes)}, {data} has {list(bundle.classes)}")
    acc = evaluate(
        loaded.module.to(dev),
        bundle.split(split),
        batch_size=batch_size,
        device=dev,
        num_workers=num_workers,
        mean=bundle.mean,
        std=bundle.std,
        num_classes=bundle.num_classes,
    )
    return {
        "checkpoint": str(checkpoint),
        "kind": loaded.kind,
        "model": loaded.model,
        "plan_removed": len(loaded.plan.removed) if loaded.plan is not None else None,
        "data": bundle.name,
        "split": split,
        "image_size": loaded.image_size,
        "classes": list(bundle.classes),
        **acc.to_json(),
    }
