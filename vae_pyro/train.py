"""Entry point: `python -m vae_pyro.train [+experiment=z50] [overrides]`.

train(cfg) runs in phases: restore (or start), run one epoch, evaluate, checkpoint, and finish,
and returns the final test loss (what sweepers minimize). A run can be interrupted at any point
(SIGKILL, SIGTERM, Ctrl-C) and resumed with trainer.resume=true to exactly the metrics of an
uninterrupted run. The loop reads as one process: what a torchrun run does across its ranks is
distributed.py's (Group: shard, sum, seed, agree on a stop, rank 0 writes); loggers.py's
Recorder writes the epochs and RankZero says the lines, on rank 0 alone.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import threading
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig
from pyro.infer import SVI
from pyro.optim import PyroOptim
from tqdm import tqdm

from vae_pyro import checkpoint, cli, distributed, files, loggers, runs
from vae_pyro.config import (
    TrainConfig,
    TrainerConfig,
    as_dict,
    config_diff,
    flatten,
    refuse_unread,
    resolve_device,
    to_object,
)
from vae_pyro.data import ImageData, load_data_config, one_per_class
from vae_pyro.errors import Interrupted, VaePyroError, signal_name
from vae_pyro.estimators import latent_usage, negative_elbo
from vae_pyro.model import VAE, build_elbo, build_vae, kl_scale
from vae_pyro.optim import UnitGrads

log = loggers.RankZero(logging.getLogger(__name__))
USAGE_IMAGES = 1000  # test images whose posterior means give the active units per layer
COLLAPSE_EPOCHS = 3  # evaluated epochs in a row without an active unit before the warning


def build_svi(
    cfg: TrainConfig, vae: VAE, group: distributed.Group = distributed.SINGLE
) -> tuple[PyroOptim, SVI]:
    """The optimizer and SVI object exactly as training uses them (the benchmark times these);
    in a data-parallel run the optimizer sums the ranks' gradients first (Group.wrap), before
    optim.normalize_grads scales them."""
    cfg = to_object(cfg, TrainConfig)
    optimizer = instantiate(cfg.optim.optimizer)
    if cfg.optim.normalize_grads:
        optimizer = UnitGrads(optimizer)
    optimizer = group.wrap(optimizer)
    return optimizer, SVI(vae.model, vae.guide, optimizer, loss=build_elbo(cfg.elbo))


def svi_step(svi: SVI, batch: torch.Tensor, kl_scale: float = 1.0) -> float:
    """One training step. Pyro's argument and model/guide checks are off in this hot loop: they
    cost ~10% of a CPU step, the model is fixed and tested, and a diverging encoder (Normal with
    scale 0 or inf) still shows up as a non-finite loss, which the caller checks."""
    with pyro.validation_enabled(False):
        return svi.step(batch, kl_scale=kl_scale)


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


def _decide(trainer: TrainerConfig, run_dir: Path) -> tuple[Path, checkpoint.Checkpoint | None]:
    """Lock the run dir, refuse to start over another run, read the checkpoint to continue."""
    run_dir = files.acquire(run_dir)
    try:
        source = _resume_source(trainer, run_dir)
        return run_dir, None if source is None else checkpoint.read(source)
    except BaseException:
        files.release(run_dir)
        raise


@dataclass(frozen=True)
class Origin:
    """Who started the run: a Hydra job (its config: the dir Hydra made, the overrides, the
    mode) or a Python caller (hydra None, its overrides as given to fit)."""

    hydra: Any
    overrides: list[str]

    @property
    def stamped(self) -> bool:
        """A single run's time-stamped dir (runs.time_stamped): taken, the next name is used."""
        return self.hydra is not None and self.sweep is False and runs.time_stamped(self.hydra.run)

    @property
    def sweep(self) -> bool:
        return self.hydra is not None and self.hydra.mode == RunMode.MULTIRUN


