"""Hydra entry point: `python -m vae_pyro.train [+experiment=z50] [overrides]`.

train(cfg) does the work and returns the final test loss (what sweepers minimize). A run can
be interrupted at any point (SIGKILL, SIGTERM, Ctrl-C) and resumed with trainer.resume=true to
exactly the metrics of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import hydra
import pyro
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pyro.infer import SVI
from pyro.optim import PyroOptim
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from vae_pyro import checkpoint, plots
from vae_pyro.data import BINARIZATIONS, SOURCES, load_data_config, one_per_class, resolve_device
from vae_pyro.errors import TrainingInterrupted, VaePyroError, positive_int
from vae_pyro.evaluate import negative_elbo
from vae_pyro.model import ARCHS, LIKELIHOODS, VAE, build_vae, kl_scale
from vae_pyro.networks import SCALE_PARAMS

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def _check_options(cfg: DictConfig) -> None:
    """The modelling options of issue 5: known choices and ranges."""
    for key, choices in (
        ("data.binarize", BINARIZATIONS),
        ("model.likelihood", LIKELIHOODS),
        ("model.scale_param", tuple(SCALE_PARAMS)),
    ):
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise VaePyroError(f"unknown {key}={value!r}; choose one of {', '.join(choices)}")
    beta = cfg.model.kl_weight
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < math.inf:
        raise VaePyroError(f"model.kl_weight must be a number >= 0 (1 = plain ELBO), got {beta!r}")
    warmup = cfg.model.kl_warmup_epochs
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise VaePyroError(f"model.kl_warmup_epochs must be an integer >= 0, got {warmup!r}")
    positive_int(OmegaConf.select(cfg, "elbo.num_particles", default=1), "elbo.num_particles")


def _check_source_and_arch(cfg: DictConfig) -> None:
    """The dataset and network choices of issue 8 (sizes that depend on the images are checked
    when the networks are built, right after the data are read)."""
    for key, choices, default in (("data.name", SOURCES, None), ("model.arch", ARCHS, "mlp")):
        value = OmegaConf.select(cfg, key, default=default)
        if value not in choices:
            raise VaePyroError(f"unknown {key}={value!r}; choose one of {', '.join(choices)}")
    size = OmegaConf.select(cfg, "data.image_size", default=None)
    if size is not None:
        positive_int(size, "data.image_size")
    if OmegaConf.select(cfg, "model.arch", default="mlp") == "conv":
        channels = OmegaConf.select(cfg, "model.channels", default=None)
        if not OmegaConf.is_list(channels) or len(channels) == 0:
            raise VaePyroError(f"model.channels must be a non-empty list, got {channels!r}")
        for c in channels:
            positive_int(c, "each of model.channels")


def validate(cfg: DictConfig) -> torch.device:
    """Check every value before any work starts; returns the training device."""
    for key in (
        "model.z_dim",
        "model.hidden_dim",
        "data.batch_size",
        "trainer.epochs",
        "trainer.eval_every",
        "trainer.eval_batch_size",
        "trainer.checkpoint_every",
    ):
        positive_int(OmegaConf.select(cfg, key), key)
    subset = cfg.data.subset
    if subset is not None:
        positive_int(subset, "data.subset")
    lr = cfg.optim.lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise VaePyroError(f"optim.lr must be a positive number, got {lr!r}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise VaePyroError(f"seed must be an integer, got {cfg.seed!r}")
    _check_options(cfg)
    _check_source_and_arch(cfg)
    if not isinstance(cfg.trainer.resume, bool):
        raise VaePyroError(f"trainer.resume must be true or false, got {cfg.trainer.resume!r}")
    if cfg.trainer.resume_from is not None and not isinstance(cfg.trainer.resume_from, str):
        raise VaePyroError(f"trainer.resume_from must be a path, got {cfg.trainer.resume_from!r}")
    return resolve_device(cfg.trainer.device)


class _StopFlag:
    """While active, SIGTERM/SIGINT only raise a flag; the loop checks it after each step."""

    def __enter__(self) -> _StopFlag:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():  # signal() demands it
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._raise_flag)
        return self

    def _raise_flag(self, signum: int, frame: object) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _resume_source(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to continue from, or None for a new run; never overwrite another run."""
    own = run_dir / "checkpoint.pt"
    if cfg.trainer.resume_from is not None:
        source = Path(cfg.trainer.resume_from).expanduser()
        source = source / "checkpoint.pt" if source.is_dir() else source
        if not source.is_file():
            raise VaePyroError(f"trainer.resume_from: no checkpoint at {source}")
        if own.exists() and own.resolve() != source.resolve():
            raise VaePyroError(f"{run_dir} already holds another run; choose a new hydra.run.dir")
        return source
    if own.exists():
        if cfg.trainer.resume:
            return own
        raise VaePyroError(
            f"{run_dir} already holds a run (checkpoint.pt); continue it with trainer.resume=true "
            "or choose another hydra.run.dir"
        )
    if cfg.trainer.resume:
        log.warning("trainer.resume=true but %s holds no checkpoint: starting a new run", run_dir)
    return None


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}


