"""The Python API: a trained run in a notebook, and training from Python.

    import vae_pyro
    run = vae_pyro.fit("+experiment=z50", "trainer.epochs=3")     # -> run.run_dir, run.final_loss
    vae = vae_pyro.load(run.run_dir)                               # or "outputs/latest"
    images = vae.sample(16)                                        # (16, 1, 28, 28) in [0, 1]
    loc, scale = vae.encode(images)
    vae.log_likelihood(images, num_particles=1000)                 # nats per image

Images are tensors shaped (N, C, H, W), (N, H, W) or one (C, H, W) / (H, W) image, with values in
[0, 1]; everything returned is on the model's device, without gradients.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyro.distributions as dist
import torch

from vae_pyro.errors import VaePyroError


@dataclass
class TrainResult:
    """What `fit` returns: where the run's files are and its final test loss (nats/image)."""

    run_dir: Path
    final_loss: float


class TrainedVAE:
    """A trained run's VAE with what a notebook reaches for; `vae` is the Pyro model itself."""

    def __init__(self, vae: Any, ckpt: Any, run_dir: Path) -> None:
        self.vae = vae.eval()
        self.run_dir = run_dir
        self.config: dict[str, Any] = ckpt.config  # the resolved training config
        self.epoch: int = ckpt.epoch
        self.metrics: list[dict[str, Any]] = list(ckpt.metrics)  # one record per epoch
        self.image_shape: tuple[int, ...] = tuple(vae.image_shape)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        shape = self.image_shape
        if x.dim() in (len(shape) - 1, len(shape)) and x.numel() == math.prod(shape):
            x = x.reshape(1, *shape)  # one image
        if x.numel() % math.prod(shape) or x.shape[-2:] != shape[-2:]:
            raise VaePyroError(f"images of shape {tuple(x.shape)}: this model takes {shape}")
        return x.reshape(-1, *shape)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, distribution: bool = False) -> Any:
        """q(z | x) (of the top layer, q(z2 | x), with two): its (mean, scale) for the diagonal
        Normal, or the distribution itself (`distribution=True`; the only form for flows)."""
        q = self.vae.posterior(self._images(x))
        if distribution:
            return q
        base = q.base_dist if isinstance(q, dist.Independent) else None
        if not isinstance(base, dist.Normal):
            raise VaePyroError("this posterior is not a diagonal Normal: use distribution=True")
        return base.loc, base.scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z) for each latent vector, as images (N, C, H, W); with two layers
        z is a point of the top layer, decoded through the mean of p(z1 | z2)."""
        z = torch.as_tensor(z, dtype=torch.float32, device=self.device).reshape(-1, self.z_dim)
        return self.vae.likelihood(self.vae.descend(z)).mean.reshape(-1, *self.image_shape)

    @property
    def z_dim(self) -> int:
        return self.vae.z_dim

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z) at one draw z ~ q(z | x) per image."""
        return self.vae.reconstruct(self._images(x))

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n images decoded from z ~ p(z) (the mean of p(x | z) of each draw)."""
        return self.vae.sample_prior(n)

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, num_particles: int = 1000) -> torch.Tensor:
        """The importance-weighted estimate of log p(x) per image (Burda et al. 2015), nats."""
        from vae_pyro.evaluate import importance_sample

        stats = importance_sample(self.vae, self._images(x), num_particles)
        return stats["log_px"]

    def __repr__(self) -> str:
        model = self.config.get("model", {})
        return (
            f"TrainedVAE({self.run_dir}, epoch {self.epoch}, z_dim {self.z_dim}, "
            f"prior {model.get('prior', {}).get('name', 'standard')}, on {self.device})"
        )


def load(path: str | Path, device: str | torch.device = "cpu") -> TrainedVAE:
    """A trained run (its directory, "latest" or `outputs/latest`, or a checkpoint.pt) on
    `device`."""
    from vae_pyro.checkpoint import load_vae
    from vae_pyro.config import resolve_device
    from vae_pyro.runs import resolve_run_dir

    path = Path(resolve_run_dir(str(path))).expanduser()  # a latest link or its text fallback
    ckpt_path = path / "checkpoint.pt" if path.is_dir() else path
    if not ckpt_path.is_file():
        raise VaePyroError(f"no checkpoint at {ckpt_path}: give a run dir or a checkpoint.pt")
    device = resolve_device(str(device), "device") if isinstance(device, str) else device
    vae, ckpt = load_vae(ckpt_path, device)
    return TrainedVAE(vae, ckpt, ckpt_path.parent)


def _default_run_dir(overrides: list[str]) -> Path:
    """outputs/<date>/<time>[_<experiment>], as the command line names its runs."""
    now = datetime.now()
    experiment = [o.split("=", 1)[1] for o in overrides if o.startswith("+experiment=")]
    suffix = f"_{experiment[0]}" if experiment else ""
    return Path("outputs") / now.strftime("%Y-%m-%d") / (now.strftime("%H-%M-%S") + suffix)


def fit(*overrides: str, run_dir: str | Path | None = None) -> TrainResult:
    """Train as `python -m vae_pyro.train <overrides>` would (Hydra's compose API over the
    same conf/), into run_dir (default outputs/<date>/<time>[_<experiment>])."""
    from hydra import compose, initialize_config_dir

    from vae_pyro import runs
    from vae_pyro import train as training
    from vae_pyro.files import shipped

    with initialize_config_dir(version_base="1.3", config_dir=str(shipped("conf", "conf"))):
        cfg = compose(config_name="train", overrides=list(overrides))
    if run_dir is None:  # a name of the same second is taken: the next (runs.next_free)
        run_dir = runs.next_free(_default_run_dir(list(overrides)))
    loss = training.train(cfg, Path(run_dir))
    runs.mark_latest(run_dir)  # outputs/latest, for a run inside outputs/
    return TrainResult(Path(run_dir), loss)


def metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl as a list of records (one per epoch), without loading the model."""
    path = Path(run_dir).expanduser() / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