@dataclass
class RunStart:
    """How a run starts, decided once, by train(), before any work: its run dir (locked by rank
    0 for the run's life), the checkpoint it continues (read once), the process group and who
    started it."""

    run_dir: Path
    group: distributed.Group
    saved: checkpoint.Checkpoint | None  # the checkpoint to continue; None: a new run
    origin: Origin
    recorder: loggers.Recorder = field(init=False)
    _held: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        self.recorder = loggers.Recorder(self.run_dir, self.group.main)

    @classmethod
    def claim(
        cls, cfg: TrainConfig, run_dir: Path, group: distributed.Group, origin: Origin
    ) -> RunStart:
        """Rank 0 decides (see _decide), every rank follows: a refusal is the same VaePyroError
        on each. A time-stamped run dir taken by another run gives way to the next free name
        (runs.claim_free)."""

        def decide() -> tuple[Path, checkpoint.Checkpoint | None]:
            return runs.claim_free(run_dir, origin.stamped, lambda d: _decide(cfg.trainer, d))

        run_dir, saved = group.decide(decide)
        start = cls(run_dir, group, saved, origin)
        try:
            _check_batches(cfg, saved)
        except VaePyroError:
            start.release()
            raise
        return start

    def done(self, epochs: int) -> bool:
        """Whether the checkpoint already has `epochs` epochs or more: nothing to train."""
        return self.saved is not None and self.saved.epoch >= epochs

    def release(self) -> None:
        """Unlock the run dir (once; rank 0 holds the lock)."""
        if self._held:
            self._held = False
            self.group.only(files.release, self.run_dir)


def _check_batches(cfg: TrainConfig, saved: checkpoint.Checkpoint | None) -> None:
    """A checkpoint written inside an epoch continues that epoch's order step by step: with
    another data.batch_size the steps would not line up (images of the epoch skipped or seen
    twice), so it is refused, as another subset or number of processes is."""
    if saved is None or saved.position is None:
        return
    before, now = saved.data_config.batch_size, cfg.data.batch_size
    if before != now:
        epoch = saved.epoch + 1
        raise VaePyroError(
            f"{saved.path} stopped inside epoch {epoch} (step {saved.position.step}) with "
            f"data.batch_size={before}, and this command has data.batch_size={now}: resume with "
            f"data.batch_size={before}, or finish epoch {epoch} with it (trainer.epochs={epoch}) "
            "and change it after"
        )


def _nothing_message(saved: checkpoint.Checkpoint) -> str:
    epochs = f"{saved.epoch} epoch{'' if saved.epoch == 1 else 's'}"
    return (
        f"nothing to train: the run already has {epochs} ({saved.path}); raise trainer.epochs "
        "to train it further"
    )


