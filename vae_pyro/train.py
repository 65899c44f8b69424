"""Entry point: `python -m vae_pyro.train [+experiment=z50] [overrides]`.

train(cfg) runs in phases: restore (or start), run one epoch, evaluate, checkpoint, and finish,
and returns the final test loss (what sweepers minimize). A run can be interrupted at any point
(SIGKILL, SIGTERM, Ctrl-C) and resumed with trainer.resume=true to exactly the metrics of an
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from pyro.infer import SVI
from pyro.optim import PyroOptim
from tqdm import tqdm

from vae_pyro import checkpoint, cli, distributed, files
from vae_pyro.config import (
    TrainConfig,
    TrainerConfig,
    as_dict,
    flatten,
    resolve_device,
    to_object,
)
from vae_pyro.data import ImageData, load_data_config, one_per_class
from vae_pyro.errors import TrainingInterrupted, VaePyroError
from vae_pyro.evaluate import negative_elbo
from vae_pyro.model import VAE, build_elbo, build_vae, kl_scale
from vae_pyro.optim import AllReduce

log = logging.getLogger(__name__)
# What Hydra writes into a run dir before the task starts (conf/train.yaml: job name "train"):
# a run dir this command made that holds nothing else when it ends is removed (a refused run).
HYDRA_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "train.log")


def build_svi(
    cfg: TrainConfig, vae: VAE, group: distributed.Group = distributed.SINGLE
) -> tuple[PyroOptim, SVI]:
    """The optimizer and SVI object exactly as training uses them (the benchmark times these);
    in a data-parallel run the optimizer sums the ranks' gradients first (optim.AllReduce)."""
    cfg = to_object(cfg, TrainConfig)
    optimizer = instantiate(cfg.optim.optimizer)
    if group.world > 1:
        optimizer = AllReduce(optimizer)
    return optimizer, SVI(vae.model, vae.guide, optimizer, loss=build_elbo(cfg.elbo))


def svi_step(svi: SVI, batch: torch.Tensor, kl_scale: float = 1.0) -> float:
    """One training step. Pyro's argument and model/guide checks are off in this hot loop: they
    cost ~10% of a CPU step, the model is fixed and tested, and a diverging encoder (Normal with
    scale 0 or inf) still shows up as a non-finite loss, which the caller checks."""
    with pyro.validation_enabled(False):
        return svi.step(batch, kl_scale=kl_scale)


@dataclass
class Run:
    """One training run: its parts and how far it has come."""

    cfg: TrainConfig
    run_dir: Path
    data: ImageData
    vae: VAE
    optimizer: PyroOptim
    svi: SVI
    group: distributed.Group = distributed.SINGLE  # this process's rank in a torchrun run
    history: list[dict] = field(default_factory=list)
    done: int = 0  # epochs completed
    position: checkpoint.Position | None = None  # where an interrupted epoch stopped
    last_saved: int | None = None  # the epoch of the newest checkpoint on disk
    resolved: dict[str, Any] = field(init=False)  # the config as the checkpoint stores it

    def __post_init__(self) -> None:
        self.resolved = as_dict(self.cfg)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    @property
    def steps(self) -> int:
        return -(-len(self.data.train) // self.cfg.data.batch_size)

    def save(self, epochs_done: int, position: checkpoint.Position | None = None) -> None:
        """Called by every rank; rank 0 writes, and the others wait until it has written."""
        if self.group.main:
            payload = checkpoint.build(
                self.vae, self.optimizer, self.resolved, epochs_done, self.history, position
            )
            checkpoint.save(self.checkpoint_path, payload)
        distributed.barrier(self.group)
        self.last_saved = epochs_done

    def tensors(self) -> list[torch.Tensor]:
        """The networks' weights and buffers (what rank 0 broadcasts), in a fixed order."""
        return [
            t for name in checkpoint.NETWORKS for t in getattr(self.vae, name).state_dict().values()
        ]

    def reseed(self, *where: int) -> None:
        """Ranks other than 0 draw their own latent noise (and binarizations)."""
        if self.group.rank:
            key = (self.cfg.seed, self.group.rank, *where)
            pyro.set_rng_seed(hash(key) % 2**32)


class _StopFlag:
    """While active, SIGTERM/SIGINT only raise a flag; the loop checks it after each step.
    In a data-parallel run the flag travels with the gradients (optim.AllReduce), which sets
    `agreed` on every rank after the same step; `now()` is then what the ranks agreed."""

    def __enter__(self) -> _StopFlag:
        self.signum: int | None = None
        self.agreed: int | None = None
        self.shared = False
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():  # signal() demands it
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._raise_flag)
        return self

    def _raise_flag(self, signum: int, frame: object) -> None:
        self.signum = signum

    def share(self, run: Run) -> None:
        if run.group.world > 1:
            run.optimizer.stop, self.shared = self, True

    def now(self) -> int | None:
        return self.agreed if self.shared else self.signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def interrupted(self, run: Run, where: str) -> TrainingInterrupted:
        signum = self.now()
        return TrainingInterrupted(
            f"interrupted by {signal.Signals(signum).name} {where}; checkpoint written to "
            f"{run.checkpoint_path}. Resume with: {_resume_hint(run.run_dir)}",
            signum,
        )


