"""Datasets as whole tensors on the training device, and the batch index iterator.

torchvision reads the files (MNIST, FashionMNIST, CIFAR10, ImageFolder; no hand-written
parsers) and is imported only by the sources that need it; numpy reads npz arrays, among them
the MNIST that ships with the package (MNIST_NPZ). Nothing decoded is cached: every run reads
the files on disk. Every source's split is converted once to a float tensor in [0, 1] of shape
(N, C, H, W); training batches are slices of a per-epoch permutation of it, so the hot loop
does no per-sample Python work. Each source declares the config keys it reads (SOURCES), and
DataConfig, this module's config section, is beside them.
"""

# No `from __future__ import annotations`: OmegaConf reads DataConfig's field types at runtime.
import contextlib
import dataclasses
import hashlib
import io
import logging
import os
from collections import Counter, UserDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.error import URLError

import numpy as np
import torch

from vae_pyro import schema
from vae_pyro.errors import VaePyroError, first_line
from vae_pyro.files import cache_dir, shipped
from vae_pyro.images import fit, read_image, to_uint8, with_channels
from vae_pyro.schema import POSITIVE, Choice, Section, to_object

if TYPE_CHECKING:  # torchvision is imported where it reads files: it is slow to import
    from torchvision import datasets

log = logging.getLogger(__name__)

_IDX_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]


class _Lazy(UserDict):
    """A table whose entries name their torchvision.datasets class until one is read, so that
    importing this module does not import torchvision."""

    def __getitem__(self, name: str) -> tuple[Any, ...]:
        entry = self.data[name]
        if isinstance(entry[0], str):
            from torchvision import datasets

            entry = self.data[name] = (getattr(datasets, entry[0]), *entry[1:])
        return entry


# name -> (torchvision class, its folder under data.root, the files that folder must hold)
TORCHVISION = _Lazy(
    {
        "mnist": ("MNIST", "MNIST/raw", _IDX_FILES),
        "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw", _IDX_FILES),
        "cifar10": (
            "CIFAR10",
            "cifar-10-batches-py",
            [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"],
        ),
    }
)
# Where cifar10 looks when torchvision's batch files are absent: an npz with the same content
# (the layout of the shared offline copy: <data.root>/CIFAR10/cifar10.npz).
CIFAR10_NPZ = "CIFAR10/cifar10.npz"
# MNIST as one compressed npz (experiments/make_mnist_npz.py writes it from the IDX files, as
# torchvision decodes them): numpy reads it in ~0.2 s, without importing torchvision. A root
# without it is read by torchvision from <root>/MNIST/raw.
MNIST_NPZ = "MNIST/mnist.npz"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
DEFAULT_ROOT = shipped("_data", "data")  # the committed MNIST: data/, in a wheel vae_pyro/_data/

# data.binarize: none = gray levels in [0, 1] (Pyro's tutorial); dynamic = a fresh Bernoulli draw
# of each training image every time it is used (Burda et al.'s IWAE protocol); static = one
# fixed draw. The test images are one fixed draw under both binarized protocols, the same draw
# for both, so their test numbers are on the same data.
STATIC_TRAIN_SEED = 0  # the torch.Generator seeds of the fixed draws (fixed, so runs compare)
TEST_SEED = 1
PROTOCOLS = {  # data.binarize -> the line saying which data the numbers are for
    "none": "gray levels in [0, 1] as targets (train and test)",
    "dynamic": "dynamic binarization: each training image redrawn from Bernoulli(gray "
    f"level) at every use; test images one fixed draw (seed {TEST_SEED})",
    "static": f"static binarization: one fixed Bernoulli draw of the training images "
    f"(seed {STATIC_TRAIN_SEED}) and of the test images (seed {TEST_SEED})",
}


@dataclass
class Split:
    x: torch.Tensor  # (N, C, H, W) float in [0, 1], on the training device
    y: torch.Tensor  # (N,) int64 labels, same device
    classes: list[str] | None = None  # the label's names where the source has them

    def __len__(self) -> int:
        return self.x.shape[0]


