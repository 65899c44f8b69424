"""Every data source (data=mnist|fashion_mnist|cifar10|npz|image_folder) ends as the same
in-memory (N, C, H, W) float tensor in [0, 1] with labels; bad inputs are one clear error.

Synthetic files of the real shapes are made in temp dirs, always. The genuine Fashion-MNIST and
CIFAR-10 copies are used when the shared data folder is there (skipped with the reason if not).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets

from vae_pyro import data as data_module
from vae_pyro.data import load_data, load_data_config
from vae_pyro.errors import VaePyroError

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"  # the offline copies beside the repository, if any
FASHION_RAW = SHARED / "FashionMNIST" / "raw"
CIFAR_NPZ = SHARED / "CIFAR10" / "cifar10.npz"
needs_fashion = pytest.mark.skipif(
    not (FASHION_RAW / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"genuine Fashion-MNIST not found at {FASHION_RAW}",
)
needs_cifar = pytest.mark.skipif(
    not CIFAR_NPZ.is_file(), reason=f"CIFAR-10 npz copy not found at {CIFAR_NPZ}"
)


def make_npz(path: Path, image: tuple[int, ...], n_train: int = 40, n_test: int = 12, **over):
    """An npz dataset of random uint8 images (N, *image) and labels 0-3; `over` replaces arrays."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, *image), dtype=np.uint8),
        "y_train": np.arange(n_train) % 4,
        "x_test": rng.integers(0, 256, (n_test, *image), dtype=np.uint8),
        "y_test": np.arange(n_test) % 4,
    }
    arrays.update(over)
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def make_folder(root: Path, sizes: dict[str, tuple[int, int]], mode: str = "RGB") -> Path:
    """root/{train,test}/<class>/<i>.png: 3 train and 2 test images per class; sizes[class] =
    (width, height) of that class's images."""
    rng = np.random.default_rng(1)
    for split, n in (("train", 3), ("test", 2)):
        for cls, (w, h) in sizes.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                shape = (h, w, 3) if mode == "RGB" else (h, w)
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(pixels, mode).save(root / split / cls / f"{i}.png")
    return root


