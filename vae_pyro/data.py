"""Datasets as whole tensors on the training device, and the batch index iterator.

torchvision reads the files (no hand-written parsers). The split is converted once to a
float tensor in [0, 1] of shape (N, C, H, W); training batches are slices of a per-epoch
permutation of it, so the hot loop does no per-sample Python work.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import torch
from torchvision import datasets

from vae_pyro.errors import VaePyroError

log = logging.getLogger(__name__)

# name -> (torchvision class, files its raw folder must hold)
TORCHVISION = {
    "mnist": (
        datasets.MNIST,
        [
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        ],
    ),
}

DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "data"

# data.binarize: none = gray levels in [0, 1] (Pyro's tutorial); dynamic = a fresh Bernoulli draw
# of each training image every time it is used (Burda et al.'s IWAE protocol); static = one
# fixed draw. The test images are one fixed draw under both binarized protocols, the same draw
# for both, so their test numbers are on the same data.
BINARIZATIONS = ("none", "dynamic", "static")
STATIC_TRAIN_SEED = 0  # the torch.Generator seeds of the fixed draws (fixed, so runs compare)
TEST_SEED = 1


@dataclass
class Split:
    x: torch.Tensor  # (N, C, H, W) float in [0, 1], on the training device
    y: torch.Tensor  # (N,) int64 labels, same device

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class ImageData:
    train: Split
    test: Split
    binarize: str = "none"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])

    def train_batch(self, idx: torch.Tensor) -> torch.Tensor:
        """The training images at idx; under dynamic binarization a fresh draw on every call
        (from the global torch RNG, so a seeded run is reproducible)."""
        x = self.train.x[idx]
        return torch.bernoulli(x) if self.binarize == "dynamic" else x

    @property
    def protocol(self) -> str:
        """One line saying which data the numbers are for."""
        return {
            "none": "gray levels in [0, 1] as targets (train and test)",
            "dynamic": "dynamic binarization: each training image redrawn from Bernoulli(gray "
            f"level) at every use; test images one fixed draw (seed {TEST_SEED})",
            "static": f"static binarization: one fixed Bernoulli draw of the training images "
            f"(seed {STATIC_TRAIN_SEED}) and of the test images (seed {TEST_SEED})",
        }[self.binarize]


def _torchvision_split(name: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    cls, files = TORCHVISION[name]
    raw = root / cls.__name__ / "raw"
    try:
        # download=True only fetches what is missing: with the .gz files present it just
        # extracts them, offline. Its progress chatter goes to the log, not the terminal.
        with contextlib.redirect_stdout(io.StringIO()) as chatter:
            ds = cls(str(root), train=train, download=True)
    except (RuntimeError, URLError, OSError) as err:
        raise VaePyroError(
            f"{cls.__name__} not found in {raw} and could not be downloaded "
            f"({type(err).__name__}). Put the four files {', '.join(files)} in that "
            f"directory, or point data.root at a folder holding {cls.__name__}/raw/."
        ) from None
    if chatter.getvalue().strip():
        log.info(chatter.getvalue().strip())
    x = ds.data if isinstance(ds.data, torch.Tensor) else torch.as_tensor(ds.data)
    if x.ndim == 3:  # (N, H, W) grey -> (N, 1, H, W)
        x = x.unsqueeze(1)
    return x, torch.as_tensor(ds.targets)


def _fixed_draw(x: torch.Tensor, seed: int) -> torch.Tensor:
    """One Bernoulli(gray level) draw of uint8 images, as uint8 0/255, on the CPU (so the
    draw is the same whatever the training device)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(x.float().div_(255.0), generator=generator).to(torch.uint8).mul_(255)


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> Split:
    # Move the compact uint8 array, then convert on the device.
    return Split(x.to(device).float().div_(255.0), y.to(device).long())


def load_data(
    name: str = "mnist",
    root: str | Path | None = None,
    subset: int | None = None,
    device: torch.device | str = "cpu",
    binarize: str = "none",
) -> ImageData:
    """Load a dataset's train and test splits; `subset` keeps the first N training images.

    `binarize` is one of BINARIZATIONS; a static draw is made on the whole training set before
    `subset`, so a subset's images are the same as in the full run.
    """
    if name not in TORCHVISION:
        raise VaePyroError(
            f"unknown dataset data.name={name!r}; choose one of {sorted(TORCHVISION)}"
        )
    if binarize not in BINARIZATIONS:
        raise VaePyroError(
            f"unknown data.binarize={binarize!r}; choose one of {', '.join(BINARIZATIONS)}"
        )
    root = DEFAULT_ROOT if root is None else Path(root).expanduser()
    device = torch.device(device)
    x_train, y_train = _torchvision_split(name, root, train=True)
    if binarize == "static":
        x_train = _fixed_draw(x_train, STATIC_TRAIN_SEED)
    if subset is not None:
        if subset > len(x_train):
            raise VaePyroError(
                f"data.subset={subset} is larger than the {len(x_train)} training images of {name}"
            )
        x_train, y_train = x_train[:subset], y_train[:subset]
    x_test, y_test = _torchvision_split(name, root, train=False)
    if binarize != "none":
        x_test = _fixed_draw(x_test, TEST_SEED)
    return ImageData(
        _to_device(x_train, y_train, device), _to_device(x_test, y_test, device), binarize
    )


def minibatches(n: int, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Index tensors covering a fresh random permutation of range(n); the last may be short."""
    return iter(torch.randperm(n, device=device).split(batch_size))