def _log_changes(saved: dict, current: dict) -> None:
    before, after = _flat(saved), _flat(current)
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
    return " ".join(
        ["python -m vae_pyro.train", *kept, f"hydra.run.dir={run_dir}", "trainer.resume=true"]
    )


def _write_jsonl(path: Path, records: list[dict], mode: str = "a") -> None:
    with path.open(mode) as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def build_svi(cfg: DictConfig, vae: VAE) -> tuple[PyroOptim, SVI]:
    """The optimizer and SVI object exactly as training uses them (the benchmark times these)."""
    optimizer = instantiate(cfg.optim.optimizer)
    # One particle needs no particle plate: vectorizing would only add a size-1 dim (and ~4%
    # to a CPU step) for the same draws and the same loss.
    single = OmegaConf.select(cfg, "elbo.num_particles", default=1) == 1
    elbo = instantiate(cfg.elbo, **({"vectorize_particles": False} if single else {}))
    return optimizer, SVI(vae.model, vae.guide, optimizer, loss=elbo)


def svi_step(svi: SVI, batch: torch.Tensor, kl_scale: float = 1.0) -> float:
    """One training step. Pyro's argument and model/guide checks are off in this hot loop: they
    cost ~10% of a CPU step, the model is fixed and tested, and a diverging encoder (Normal with
    scale 0 or inf) still shows up as a non-finite loss, which the caller checks."""
    with pyro.validation_enabled(False):
        return svi.step(batch, kl_scale=kl_scale)


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> float:
    """Train a VAE as configured; write artifacts to run_dir; return the final test loss."""
    device = validate(cfg)
    run_dir = Path(run_dir if run_dir is not None else HydraConfig.get().runtime.output_dir)
    run_dir = run_dir.resolve()
    ckpt_path = run_dir / "checkpoint.pt"

    pyro.clear_param_store()  # sweep jobs share one process: start each from nothing
    pyro.set_rng_seed(cfg.seed)
    data = load_data_config(cfg.data, device)
    source = _resume_source(cfg, run_dir)
    vae = build_vae(data.image_shape, cfg.model).to(device)
    optimizer, svi = build_svi(cfg, vae)
    resolved = OmegaConf.to_container(cfg, resolve=True)

    epochs, batch_size = cfg.trainer.epochs, cfg.data.batch_size
    n_train = len(data.train)
    steps = -(-n_train // batch_size)
    history: list[dict] = []
    done, position = 0, None  # epochs completed; where an interrupted epoch stopped
    if source is not None:
        saved = checkpoint.load(source, map_location=device)
        checkpoint.restore_networks(vae, saved, source)
        optimizer.set_state(saved["optimizer"])
        checkpoint.set_rng_state(saved["rng"])
        history, done, position = list(saved["metrics"]), saved["epoch"], saved.get("position")
        if position is not None and len(position["perm"]) != n_train:
            raise VaePyroError(f"{source} stopped inside an epoch over a different data.subset")
        _log_changes(saved["config"], resolved)
        where = f"epoch {done + 1}, step {position['step']}" if position else f"epoch {done + 1}"
        log.info("resuming from %s at the start of %s", source, where)

    def save(epochs_done: int, position: dict | None = None) -> None:
        checkpoint.save(
            ckpt_path,
            {
                "epoch": epochs_done,
                "position": position,
                "encoder": vae.encoder.state_dict(),
                "decoder": vae.decoder.state_dict(),
                "optimizer": optimizer.get_state(),
                "rng": checkpoint.rng_state(),
                "metrics": history,
                "image_shape": list(data.image_shape),
                "config": resolved,
            },
        )

    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    _write_jsonl(metrics_path, history, mode="w")  # the checkpoint's history is the truth
    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=done + 1)
    log.info(
        "training on %s: %d train / %d test images of shape %s; run dir %s",
        device, n_train, len(data.test), data.image_shape, run_dir,
    )  # fmt: skip

    last_saved = done if source is not None else None
    try:
        with _StopFlag() as stop:
            for epoch in range(done + 1, epochs + 1):
                start = time.perf_counter()
                if position is not None:  # finish the epoch an interruption cut short
                    perm, first = position["perm"].to(device), position["step"]
                    total, before = position["total"], position["seconds"]
                    position = None
                else:
                    perm, first, total, before = torch.randperm(n_train, device=device), 0, 0.0, 0.0
                bar = tqdm(range(first, steps), initial=first, total=steps, leave=False,
                           desc=f"epoch {epoch}/{epochs}", disable=None)  # fmt: skip
                beta = kl_scale(cfg.model, epoch)  # KL weight (warm-up): 1 unless configured
                for step in bar:
                    batch = data.train_batch(perm[step * batch_size : (step + 1) * batch_size])
                    loss = svi_step(svi, batch, beta)
                    if not math.isfinite(loss):
                        kept = (
                            f"the last good checkpoint (epoch {last_saved}) is kept in {ckpt_path}"
                            if last_saved is not None
                            else "no checkpoint was written"
                        )
                        raise VaePyroError(
                            f"training diverged (loss {loss}) at epoch {epoch}, step "
                            f"{step + 1}/{steps}; it stopped and {kept}. Lower the learning rate "
                            f"(optim.lr={cfg.optim.lr:g} now; try optim.lr={cfg.optim.lr / 10:g})"
                        )
                    total += loss
                    if stop.signum is not None and step + 1 < steps:
                        seconds = before + time.perf_counter() - start
                        save(epoch - 1, {"perm": perm.cpu(), "step": step + 1, "total": total,
                                         "seconds": seconds})  # fmt: skip
                        raise TrainingInterrupted(
                            f"interrupted by {signal.Signals(stop.signum).name} at epoch {epoch}, "
                            f"step {step + 1}/{steps}; checkpoint written to {ckpt_path}. "
                            f"Resume with: {_resume_hint(run_dir)}",
                            stop.signum,
                        )
                record = {"epoch": epoch, "train_loss": total / n_train, "test_loss": None}
                if epoch % cfg.trainer.eval_every == 0 or epoch == epochs:
                    record["test_loss"] = negative_elbo(
                        vae, data.test.x, cfg.trainer.eval_batch_size
                    )
                record["seconds"] = before + time.perf_counter() - start
                history.append(record)
                _write_jsonl(metrics_path, [record])
                for key in ("train_loss", "test_loss"):
                    if record[key] is not None:
                        writer.add_scalar(key, record[key], epoch)
                if epoch % cfg.trainer.checkpoint_every == 0 or epoch == epochs or stop.signum:
                    save(epoch)
                    last_saved = epoch
                test_txt = "-" if record["test_loss"] is None else f"{record['test_loss']:.2f}"
                log.info(
                    "epoch %d/%d  train %.2f  test %s  (%.1f s)",
                    epoch, epochs, record["train_loss"], test_txt, record["seconds"],
                )  # fmt: skip
                if stop.signum is not None and epoch < epochs:
                    raise TrainingInterrupted(
                        f"interrupted by {signal.Signals(stop.signum).name} after epoch {epoch}; "
                        f"checkpoint written to {ckpt_path}. Resume with: {_resume_hint(run_dir)}",
                        stop.signum,
                    )
    finally:
        writer.close()

    figures = run_dir / "figures"
    plots.loss_curves(history, figures / "loss.png")
    shown = data.test.x[one_per_class(data.test.y)]
    plots.reconstructions(shown, vae.reconstruct(shown), figures / "reconstructions.png")
    final = history[-1]["test_loss"]
    log.info("final test loss %.2f nats per image; artifacts in %s", final, run_dir)
    return final


