"""Image files read as what they are: the one reader of data=image_folder and sample's images=.

PIL decodes the file; what its mode means is decided here, once. 8-bit grey and colour are
divided by 255; 16-bit grey (I;16, or I holding 0-65535) by 65535; float images (F) are kept
when they lie in [0, 1] and otherwise stretched from their own minimum to their maximum, with a
warning (a float has no fixed range). Palette images go through RGB, or RGBA when they have a
transparent colour; alpha (LA, RGBA, PA) is composited on a white background, as most viewers
show it, rather than dropped; CMYK, YCbCr, LAB and HSV are converted to RGB by PIL. The result
is a float tensor (C, H, W) in [0, 1] with C = 1 (grey) or 3 (colour).

Imports the standard library, numpy and torch only (PIL and torchvision where used): figures.py
reads images= through it and must stay light to import.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vae_pyro.errors import VaePyroError

if TYPE_CHECKING:  # PIL is imported where an image is read
    from PIL import Image

log = logging.getLogger(__name__)

BACKGROUND = 1.0  # what a transparent pixel shows: white
_TO_RGB = {"CMYK", "YCbCr", "LAB", "HSV", "RGBX"}  # PIL's own conversions to RGB
_EIGHT_BIT = {"L", "LA", "RGB", "RGBA"}
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")


def read_image(path: str | Path, key: str = "") -> torch.Tensor:
    """An image file as a float tensor (C, H, W) in [0, 1], C = 1 or 3 (see the module's
    docstring). Data that does not decode is a VaePyroError naming the file (after `key: `, the
    option that named it); the machine's errors, which carry an errno (a missing file, the limit
    on open files), pass through as OSErrors for the shell to say."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return torch.from_numpy(np.ascontiguousarray(_scaled(_plain(img), Path(path))))
    # PIL's errors: UnidentifiedImageError and truncated data (OSErrors with no errno), a
    # damaged chunk (SyntaxError, ValueError), too many pixels (DecompressionBombError)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        if isinstance(err, OSError) and err.errno is not None:
            raise
        said = f"{key}: " if key else ""
        raise VaePyroError(f"{said}cannot read {path} as an image ({err})") from None


def _plain(img: Image.Image) -> Image.Image:
    """The image in one of L, LA, RGB, RGBA, I;16*, I or F."""
    mode = img.mode
    if mode in ("P", "PA"):
        keeps_alpha = mode == "PA" or "transparency" in img.info
        return img.convert("RGBA" if keeps_alpha else "RGB")
    if mode == "1":
        return img.convert("L")
    if mode in ("La", "RGBa"):  # premultiplied alpha
        return img.convert(mode.upper())
    if mode in _TO_RGB:
        return img.convert("RGB")
    return img


def _scaled(img: Image.Image, path: Path) -> np.ndarray:
    """(C, H, W) float32 in [0, 1]: each mode by its own range, alpha composited."""
    mode, a = img.mode, np.asarray(img)
    if mode in _EIGHT_BIT:
        x = a.astype(np.float32) / 255
    elif mode.startswith("I;16"):
        x = a.astype(np.float32) / 65535
    elif mode == "I" and a.size and 0 <= a.min() and a.max() <= 65535:
        x = a.astype(np.float32) / 65535  # 16-bit grey as some decoders give it
    elif mode in ("I", "F"):
        x = _stretched(a.astype(np.float64), mode, path).astype(np.float32)
    else:
        raise VaePyroError(
            f"{path}: PIL mode {mode} is not an image mode vae_pyro reads (grey, colour, 16-bit "
            "grey, float, palette, CMYK, with or without alpha); save it as an 8-bit PNG"
        )
    x = x[..., None] if x.ndim == 2 else x
    if mode in ("LA", "RGBA"):  # over the background, as a viewer shows it
        x = x[..., :-1] * x[..., -1:] + BACKGROUND * (1 - x[..., -1:])
    return x.transpose(2, 0, 1)


def _stretched(a: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """Float pixels in [0, 1] kept; any other range mapped from its minimum to its maximum."""
    finite = a[np.isfinite(a)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if mode == "F" and finite.size == a.size and 0 <= lo and hi <= 1:
        return a
    log.warning(
        "%s: its %s pixels range over [%g, %g], not [0, 1]: stretched from their minimum to "
        "their maximum (save the image scaled to [0, 1] to keep its own levels)",
        path,
        "float" if mode == "F" else "32-bit integer",
        lo,
        hi,
    )
    a = np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo)
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def with_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """A (C, H, W) image with 1 or 3 channels as `channels` (1: PIL's luma, 3: grey repeated)."""
    if x.shape[0] == channels:
        return x
    if channels == 1:
        return torch.tensordot(torch.tensor(LUMA, dtype=x.dtype), x, dims=1).unsqueeze(0)
    return x.expand(channels, -1, -1).contiguous()


def fit(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The shorter side resized (antialiased bilinear), then the centre height x width."""
    from torchvision.transforms.functional import center_crop, resize

    if tuple(x.shape[1:]) == (height, width):
        return x
    x = resize(x, min(height, width), antialias=True)
    return center_crop(x, [height, width]).clamp_(0, 1)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats as 0-255 (what the data sources hold)."""
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def border_mean(x: torch.Tensor) -> float:
    """The mean of the one-pixel frame of images (..., H, W): their background's brightness."""
    frame = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1)
    return float(frame.float().mean())
