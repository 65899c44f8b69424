"""The checkpoint: what it holds (built and read here alone), its format, the atomic write.

A checkpoint is one torch.save'd dict: format, epoch, position (where an interrupted epoch
stopped), the weights of the networks (encoder, decoder, and the prior's and posterior's learned
parts), optimizer state, RNG state, metrics history, image shape, the resolved training
config (data.root and data.path absolute) and the fingerprint of the data it was trained on
(data.Fingerprint: absent from checkpoints written before it was recorded). Readers get a
`Checkpoint`; nothing else knows the keys.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pyro.optim import PyroOptim

from vae_pyro.config import ModelConfig
from vae_pyro.data import DataConfig, Fingerprint, ImageData
from vae_pyro.errors import VaePyroError, first_line, os_error_in, os_reason
from vae_pyro.files import atomic_write
from vae_pyro.model import VAE, build_vae
from vae_pyro.schema import as_dict, config_diff, to_object

log = logging.getLogger(__name__)

# Format 2 adds the prior's and posterior's weights (VampPrior, flows). Format 1 (the first
# release) has none: its prior is N(0, I), its posterior the diagonal Normal; it named the ELBO
# by its Pyro class (`elbo._target_`), read as the `elbo.name` that replaced it.
FORMAT = "vae-pyro-checkpoint/2"
READABLE = ("vae-pyro-checkpoint/1", FORMAT)
NETWORKS = ("encoder", "decoder", "prior_net", "posterior_net", "lower")  # the VAE's parts
_ELBO_NAMES = {
    "pyro.infer.Trace_ELBO": "trace",
    "pyro.infer.TraceMeanField_ELBO": "meanfield",
    "pyro.infer.JitTrace_ELBO": "jit",
}


@dataclass
class Position:
    """Where an interrupted epoch stopped: its permutation, the next step, the loss summed so
    far (over all ranks) and the seconds spent, and how many processes ran it (the ranks'
    slices of each step depend on it; checkpoints without it come from one process)."""

    perm: torch.Tensor
    step: int
    total: float
    seconds: float
    world: int = 1


@dataclass
class Checkpoint:
    path: Path
    epoch: int  # epochs completed
    position: Position | None
    metrics: list[dict]
    config: dict[str, Any]  # the resolved training config, as plain data
    image_shape: tuple[int, ...]
    _payload: dict[str, Any]
    data_fingerprint: dict[str, Any] | None = None  # data.Fingerprint's fields; None: older

    @property
    def model_config(self) -> ModelConfig:
        return _section(self, "model", ModelConfig)

    @property
    def data_config(self) -> DataConfig:
        return _section(self, "data", DataConfig)


def _section(ckpt: Checkpoint, name: str, schema: type) -> Any:
    try:
        return to_object(ckpt.config[name], schema)
    except (KeyError, TypeError, VaePyroError) as err:
        raise VaePyroError(f"checkpoint {ckpt.path} has no usable {name} config ({err})") from None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build(
    vae: VAE,
    optimizer: PyroOptim,
    config: dict[str, Any],
    epoch: int,
    metrics: list[dict],
    position: Position | None = None,
    data_fingerprint: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint of a training run at this moment (RNG state included)."""
    return {
        **({} if data_fingerprint is None else {"data_fingerprint": data_fingerprint}),
        "epoch": epoch,
        "position": None if position is None else vars(position).copy(),
        **{name: getattr(vae, name).state_dict() for name in NETWORKS},
        "optimizer": optimizer.get_state(),
        "rng": rng_state(),
        "metrics": list(metrics),
        "image_shape": list(vae.image_shape),
        "config": config,
    }


