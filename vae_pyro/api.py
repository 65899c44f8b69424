"""The Python API: a trained run in a notebook, and training from Python.

    import vae_pyro
    run = vae_pyro.fit("+experiment=z50", "trainer.epochs=3")     # -> run.run_dir, run.final_loss
    vae = vae_pyro.load(run.run_dir)                               # or "outputs/latest"
    images = vae.sample(16)                                        # (16, 1, 28, 28) in [0, 1]
    loc, scale = vae.encode(images)
    vae.log_likelihood(images, num_particles=1000)                 # nats per image

Images are float tensors (or arrays) shaped (N, C, H, W) or one (C, H, W) image, grey ones also
(N, H, W) or (H, W), with values in [0, 1]; latent codes are (N, z_dim) or one (z_dim,); counts are
integers >= 1. Anything else is one VaePyroError saying what the model takes, never a silent
reshape. Everything returned is on the model's device, without gradients.
"""

from __future__ import annotations

import contextlib
import json
import logging
import operator
import re
import sys
from collections.abc import Iterator
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

    def _images(self, x: Any) -> torch.Tensor:
        """Images as the model's batch (N, C, H, W) (_batch). Grey ones may come without their
        channel axis, (N, H, W) or (H, W): it is added, the one liberty taken."""
        c, h, w = self.image_shape
        if c == 1 and getattr(x, "ndim", 0) in (2, 3) and tuple(x.shape[-2:]) == (h, w):
            x = torch.as_tensor(x).unsqueeze(-3)
        return _batch(x, "images", self.image_shape, self.device, unit=True)

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
        z = _batch(z, "z", (self.z_dim,), self.device)
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
        return self.vae.sample_prior(_count(n, "n"))

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, num_particles: int = 1000) -> torch.Tensor:
        """The importance-weighted estimate of log p(x) per image (Burda et al. 2015), nats."""
        from vae_pyro.evaluate import importance_sample

        x, k = self._images(x), _count(num_particles, "num_particles")
        return importance_sample(self.vae, x, k)["log_px"]

    def __repr__(self) -> str:
        model = self.config.get("model", {})
        return (
            f"TrainedVAE({self.run_dir}, epoch {self.epoch}, z_dim {self.z_dim}, "
            f"prior {model.get('prior', {}).get('name', 'standard')}, on {self.device})"
        )


def _batch(
    value: Any, name: str, shape: tuple[int, ...], device: torch.device, unit: bool = False
) -> torch.Tensor:
    """`value` as a float32 batch (N, *shape) on `device`, or one VaePyroError saying what this
    model takes: real numbers (floats in [0, 1] where `unit`, for images), finite, shaped
    (N, *shape) or one item `shape`, which gains the batch axis. Nothing is reshaped: a
    transposed or mis-sized array is refused, never read as scrambled data."""
    dims = ", ".join(map(str, shape))
    takes = f"this model takes {name} of shape (N, {dims}) or one of shape {shape}"
    takes += ", floats in [0, 1]" if unit else ", real numbers"
    try:
        x = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise VaePyroError(f"{name}: not an array of numbers ({err}); {takes}") from None
    if not x.dtype.is_floating_point and (unit or x.dtype in (torch.bool, torch.uint8)):
        hint = " (pixels 0-255? x.float() / 255)" if x.dtype == torch.uint8 else ""
        raise VaePyroError(f"{name} of dtype {x.dtype}{hint}: {takes}")
    if x.dtype.is_complex:
        raise VaePyroError(f"{name} of dtype {x.dtype}: {takes}")
    x = x.unsqueeze(0) if tuple(x.shape) == shape else x
    if tuple(x.shape[1:]) != shape or x.dim() != len(shape) + 1:
        flipped = len(shape) == 1 and x.dim() == 2 and x.shape[0] == shape[0]
        hint = f" (transposed? give {name}.T)" if flipped else ""
        raise VaePyroError(f"{name} of shape {tuple(x.shape)}{hint}: {takes}")
    if x.shape[0] == 0:
        raise VaePyroError(f"{name}: an empty batch (0 of them); {takes}")
    x = x.to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise VaePyroError(f"{name} hold nan or inf: {takes}")
    low, high = float(x.min()), float(x.max())
    if unit and (low < 0 or high > 1):
        raise VaePyroError(f"{name} range from {low:.3g} to {high:.3g}: {takes}")
    return x


def _count(value: Any, name: str) -> int:
    """A count the caller gives (samples, particles): an integer >= 1, or one VaePyroError."""
    try:
        n = operator.index(value)  # int, numpy or torch integers; not 2.0, not "3"
    except TypeError:
        n = None
    if n is None or isinstance(value, bool) or n < 1:
        raise VaePyroError(f"{name}={value!r}: give an integer >= 1")
    return n


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
    same conf/), into run_dir (default outputs/<date>/<time>[_<experiment>]), with the same
    record (.hydra/, train.log) and its epoch lines printed (where logging is not set up, as
    in a notebook). A bad override or value is the CLI's one line, as a VaePyroError."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from vae_pyro import runs
    from vae_pyro import train as training
    from vae_pyro.cli import CONF_DIR, compose_message

    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = compose(config_name="train", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise VaePyroError(compose_message("train", err)) from None
    if run_dir is None:  # a name of the same second is taken: the next (runs.next_free)
        run_dir = runs.next_free(_default_run_dir(list(overrides)))
    try:
        with _printing():
            loss = training.train(cfg, Path(run_dir), overrides)
    except VaePyroError as err:  # the CLI's wording names its option; here it is run_dir
        err.args = (re.sub(r"hydra\.run\.dir(?!=)", "run_dir", str(err)),)
        raise
    return TrainResult(Path(run_dir), loss)


@contextlib.contextmanager
def _printing() -> Iterator[None]:
    """vae_pyro's INFO lines (the epochs) on stdout while fit trains, unless the caller's
    logging already shows them (the root logger has a handler)."""
    if logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    package = logging.getLogger("vae_pyro")
    level, package.level = package.level, logging.INFO
    package.addHandler(handler)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(level)


def metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl as a list of records (one per epoch), without loading the model."""
    path = Path(run_dir).expanduser() / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
