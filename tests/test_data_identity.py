"""A run's data is part of its identity, and images are read as what they are.

The run's config names its data by absolute paths and its checkpoint holds a fingerprint of the
arrays it was trained on: evaluate, sample and a resume from any directory read the same data,
or refuse changed data in one line unless told to allow it. Image files (data=image_folder and
sample's images=) are scaled by their own range: 16-bit, float, palette, alpha, CMYK.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from vae_pyro import checkpoint
from vae_pyro.data import load_data
from vae_pyro.images import read_image

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SMALL = ["trainer.device=cpu", "model.z_dim=2", "model.hidden_dim=16", "data.batch_size=32"]


def _cli(command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"vae_pyro.{command}", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )


def _one_line(proc: subprocess.CompletedProcess, command: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vae_pyro.{command}: error: "), proc.stderr
    return lines[0]


def dark_npz(path: Path, seed: int = 0, n_train: int = 64, n_test: int = 16) -> Path:
    """Light strokes on a dark background, as MNIST: 12 x 12 grey images."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 30, (n_train + n_test, 12, 12), dtype=np.uint8)
    x[:, 3:9, 3:9] = rng.integers(150, 256, (n_train + n_test, 6, 6), dtype=np.uint8)
    y = np.arange(n_train + n_test) % 4
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:])
    return path


def _sha256(path: Path) -> str:
    """The fingerprint's definition: uint8 images and int64 labels, train then test."""
    digest = hashlib.sha256()
    with np.load(path) as npz:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            a = npz[key]
            a = a[:, None] if key.startswith("x") else a.astype(np.int64)
            t = torch.from_numpy(np.ascontiguousarray(a))
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.numpy().data)
    return digest.hexdigest()


def _train(work: Path, run: Path, *more: str) -> subprocess.CompletedProcess:
    args = ["data=npz", "data.path=data/d.npz", f"hydra.run.dir={run}", *SMALL, *more]
    return _cli("train", *args, cwd=work)


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory) -> tuple[Path, Path]:
    """A run trained from `work` on data.path=data/d.npz (relative): (work, run dir)."""
    work = tmp_path_factory.mktemp("work")
    dark_npz(work / "data" / "d.npz")
    run = tmp_path_factory.mktemp("runs") / "run"
    proc = _train(work, run, "trainer.epochs=1")
    assert proc.returncode == 0, proc.stderr
    return work, run


# --- rule 6: the data is part of the run's identity -----------------------------------------------


@pytest.mark.slow
def test_relative_data_path_is_stored_absolute_with_a_fingerprint(relative_run):
    work, run = relative_run
    npz = work / "data" / "d.npz"
    ckpt = checkpoint.read(run / "checkpoint.pt")
    assert ckpt.config["data"]["path"] == str(npz)
    assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["data"]["path"] == str(npz)
    assert ckpt.data_fingerprint == {
        "sha256": _sha256(npz),
        "train": 64,
        "test": 16,
        "source": str(npz),
    }


