"""Figures say what they show: latent.png names an image folder's classes, loss.png marks whole
epochs, summary.png plots against the key the runs vary (report's own test helpers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from vae_pyro import plots
from vae_pyro.cli import CONF_DIR
from vae_pyro.sample import sample
from vae_pyro.train import train

CLASSES = ("cat", "dog", "fish")


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(name, overrides=overrides)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> Path:
    """One epoch on an image folder of three classes of 8 x 8 grey images."""
    folder = tmp_path_factory.mktemp("data") / "pics"
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for k, name in enumerate(CLASSES):
            (folder / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = (rng.random((8, 8)) * 80 + 80 * k).astype(np.uint8)
                Image.fromarray(pixels).save(folder / split / name / f"{i}.png")
    run_dir = tmp_path_factory.mktemp("run")
    overrides = ["data=image_folder", f"data.path={folder}", "trainer.device=cpu"]
    overrides += ["trainer.epochs=1", "model.z_dim=2", "model.hidden_dim=16"]
    train(_compose("train", overrides), run_dir)
    return run_dir


def test_latent_legend_names_the_class_folders(folder_run, tmp_path, monkeypatch):
    given = {}
    real = plots.latent_scatter

    def spy(*args, **kwargs):
        given.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(plots, "latent_scatter", spy)
    cfg = _compose("sample", [f"run_dir={folder_run}", "device=cpu", f"out_dir={tmp_path}"])
    written = sample(cfg)
    assert written["latent"].is_file()
    assert given["names"] == list(CLASSES)


def test_a_one_epoch_loss_figure_marks_whole_epochs_only():
    for epochs in (1, 2, 3):
        metrics = [
            {"epoch": e, "train_loss": 100.0 - e, "test_loss": 99.0 - e}
            for e in range(1, epochs + 1)
        ]
        ax = plots.loss_figure(metrics).axes[0]
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks == list(range(1, epochs + 1)), (epochs, ticks)


def test_a_categorical_sweep_axis_names_its_values():
    points = [
        plots.SweepPoint("standard", "", 100.0),
        plots.SweepPoint("vamp", "", 95.0),
        plots.SweepPoint("mog", "", None),
    ]
    ax = plots.sweep_figure(points, "model/prior").axes[0]
    assert ax.get_xlabel() == "model/prior"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["standard", "vamp", "mog"]