Splits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # x/y train, x/y test


@dataclass(frozen=True)
class Fingerprint:
    """What identifies the data a run was trained on: a sha256 over its source's four arrays
    (uint8 images and labels of both splits, before data.subset and binarization, which the
    config records), their sizes, and where they were read (said, not compared)."""

    sha256: str
    train: int
    test: int
    source: str

    def __str__(self) -> str:
        return f"sha256 {self.sha256[:12]} ({self.train} train / {self.test} test, {self.source})"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fingerprint(splits: Splits, source: str) -> Fingerprint:
    """The Fingerprint of a source's splits (a sha256 of 55 MB, MNIST: ~30 ms)."""
    digest = hashlib.sha256()
    for t in splits:
        t = t.contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.numpy().data)
    return Fingerprint(digest.hexdigest(), len(splits[0]), len(splits[2]), source)


@dataclass
class ImageData:
    train: Split
    test: Split
    binarize: str = "none"
    fingerprint: Fingerprint | None = None  # of the source's arrays (see Fingerprint)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])

    def train_batch(self, idx: torch.Tensor) -> torch.Tensor:
        """The training images at idx; under dynamic binarization a fresh draw on every call
        (from the global torch RNG, so a seeded run is reproducible)."""
        x = self.train.x.index_select(0, idx)  # ~35% faster than x[idx] on the CPU
        return torch.bernoulli(x) if self.binarize == "dynamic" else x

    @property
    def protocol(self) -> str:
        """One line saying which data the numbers are for."""
        return PROTOCOLS[self.binarize]


def _read_only(folder: Path) -> bool:
    """No write permission, or a folder marked read-only (r-x), which root could still write."""
    return not os.access(folder, os.W_OK) or not folder.stat().st_mode & 0o222


def _torchvision_root(root: Path, folder: str, files: list[str]) -> Path:
    """The root to hand torchvision, which extracts .gz files beside them on first use.

    A read-only copy holding only the .gz files (a shared data folder) is mirrored by symlinks
    into a cache folder ($VAE_PYRO_CACHE, default ~/.cache/vae_pyro), so the extraction goes
    there and the copy is never written.
    """
    raw = root / folder
    if not raw.is_dir() or not all((raw / f).is_file() for f in files):
        return root
    if all((raw / f.removesuffix(".gz")).exists() for f in files) or not _read_only(raw):
        return root
    cache = cache_dir() / hashlib.sha1(str(raw.resolve()).encode()).hexdigest()[:12]
    (cache / folder).mkdir(parents=True, exist_ok=True)
    for f in files:
        with contextlib.suppress(FileExistsError):  # another process made it first
            (cache / folder / f).symlink_to((raw / f).resolve())
    return cache


def _check_files(cls: type, raw: Path) -> None:
    """A damaged download (truncated, corrupt) named as such, by torchvision's own MD5 records
    of its files, instead of torchvision's "not found" after it fails to fetch a good copy."""
    from torchvision.datasets.utils import check_integrity

    records = getattr(cls, "resources", None) or [
        *getattr(cls, "train_list", []),
        *getattr(cls, "test_list", []),
    ]
    for filename, md5 in records:
        file = raw / filename
        extracted = raw / filename.removesuffix(".gz")
        if file.is_file() and not (file != extracted and extracted.exists()):
            if not check_integrity(str(file), md5):
                raise VaePyroError(
                    f"{file} is damaged: its MD5 is not that of the published file (a truncated "
                    "or corrupt copy). Replace it with a good copy, or delete it to download it"
                )