@pytest.mark.slow
def test_evaluate_from_another_directory_scores_the_same_data(relative_run, tmp_path):
    work, run = relative_run
    proc = _cli("evaluate", f"run_dir={run}", "num_particles=2", "overwrite=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((run / "eval.json").read_text())
    assert record["data_fingerprint"]["sha256"] == _sha256(work / "data" / "d.npz")
    assert record["data_fingerprint"]["source"] == str(work / "data" / "d.npz")
    assert record["data_mismatch_allowed"] is False and record["num_images"] == 16
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_changed_data_is_refused_unless_allowed(tmp_path):
    work = tmp_path / "work"
    npz = dark_npz(work / "data" / "d.npz")
    run = tmp_path / "run"
    assert _train(work, run, "trainer.epochs=1").returncode == 0
    before = _sha256(npz)
    dark_npz(npz, seed=1)  # the same shapes, other pixels
    after = _sha256(npz)
    said = (
        f"checkpoint {run / 'checkpoint.pt'} was trained on data sha256 {before[:12]} "
        f"(64 train / 16 test, {npz}); data.path now gives sha256 {after[:12]} (64 train / 16 "
        f"test, {npz}): the data changed since training"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    line = _one_line(
        _cli("evaluate", f"run_dir={run}", "num_particles=2", cwd=elsewhere), "evaluate"
    )
    assert said in line and "allow_other_data=true" in line
    assert not (run / "eval.json").exists()
    line = _one_line(_cli("sample", f"run_dir={run}", cwd=elsewhere), "sample")
    assert said in line and not (run / "samples").exists()
    line = _one_line(_train(work, run, "trainer.epochs=2", "trainer.resume=true"), "train")
    assert said in line and "trainer.allow_other_data=true" in line
    assert checkpoint.read(run / "checkpoint.pt").epoch == 1

    proc = _cli(
        "evaluate", f"run_dir={run}", "num_particles=2", "allow_other_data=true", cwd=elsewhere
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads((run / "eval.json").read_text())
    assert record["data_mismatch_allowed"] is True
    assert record["data_fingerprint"]["sha256"] == after
    args = ("trainer.epochs=2", "trainer.resume=true", "trainer.allow_other_data=true")
    proc = _train(work, run, *args)
    assert proc.returncode == 0, proc.stderr
    resumed = checkpoint.read(run / "checkpoint.pt")
    assert resumed.epoch == 2 and resumed.data_fingerprint["sha256"] == after
    assert list(elsewhere.iterdir()) == []


@pytest.mark.slow
def test_checkpoint_without_a_fingerprint_still_evaluates(relative_run, tmp_path):
    _, run = relative_run
    old = tmp_path / "old"
    old.mkdir()
    payload = checkpoint.load(run / "checkpoint.pt")
    del payload["data_fingerprint"]
    checkpoint.save(old / "checkpoint.pt", {k: v for k, v in payload.items() if k != "format"})
    assert checkpoint.read(old / "checkpoint.pt").data_fingerprint is None
    proc = _cli("evaluate", f"run_dir={old}", "num_particles=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((old / "eval.json").read_text())["data_mismatch_allowed"] is False


# --- rule 10: images read as what they are ------------------------------------------------------


def _save(path: Path, img: Image.Image) -> Path:
    img.save(path)
    return path


def test_16_bit_png_is_scaled_by_65535(tmp_path):
    a = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    path = _save(tmp_path / "deep.png", Image.fromarray(a))
    assert Image.open(path).mode in ("I;16", "I")
    torch.testing.assert_close(read_image(path), torch.from_numpy(a / 65535).float()[None])


def test_32_bit_integer_tiff_of_16_bit_values_is_scaled_by_65535(tmp_path):
    a = np.array([[0, 1000, 65535]], dtype=np.int32)
    path = _save(tmp_path / "i.tif", Image.fromarray(a))
    assert Image.open(path).mode == "I"
    torch.testing.assert_close(read_image(path), torch.from_numpy(a / 65535).float()[None])


def test_float_tiff_in_0_1_is_kept_and_any_other_range_stretched(tmp_path, caplog):
    a = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    path = _save(tmp_path / "f.tif", Image.fromarray(a))
    with caplog.at_level(logging.WARNING):
        torch.testing.assert_close(read_image(path), torch.from_numpy(a)[None])
    assert not caplog.records
    b = np.array([[-2.0, 0.0, 2.0, 6.0]], dtype=np.float32)
    path = _save(tmp_path / "g.tif", Image.fromarray(b))
    with caplog.at_level(logging.WARNING):
        torch.testing.assert_close(read_image(path), torch.tensor([[[0.0, 0.25, 0.5, 1.0]]]))
    assert "range over [-2, 6], not [0, 1]: stretched" in caplog.text


def test_palette_alpha_and_cmyk_are_converted_deliberately(tmp_path):
    rgb = np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8)
    palette = Image.fromarray(rgb).quantize(colors=2)
    assert palette.mode == "P"
    torch.testing.assert_close(
        read_image(_save(tmp_path / "p.png", palette)),
        torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]], [[0.0, 1.0]]]),
    )
    palette.info["transparency"] = palette.getpixel((1, 0))  # the blue entry: see-through
    x = read_image(_save(tmp_path / "pt.png", palette))
    torch.testing.assert_close(x, torch.tensor([[[1.0, 1.0]], [[0.0, 1.0]], [[0.0, 1.0]]]))
    # LA / RGBA: composited on white, not the colour under a transparent pixel
    la = Image.fromarray(np.array([[[0, 255], [0, 0], [0, 128]]], dtype=np.uint8), "LA")
    torch.testing.assert_close(
        read_image(_save(tmp_path / "la.png", la)), torch.tensor([[[0.0, 1.0, 127 / 255]]])
    )
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0]]], dtype=np.uint8)
    x = read_image(_save(tmp_path / "rgba.png", Image.fromarray(rgba, "RGBA")))
    torch.testing.assert_close(x, torch.tensor([[[1.0, 1.0]], [[0.0, 1.0]], [[0.0, 1.0]]]))
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))  # full magenta and yellow: red
    x = read_image(_save(tmp_path / "c.tif", cmyk))
    torch.testing.assert_close(x, torch.tensor([[[1.0]], [[0.0]], [[0.0]]]))


