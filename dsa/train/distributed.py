"""torchrun / DDP: ranks, devices and barriers (one process without torchrun)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dsa.errors import (
    TrainingError,
)
from dsa.measure.timing import resolve_device


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


def resolve_torch_device(device: str, local_rank: int = 0) -> torch.device:
    """``--device`` as a torch device (plain ``cuda`` is this process's ``cuda:<LOCAL_RANK>``)."""
    return torch.device(resolve_device(device, local_rank))


def init_distributed(device: str = "auto") -> DistInfo:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun); with WORLD_SIZE > 1 join the process group
    (nccl on CUDA, gloo on CPU). A single process without torchrun needs nothing."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    dev = resolve_torch_device(device, local)
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
