"""Process-group set-up for synchronous data parallel training (see the package docstring)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Rank and world size of the current process group (0, 1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()


def setup_distributed(device: str = "cpu") -> DistInfo:
    """Join the process group described by the launcher's environment (``torchrun``): ``WORLD_SIZE`` > 1 and
    not yet initialized -> ``init_process_group`` with gloo (CPU) or NCCL (CUDA). A no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            # one GPU per process on each machine: ``device = "cuda"`` means this process's GPU, indexed by its
            # rank on the machine (``LOCAL_RANK``), not by its global rank
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return dist_info()


def gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), indexed by global rank: ``[obj]`` when not distributed. A collective:
    every process of the group must call it."""
    info = dist_info()
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