def save(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write to a temp file in the same directory, fsync, then rename over the target.

    A crash at any point leaves either the previous checkpoint or the new one, never half of one,
    and NaN/inf weights are never written. The file gets the user's umask (not mkstemp's 0600).
    """
    path = Path(path)
    for name in NETWORKS:
        weights = payload.get(name, {})
        bad = [k for k, v in weights.items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            raise VaePyroError(f"refusing to write non-finite {name} weights {bad} to {path}")
    try:
        atomic_write(path, lambda f: torch.save({"format": FORMAT, **payload}, f))
    except (OSError, RuntimeError) as err:  # disk full, quota, a file-size limit, permissions:
        # torch.save reports a failed write as a RuntimeError raised while handling the OSError
        cause = os_error_in(err)
        reason = os_reason(cause) if cause else (str(err).strip() or repr(err)).splitlines()[0]
        kept = "the previous checkpoint is unchanged" if path.is_file() else "none was written"
        raise VaePyroError(f"could not write checkpoint {path}: {reason}; {kept}") from None


def _not_a_checkpoint(path: Path) -> str | None:
    """What the file is instead of a torch.save zip archive, or None if it could be one."""
    with path.open("rb") as f:
        head = f.read(4096)
    if not head:
        return "it is empty"
    if head.startswith(b"PK"):
        return None
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "it is not a PyTorch file (no zip archive: random or foreign bytes)"
    return "it is a text file, not a PyTorch file"


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw dict of a checkpoint written by `save`, or a VaePyroError naming the file and
    what it is instead (empty, text, foreign bytes, truncated, another format)."""
    path = Path(path)
    if not path.is_file():
        raise VaePyroError(f"checkpoint not found: {path}")
    instead = _not_a_checkpoint(path)
    if instead is not None:
        raise VaePyroError(f"{path} is not a vae-pyro checkpoint: {instead}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for truncated/corrupt archives
        reason = first_line(err)
        raise VaePyroError(
            f"cannot read checkpoint {path}: the file is truncated or damaged ({reason})"
        ) from None
    found = payload.get("format") if isinstance(payload, dict) else None
    version = found.removeprefix("vae-pyro-checkpoint/") if isinstance(found, str) else ""
    if found != version and version.isdigit() and int(version) > int(FORMAT.split("/")[1]):
        raise VaePyroError(
            f"{path} was written by a newer vae-pyro (checkpoint format {found}; this one reads "
            f"up to {FORMAT}): upgrade vae-pyro to read it"
        )
    if found not in READABLE:
        raise VaePyroError(
            f"{path} is not a vae-pyro checkpoint: it is a PyTorch file of "
            f"{'format ' + repr(found) if found else 'another program'} (expected {FORMAT})"
        )
    return payload


def _upgrade(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config in today's shape (see _ELBO_NAMES)."""
    elbo = dict(config.get("elbo") or {})
    if "_target_" in elbo:
        name = _ELBO_NAMES.get(elbo.pop("_target_"), "trace")
        keep = ("num_particles", "vectorize_particles")
        config = {**config, "elbo": {"name": name, **{k: elbo[k] for k in keep if k in elbo}}}
    return config


def read(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """A checkpoint, any released version, as a `Checkpoint`."""
    payload = load(path, map_location)
    try:
        position = payload.get("position")
        return Checkpoint(
            path=Path(path),
            epoch=int(payload["epoch"]),
            position=None if position is None else Position(**position),
            metrics=list(payload.get("metrics", [])),
            config=_upgrade(payload["config"]),
            image_shape=tuple(payload["image_shape"]),
            _payload=payload,
            data_fingerprint=payload.get("data_fingerprint"),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise VaePyroError(f"checkpoint {path} lacks {err} (an incomplete checkpoint)") from None


def _differences(saved: ModelConfig, current: ModelConfig) -> list[str]:
    return [
        f"checkpoint model.{k}={before}, this command model.{k}={after}"
        for k, (before, after) in config_diff(as_dict(saved), as_dict(current)).items()
        if k not in ModelConfig.TRAINING_ONLY
    ]


def restore_networks(vae: VAE, ckpt: Checkpoint) -> None:
    """Load the encoder/decoder weights into `vae`, or one clear error if they do not fit."""
    check_image_shape(ckpt.path, ckpt.image_shape, vae.image_shape, "this run's images are")
    differ = _differences(ckpt.model_config, vae.cfg)
    if differ:
        raise VaePyroError(
            f"checkpoint {ckpt.path} holds other networks than this command builds: "
            f"{'; '.join(differ)}. Use the run's settings, or start a new run dir"
        )
    try:
        for name in NETWORKS:  # format 1 has no prior or posterior weights: none to load
            getattr(vae, name).load_state_dict(ckpt._payload.get(name, {}))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        first = first_line(err)
        raise VaePyroError(
            f"checkpoint {ckpt.path}: its weights do not fit the networks its config describes "
            f"({first.rstrip(':')})"
        ) from None


def restore_training(vae: VAE, optimizer: PyroOptim, ckpt: Checkpoint) -> None:
    """Networks, optimizer state and RNG state: training continues where it stopped."""
    restore_networks(vae, ckpt)
    optimizer.set_state(ckpt._payload["optimizer"])
    set_rng_state(ckpt._payload["rng"])


def load_vae(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[VAE, Checkpoint]:
    """Rebuild the trained VAE from a checkpoint alone (its saved config sizes the networks).

    Returns the VAE on `device` in eval mode and the checkpoint.
    """
    ckpt = read(path, map_location=device)
    vae = build_vae(ckpt.image_shape, ckpt.model_config)
    restore_networks(vae, ckpt)
    return vae.to(device).eval(), ckpt


def check_image_shape(
    path: str | os.PathLike, trained: Sequence[int], given: Sequence[int], where: str = ""
) -> None:
    """One clear error when images do not fit a checkpoint's networks; a grey/colour mix-up (the
    likeliest) names the channel counts. `where` says where the images came from."""
    trained, given = tuple(trained), tuple(given)
    if trained == given:
        return
    what = (
        f"{trained[0]} channel(s) vs {given[0]}"
        if len(trained) == len(given) == 3 and trained[0] != given[0]
        else "another image size"
    )
    raise VaePyroError(
        f"checkpoint {path} was trained on images of shape {trained} (C, H, W), but "
        f"{where or 'these images are'} {given}: {what}. Use the data the run was trained on, "
        "or train a new run on these images"
    )


def check_images(data: ImageData, ckpt: Checkpoint) -> None:
    """The data a checkpoint's config names must still give the images its networks take (the
    files or data.image_size may have changed since): one clear error before any work."""
    where = f"data.name={ckpt.data_config.name} now gives"
    check_image_shape(ckpt.path, ckpt.image_shape, data.image_shape, where)


def check_data(data: ImageData, ckpt: Checkpoint, allow: bool, key: str) -> bool:
    """The data a checkpoint's config names must still be the data it was trained on (its
    Fingerprint): one clear error naming both, unless `key` (an override) is true. Returns
    whether a difference was let through; a checkpoint without a fingerprint (older) is not
    checked."""
    saved = ckpt.data_fingerprint
    if saved is None or data.fingerprint is None or saved["sha256"] == data.fingerprint.sha256:
        return False
    trained = Fingerprint(**saved)
    cfg = ckpt.data_config
    given = "data.path" if cfg.path is not None else "data.root"
    if allow:
        log.warning(
            "%s=true: checkpoint %s was trained on data %s; %s now gives %s",
            key,
            ckpt.path,
            trained,
            given,
            data.fingerprint,
        )
        return True
    raise VaePyroError(
        f"checkpoint {ckpt.path} was trained on data {trained}; {given} now gives "
        f"{data.fingerprint}: the data changed since training. Restore the data the run was "
        f"trained on, or give {key}=true to use these data anyway"
    )
