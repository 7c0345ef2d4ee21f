"""The trainer: finetune a merge-ready network with distillation (DDP via torchrun), merge, export, measure.

``dsa.train.train(cfg)`` runs it; :mod:`dsa.train.config` holds :class:`TrainConfig`, :mod:`dsa.train.loop` the
run, :mod:`dsa.train.evaluate` accuracy, :mod:`dsa.train.distributed` ranks and devices."""

from dsa.train.config import TrainConfig, TrainResult
from dsa.train.loop import train

__all__ = ["TrainConfig", "TrainResult", "train"]