def check(data, shape: tuple[int, int, int], n_train: int, n_test: int) -> None:
    """Shapes, counts, float32 in [0, 1] and int64 labels of a loaded ImageData."""
    assert data.image_shape == shape
    assert data.train.x.shape == (n_train, *shape) and data.test.x.shape == (n_test, *shape)
    for split in (data.train, data.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert 0 <= split.x.min() and split.x.max() <= 1
        assert len(split.y) == len(split.x)


# --- npz ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "shape"),
    [((28, 28), (1, 28, 28)), ((28, 28, 1), (1, 28, 28)), ((32, 32, 3), (3, 32, 32))],
)
def test_npz_grey_and_colour(tmp_path, image, shape):
    path = make_npz(tmp_path / "d.npz", image)
    data = load_data("npz", path=path)
    check(data, shape, 40, 12)
    raw = np.load(path)["x_train"]
    first = torch.from_numpy(raw[0].reshape(*image[:2], -1)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(data.train.x[0], first)  # channels last -> first, no mixing
    assert data.train.y.tolist() == (np.arange(40) % 4).tolist()


def test_npz_subset_binarize_and_config(tmp_path):
    path = make_npz(tmp_path / "d.npz", (8, 8, 3))
    data = load_data_config(
        {"name": "npz", "path": str(path), "subset": 10, "binarize": "static"}, "cpu"
    )
    check(data, (3, 8, 8), 10, 12)
    assert set(data.train.x.unique().tolist()) == {0.0, 1.0}
    assert set(data.test.x.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"y_test": None}, "has no y_test: an npz dataset needs the arrays x_train, y_train"),
        ({"x_train": np.zeros((4, 8, 8), np.float32)}, "x_train has dtype float32, expected uint8"),
        ({"x_train": np.zeros((4, 3, 8, 8), np.uint8)}, "it looks channels-first"),
        (
            {"x_test": np.zeros((4, 8, 8, 2), np.uint8)},
            "expected N x H x W (grey) or N x H x W x C",
        ),
        ({"x_test": np.zeros((12, 9, 8, 3), np.uint8)}, "both splits need one shape"),
        ({"y_train": np.arange(3)}, "y_train has shape (3,) and dtype int64, expected 40 integer"),
        ({"y_train": np.zeros(40, np.float32)}, "expected 40 integer labels"),
    ],
)
def test_npz_bad_arrays_are_one_clear_error(tmp_path, over, message):
    path = make_npz(tmp_path / "bad.npz", (8, 8, 3), **over)
    with pytest.raises(VaePyroError) as err:
        load_data("npz", path=path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_npz_missing_or_unreadable_file(tmp_path):
    with pytest.raises(VaePyroError, match="data=npz needs data.path"):
        load_data("npz")
    with pytest.raises(VaePyroError, match=f"npz file not found: {tmp_path / 'no.npz'}"):
        load_data("npz", path=tmp_path / "no.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(VaePyroError, match="cannot read .*junk.npz as an npz"):
        load_data("npz", path=tmp_path / "junk.npz")
    np.savez(
        tmp_path / "obj.npz",
        x_train=np.array([{}], dtype=object),
        y_train=[0],
        x_test=[0],
        y_test=[0],
    )
    with pytest.raises(VaePyroError, match="cannot read .*obj.npz as an npz"):
        load_data("npz", path=tmp_path / "obj.npz")


# --- image folders -----------------------------------------------------------------------------


def test_image_folder_colour(tmp_path):
    root = make_folder(tmp_path / "pics", {"cat": (16, 12), "dog": (16, 12)})
    data = load_data("image_folder", path=root)
    check(data, (3, 12, 16), 6, 4)
    assert data.train.y.tolist() == [0, 0, 0, 1, 1, 1] and data.test.y.tolist() == [0, 0, 1, 1]
    with Image.open(root / "train" / "cat" / "0.png") as img:
        first = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(data.train.x[0], first)


def test_image_folder_grey_images_give_one_channel(tmp_path):
    root = make_folder(tmp_path / "pics", {"a": (10, 10), "b": (10, 10)}, mode="L")
    check(load_data("image_folder", path=root), (1, 10, 10), 6, 4)


def test_image_folder_mixed_sizes_need_image_size(tmp_path):
    root = make_folder(tmp_path / "pics", {"cat": (16, 12), "dog": (20, 20)})
    with pytest.raises(VaePyroError) as err:
        load_data("image_folder", path=root)
    message = str(err.value)
    assert "differ in size (H x W): " in message and "Set data.image_size=N" in message
    assert "12x16 (5 images" in message and "20x20 (5 images" in message
    check(load_data("image_folder", path=root, image_size=8), (3, 8, 8), 6, 4)


def test_image_folder_layout_errors(tmp_path):
    with pytest.raises(VaePyroError, match="data=image_folder needs data.path"):
        load_data("image_folder")
    root = make_folder(tmp_path / "pics", {"cat": (8, 8)})
    (root / "test" / "cat").rename(root / "test" / "cow")
    with pytest.raises(VaePyroError, match=r"has classes \['cow'\] that .*train lacks"):
        load_data("image_folder", path=root)
    with pytest.raises(VaePyroError, match=f"image folder not found: {tmp_path}/train"):
        load_data("image_folder", path=tmp_path)
    (root / "test" / "cow").rename(root / "test" / "cat")
    (root / "test" / "cat" / "0.png").write_bytes(b"not a png")
    with pytest.raises(VaePyroError, match="cannot read .*0.png as an image"):
        load_data("image_folder", path=root, image_size=4)


# --- torchvision datasets -----------------------------------------------------------------------


def _offline(monkeypatch, cls) -> None:
    def fail(self):
        raise URLError("offline (test)")

    monkeypatch.setattr(cls, "download", fail)


@pytest.mark.parametrize(
    ("name", "folder", "files"),
    [
        ("fashion_mnist", "FashionMNIST/raw", "train-images-idx3-ubyte.gz"),
        ("cifar10", "cifar-10-batches-py", "data_batch_1"),
    ],
)
def test_missing_files_offline_name_the_folder_and_files(
    tmp_path, monkeypatch, name, folder, files
):
    cls = data_module.TORCHVISION[name][0]
    _offline(monkeypatch, cls)
    with pytest.raises(VaePyroError) as err:
        load_data(name, root=tmp_path)
    message = str(err.value)
    assert f"not found in {tmp_path / folder} and could not be downloaded" in message
    assert files in message and "point data.root at a folder holding" in message
    if name == "cifar10":
        assert "CIFAR10/cifar10.npz" in message


def test_cifar10_reads_an_npz_copy_under_root_or_at_path(tmp_path):
    make_npz(tmp_path / "c.npz", (32, 32, 3), n_train=20, n_test=10)
    check(load_data("cifar10", path=tmp_path / "c.npz"), (3, 32, 32), 20, 10)
    (tmp_path / "CIFAR10").mkdir()
    (tmp_path / "c.npz").rename(tmp_path / "CIFAR10" / "cifar10.npz")
    check(load_data("cifar10", root=tmp_path), (3, 32, 32), 20, 10)
    make_npz(tmp_path / "grey.npz", (28, 28))
    with pytest.raises(VaePyroError, match=r"shape \(C, H, W\) = \(1, 28, 28\), expected \(3, 32"):
        load_data("cifar10", path=tmp_path / "grey.npz")


def test_cifar10_prefers_torchvision_files(tmp_path, monkeypatch):
    """With cifar-10-batches-py/ there, torchvision's CIFAR10 reads it (its (N, H, W, C) arrays
    become (N, C, H, W)), not the npz copy."""
    pixels = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)

    class FakeCIFAR10:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            assert Path(root) == tmp_path
            self.data, self.targets = pixels, [0, 1, 2, 3, 4]

    folder, files = data_module.TORCHVISION["cifar10"][1:]
    monkeypatch.setitem(data_module.TORCHVISION, "cifar10", (FakeCIFAR10, folder, files))
    (tmp_path / folder).mkdir()
    (tmp_path / "CIFAR10").mkdir()
    make_npz(tmp_path / "CIFAR10" / "cifar10.npz", (32, 32, 3))
    data = load_data("cifar10", root=tmp_path)
    check(data, (3, 32, 32), 5, 5)
    torch.testing.assert_close(data.test.x, torch.from_numpy(pixels).permute(0, 3, 1, 2) / 255)


@pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(), reason="no shared MNIST IDX files")
def test_read_only_copy_is_extracted_into_the_cache(tmp_path, monkeypatch):
    """A read-only raw folder with only the .gz files (like the shared copies) is read without
    writing into it: torchvision extracts into $VAE_PYRO_CACHE instead."""
    raw = tmp_path / "ro" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in data_module.TORCHVISION["mnist"][2]:
        (raw / f).symlink_to(SHARED / "MNIST" / "raw" / f)
    raw.chmod(0o555)
    monkeypatch.setenv("VAE_PYRO_CACHE", str(tmp_path / "cache"))
    try:
        data = load_data("mnist", root=tmp_path / "ro", subset=100)
    finally:
        raw.chmod(0o755)
    check(data, (1, 28, 28), 100, 10000)
    assert sorted(os.listdir(raw)) == sorted(data_module.TORCHVISION["mnist"][2])
    assert list((tmp_path / "cache").glob("*/MNIST/raw/train-images-idx3-ubyte"))


