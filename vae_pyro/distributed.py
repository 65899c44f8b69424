"""Data-parallel training on torch.distributed, launched by torchrun (no process management here).

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK in each process it starts. Without them (or with
WORLD_SIZE=1) a run is the single process it always was: no process group, no collective call,
the same numbers. With them, `start` joins the process group once per process: gloo on the CPU,
NCCL on CUDA, each rank on cuda:LOCAL_RANK. Every collective call has the group's timeout, so a
rank that dies makes the others fail within it instead of waiting forever.

Every rank-aware operation of the training loop is a method of `Group` (shard a batch, sum over
the ranks, take rank 0's value, seed, wrap the optimizer, agree on a stop, let rank 0 alone
write), each a no-op in one process; messages go through loggers.RankZero, files through
loggers.Recorder: train.py itself stays rank-blind (nanoGPT's loop, lightning's rank_zero_only).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

import pyro
import torch
import torch.distributed as dist
from pyro.optim import PyroOptim

from vae_pyro.errors import VaePyroError
from vae_pyro.optim import Wrapper

T = TypeVar("T")


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

    @property
    def launcher(self) -> str:
        """How this run was started (what a resume command repeats)."""
        return f"torchrun --nproc_per_node={self.world}" if self.world > 1 else "python"

    def device(self, device: torch.device) -> torch.device:
        """cuda:LOCAL_RANK for a rank of a data-parallel run on GPUs; else `device` as resolved."""
        if self.world > 1 and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def check_batch(self, batch_size: int) -> None:
        """Refuse a global batch that cannot give every rank at least one image."""
        if batch_size < self.world:
            raise VaePyroError(
                f"data.batch_size={batch_size} is the global batch: it "
                f"must be at least the number of processes ({self.world})"
            )

    def check_resumable(self, world: int, source: Path) -> None:
        """A checkpoint written inside an epoch by `world` processes resumes only with as many:
        each rank's slice of a step depends on it."""
        if world != self.world:
            raise VaePyroError(
                f"{source} stopped inside an epoch run by {world} process(es); this "
                f"run has {self.world}: resume it with {world} (another number "
                "of processes can resume a checkpoint written at the end of an epoch)"
            )

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a global batch (the whole batch in one process)."""
        return batch.tensor_split(self.world)[self.rank] if self.world > 1 else batch

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Each value summed over the ranks (float64); the values themselves in one process."""
        if self.world == 1:
            return values
        summed = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(summed)
        return summed.tolist()

    def part(self, total: float) -> float:
        """This rank's part of a total already summed over the ranks: all of it on rank 0,
        nothing elsewhere, so that `sum` gives it back counted once."""
        return total if self.main else 0.0

    def mean(self, x: torch.Tensor, mean: Callable[[torch.Tensor], float]) -> float:
        """mean(x) of a per-image mean, each rank computing it over its slice of x."""
        if self.world == 1:
            return mean(x)
        shard = self.shard(x)
        local = mean(shard) * len(shard) if len(shard) else 0.0
        return self.sum([local], x.device)[0] / len(x)

    def share(self, obj: T) -> T:
        """Rank 0's `obj` on every rank (any picklable value)."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def decide(self, decide: Callable[[], T]) -> T:
        """decide() run by rank 0 alone and its answer, or its VaePyroError, on every rank: a
        decision about files is taken once for the whole run."""
        if self.world == 1:
            return decide()
        outcome: tuple[bool, Any] = (True, None)
        if self.main:
            try:
                outcome = (True, decide())
            except VaePyroError as err:
                outcome = (False, str(err))
        ok, value = self.share(outcome)
        if not ok:
            raise VaePyroError(value)
        return value

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite each tensor in place with rank 0's."""
        if self.world > 1:
            for t in tensors:
                dist.broadcast(t, src=0)

    def permutation(self, n: int, device: torch.device) -> torch.Tensor:
        """An epoch's order of n images: rank 0 draws it, every rank uses it."""
        if self.world == 1:
            return torch.randperm(n, device=device)
        perm = (
            torch.randperm(n, device=device)
            if self.main
            else torch.empty(n, dtype=torch.long, device=device)
        )
        self.broadcast([perm])
        return perm

    def seed(self, seed: int, *where: int) -> None:
        """Ranks other than 0 draw their own latent noise (and binarizations) from here on:
        seeded by rank and `where` (epoch, step), so a resumed run draws the same."""
        if self.rank:
            pyro.set_rng_seed(hash((seed, self.rank, *where)) % 2**32)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def only(self, write: Callable[..., T], *args: Any) -> T | None:
        """write(*args) on rank 0, the one process that writes files; None elsewhere."""
        return write(*args) if self.main else None

    def save(self, write: Callable[[], None]) -> None:
        """Called by every rank: rank 0 writes, and the others wait until it has written, so
        that no rank runs ahead of a checkpoint."""
        self.only(write)
        self.barrier()

    def wrap(self, optimizer: PyroOptim) -> PyroOptim:
        """The optimizer as this run steps it: in a data-parallel run, after summing the ranks'
        gradients (AllReduce); in one process, itself."""
        return AllReduce(optimizer) if self.world > 1 else optimizer

    def agree_to_stop(
        self, optimizer: PyroOptim, wish: Callable[[], int | None]
    ) -> Callable[[], int | None]:
        """A function saying after each step whether to stop (the signal's number, or None),
        the same on every rank. `wish` is this process's own (a signal seen). In one process
        it is the answer; in a data-parallel run it travels as one more number in the step's
        gradient all-reduce (the `wrap`ped optimizer), so no extra collective call is made and
        every rank stops after the same step."""
        if self.world == 1:
            return wish
        optimizer.wish = wish
        return lambda: optimizer.agreed


