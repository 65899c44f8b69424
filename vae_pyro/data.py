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

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])


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


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> Split:
    # Move the compact uint8 array, then convert on the device.
    return Split(x.to(device).float().div_(255.0), y.to(device).long())


def load_data(
    name: str = "mnist",
    root: str | Path | None = None,
    subset: int | None = None,
    device: torch.device | str = "cpu",
) -> ImageData:
    """Load a dataset's train and test splits; `subset` keeps the first N training images."""
    if name not in TORCHVISION:
        raise VaePyroError(
            f"unknown dataset data.name={name!r}; choose one of {sorted(TORCHVISION)}"
        )
    root = DEFAULT_ROOT if root is None else Path(root).expanduser()
    device = torch.device(device)
    x_train, y_train = _torchvision_split(name, root, train=True)
    if subset is not None:
        if subset > len(x_train):
            raise VaePyroError(
                f"data.subset={subset} is larger than the {len(x_train)} training images of {name}"
            )
        x_train, y_train = x_train[:subset], y_train[:subset]
    x_test, y_test = _torchvision_split(name, root, train=False)
    return ImageData(_to_device(x_train, y_train, device), _to_device(x_test, y_test, device))


def minibatches(n: int, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Index tensors covering a fresh random permutation of range(n); the last may be short."""
    return iter(torch.randperm(n, device=device).split(batch_size))
