"""The planned-network finetune the ELPV studies share (bench/proxy_study.py, bench/proxy_plan_e2e.py): the
merge-ready network of ``plan`` distilled from the baseline checkpoint on ELPV, then merged; no timing or ONNX
(the studies time networks together themselves). Restartable: an interrupted run resumes."""

from __future__ import annotations

from pathlib import Path

from dsa.train.config import TrainConfig
from dsa.train.loop import train


def finetune_plan(
    out: str | Path,
    checkpoint: str | Path,
    plan: str | Path,
    *,
    model: str = "efficientnet_lite0",
    epochs: int,
    lr: float,
    image_size: int,
    seed: int = 0,
    smoke: bool = False,
) -> None:
    cfg = TrainConfig(
        data="elpv",
        out=str(out),
        model=model,
        checkpoint=str(checkpoint),
        plan=str(plan),
        seed=seed,
        epochs=epochs,
        lr=lr,
        image_size=image_size,
        distill=True,
        bench_repeats=0,
        onnx=False,
        max_steps_per_epoch=2 if smoke else None,
    )
    train(cfg, resume=True)