def _torchvision_split(
    name: str, root: Path, train: bool, alternative: str = ""
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as uint8 (N, C, H, W) and int64 labels, read by torchvision from the files on
    disk every time (no decoded copy is kept: the data a run reads is the data on disk);
    `alternative` ends the not-found error."""
    cls, folder, files = TORCHVISION[name]
    _check_files(cls, root / folder)
    try:
        # download=True only fetches what is missing: with the .gz files present it just
        # extracts them, offline. Its progress chatter goes to the log, not the terminal.
        with contextlib.redirect_stdout(io.StringIO()) as chatter:
            ds = cls(str(_torchvision_root(root, folder, files)), train=train, download=True)
    except (RuntimeError, URLError, OSError) as err:
        raw = root / folder
        if all((raw / f).is_file() or (raw / f.removesuffix(".gz")).is_file() for f in files):
            raise VaePyroError(  # the files are there: the cause is elsewhere (a read-only copy)
                f"{cls.__name__}'s files are in {raw} but could not be read: {first_line(err)}. "
                f"torchvision extracts them beside the .gz files, or, for a read-only folder, "
                f"into $VAE_PYRO_CACHE ({cache_dir()}): make one of the two writable"
            ) from None
        raise VaePyroError(
            f"{cls.__name__} not found in {root / folder} and could not be downloaded "
            f"({type(err).__name__}). Put the files {', '.join(files)} in that "
            f"directory, or point data.root at a folder holding {folder}/{alternative}."
        ) from None
    if chatter.getvalue().strip():
        log.info(chatter.getvalue().strip())
    x = torch.as_tensor(ds.data)  # MNIST: (N, H, W) tensor; CIFAR10: (N, H, W, C) numpy
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()
    return x, torch.as_tensor(ds.targets)


def _npz_images(x: np.ndarray, key: str, path: Path) -> torch.Tensor:
    """uint8 N x H x W (grey) or N x H x W x C (C = 1 or 3) -> (N, C, H, W)."""
    if x.dtype != np.uint8:
        raise VaePyroError(
            f"{path}: {key} has dtype {x.dtype}, expected uint8 pixels 0-255 (from floats in "
            f"[0, 1]: np.round(x * 255).astype(np.uint8))"
        )
    if x.ndim == 3:
        return torch.from_numpy(x).unsqueeze(1)
    if x.ndim == 4 and x.shape[-1] in (1, 3):
        return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    hint = ""
    if x.ndim == 4 and x.shape[1] in (1, 3):
        hint = "; it looks channels-first: use x.transpose(0, 2, 3, 1)"
    raise VaePyroError(
        f"{path}: {key} has shape {x.shape}, expected N x H x W (grey) or N x H x W x C with "
        f"C = 1 or 3 (channels last){hint}"
    )


def _npz_labels(y: np.ndarray, key: str, n: int, path: Path) -> torch.Tensor:
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
        raise VaePyroError(
            f"{path}: {key} has shape {y.shape} and dtype {y.dtype}, expected {n} integer "
            f"labels (one per image)"
        )
    return torch.from_numpy(y.astype(np.int64))


def _npz_splits(path: Path, expect: tuple[int, int, int] | None = None) -> Splits:
    """An npz with x_train, y_train, x_test, y_test; `expect` is the image shape a named
    dataset must have (cifar10: 3 x 32 x 32)."""
    if not path.is_file():
        raise VaePyroError(
            f"npz file not found: {path}. data.path must name an .npz holding {', '.join(NPZ_KEYS)}"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise VaePyroError(
                    f"{path} has no {', '.join(missing)}: an npz dataset needs the arrays "
                    f"{', '.join(NPZ_KEYS)} (this file has {', '.join(sorted(npz.files))})"
                )
            arrays = {k: npz[k] for k in NPZ_KEYS}
    except VaePyroError:
        raise
    except Exception as err:  # not a zip, truncated, object arrays (would need pickle)
        reason = first_line(err)
        raise VaePyroError(f"cannot read {path} as an npz of arrays ({reason})") from None
    x_train = _npz_images(arrays["x_train"], "x_train", path)
    x_test = _npz_images(arrays["x_test"], "x_test", path)
    for x, key in ((x_train, "x_train"), (x_test, "x_test")):
        if len(x) == 0:
            raise VaePyroError(
                f"{path}: {key} holds no images (shape {tuple(arrays[key].shape)}): a dataset "
                "needs at least one training and one test image"
            )
        if expect is not None and tuple(x.shape[1:]) != expect:
            raise VaePyroError(
                f"{path}: {key} holds images of shape (C, H, W) = "
                f"{tuple(x.shape[1:])}, expected {expect}"
            )
    if x_train.shape[1:] != x_test.shape[1:]:
        raise VaePyroError(
            f"{path}: train images are {tuple(x_train.shape[1:])} and test images "
            f"{tuple(x_test.shape[1:])} (C, H, W); both splits need one shape"
        )
    y_train = _npz_labels(arrays["y_train"], "y_train", len(x_train), path)
    y_test = _npz_labels(arrays["y_test"], "y_test", len(x_test), path)
    return x_train, y_train, x_test, y_test


def _cifar10_splits(root: Path, path: Path | None) -> Splits:
    """torchvision's batch files under root when present, else an npz copy: data.path, or
    <root>/CIFAR10/cifar10.npz (the offline copy's layout), else a download."""
    if path is not None:
        return _npz_splits(path, expect=(3, 32, 32))
    npz = root / CIFAR10_NPZ
    if not (root / TORCHVISION["cifar10"][1]).is_dir() and npz.is_file():
        log.info("CIFAR-10 from %s (torchvision's batch files are not in %s)", npz, root)
        return _npz_splits(npz, expect=(3, 32, 32))
    also = f", or at {CIFAR10_NPZ} (an npz with {', '.join(NPZ_KEYS)}), or set data.path"
    return (
        *_torchvision_split("cifar10", root, train=True, alternative=also),
        *_torchvision_split("cifar10", root, train=False, alternative=also),
    )


def _folder_image(image_size: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """images.read_image's float (C, H, W) -> uint8 RGB, resized to image_size if given
    (shorter side to image_size, then the centre square)."""

    def convert(x: torch.Tensor) -> torch.Tensor:
        x = x if image_size is None else fit(x, image_size, image_size)
        return to_uint8(with_channels(x, 3))

    return convert


def _folder_split(folder: Path, image_size: int | None) -> "datasets.ImageFolder":
    from torchvision import datasets

    if not folder.is_dir():
        raise VaePyroError(
            f"image folder not found: {folder}. data.path must hold train/ and test/, each with "
            f"one sub-folder of images per class (e.g. {folder}/cat/0001.png)"
        )
    try:  # each image read as what it is (images.read_image: 16-bit, float, alpha, palette)
        return datasets.ImageFolder(
            str(folder), transform=_folder_image(image_size), loader=read_image
        )
    except (FileNotFoundError, OSError) as err:  # no class folders, or no images in them
        raise VaePyroError(f"no images found in {folder}: {err}") from None


def _image_folder_splits(path: Path, image_size: int | None) -> Splits:
    """torchvision ImageFolder over path/train and path/test, decoded once into uint8 tensors.

    Images are read by images.read_image, as RGB; when every image is grey (R = G = B) one
    channel is kept. Labels are train's class indices (a test class without training images is
    an error).
    """
    train, test = (_folder_split(path / split, image_size) for split in ("train", "test"))
    unknown = sorted(set(test.classes) - set(train.classes))
    if unknown:
        raise VaePyroError(f"{path / 'test'} has classes {unknown} that {path / 'train'} lacks")
    images: list[list[torch.Tensor]] = [[], []]
    sizes: Counter = Counter()
    example: dict[tuple[int, int], str] = {}
    for ds, out in ((train, images[0]), (test, images[1])):
        for i, (file, _) in enumerate(ds.samples):
            img = ds[i][0]  # read_image: an image that does not decode is a VaePyroError
            out.append(img)
            sizes[tuple(img.shape[1:])] += 1
            example.setdefault(tuple(img.shape[1:]), file)
    if len(sizes) > 1:
        found = ", ".join(
            f"{h}x{w} ({n} images, e.g. {example[(h, w)]})" for (h, w), n in sizes.most_common(4)
        )
        raise VaePyroError(
            f"the images in {path} differ in size (H x W): {found}. Set data.image_size=N to "
            "resize them all (shorter side to N, then the centre N x N)"
        )
    for split, found in (("train", images[0]), ("test", images[1])):
        if not found:  # ImageFolder refuses empty class folders: a last guard
            raise VaePyroError(f"{path / split} holds no images")
    x_train, x_test = torch.stack(images[0]), torch.stack(images[1])
    if (x_train == x_train[:, :1]).all() and (x_test == x_test[:, :1]).all():
        x_train, x_test = x_train[:, :1].contiguous(), x_test[:, :1].contiguous()
    to_train = {i: train.class_to_idx[c] for i, c in enumerate(test.classes)}
    y_test = torch.tensor([to_train[t] for t in test.targets], dtype=torch.int64)
    return x_train, torch.tensor(train.targets, dtype=torch.int64), x_test, y_test


def _fixed_draw(x: torch.Tensor, seed: int) -> torch.Tensor:
    """One Bernoulli(gray level) draw of uint8 images, as uint8 0/255, on the CPU (so the
    draw is the same whatever the training device)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(x.float().div_(255.0), generator=generator).to(torch.uint8).mul_(255)


def _to_device(
    x: torch.Tensor, y: torch.Tensor, device: torch.device, classes: list[str] | None
) -> Split:
    # Move the compact uint8 array, then convert on the device.
    return Split(x.to(device).float().div_(255.0), y.to(device).long(), classes)


def _path(path: Path | None, name: str, what: str) -> Path:
    if path is None:
        raise VaePyroError(f"data={name} needs data.path=<{what}>")
    return path


class Source(Protocol):
    """The interface of a dataset (data.name): the whole train and test splits as uint8
    (N, C, H, W) images and int64 labels, from torchvision's files under `root`, or from `path`
    (an npz, an image folder) resized to `image_size` where the source reads it. `reads` names
    the ones it reads: a value given to another is refused (config.refuse_unread)."""

    reads: tuple[str, ...]

    def __call__(self, root: Path, path: Path | None, image_size: int | None) -> Splits: ...


@dataclass(frozen=True)
class _Reader:
    """A Source: a function of (root, path, image_size) and which of them it reads."""

    read: Callable[[Path, Path | None, int | None], Splits]
    reads: tuple[str, ...]

    def __call__(self, root: Path, path: Path | None, image_size: int | None) -> Splits:
        return self.read(root, path, image_size)


def _torchvision_splits(name: str) -> Callable[[Path, Path | None, int | None], Splits]:
    def read(root: Path, path: Path | None, image_size: int | None) -> Splits:
        shipped_npz = root / MNIST_NPZ
        if name == "mnist" and shipped_npz.is_file():
            return _npz_splits(shipped_npz, expect=(1, 28, 28))
        return (
            *_torchvision_split(name, root, train=True),
            *_torchvision_split(name, root, train=False),
        )

    return read


# data.name -> the reader of its four tensors. npz and image_folder read data.path, the others
# data.root (cifar10 both). A new source: one reader and one YAML file.
SOURCES: dict[str, Source] = {
    "mnist": _Reader(_torchvision_splits("mnist"), ("root",)),
    "fashion_mnist": _Reader(_torchvision_splits("fashion_mnist"), ("root",)),
    "cifar10": _Reader(lambda root, path, size: _cifar10_splits(root, path), ("root", "path")),
    "npz": _Reader(
        lambda root, path, size: _npz_splits(_path(path, "npz", "an .npz file")), ("path",)
    ),
    "image_folder": _Reader(
        lambda root, path, size: _image_folder_splits(
            _path(path, "image_folder", "a folder holding train/ and test/"), size
        ),
        ("path", "image_size"),
    ),
}


DataName = Choice("DataName", {name: name for name in SOURCES}, module=__name__)
Binarize = Choice("Binarize", {name: name for name in PROTOCOLS}, module=__name__)


@dataclass
class DataConfig(Section):
    PREFIX: ClassVar[str] = "data."
    name: DataName = schema.key(DataName.mnist, "dataset (conf/data/<name>.yaml)")
    root: str | None = schema.key(
        None, "folder holding the torchvision files; null = data/", path=True
    )
    path: str | None = schema.key(
        None, "npz file or image folder (data=npz | image_folder)", path=True
    )
    image_size: int | None = schema.key(
        None, "image_folder: resize to N x N; null = keep", POSITIVE
    )
    subset: int | None = schema.key(None, "train on the first N training images only", POSITIVE)
    batch_size: int = schema.key(256, "training batch size", POSITIVE)
    binarize: Binarize = schema.key(
        Binarize.none, "gray levels as targets | fresh Bernoulli draw per use | one fixed draw"
    )

    def __post_init__(self) -> None:
        """root and path absolute: the run's config (checkpoint, .hydra) names the same data
        from whichever directory evaluate, sample or a resume runs."""
        super().__post_init__()
        for name in ("root", "path"):
            if getattr(self, name) is not None:
                setattr(self, name, os.path.abspath(getattr(self, name)))


def load_data(
    name: str = "mnist",
    root: str | Path | None = None,
    subset: int | None = None,
    device: torch.device | str = "cpu",
    binarize: str = "none",
    path: str | Path | None = None,
    image_size: int | None = None,
) -> ImageData:
    """Load a dataset's train and test splits; `subset` keeps the first N training images.

    `name` is one of SOURCES: torchvision's files under `root` (null: the project's data/),
    or `path` (an npz, an image folder; cifar10 also takes an npz copy). `image_size` resizes
    image_folder images. `binarize` is one of config.Binarize; a static draw is made on the whole
    training set before `subset`, so a subset's images are the same as in the full run.
    """
    root = DEFAULT_ROOT if root is None else Path(root).expanduser()
    path = None if path is None else Path(path).expanduser()
    device = torch.device(device)
    splits = SOURCES[name](root, path, image_size)
    x_train, y_train, x_test, y_test = splits
    for split, x in (("training", x_train), ("test", x_test)):
        if len(x) == 0:  # each source names its own empty file or folder; any other: here
            raise VaePyroError(f"data.name={name} gave no {split} images ({path or root})")
    source = str(path if path is not None and "path" in SOURCES[name].reads else root)
    found = fingerprint(splits, source)
    if binarize == "static":
        x_train = _fixed_draw(x_train, STATIC_TRAIN_SEED)
    if subset is not None:
        if subset > len(x_train):
            raise VaePyroError(
                f"data.subset={subset} is larger than the {len(x_train)} training images of {name}"
            )
        x_train, y_train = x_train[:subset], y_train[:subset]
    if binarize != "none":
        x_test = _fixed_draw(x_test, TEST_SEED)
    classes = None
    if name == "image_folder":  # the folders' names, numbered as ImageFolder numbers them
        from torchvision.datasets.folder import find_classes

        classes = find_classes(str(path / "train"))[0]
    return ImageData(
        _to_device(x_train, y_train, device, classes),
        _to_device(x_test, y_test, device, classes),
        binarize,
        found,
    )


def load_data_config(
    cfg: DataConfig | Mapping[str, Any],
    device: torch.device | str = "cpu",
    subset: int | None = None,
) -> ImageData:
    """A config's `data` section -> ImageData, the one way train, sample and evaluate read data.

    A mapping is read through the schema (its defaults fill what it lacks). `subset` overrides
    data.subset (the loaders that need only the test split pass 1).
    """
    cfg = to_object(cfg, DataConfig)
    return load_data(
        str(cfg.name),
        cfg.root,
        cfg.subset if subset is None else subset,
        device,
        str(cfg.binarize),
        cfg.path,
        cfg.image_size,
    )


def one_per_class(y: torch.Tensor, n: int = 10) -> torch.Tensor:
    """Index of the first test image of each of the first n classes (fixed, readable figures)."""
    return torch.stack([(y == c).nonzero()[0, 0] for c in y.unique()[:n]])
