"""Messages that point the right way: each names the real cause and what to do, in one line.

Through the real CLI where a user meets them; through cli.explain (the one table from
exceptions to lines) where the fault is a machine's or another process's.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import UnidentifiedImageError

from vae_pyro import checkpoint, cli

REPO = Path(__file__).resolve().parent.parent
SHARED_MNIST = REPO.parent / "shared" / "data" / "MNIST" / "raw"


def _cli(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _line(proc: subprocess.CompletedProcess, command: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vae_pyro.{command}: error: "), proc.stderr
    return lines[0]


@pytest.mark.slow
def test_argparse_habit_names_the_key(tmp_path):
    line = _line(_cli(tmp_path, "vae_pyro.train", "--epochs", "5"), "train")
    assert "e.g. trainer.epochs=5" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_an_unexpanded_tilde_says_to_quote_it(tmp_path):
    line = _line(_cli(tmp_path, "vae_pyro.train", "data.root=~/mnist"), "train")
    assert "the shell left ~ unexpanded" in line and "data.root=$HOME/mnist" in line
    assert """'data.root="~/mnist"'""" in line


@pytest.mark.slow
def test_a_newer_checkpoint_says_so(tmp_path, released_run):
    payload = torch.load(released_run / "checkpoint.pt", weights_only=True)
    payload["format"] = "vae-pyro-checkpoint/12"
    torch.save(payload, released_run / "checkpoint.pt")
    line = _line(_cli(tmp_path, "vae_pyro.evaluate", f"run_dir={released_run}"), "evaluate")
    assert "was written by a newer vae-pyro (checkpoint format vae-pyro-checkpoint/12" in line
    assert "upgrade vae-pyro" in line and "not a vae-pyro checkpoint" not in line
    with pytest.raises(Exception, match="newer vae-pyro"):
        checkpoint.read(released_run / "checkpoint.pt")


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="the shared MNIST IDX files are absent")
def test_a_read_only_data_folder_with_no_cache_names_the_cause(tmp_path):
    raw = tmp_path / "ro" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in SHARED_MNIST.glob("*.gz"):
        shutil.copy(gz, raw / gz.name)
    raw.chmod(0o555)
    blocked = tmp_path / "a-file"
    blocked.write_text("the cache folder cannot be made under a file")
    try:
        proc = _cli(
            tmp_path,
            "vae_pyro.train",
            f"data.root={tmp_path / 'ro'}",
            "hydra.run.dir=run",
            env={"VAE_PYRO_CACHE": str(blocked / "cache")},
        )
    finally:
        raw.chmod(0o755)
    line = _line(proc, "train")
    assert f"files are in {raw} but could not be read" in line and "VAE_PYRO_CACHE" in line
    assert "not found" not in line and not (tmp_path / "run").exists()


def test_too_many_open_files_names_the_limit():
    err = UnidentifiedImageError("cannot identify image file")
    err.__context__ = OSError(errno.EMFILE, "Too many open files")
    line, bug = cli.explain("sample", err)
    assert "Too many open files (the limit on open files: see ulimit -n)" in line and not bug
    assert "PIL" not in line and "decoded" not in line


def test_a_rank_that_died_is_not_a_bug():
    for err in (
        torch.distributed.DistBackendError("[gloo] Connection closed by peer [127.0.0.1]:2345"),
        RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection reset"),
    ):
        line, bug = cli.explain("train", err)
        assert line.startswith("another process of this torchrun run stopped") and not bug
    assert cli.explain("train", RuntimeError("something else"))[1]  # still a bug