SINGLE = Group()
_joined: Group | None = None


def env_world() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def leads() -> bool:
    """Whether this process speaks and writes for its run (rank 0, or the only process):
    known from torchrun's environment before the group is joined."""
    return env_world() <= 1 or env_rank() == 0


def print_once(text: str, file: IO[str] | None = None) -> None:
    """print from the leading process alone: a torchrun run says each thing once."""
    if leads():
        print(text, file=file if file is not None else sys.stdout)


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


class AllReduce(Wrapper):
    """Sums the gradients over the ranks of torch.distributed's default group, then steps the
    inner PyroOptim (the pattern of pyro.optim.HorovodOptimizer): the loss is a sum over images,
    so every rank then takes the step one process would take on the global batch. The one flat
    bucket per step carries one more number: whether a rank wishes to stop (`wish`, set by
    Group.agree_to_stop), so that every rank sets `agreed` after the same step.
    `reduce_seconds` adds up the time spent in the all-reduce (benchmarks read it)."""

    def __init__(self, inner: PyroOptim) -> None:
        super().__init__(inner)
        self.wish: Callable[[], int | None] | None = None
        self.agreed: int | None = None
        self.reduce_seconds = 0.0

    def __call__(self, params: Iterable[torch.Tensor], *args: Any, **kwargs: Any) -> None:
        # SVI passes a set: sorting by name makes every rank's bucket line up.
        params = sorted(params, key=pyro.get_param_store().param_name)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flag = 1.0 if self.wish is not None and self.wish() is not None else 0.0
        bucket = torch.cat([g.reshape(-1) for g in grads] + [grads[0].new_tensor([flag])])
        start = time.perf_counter()
        dist.all_reduce(bucket)
        self.reduce_seconds += time.perf_counter() - start
        for p, part in zip(params, bucket[:-1].split([p.numel() for p in params]), strict=True):
            p.grad = part.view_as(p)
        if self.wish is not None:
            seen = bucket[-1].item() > 0
            self.agreed = (self.wish() or signal.SIGTERM) if seen else None
        self.inner(params, *args, **kwargs)
