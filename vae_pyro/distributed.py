"""Data-parallel training on torch.distributed, launched by torchrun (no process management here).

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK in each process it starts. Without them (or with
WORLD_SIZE=1) a run is the single process it always was: no process group, no collective call,
the same numbers. With them, `start` joins the process group once per process: gloo on the CPU,
NCCL on CUDA, each rank on cuda:LOCAL_RANK. Every collective call has the group's timeout, so a
rank that dies makes the others fail within it instead of waiting forever.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Group:
    """This process's place in the run: rank `rank` of `world` (local_rank on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0


SINGLE = Group()
_joined: Group | None = None


def env_world() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def uses_cuda(device_spec: str) -> bool:
    """Whether trainer.device puts the ranks on GPUs (auto: when there are any)."""
    return device_spec != "cpu" and torch.cuda.is_available()


def start(device_spec: str, timeout_s: float) -> Group:
    """Join torchrun's process group (once per process); SINGLE without torchrun."""
    global _joined
    if _joined is not None:
        return _joined
    if env_world() <= 1:
        return SINGLE
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = uses_cuda(device_spec)
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    _joined = Group(dist.get_rank(), dist.get_world_size(), local)
    atexit.register(_leave)
    return _joined


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def current() -> Group:
    """The group `start` joined, or SINGLE."""
    return _joined or SINGLE


def rank_device(group: Group, device: torch.device) -> torch.device:
    """cuda:LOCAL_RANK for a rank of a data-parallel run on GPUs; else `device` as resolved."""
    if group.world > 1 and device.type == "cuda":
        return torch.device("cuda", group.local_rank)
    return device


def share(obj: Any, group: Group) -> Any:
    """Rank 0's `obj` on every rank (any picklable value)."""
    if group.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast(tensors: list[torch.Tensor], group: Group) -> None:
    """Overwrite each tensor in place with rank 0's."""
    if group.world > 1:
        for t in tensors:
            dist.broadcast(t, src=0)


def all_sum(values: list[float], group: Group, device: torch.device) -> list[float]:
    """Each value summed over the ranks (float64); the values themselves in one process."""
    if group.world == 1:
        return values
    summed = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(summed)
    return summed.tolist()


def barrier(group: Group) -> None:
    if group.world > 1:
        dist.barrier()