def _resume_source(trainer: TrainerConfig, run_dir: Path) -> Path | None:
    """The checkpoint to continue from, or None for a new run; never overwrite another run."""
    own = run_dir / "checkpoint.pt"
    if trainer.resume_from is not None:
        source = Path(trainer.resume_from).expanduser()
        source = source / "checkpoint.pt" if source.is_dir() else source
        if not source.is_file():
            raise VaePyroError(f"trainer.resume_from: no checkpoint at {source}")
        if own.exists() and own.resolve() != source.resolve():
            raise VaePyroError(f"{run_dir} already holds another run; choose a new hydra.run.dir")
        return source
    if own.exists():
        if trainer.resume:
            return own
        raise VaePyroError(
            f"{run_dir} already holds a run (checkpoint.pt); continue it with trainer.resume=true "
            "or choose another hydra.run.dir"
        )
    return None


def _nothing_to_train(trainer: TrainerConfig, source: Path | None) -> checkpoint.Checkpoint | None:
    """The checkpoint to resume when it already has trainer.epochs epochs or more."""
    if source is None:
        return None
    saved = checkpoint.read(source)
    return saved if saved.epoch >= trainer.epochs else None


def _nothing_message(saved: checkpoint.Checkpoint) -> str:
    epochs = f"{saved.epoch} epoch{'' if saved.epoch == 1 else 's'}"
    return (
        f"nothing to train: the run already has {epochs} ({saved.path}); raise trainer.epochs "
        "to train it further"
    )


def claim_run_dir(cfg: TrainConfig, run_dir: Path) -> str | None:
    """Before Hydra writes into the run dir (cli.Precheck): lock it for the life of this
    process, refuse to start over another run, and stop when there is nothing to train (the
    message to print), so that a refused or empty command leaves the dir as it was."""
    run_dir = files.acquire(run_dir, disposable=HYDRA_FILES)
    try:
        saved = _nothing_to_train(cfg.trainer, _resume_source(cfg.trainer, run_dir))
    except BaseException:
        files.release(run_dir)
        raise
    if saved is None:
        return None  # go on; the lock is released when the process ends
    files.release(run_dir)
    return _nothing_message(saved)


def _log_changes(saved: dict, current: dict) -> None:
    before, after = flatten(saved), flatten(current)
    changed = [
        f"{k}: {before.get(k)!r} -> {after.get(k)!r}"
        for k in sorted(before.keys() | after.keys())
        if before.get(k) != after.get(k) and not k.startswith("trainer.resume")
    ]
    if changed:
        log.warning("resuming with changed settings: %s", "; ".join(changed))


def _resume_hint(run_dir: Path) -> str:
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    kept = [
        o
        for o in overrides
        if not o.split("=")[0].lstrip("+~").startswith(("hydra.", "trainer.resume"))
    ]
    world = distributed.current().world
    launch = f"torchrun --nproc_per_node={world}" if world > 1 else "python"
    return " ".join(
        [f"{launch} -m vae_pyro.train", *kept, f"hydra.run.dir={run_dir}", "trainer.resume=true"]
    )


def _restore(run: Run, saved: checkpoint.Checkpoint) -> None:
    """Phase 1 of a resumed run: weights, optimizer, RNG, history and position."""
    source = saved.path
    checkpoint.restore_training(run.vae, run.optimizer, saved)
    run.history, run.done, run.position = saved.metrics, saved.epoch, saved.position
    run.last_saved = saved.epoch
    if run.position is not None and len(run.position.perm) != len(run.data.train):
        raise VaePyroError(f"{source} stopped inside an epoch over a different data.subset")
    if run.position is not None and run.position.world != run.group.world:
        raise VaePyroError(
            f"{source} stopped inside an epoch run by {run.position.world} process(es); this "
            f"run has {run.group.world}: resume it with {run.position.world} (another number "
            "of processes can resume a checkpoint written at the end of an epoch)"
        )
    run.reseed(run.done, run.position.step if run.position else 0)  # not rank 0's RNG state
    distributed.broadcast(run.tensors(), run.group)
    _log_changes(saved.config, run.resolved)
    step = f", step {run.position.step}" if run.position else ""
    log.info("resuming from %s at the start of epoch %d%s", source, run.done + 1, step)