def test_image_folder_reads_16_bit_and_rgba_as_sample_does(tmp_path):
    """data=image_folder and sample's images= share the reader: the same pixels."""
    from vae_pyro.figures import read_image as sample_reads

    root = tmp_path / "pics"
    deep = np.full((4, 4), 32896, np.uint16)  # 32896 / 65535 = 128 / 255
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
        _save(root / split / "a" / "deep.png", Image.fromarray(deep))
    data = load_data("image_folder", path=root)
    assert data.image_shape == (1, 4, 4)
    torch.testing.assert_close(data.train.x[0], torch.full((1, 4, 4), 128 / 255))
    torch.testing.assert_close(
        sample_reads(root / "train" / "a" / "deep.png", (1, 4, 4)), torch.full((1, 4, 4), 128 / 255)
    )


@pytest.mark.slow
@pytest.mark.parametrize("empty", ["x_train", "x_test", "folder"])
def test_an_empty_split_is_one_line_and_leaves_no_run_dir(tmp_path, empty):
    if empty == "folder":
        data = tmp_path / "pics"
        (data / "train" / "a").mkdir(parents=True)
        _save(data / "train" / "a" / "0.png", Image.new("L", (4, 4)))
        (data / "test").mkdir()
        source, said = ["data=image_folder", f"data.path={data}"], f"{data / 'test'}"
    else:
        data = tmp_path / "d.npz"
        arrays = {"x_train": np.zeros((4, 8, 8), np.uint8), "x_test": np.zeros((2, 8, 8), np.uint8)}
        arrays[empty] = np.zeros((0, 8, 8), np.uint8)
        y = {f"y_{k[2:]}": np.zeros(len(v), np.int64) for k, v in arrays.items()}
        np.savez(data, **arrays, **y)
        source, said = ["data=npz", f"data.path={data}"], f"{data}: {empty} holds no images"
    run = tmp_path / "run"
    line = _one_line(_cli("train", *source, f"hydra.run.dir={run}", *SMALL, cwd=tmp_path), "train")
    assert said in line
    assert not run.exists()


@pytest.mark.slow
def test_a_light_background_input_image_gets_a_warning(relative_run, tmp_path):
    _, run = relative_run
    ink = np.full((12, 12), 240, np.uint8)
    ink[3:9, 5:7] = 10  # a dark stroke on white paper
    light = _save(tmp_path / "light.png", Image.fromarray(ink))
    dark = _save(tmp_path / "dark.png", Image.fromarray(255 - ink))
    args = [f"run_dir={run}", f"out_dir={tmp_path / 'out'}", "num_samples=2"]
    proc = _cli("sample", *args, f"images=[{light},{dark}]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    said = proc.stdout + proc.stderr
    assert f"images: {light} looks like dark ink on a light background" in said
    assert "invert it (e.g. PIL.ImageOps.invert(image)" in said
    assert str(dark) + " looks like" not in said
