"""The trainer: finetune a merge-ready network with distillation (DDP via torchrun), merge, export, measure.

``dsa.train.train(cfg)`` runs it; :mod:`dsa.train.config` holds :class:`TrainConfig`, :mod:`dsa.train.loop` the
run, :mod:`dsa.train.evaluate` accuracy, :mod:`dsa.train.distributed` ranks and devices, :mod:`dsa.train.losses`
the distillation loss. Loaded on first use, so that importing one submodule does not load the whole trainer."""

_LAZY = {"TrainConfig": "dsa.train.config", "TrainResult": "dsa.train.config", "train": "dsa.train.loop"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'dsa.train' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = ["TrainConfig", "TrainResult", "train"]