def _diverged(run: Run, loss: float, epoch: int, step: int) -> VaePyroError:
    kept = (
        f"the last good checkpoint (epoch {run.last_saved}) is kept in {run.checkpoint_path}"
        if run.last_saved is not None
        else "no checkpoint was written"
    )
    lr = run.cfg.optim.lr
    return VaePyroError(
        f"training diverged (loss {loss}) at epoch {epoch}, step {step}/{run.steps}; it stopped "
        f"and {kept}. Lower the learning rate (optim.lr={lr:g} now; try optim.lr={lr / 10:g})"
    )


def _run_epoch(run: Run, epoch: int, stop: _StopFlag) -> dict[str, Any]:
    """Phase 2: one pass over the training set (or the rest of an interrupted one). On a
    signal, a mid-epoch checkpoint and TrainingInterrupted; on a non-finite loss, an error."""
    device, batch_size, group = run.data.train.x.device, run.cfg.data.batch_size, run.group
    pos = run.position or checkpoint.Position(_permutation(run), 0, 0.0, 0.0, group.world)
    run.position, start, perm = None, time.perf_counter(), pos.perm.to(device)
    bar = tqdm(
        range(pos.step, run.steps),
        initial=pos.step,
        total=run.steps,
        leave=False,
        desc=f"epoch {epoch}/{run.cfg.trainer.epochs}",
        disable=None if group.main else True,
    )
    beta = kl_scale(run.cfg.model, epoch)  # KL weight (warm-up): 1 unless configured
    total = pos.total if group.main else 0.0  # the sum so far over all ranks: counted once
    for step in bar:
        idx = perm[step * batch_size : (step + 1) * batch_size]
        idx = idx.tensor_split(group.world)[group.rank] if group.world > 1 else idx
        loss = svi_step(run.svi, run.data.train_batch(idx), beta)
        if not math.isfinite(loss):
            raise _diverged(run, loss, epoch, step + 1)
        total += loss
        if stop.now() is not None and step + 1 < run.steps:
            seconds = pos.seconds + time.perf_counter() - start
            [total] = distributed.all_sum([total], group, device)
            run.save(
                epoch - 1, checkpoint.Position(perm.cpu(), step + 1, total, seconds, group.world)
            )
            raise stop.interrupted(run, f"at epoch {epoch}, step {step + 1}/{run.steps}")
    seconds = pos.seconds + time.perf_counter() - start
    [total] = distributed.all_sum([total], group, device)
    return {"epoch": epoch, "train_loss": total / len(run.data.train), "seconds": seconds}


def _permutation(run: Run) -> torch.Tensor:
    """The epoch's order of the training images: rank 0 draws it, every rank uses it."""
    n, device = len(run.data.train), run.data.train.x.device
    if run.group.world == 1:
        return torch.randperm(n, device=device)
    perm = (
        torch.randperm(n, device=device)
        if run.group.main
        else torch.empty(n, dtype=torch.long, device=device)
    )
    distributed.broadcast([perm], run.group)
    return perm


def _test_loss(run: Run) -> float:
    """The test ELBO; in a data-parallel run each rank takes a slice and the sums are added."""
    x, size, group = run.data.test.x, run.cfg.trainer.eval_batch_size, run.group
    if group.world == 1:
        return negative_elbo(run.vae, x, size)
    shard = x.tensor_split(group.world)[group.rank]
    local = negative_elbo(run.vae, shard, size) * len(shard) if len(shard) else 0.0
    return distributed.all_sum([local], group, x.device)[0] / len(x)


def _evaluate(run: Run, record: dict[str, Any]) -> None:
    """Phase 3: the test loss, every trainer.eval_every epochs and after the last."""
    epoch, trainer = record["epoch"], run.cfg.trainer
    start = time.perf_counter()
    record["test_loss"] = None
    if epoch % trainer.eval_every == 0 or epoch == trainer.epochs:
        record["test_loss"] = _test_loss(run)
    record["seconds"] += time.perf_counter() - start


class _Recorder:
    """metrics.jsonl (rewritten from the checkpoint's history, the truth) and TensorBoard."""

    def __init__(self, run: Run) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported here: slow, only training

        run.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = run.run_dir / "metrics.jsonl"
        self._write(run.history, mode="w")
        self.writer = SummaryWriter(
            log_dir=str(run.run_dir / "tensorboard"), purge_step=run.done + 1
        )

    def _write(self, records: list[dict], mode: str = "a") -> None:
        with self.metrics.open(mode) as f:
            f.writelines(json.dumps(r) + "\n" for r in records)

    def add(self, record: dict[str, Any]) -> None:
        self._write([record])
        for key in ("train_loss", "test_loss"):
            if record[key] is not None:
                self.writer.add_scalar(key, record[key], record["epoch"])

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.writer.close()


