"""Shared fixtures: configs composed the way the CLI composes them, a clean Pyro state."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pyro
import pytest
from hydra import compose, initialize_config_dir

from vae_pyro.cli import CONF_DIR
from vae_pyro.data import load_data

REPO = Path(__file__).resolve().parent.parent
RELEASED = REPO / "tests" / "fixtures" / "checkpoint_v1.pt"  # z_dim 2, hidden 16, 1 epoch


@pytest.fixture(autouse=True)
def _clean_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def make_cfg():
    """make_cfg("+experiment=z50", "trainer.epochs=1") -> the DictConfig the CLI would build."""

    def _make(*overrides: str):
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            return compose(config_name="train", overrides=list(overrides))

    return _make


@pytest.fixture(scope="session")
def mnist():
    """The committed MNIST, on the CPU, loaded once per test session."""
    return load_data("mnist")


@pytest.fixture
def resumed_run(make_cfg, tmp_path):
    """resumed_run(*overrides) trains 2 epochs straight, and 1 epoch then a resume to 2, checks
    that the two agree bit for bit (metrics without their timings, every network weight), and
    returns the weights by name and the straight run's checkpoint."""
    import torch

    from vae_pyro import checkpoint
    from vae_pyro.train import train

    def _state(run_dir: Path) -> tuple[list[dict], dict]:
        ckpt = checkpoint.read(run_dir / "checkpoint.pt")
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        metrics = [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]
        payload = ckpt._payload
        weights = {f"{n}.{k}": v for n in checkpoint.NETWORKS for k, v in payload[n].items()}
        return metrics, weights

    def _run(*overrides: str) -> tuple[dict, Path]:
        straight, resumed = tmp_path / "straight", tmp_path / "resumed"
        train(make_cfg(*overrides, "trainer.epochs=2"), straight)
        train(make_cfg(*overrides, "trainer.epochs=1"), resumed)
        train(make_cfg(*overrides, "trainer.epochs=2", "trainer.resume=true"), resumed)
        (metrics, weights), (again, again_w) = _state(straight), _state(resumed)
        assert len(metrics) == 2 and all(math.isfinite(m["train_loss"]) for m in metrics)
        assert metrics == again and weights.keys() == again_w.keys()
        assert all(torch.equal(weights[k], again_w[k]) for k in weights)
        return weights, straight / "checkpoint.pt"

    return _run


@pytest.fixture
def released_run(tmp_path) -> Path:
    """A run dir holding the checkpoint of the first release."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(RELEASED, run_dir / "checkpoint.pt")
    return run_dir
