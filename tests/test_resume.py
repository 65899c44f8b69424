"""Interruption, resumption and bad numbers: a run never loses more than the current epoch."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from pyro.infer import SVI

from vae_pyro import checkpoint
from vae_pyro.errors import VaePyroError
from vae_pyro.train import train

# 47 steps of 256 per epoch: long enough (~1 s) to be killed in the middle of one.
RUN = ["+experiment=z50", "trainer.epochs=3", "data.subset=12000", "trainer.device=cpu"]


# Bit-identical comparisons between processes: one thread and MKL's conditional numerical
# reproducibility, so that two fresh processes compute the same epoch to the last bit (with two
# threads, MKL's kernels may differ in the last digits from run to run with memory alignment).
DETERMINISTIC = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_CBWR": "AUTO"}


def _cli(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "vae_pyro.train", *args],
        env=DETERMINISTIC,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def _weights(run_dir):
    ckpt = checkpoint.load(run_dir / "checkpoint.pt")
    return {f"{net}.{k}": v for net in ("encoder", "decoder") for k, v in ckpt[net].items()}


def _interrupt_mid_epoch_2(run_dir, sig):
    """Start a run, wait until epoch 1 is recorded, then send `sig` a moment into epoch 2."""
    proc = _cli(*RUN, f"hydra.run.dir={run_dir}")
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "epoch 1 never finished"
        time.sleep(0.02)
    time.sleep(0.15)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    proc = _cli(*RUN, f"hydra.run.dir={run_dir}")
    assert proc.wait(timeout=300) == 0, proc.communicate()
    return _losses(run_dir), _weights(run_dir)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(reference, tmp_path):
    code, _ = _interrupt_mid_epoch_2(tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert checkpoint.load(tmp_path / "checkpoint.pt")["epoch"] < 3  # really cut short
    proc = _cli(*RUN, f"hydra.run.dir={tmp_path}", "trainer.resume=true")
    assert proc.wait(timeout=300) == 0, proc.communicate()
    losses, weights = reference
    assert _losses(tmp_path) == losses
    assert all(torch.equal(weights[k], v) for k, v in _weights(tmp_path).items())


@pytest.mark.slow
def test_sigterm_checkpoints_mid_epoch_and_its_resume_command_works(reference, tmp_path):
    code, err = _interrupt_mid_epoch_2(tmp_path, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "interrupted by SIGTERM" in err
    ckpt = checkpoint.load(tmp_path / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and 0 < ckpt["position"]["step"] < 47  # stopped inside epoch 2
    hint = err.split("Resume with: ")[1].strip()
    args = shlex.split(hint)
    assert args[:3] == ["python", "-m", "vae_pyro.train"]
    proc = subprocess.run(
        [sys.executable, *args[1:]], capture_output=True, text=True, timeout=300, env=DETERMINISTIC
    )
    assert proc.returncode == 0, proc.stderr
    losses, weights = reference
    assert _losses(tmp_path) == losses
    assert all(torch.equal(weights[k], v) for k, v in _weights(tmp_path).items())


def test_extending_a_finished_run_equals_training_longer(make_cfg, tmp_path):
    quick = ["+experiment=z50", "data.subset=1000", "trainer.device=cpu"]
    train(make_cfg(*quick, "trainer.epochs=2"), tmp_path / "a")
    train(make_cfg(*quick, "trainer.epochs=3", "trainer.resume=true"), tmp_path / "a")
    train(make_cfg(*quick, "trainer.epochs=3"), tmp_path / "b")
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")


def test_resume_from_copies_history_into_a_new_run(make_cfg, tmp_path):
    quick = ["+experiment=z50", "data.subset=1000", "trainer.device=cpu"]
    train(make_cfg(*quick, "trainer.epochs=1"), tmp_path / "a")
    train(
        make_cfg(*quick, "trainer.epochs=2", f"trainer.resume_from={tmp_path / 'a'}"),
        tmp_path / "b",
    )
    assert [m["epoch"] for m in _losses(tmp_path / "b")] == [1, 2]
    assert _losses(tmp_path / "b")[0] == _losses(tmp_path / "a")[0]
    assert checkpoint.load(tmp_path / "a" / "checkpoint.pt")["epoch"] == 1  # source untouched


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(
    make_cfg, tmp_path, monkeypatch
):
    real_step, calls = SVI.step, []

    def step(self, *args, **kwargs):  # epoch 1 is 4 steps; poison the 3rd step of epoch 2
        calls.append(1)
        return float("nan") if len(calls) == 7 else real_step(self, *args, **kwargs)

    monkeypatch.setattr(SVI, "step", step)
    cfg = make_cfg("+experiment=z50", "data.subset=1000", "trainer.epochs=3", "trainer.device=cpu")
    with pytest.raises(VaePyroError) as err:
        train(cfg, tmp_path)
    message = str(err.value)
    assert "epoch 2, step 3/4" in message and "optim.lr=0.0001" in message
    assert "last good checkpoint (epoch 1)" in message
    ckpt = checkpoint.load(tmp_path / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and len(ckpt["metrics"]) == 1
    assert all(torch.isfinite(v).all() for v in ckpt["encoder"].values())


def test_real_divergence_is_caught(make_cfg, tmp_path):
    """lr=1e4 makes exp(fc22) overflow within two steps: Normal(scale=inf) must not escape."""
    cfg = make_cfg("data.subset=2000", "trainer.epochs=1", "optim.lr=1e4", "trainer.device=cpu")
    with pytest.raises(VaePyroError, match=r"training diverged .* try optim.lr=1000"):
        train(cfg, tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_non_finite_weights_are_never_written(tmp_path):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"encoder": {"w": torch.ones(2)}, "decoder": {}})
    before = path.read_bytes()
    with pytest.raises(VaePyroError, match="non-finite encoder weights"):
        checkpoint.save(path, {"encoder": {"w": torch.tensor([1.0, float("nan")])}})
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".checkpoint.pt.*"))


def test_resume_into_other_networks_is_one_clear_error(make_cfg, tmp_path):
    quick = ["+experiment=z50", "data.subset=500", "trainer.device=cpu"]
    train(make_cfg(*quick, "trainer.epochs=1"), tmp_path)
    message = "checkpoint model.hidden_dim=400, this command model.hidden_dim=200"
    with pytest.raises(VaePyroError, match=message):
        train(
            make_cfg(*quick, "trainer.epochs=2", "model.hidden_dim=200", "trainer.resume=true"),
            tmp_path,
        )


# Every command that loads a checkpoint, pointed at a run dir holding a damaged one.
LOADERS = [
    ["vae_pyro.train", "+experiment=z50", "trainer.resume=true", "hydra.run.dir={run}"],
    ["vae_pyro.sample", "run_dir={run}"],
    ["vae_pyro.evaluate", "run_dir={run}"],
]
DAMAGE = {
    "truncated": lambda good: good[: len(good) // 3],
    "random-bytes": lambda good: random.Random(0).randbytes(4096),
    "empty": lambda good: b"",
}


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from vae_pyro.cli import CONF_DIR

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=["data.subset=256", "trainer.epochs=1"])
    run = tmp_path_factory.mktemp("good")
    train(cfg, run)
    return (run / "checkpoint.pt").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "damage"),
    # each loader with one kind of damage (a subprocess costs seconds); every kind of damage
    # against checkpoint.load itself is in test_train.py
    list(zip(LOADERS, sorted(DAMAGE), strict=True)),
    ids=[f"{c[0]}-{d}" for c, d in zip(LOADERS, sorted(DAMAGE), strict=True)],
)
def test_damaged_checkpoint_is_one_clear_error_for_every_loader(
    good_checkpoint, tmp_path, command, damage
):
    if importlib.util.find_spec(command[0]) is None:
        pytest.skip(f"{command[0]} is not part of this build yet")
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(DAMAGE[damage](good_checkpoint))
    before = path.read_bytes()
    args = [a.format(run=tmp_path) for a in command]
    proc = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "error" in lines[0], proc.stderr
    assert path.read_bytes() == before  # the damaged file is left for inspection, not replaced


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"epoch": 1})
    before = path.read_bytes()

    def full_disk(obj, f):
        f.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(VaePyroError, match="No space left on device.*previous checkpoint"):
        checkpoint.save(path, {"epoch": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left
