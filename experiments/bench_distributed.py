"""Data-parallel training throughput: images/s of the z50 step with 1 and 2 gloo processes.

    OMP_NUM_THREADS=1 python experiments/bench_distributed.py --steps 60 --repeats 3

Each process count runs the training step exactly as train.py builds it (build_svi, svi_step)
on MNIST with the z50 config's global batch (256): one process takes the whole batch, each of
N processes its 1/N slice and the gradients are summed by distributed.AllReduce. images/s counts
the global batch. The all-reduce's share is the time spent inside the AllReduce wrapper's
all_reduce call over the wall time of the timed steps (rank 0's view). With N processes on a
machine with fewer free cores than N x OMP_NUM_THREADS, no gain is to be expected.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pyro
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir

from vae_pyro import distributed
from vae_pyro.cli import CONF_DIR
from vae_pyro.data import load_data
from vae_pyro.model import build_vae
from vae_pyro.train import build_svi, svi_step


def z50_config():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("train", overrides=["+experiment=z50"])


def _measure(rank: int, world: int, args: argparse.Namespace, store: str, out: str) -> None:
    torch.set_num_threads(args.threads)
    group = distributed.SINGLE
    if world > 1:
        dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world)
        group = distributed.Group(rank, world, rank)
    cfg = z50_config()
    data = load_data("mnist")
    pyro.clear_param_store()
    pyro.set_rng_seed(rank)
    vae = build_vae(data.image_shape, cfg.model)
    optimizer, svi = build_svi(cfg, vae, group)
    batch = cfg.data.batch_size
    perm = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))

    def steps(n: int, offset: int) -> float:
        start = time.perf_counter()
        for s in range(offset, offset + n):
            s %= len(perm) // batch  # whole batches only, round and round
            idx = group.shard(perm[s * batch : (s + 1) * batch])
            svi_step(svi, data.train_batch(idx))
        return time.perf_counter() - start

    steps(5, 0)  # warm-up
    rates, shares = [], []
    for r in range(args.repeats):
        if world > 1:
            dist.barrier()
            optimizer.reduce_seconds = 0.0
        seconds = steps(args.steps, 5 + r * args.steps)
        rates.append(args.steps * batch / seconds)
        shares.append(optimizer.reduce_seconds / seconds if world > 1 else 0.0)
    if rank == 0:
        Path(out).write_text(f"{statistics.median(rates)} {statistics.median(shares)}")
    if world > 1:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=60, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args()
    print(
        f"z50 (MLP 784-400-50), global batch 256, {args.threads} thread(s) per process, "
        f"{args.steps} steps x {args.repeats} repeats (median); CPU, gloo"
    )
    for world in args.procs:
        with tempfile.TemporaryDirectory() as tmp:
            store, out = f"file://{tmp}/store", f"{tmp}/result"
            mp.spawn(_measure, args=(world, args, store, out), nprocs=world, join=True)
            rate, share = map(float, Path(out).read_text().split())
        print(
            f"{world} process(es): {rate:8.0f} images/s   all-reduce {100 * share:4.1f}% of a step"
        )


if __name__ == "__main__":
    main()