def _record_job(status: str, **fields: Any) -> None:
    """A sweep job's outcome as status.json in its run dir: vae_pyro.report reads it, not logs."""
    path = Path(HydraConfig.get().runtime.output_dir) / "status.json"
    path.write_text(json.dumps({"status": status, **fields}) + "\n")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    """A single run exits 2 on a VaePyroError. A sweep job (-m) records any failure in its run
    dir and returns inf (worst for a minimizing sweeper), so the other jobs still run."""
    from hydra.types import RunMode

    sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        loss = train(cfg)
    except TrainingInterrupted as stop:  # Ctrl-C / SIGTERM stops a whole sweep too
        if sweep:
            _record_job("interrupted", error=str(stop))
        print(f"vae_pyro.train: {stop}", file=sys.stderr)
        raise SystemExit(stop.exit_code) from None
    except Exception as err:
        if not sweep and isinstance(err, VaePyroError):
            print(f"vae_pyro.train: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        if not sweep:
            raise
        log.error("job failed: %s", err, exc_info=not isinstance(err, VaePyroError))
        _record_job("failed", error=str(err) or type(err).__name__)
        return math.inf
    if sweep and not math.isfinite(loss):
        _record_job("failed", error=f"final test loss is {loss}")
        return math.inf
    if sweep:
        _record_job("ok", test_loss=loss)
    return loss


if __name__ == "__main__":
    main()