def _checkpoint(
    run: Run, record: dict[str, Any], recorder: _Recorder | None, stop: _StopFlag
) -> None:
    """Phase 4: record the epoch; a checkpoint every trainer.checkpoint_every epochs, after the
    last and before an interruption takes effect."""
    epoch, trainer = record["epoch"], run.cfg.trainer
    record = {k: record[k] for k in ("epoch", "train_loss", "test_loss", "seconds")}
    run.history.append(record)
    if recorder is not None:
        recorder.add(record)
    if epoch % trainer.checkpoint_every == 0 or epoch == trainer.epochs or stop.now():
        run.save(epoch)
    test = "-" if record["test_loss"] is None else f"{record['test_loss']:.2f}"
    log.info(
        "epoch %d/%d  train %.2f  test %s  (%.1f s)",
        epoch,
        trainer.epochs,
        record["train_loss"],
        test,
        record["seconds"],
    )
    if stop.now() is not None and epoch < trainer.epochs:
        raise stop.interrupted(run, f"after epoch {epoch}")


def _finish(run: Run) -> float:
    """Phase 5: the figures; the final test loss."""
    final = run.history[-1]["test_loss"]
    if not run.group.main:
        return final
    from vae_pyro import plots  # imported here: matplotlib is slow to import

    figures = run.run_dir / "figures"
    plots.loss_curves(run.history, figures / "loss.png")
    shown = run.data.test.x[one_per_class(run.data.test.y)]
    plots.reconstructions(shown, run.vae.reconstruct(shown), figures / "reconstructions.png")
    log.info("final test loss %.2f nats per image; artifacts in %s", final, run.run_dir)
    return final


def _start(cfg: TrainConfig, run_dir: Path) -> tuple[Run, Path | None]:
    """Everything before the first step: data, networks, optimizer, and the run to continue."""
    group = distributed.start(cfg.trainer.device, cfg.trainer.dist_timeout_s)
    device = distributed.rank_device(group, resolve_device(cfg.trainer.device, "trainer.device"))
    if cfg.data.batch_size < group.world:
        raise VaePyroError(
            f"data.batch_size={cfg.data.batch_size} is the global batch: it "
            f"must be at least the number of processes ({group.world})"
        )
    pyro.clear_param_store()  # sweep jobs share one process: start each from nothing
    pyro.set_rng_seed(cfg.seed)
    data = load_data_config(cfg.data, device)
    source = _resume_source(cfg.trainer, run_dir)
    if source is None and cfg.trainer.resume:
        log.warning("trainer.resume=true but %s holds no checkpoint: starting a new run", run_dir)
    vae = build_vae(data.image_shape, cfg.model).to(device)
    optimizer, svi = build_svi(cfg, vae, group)
    run = Run(cfg, run_dir, data, vae, optimizer, svi, group)
    run.reseed()
    distributed.broadcast(run.tensors(), group)
    return run, source


def train(cfg: DictConfig | TrainConfig, run_dir: str | Path | None = None) -> float:
    """Train a VAE as configured; write artifacts to run_dir (locked meanwhile: see
    vae_pyro.files); return the final test loss."""
    cfg = to_object(cfg, TrainConfig)
    run_dir = Path(run_dir if run_dir is not None else HydraConfig.get().runtime.output_dir)
    group = distributed.start(cfg.trainer.device, cfg.trainer.dist_timeout_s)
    if not group.main:  # rank 0 holds the lock for the whole run; the others use the dir
        return _train(cfg, run_dir.resolve())
    with files.locked(run_dir) as run_dir:
        return _train(cfg, run_dir)


def _train(cfg: TrainConfig, run_dir: Path) -> float:
    run, source = _start(cfg, run_dir)
    saved = None if source is None else checkpoint.read(source, run.data.train.x.device)
    if saved is not None and saved.epoch >= cfg.trainer.epochs:  # the run dir is left untouched
        checkpoint.restore_networks(run.vae, saved)  # but networks and data must still fit
        log.info(_nothing_message(saved))
        tested = [m["test_loss"] for m in saved.metrics if m["test_loss"] is not None]
        return tested[-1] if tested else math.nan
    if saved is not None:
        _restore(run, saved)
    log.info(
        "training on %s: %d train / %d test images of shape %s; run dir %s",
        run.data.train.x.device,
        len(run.data.train),
        len(run.data.test),
        run.data.image_shape,
        run.run_dir,
    )
    with (
        _Recorder(run) if run.group.main else contextlib.nullcontext() as recorder,
        _StopFlag() as stop,
    ):
        stop.share(run)
        for epoch in range(run.done + 1, cfg.trainer.epochs + 1):
            record = _run_epoch(run, epoch, stop)
            _evaluate(run, record)
            _checkpoint(run, record, recorder, stop)
    return _finish(run)


def main() -> None:
    cli.run("train", train, claim_run_dir)


if __name__ == "__main__":
    main()
