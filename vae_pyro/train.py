"""Hydra entry point: `python -m vae_pyro.train [+experiment=z50] [overrides]`.

train(cfg) does the work and returns the final test loss (what sweepers minimize).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import hydra
import pyro
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pyro.infer import SVI
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from vae_pyro import checkpoint, plots
from vae_pyro.data import load_data, minibatches
from vae_pyro.errors import VaePyroError
from vae_pyro.evaluate import negative_elbo
from vae_pyro.model import build_vae

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def _positive_int(value: object, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise VaePyroError(f"{key} must be a positive integer, got {value!r}")


def resolve_device(spec: object) -> torch.device:
    """auto -> cuda when available, else cpu; cpu, cuda and cuda:N as asked, if they exist."""
    spec = str(spec).strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise VaePyroError(
                f"trainer.device={spec} but CUDA is not available on this machine; "
                "use trainer.device=cpu or trainer.device=auto"
            )
        index = int(spec[5:]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise VaePyroError(
                f"trainer.device={spec} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return torch.device(spec)
    raise VaePyroError(f"unknown trainer.device={spec!r}; use auto, cpu, cuda or cuda:N")


def validate(cfg: DictConfig) -> torch.device:
    """Check every value before any work starts; returns the training device."""
    for key in (
        "model.z_dim",
        "model.hidden_dim",
        "data.batch_size",
        "trainer.epochs",
        "trainer.eval_every",
        "trainer.eval_batch_size",
    ):
        _positive_int(OmegaConf.select(cfg, key), key)
    subset = cfg.data.subset
    if subset is not None:
        _positive_int(subset, "data.subset")
    lr = cfg.optim.lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise VaePyroError(f"optim.lr must be a positive number, got {lr!r}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise VaePyroError(f"seed must be an integer, got {cfg.seed!r}")
    return resolve_device(cfg.trainer.device)


def _write_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _one_per_class(y: torch.Tensor, n: int = 10) -> torch.Tensor:
    """Index of the first test image of each of the first n classes (fixed, readable figures)."""
    return torch.stack([(y == c).nonzero()[0, 0] for c in y.unique()[:n]])


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> float:
    """Train a VAE as configured; write artifacts to run_dir; return the final test loss."""
    device = validate(cfg)
    run_dir = Path(run_dir if run_dir is not None else HydraConfig.get().runtime.output_dir)
    pyro.clear_param_store()  # sweep jobs share one process: start each from nothing
    pyro.set_rng_seed(cfg.seed)
    data = load_data(cfg.data.name, cfg.data.root, cfg.data.subset, device)
    ckpt_path = run_dir / "checkpoint.pt"
    if ckpt_path.exists():
        raise VaePyroError(
            f"{run_dir} already holds a trained run (checkpoint.pt); choose another hydra.run.dir"
        )
    vae = build_vae(data.image_shape, cfg.model).to(device)
    optimizer = instantiate(cfg.optim.optimizer)
    svi = SVI(vae.model, vae.guide, optimizer, loss=instantiate(cfg.elbo))

    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
    log.info(
        "training on %s: %d train / %d test images of shape %s; run dir %s",
        device,
        len(data.train),
        len(data.test),
        data.image_shape,
        run_dir,
    )

    n_train, epochs = len(data.train), cfg.trainer.epochs
    history: list[dict] = []
    try:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            total = 0.0
            batches = minibatches(n_train, cfg.data.batch_size, device)
            steps = -(-n_train // cfg.data.batch_size)
            for idx in tqdm(
                batches, total=steps, desc=f"epoch {epoch}/{epochs}", leave=False, disable=None
            ):
                total += svi.step(data.train.x[idx])
            record = {"epoch": epoch, "train_loss": total / n_train, "test_loss": None}
            if epoch % cfg.trainer.eval_every == 0 or epoch == epochs:
                record["test_loss"] = negative_elbo(vae, data.test.x, cfg.trainer.eval_batch_size)
            record["seconds"] = time.perf_counter() - start
            history.append(record)
            _write_jsonl(metrics_path, record)
            for key in ("train_loss", "test_loss"):
                if record[key] is not None:
                    writer.add_scalar(key, record[key], epoch)
            checkpoint.save(
                ckpt_path,
                {
                    "epoch": epoch,
                    "encoder": vae.encoder.state_dict(),
                    "decoder": vae.decoder.state_dict(),
                    "optimizer": optimizer.get_state(),
                    "rng": checkpoint.rng_state(),
                    "metrics": history,
                    "image_shape": list(data.image_shape),
                    "config": OmegaConf.to_container(cfg, resolve=True),
                },
            )
            test_txt = "-" if record["test_loss"] is None else f"{record['test_loss']:.2f}"
            log.info(
                "epoch %d/%d  train %.2f  test %s  (%.1f s)",
                epoch,
                epochs,
                record["train_loss"],
                test_txt,
                record["seconds"],
            )
    finally:
        writer.close()

    figures = run_dir / "figures"
    plots.loss_curves(history, figures / "loss.png")
    shown = data.test.x[_one_per_class(data.test.y)]
    plots.reconstructions(shown, vae.reconstruct(shown), figures / "reconstructions.png")
    final = history[-1]["test_loss"]
    log.info("final test loss %.2f nats per image; artifacts in %s", final, run_dir)
    return final


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        return train(cfg)
    except VaePyroError as err:
        print(f"vae_pyro.train: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