@needs_fashion
def test_genuine_fashion_mnist():
    data = load_data("fashion_mnist", root=SHARED)
    check(data, (1, 28, 28), 60000, 10000)
    assert data.train.y.bincount().tolist() == [6000] * 10
    assert data.test.y.bincount().tolist() == [1000] * 10
    # PROVENANCE.md: train pixel mean 72.940 of 255
    assert abs(data.train.x.mean().item() * 255 - 72.940) < 0.01


@needs_cifar
def test_genuine_cifar10_npz():
    data = load_data("cifar10", root=SHARED)
    check(data, (3, 32, 32), 50000, 10000)
    assert data.train.y.bincount().tolist() == [5000] * 10
    assert data.test.y.bincount().tolist() == [1000] * 10
    # PROVENANCE.md: train per-channel means 125.307 / 122.950 / 113.865 of 255
    means = data.train.x.mean(dim=(0, 2, 3)) * 255
    torch.testing.assert_close(means, torch.tensor([125.307, 122.950, 113.865]), atol=0.01, rtol=0)


# --- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "npz", "image_folder"])
def test_every_data_config_composes(make_cfg, name):
    cfg = make_cfg(f"data={name}")
    assert cfg.data.name == name
    keys = {"name", "subset", "batch_size", "binarize", "root", "path", "image_size"}
    assert set(cfg.data) == keys  # the schema's keys, whatever the YAML file names


def test_datasets_module_is_torchvision():
    """mnist, fashion_mnist and cifar10 are torchvision's own classes (no hand-written parser)."""
    assert [c for c, _, _ in data_module.TORCHVISION.values()] == [
        datasets.MNIST,
        datasets.FashionMNIST,
        datasets.CIFAR10,
    ]


def test_cli_bad_npz_is_one_line_and_exit_code_2(tmp_path):
    """The README's promise for every source: one error line on stderr, exit code 2."""
    path = make_npz(tmp_path / "bad.npz", (8, 8), y_test=None)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable,
        "-m",
        "vae_pyro.train",
        "data=npz",
        f"data.path={path}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"vae_pyro.train: error: {path} has no y_test: an npz dataset needs the arrays x_train, "
        "y_train, x_test, y_test (this file has x_test, x_train, y_train)"
    ]
