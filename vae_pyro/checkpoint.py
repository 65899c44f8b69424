"""Atomic checkpoint save/load: modules, optimizer, epoch, RNG state, metrics, resolved config."""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vae_pyro.errors import VaePyroError
from vae_pyro.model import VAE, build_vae

FORMAT = "vae-pyro-checkpoint/1"


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


def save(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write to a temp file in the same directory, fsync, then rename over the target.

    A crash at any point leaves either the previous checkpoint or the new one, never half of one,
    and NaN/inf weights are never written.
    """
    path = Path(path)
    for name in ("encoder", "decoder"):
        bad = [k for k, v in payload.get(name, {}).items() if not torch.isfinite(v).all()]
        if bad:
            raise VaePyroError(f"refusing to write non-finite {name} weights {bad} to {path}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):  # disk full, quota, permissions: the old file is intact
            raise VaePyroError(
                f"could not write checkpoint {path}: {err.strerror or err}; "
                "the previous checkpoint (if any) is unchanged"
            ) from None
        raise


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by `save`, or raise VaePyroError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise VaePyroError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for truncated/corrupt files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VaePyroError(
            f"cannot read checkpoint {path}: the file is truncated, corrupt or not a "
            f"checkpoint ({reason})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise VaePyroError(f"{path} is not a vae-pyro checkpoint (expected format {FORMAT})")
    return payload


def load_vae(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[VAE, dict[str, Any]]:
    """Rebuild the trained VAE from a checkpoint alone (its saved config sizes the networks).

    Returns the VAE on `device` in eval mode and the checkpoint dict (config, metrics, ...).
    A checkpoint whose weights do not fit the networks its config describes is one clear error.
    """
    ckpt = load(path, map_location=device)
    try:
        vae = build_vae(tuple(ckpt["image_shape"]), ckpt["config"]["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise VaePyroError(f"checkpoint {path} has no usable model config ({err!r})") from None
    restore_networks(vae, ckpt, path)
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


def restore_networks(vae: VAE, ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """Load the encoder/decoder weights into `vae`, or one clear error if they do not fit."""
    if ckpt.get("image_shape") is not None:
        check_image_shape(path, ckpt["image_shape"], vae.image_shape, "this run's images are")
    try:
        vae.encoder.load_state_dict(ckpt["encoder"])
        vae.decoder.load_state_dict(ckpt["decoder"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise VaePyroError(
            f"checkpoint {path} does not match the networks (z_dim, hidden_dim or image shape "
            f"differ): {first}"
        ) from None
