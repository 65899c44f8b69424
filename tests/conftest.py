"""Shared fixtures: configs composed the way the CLI composes them, a clean Pyro state."""

from __future__ import annotations

import json
from pathlib import Path

import pyro
import pytest
from hydra import compose, initialize_config_dir

from vae_pyro.cli import CONF_DIR
from vae_pyro.data import load_data

REPO = Path(__file__).resolve().parent.parent


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
def run_state():
    """run_state(run_dir) -> (metrics without their timings, every network weight by name): what
    must be bit-identical between a resumed run and an uninterrupted one."""
    from vae_pyro import checkpoint

    def _state(run_dir: Path) -> tuple[list[dict], dict]:
        ckpt = checkpoint.read(run_dir / "checkpoint.pt")
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        metrics = [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]
        payload = ckpt._payload
        weights = {f"{n}.{k}": v for n in checkpoint.NETWORKS for k, v in payload[n].items()}
        return metrics, weights

    return _state