@dataclass
class Run:
    """One training run: its parts and how far it has come."""

    cfg: TrainConfig
    start: RunStart
    data: ImageData
    vae: VAE
    optimizer: PyroOptim
    svi: SVI
    history: list[dict] = field(default_factory=list)
    done: int = 0  # epochs completed
    position: checkpoint.Position | None = None  # where an interrupted epoch stopped
    last_saved: int | None = None  # the epoch of the newest checkpoint on disk
    resolved: dict[str, Any] = field(init=False)  # the config as the checkpoint stores it
    dims: dict[str, int] = field(default_factory=dict)  # each latent site's dimensions
    warned: set[str] = field(default_factory=set)  # the sites a collapse warning named

    def __post_init__(self) -> None:
        self.resolved = as_dict(self.cfg)

    @property
    def run_dir(self) -> Path:
        return self.start.run_dir

    @property
    def group(self) -> distributed.Group:
        return self.start.group

    @property
    def recorder(self) -> loggers.Recorder:
        return self.start.recorder

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    @property
    def steps(self) -> int:
        return -(-len(self.data.train) // self.cfg.data.batch_size)

    def save(self, epochs_done: int, position: checkpoint.Position | None = None) -> None:
        def write() -> None:
            fingerprint = None if self.data.fingerprint is None else self.data.fingerprint.as_dict()
            payload = checkpoint.build(
                self.vae,
                self.optimizer,
                self.resolved,
                epochs_done,
                self.history,
                position,
                fingerprint,
            )
            checkpoint.save(self.checkpoint_path, payload)

        self.group.save(write)
        self.last_saved = epochs_done

    def tensors(self) -> list[torch.Tensor]:
        """The networks' weights and buffers (what rank 0 broadcasts), in a fixed order."""
        return [
            t for name in checkpoint.NETWORKS for t in getattr(self.vae, name).state_dict().values()
        ]


class _StopFlag:
    """While active, SIGTERM/SIGINT/SIGHUP only raise a flag; the loop asks `now()` after a step,
    which in a data-parallel run is what the ranks agreed (Group.agree_to_stop)."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def __enter__(self) -> _StopFlag:
        self.signum: int | None = None
        self.now = self.run.group.agree_to_stop(self.run.optimizer, lambda: self.signum)
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():  # signal() demands it
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                if signal.getsignal(sig) != signal.SIG_IGN:  # nohup's SIGHUP stays ignored
                    self._previous[sig] = signal.signal(sig, self._raise_flag)
        return self

    def _raise_flag(self, signum: int, frame: object) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def interrupted(self, where: str) -> Interrupted:
        signum, run = self.now(), self.run
        return Interrupted(
            signum,
            f"interrupted by {signal_name(signum)} {where}; checkpoint written to "
            f"{run.checkpoint_path}. Resume with: {_resume_hint(run)}",
        )


def _log_changes(run: Run, saved: dict) -> None:
    changed = [
        f"{k}: {before!r} -> {after!r}"
        for k, (before, after) in sorted(config_diff(saved, run.resolved).items())
        if not k.startswith("trainer.resume")
    ]
    if changed:
        log.warning("resuming with changed settings: %s", "; ".join(changed))


def _resume_hint(run: Run) -> str:
    kept = [
        o
        for o in run.start.origin.overrides
        if not o.split("=")[0].lstrip("+~").startswith(("hydra.", "trainer.resume"))
    ]
    return " ".join(
        [
            f"{run.group.launcher} -m vae_pyro.train",
            *kept,
            f"hydra.run.dir={run.run_dir}",
            "trainer.resume=true",
        ]
    )


def _restore(run: Run, saved: checkpoint.Checkpoint) -> None:
    """Phase 1 of a resumed run: weights, optimizer, RNG, history and position."""
    source = saved.path
    checkpoint.restore_training(run.vae, run.optimizer, saved)
    checkpoint.check_data(
        run.data, saved, run.cfg.trainer.allow_other_data, "trainer.allow_other_data"
    )
    run.history, run.done, run.position = list(saved.metrics), saved.epoch, saved.position
    run.last_saved = saved.epoch
    if run.position is not None and len(run.position.perm) != len(run.data.train):
        epoch = run.done + 1
        before, now = (
            ("null" if v is None else v) for v in (saved.data_config.subset, run.cfg.data.subset)
        )
        raise VaePyroError(
            f"{source} stopped inside epoch {epoch} with data.subset={before}, and this command "
            f"has data.subset={now}: resume with data.subset={before}, or finish epoch {epoch} "
            f"with it (trainer.epochs={epoch}) and change it after"
        )
    if run.position is not None:
        run.group.check_resumable(run.position.world, source)
    step = run.position.step if run.position else 0
    run.group.seed(run.cfg.seed, run.done, step)  # not rank 0's RNG state
    run.group.broadcast(run.tensors())
    _log_changes(run, saved.config)
    at = f", step {step}" if run.position else ""
    log.info("resuming from %s at the start of epoch %d%s", source, run.done + 1, at)


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


def _new_position(run: Run) -> checkpoint.Position:
    """The start of an epoch: its order of the training images, drawn once for all ranks."""
    perm = run.group.permutation(len(run.data.train), run.data.train.x.device)
    return checkpoint.Position(perm, 0, 0.0, 0.0, run.group.world)


def _run_epoch(run: Run, epoch: int, stop: _StopFlag) -> dict[str, Any]:
    """Phase 2: one pass over the training set (or the rest of an interrupted one). On a
    signal, a mid-epoch checkpoint and Interrupted; on a non-finite loss, an error."""
    device, batch_size, group = run.data.train.x.device, run.cfg.data.batch_size, run.group
    pos = run.position or _new_position(run)
    run.position, start, perm = None, time.perf_counter(), pos.perm.to(device)
    bar = tqdm(  # on a terminal, on rank 0
        range(pos.step, run.steps),
        disable=None if group.main else True,
        initial=pos.step,
        total=run.steps,
        leave=False,
        desc=f"epoch {epoch}/{run.cfg.trainer.epochs}",
    )
    beta = kl_scale(run.cfg.model, epoch)  # KL weight (warm-up): 1 unless configured
    total = group.part(pos.total)  # the sum so far over all ranks: counted once
    for step in bar:
        idx = group.shard(perm[step * batch_size : (step + 1) * batch_size])
        loss = svi_step(run.svi, run.data.train_batch(idx), beta)
        if not math.isfinite(loss):
            raise _diverged(run, loss, epoch, step + 1)
        total += loss
        if stop.now() is not None and step + 1 < run.steps:
            seconds = pos.seconds + time.perf_counter() - start
            [total] = group.sum([total], device)
            at = dataclasses.replace(
                pos, perm=perm.cpu(), step=step + 1, total=total, seconds=seconds
            )
            run.save(epoch - 1, at)
            raise stop.interrupted(f"at epoch {epoch}, step {step + 1}/{run.steps}")
    seconds = pos.seconds + time.perf_counter() - start
    [total] = group.sum([total], device)
    return {"epoch": epoch, "train_loss": total / len(run.data.train), "seconds": seconds}


def _evaluate(run: Run, record: dict[str, Any]) -> None:
    """Phase 3: the test loss, every trainer.eval_every epochs and after the last; in a
    data-parallel run each rank takes a slice of the test set. With it, each latent layer's
    KL and active units (estimators.latent_usage) on the first USAGE_IMAGES test images, drawn
    on a forked RNG so that training's own draws stay what they were."""
    epoch, trainer = record["epoch"], run.cfg.trainer
    start = time.perf_counter()
    record["test_loss"] = None
    if epoch % trainer.eval_every == 0 or epoch == trainer.epochs:
        size = trainer.eval_batch_size
        test = run.data.test.x
        record["test_loss"] = run.group.mean(test, lambda x: negative_elbo(run.vae, x, size))
        cuda = [test.device] if test.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            usage = latent_usage(run.vae, test[:USAGE_IMAGES])
        for site, used in usage.items():
            record[f"kl_{site}"], record[f"active_{site}"] = used["kl"], used["active"]
            run.dims[site] = used["dims"]
    record["seconds"] += time.perf_counter() - start


def _usage_text(run: Run, record: dict[str, Any]) -> str:
    """`  KL latent 25.31 (active 18/50)` for each layer of an evaluated epoch, else ""."""
    parts = [
        f"{site} {record[f'kl_{site}']:.2f} (active {record[f'active_{site}']}/{dims})"
        for site, dims in run.dims.items()
        if record.get(f"kl_{site}") is not None
    ]
    return f"  KL {', '.join(parts)}" if parts else ""


def _warn_collapse(run: Run) -> None:
    """One warning per layer when it has had no active unit in the last COLLAPSE_EPOCHS
    evaluated epochs (once per layer and process)."""
    for site, dims in run.dims.items():
        seen = [r[f"active_{site}"] for r in run.history if r.get(f"active_{site}") is not None]
        recent = seen[-COLLAPSE_EPOCHS:]
        if len(recent) == COLLAPSE_EPOCHS and not any(recent) and site not in run.warned:
            run.warned.add(site)
            log.warning(
                "latent layer %r (%d dims) has had no active unit for %d evaluated epochs "
                "(KL %.2f nats): the model ignores it (posterior collapse). Try "
                "model.kl_warmup_epochs=10, model.init=he, fewer model.hidden_layers, "
                "model/prior=vamp, or a lower model.kl_weight",
                site,
                dims,
                COLLAPSE_EPOCHS,
                run.history[-1].get(f"kl_{site}") or 0.0,
            )


def _checkpoint(run: Run, record: dict[str, Any], stop: _StopFlag) -> None:
    """Phase 4: record the epoch (metrics.jsonl, TensorBoard, logger=...; images every
    trainer.image_every epochs); a checkpoint every trainer.checkpoint_every epochs, after the
    last and before an interruption takes effect."""
    epoch, trainer = record["epoch"], run.cfg.trainer
    run.history.append(record)
    # The checkpoint first: a write that fails (full disk) leaves metrics.jsonl without the epoch
    # too, so the two always agree (a resumed run rewrites metrics.jsonl from the checkpoint).
    if epoch % trainer.checkpoint_every == 0 or epoch == trainer.epochs or stop.now():
        run.save(epoch)
    scalars = [k for k in record if k not in ("epoch", "seconds")]
    run.recorder.record(record, tuple(scalars), epoch)
    test = "-" if record["test_loss"] is None else f"{record['test_loss']:.2f}"
    log.info(
        "epoch %d/%d  train %.2f  test %s%s  (%.1f s)",
        epoch,
        trainer.epochs,
        record["train_loss"],
        test,
        _usage_text(run, record),
        record["seconds"],
    )
    _warn_collapse(run)
    if stop.now() is not None and epoch < trainer.epochs:
        raise stop.interrupted(f"after epoch {epoch}")
    if loggers.image_epoch(epoch, trainer.epochs, trainer.image_every):  # after: not in a stop
        run.recorder.images(
            epoch, lambda: loggers.progress_images(run.vae, _shown(run), run.cfg.seed)
        )


def _figures(run: Run) -> None:
    from vae_pyro import plots  # imported here: matplotlib is slow to import

    figures = run.run_dir / "figures"
    plots.loss_curves(run.history, figures / "loss.png")
    shown = _shown(run)
    plots.reconstructions(shown, run.vae.reconstruct(shown), figures / "reconstructions.png")


def _shown(run: Run) -> torch.Tensor:
    """The test images the reconstructions show: the first of each class."""
    return run.data.test.x[one_per_class(run.data.test.y)]


def _finish(run: Run) -> float:
    """Phase 5: the figures; the final test loss."""
    final = run.history[-1]["test_loss"]
    run.group.only(_figures, run)
    log.info("final test loss %.2f nats per image; artifacts in %s", final, run.run_dir)
    if not run.start.origin.sweep:
        run.group.only(runs.mark_latest, run.run_dir)  # outputs/latest, for a run inside it
    return final


def _build(cfg: TrainConfig, data: ImageData, start: RunStart) -> Run:
    """The networks and optimizer, the same on every rank (rank 0's weights)."""
    if start.saved is None and cfg.trainer.resume:
        log.warning(
            "trainer.resume=true but %s holds no checkpoint: starting a new run", start.run_dir
        )
    vae = build_vae(data.image_shape, cfg.model).to(data.train.x.device)
    optimizer, svi = build_svi(cfg, vae, start.group)
    run = Run(cfg, start, data, vae, optimizer, svi)
    run.group.seed(cfg.seed)
    run.group.broadcast(run.tensors())
    return run


def train(
    cfg: DictConfig | TrainConfig,
    run_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> float:
    """Train a VAE as configured; write artifacts to run_dir (default: the Hydra job's dir;
    locked meanwhile: see vae_pyro.files); return the final test loss. The one start of every
    run, from the CLI, a sweep job or vae_pyro.fit: the config checked, the run dir claimed and
    its checkpoint read, "nothing to train" decided, each once, before anything is written.
    `overrides`: what the run's record names as its overrides when Hydra does not say."""
    if run_dir is not None:
        return _start(cfg, Path(run_dir), Origin(None, list(overrides)))
    if not HydraConfig.initialized():
        raise VaePyroError("train(cfg) outside a Hydra job needs run_dir=")
    hydra = HydraConfig.get()
    return _start(cfg, Path(hydra.runtime.output_dir), Origin(hydra, list(hydra.overrides.task)))


def _start(cfg: DictConfig | TrainConfig, run_dir: Path, origin: Origin) -> float:
    raw, cfg = cfg, to_object(cfg, TrainConfig)
    refuse_unread(raw, TrainConfig)  # a key the chosen component would ignore
    group = distributed.start(cfg.trainer.device, cfg.trainer.dist_timeout_s)
    device = group.device(resolve_device(cfg.trainer.device, "trainer.device"))
    group.check_batch(cfg.data.batch_size)
    pyro.clear_param_store()  # sweep jobs share one process: start each from nothing
    pyro.set_rng_seed(cfg.seed)
    data = load_data_config(cfg.data, device)
    start = RunStart.claim(cfg, run_dir, group, origin)
    try:
        return _train(cfg, data, start)
    finally:
        start.release()


def _train(cfg: TrainConfig, data: ImageData, start: RunStart) -> float:
    run = _build(cfg, data, start)
    saved = start.saved
    if start.done(cfg.trainer.epochs):  # the run dir is left untouched
        checkpoint.restore_networks(run.vae, saved)  # but networks and data must still fit
        checkpoint.check_data(
            run.data, saved, cfg.trainer.allow_other_data, "trainer.allow_other_data"
        )
        distributed.print_once(_nothing_message(saved))  # exit 0, nothing written
        tested = [m["test_loss"] for m in saved.metrics if m["test_loss"] is not None]
        return tested[-1] if tested else math.nan
    if saved is not None:
        _restore(run, saved)
    params = flatten(run.resolved)
    tracker = loggers.tracker(cfg.logger, params)  # a tracking store that refuses: no files
    with run.recorder.open(run.history, run.done + 1, params, tracker):
        # Accepted: from here on the run dir is this run's, and its record says so.
        with (
            run.group.only(runs.recording, run.run_dir, run.resolved, start.origin) or nullcontext()
        ):
            log.info(
                "training on %s: %s; run dir %s", data.train.x.device, _about(run), run.run_dir
            )
            with _StopFlag(run) as stop:
                for epoch in range(run.done + 1, cfg.trainer.epochs + 1):
                    record = _run_epoch(run, epoch, stop)
                    _evaluate(run, record)
                    _checkpoint(run, record, stop)
            return _finish(run)  # inside: the tracker's artifacts include the figures


def _about(run: Run) -> str:
    """The start-up line's data protocol and model variant."""
    cfg, data = run.cfg, run.data
    m, elbo = cfg.model, cfg.elbo
    layers = "" if m.latent_layers == 1 else f" over z1 of {m.decoder_z_dim}"
    return (
        f"{cfg.data.name} (binarize {cfg.data.binarize}), {len(data.train)} train / "
        f"{len(data.test)} test images of shape {data.image_shape}, batch {cfg.data.batch_size}; "
        f"{m.arch} z_dim {m.z_dim}{layers}, prior {m.prior.name}, posterior {m.posterior.name}, "
        f"likelihood {m.likelihood}, objective {elbo.name} (K={elbo.num_particles})"
    )


def main() -> None:
    cli.run("train", train)


if __name__ == "__main__":
    main()
