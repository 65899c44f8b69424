"""A run's record belongs to the run: a refused command never writes into it, a sweep dir belongs
to one sweep, and the data a run reads is the data on disk (no decoded copy in between).

Each test goes through the real CLI (subprocesses), as a user meets these cases.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vae_pyro.data import MNIST_NPZ, load_data

REPO = Path(__file__).resolve().parent.parent
SHARED_MNIST = REPO.parent / "shared" / "data" / "MNIST" / "raw"
TINY = ["trainer.device=cpu", "model.z_dim=2", "model.hidden_dim=16", "data.subset=256"]


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _record(run: Path) -> dict[str, bytes]:
    """Every file of a run's record, by name: .hydra/, train.log, status.json."""
    found = [*run.glob(".hydra/*"), run / "train.log", run / "status.json"]
    return {str(p.relative_to(run)): p.read_bytes() for p in found if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "said"),
    [
        (["model.z_dim=7"], "model.z_dim"),  # other networks
        (["data.subset=128"], None),  # fine at an epoch's end: accepted, for contrast
    ],
)
def test_a_refused_resume_leaves_the_runs_record_as_it_was(tmp_path, change, said):
    run = tmp_path / "run"
    first = _cli(tmp_path, "vae_pyro.train", *TINY, "trainer.epochs=1", f"hydra.run.dir={run}")
    assert first.returncode == 0, first.stderr
    before = _record(run)
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", "train.log"} <= before.keys()
    again = _cli(
        tmp_path,
        "vae_pyro.train",
        *TINY,
        *change,
        "trainer.epochs=2",
        f"hydra.run.dir={run}",
        "trainer.resume=true",
    )
    if said is None:
        assert again.returncode == 0, again.stderr
        assert "subset: 256" not in (run / ".hydra" / "config.yaml").read_text()
        return
    assert again.returncode == 2 and said in again.stderr, again.stderr
    assert again.stderr.count("\n") == 1
    assert _record(run) == before  # z_dim 2 in the record, as the run has


@pytest.mark.slow
def test_a_second_sweep_into_a_sweep_dir_is_refused_and_touches_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["vae_pyro.train", "-m", *TINY, "trainer.epochs=1", f"hydra.sweep.dir={sweep}"]
    first = _cli(tmp_path, *args, "seed=0,1")
    assert first.returncode == 0, first.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    before = {job: _record(job) for job in jobs}
    manifest = (sweep / "multirun.yaml").read_bytes()
    assert all(json.loads(r["status.json"])["status"] == "ok" for r in before.values())
    second = _cli(tmp_path, *args, "model.z_dim=3", "data.subset=99999")
    assert second.returncode == 2, second.stderr
    assert "holds another sweep" in second.stderr and second.stderr.count("\n") == 1
    assert {job: _record(job) for job in jobs} == before
    assert (sweep / "multirun.yaml").read_bytes() == manifest


def _raw_copy(tmp_path: Path) -> Path:
    """A data.root of extracted IDX files (as torchvision leaves them), without mnist.npz."""
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in SHARED_MNIST.glob("*.gz"):
        shutil.copy(gz, raw / gz.name)
    load_data("mnist", tmp_path / "root", subset=1)  # torchvision extracts beside them
    return tmp_path / "root"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="the shared MNIST IDX files are absent")
def test_the_data_a_run_reads_is_the_data_on_disk(tmp_path):
    root = _raw_copy(tmp_path)
    run = tmp_path / "run"
    args = [*TINY, f"data.root={root}", "trainer.epochs=1"]
    trained = _cli(tmp_path, "vae_pyro.train", *args, f"hydra.run.dir={run}")
    assert trained.returncode == 0, trained.stderr
    test_file = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    data = bytearray(test_file.read_bytes())
    data[16:] = bytes(255 - b for b in data[16:])  # the test images, inverted
    test_file.write_bytes(bytes(data))
    for _ in range(2):  # the same answer each time: nothing remembered the old files
        scored = _cli(tmp_path, "vae_pyro.evaluate", f"run_dir={run}", "num_particles=2")
        assert scored.returncode == 2 and "the data changed since training" in scored.stderr
    again = _cli(tmp_path, "vae_pyro.train", *args, f"hydra.run.dir={tmp_path / 'other'}")
    assert again.returncode == 0, again.stderr
    assert _final(again) != _final(trained)  # trained and tested on the changed test images


def _final(proc: subprocess.CompletedProcess) -> float:
    return float(re.search(r"final test loss ([\d.]+)", proc.stdout).group(1))


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="the shared MNIST IDX files are absent")
def test_the_shipped_mnist_npz_is_torchvisions_decode(tmp_path):
    shipped = np.load(REPO / "data" / MNIST_NPZ)
    decoded = load_data("mnist", _raw_copy(tmp_path))  # torchvision reads the IDX files
    for split in ("train", "test"):
        x, y = getattr(decoded, split).x, getattr(decoded, split).y
        assert np.array_equal(x.mul(255).round().byte().numpy()[:, 0], shipped[f"x_{split}"])
        assert np.array_equal(y.numpy(), shipped[f"y_{split}"])
    assert load_data("mnist").fingerprint.sha256 == decoded.fingerprint.sha256
