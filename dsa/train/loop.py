"""Finetuning: the baseline, and a planned network with distillation, then merge, export and measure.

:func:`train` runs one training run described by a :class:`TrainConfig`:

- without a plan, an ordinary finetune of the model (the baseline);
- with a plan, the merge-ready network (:func:`dsa.apply_plan`) is finetuned with knowledge distillation from
  the original network (frozen, eval mode): ``kd_weight * KL(teacher || student at temperature T) * T^2 +
  (1 - kd_weight) * CE``; at the end it is merged (:func:`dsa.merge` verifies the merge), exported (merged
  checkpoint, TorchScript, ONNX), the merged and merge-ready networks are evaluated on the same data (their
  accuracies must agree; both are recorded) and images/s of the original and merged networks are measured in
  one interleaved run (:func:`dsa.measure.timing.measure`).

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
import os
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from dsa.checkpoints import load_training_checkpoint, training_checkpoint
from dsa.data import DataBundle, flip_generator, load_data, prepare_batch
from dsa.errors import (
    InterruptedRunError,
    TrainingError,
)
from dsa.io import Outputs, atomic_torch_save, atomic_write_json
from dsa.networks import Networks, build_networks
from dsa.train.config import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    RESULT_NAME,
    Accuracy,
    Callback,
    TrainConfig,
    TrainResult,
    _config_differences,
)
from dsa.train.distributed import DistInfo, _barrier, init_distributed
from dsa.train.evaluate import _loader, accuracy
from dsa.train.losses import kd_loss


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


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


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
        return training_checkpoint(
            config=asdict(self.cfg),
            plan=plan.to_json() if plan is not None else None,
            classes=list(data.classes),
            num_classes=data.num_classes,
            model={k: v.detach().cpu().clone() for k, v in self.student.state_dict().items()},
            optimizer=self.opt.state_dict(),
            scheduler=self.sched.state_dict(),
            scaler=self.scaler.state_dict() if self.use_scaler else None,
            epoch=self.epoch,
            step=self.step,
            sampler_epoch=self.epoch - 1,
            world_size=self.d.world_size,
            rng=rng,
            val=val.to_json(),
        )


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
            val = accuracy(
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
    from dsa.measure.timing import measure

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
            summary["accuracy"][s] = accuracy(student, data.split(s), **eval_kw).to_json()
        timed = {"original": nets.original}
    else:
        from dsa.export import export_merged
        from dsa.transform.merge import bn_folded_network, conv_count, merge, merge_record

        notify("phase", {"what": "merging"})
        sizes = sorted({cfg.image_size, plan.input_size})
        # merge on the CPU (it verifies there, in float64), evaluate both networks on the training device
        merged = merge(student.cpu(), verify_sizes=sizes).requires_grad_(False)
        student, merged = student.to(dev), merged.to(dev)
        acc: dict = {}
        for s in eval_splits:
            notify("phase", {"what": f"evaluating the merge-ready network ({s})"})
            ready_acc = accuracy(student, data.split(s), **eval_kw)
            notify("phase", {"what": f"evaluating the merged network ({s})"})
            merged_acc = accuracy(merged, data.split(s), **eval_kw)
            acc[s] = {
                "merged": merged_acc.to_json(),
                "merge_ready": ready_acc.to_json(),
                "prediction_disagreements": int((ready_acc.predictions != merged_acc.predictions).sum()),
                "equal": ready_acc.top1 == merged_acc.top1,
            }
        summary["accuracy"] = acc
        summary["merged_equals_merge_ready"] = all(a["equal"] for a in acc.values())
        merged = merged.cpu()  # exports are made and checked on the CPU
        example = torch.randn(1, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
        exported = export_merged(
            merged,
            plan,
            outputs,
            run_dir / "merged.pt",
            example=example,
            onnx=run_dir / "merged.onnx" if cfg.onnx else None,
            onnx_failure="record",
            notify=lambda what: notify("phase", {"what": what}),
            model_name=cfg.model,
            num_classes=data.num_classes,
            classes=list(data.classes),
            image_size=cfg.image_size,
            accuracy={s: a["merged"] for s, a in acc.items()},
        )
        export = exported.to_json()
        record = merge_record(merged)
        plan.save(outputs.stage(run_dir / "plan.json"))
        summary["export"] = export
        summary["merge"] = {
            "convs_before": conv_count(nets.original),
            "convs_after": conv_count(merged),
            "verified_max_rel_error_fp64": record.max_rel_error,
            "verified_max_rel_error_model_dtype": record.max_rel_error_model_dtype,
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
