"""Start-up: `python -m vae_pyro` imports no torch; `--help` is generated from the schema each
time (no cache); an argument that is not key=value is one line; the shipped MNIST is read by
numpy, without torchvision."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vae_pyro import startup


def _python(*args: str, cache: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VAE_PYRO_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _imported(importtime: str) -> set[str]:
    """The modules a `python -X importtime` run imported (its stderr)."""
    return {m.group(1) for m in re.finditer(r"^import time:.*\|\s*([\w.]+)$", importtime, re.M)}


HEAVY = {"torch", "pyro", "torchvision", "matplotlib"}


def test_python_m_vae_pyro_lists_the_commands_without_torch(tmp_path):
    proc = _python("-X", "importtime", "-m", "vae_pyro", cache=tmp_path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for command in ("train", "sample", "evaluate", "report"):
        assert sum(line.startswith(f"  {command} ") for line in lines) == 1, command
    assert not HEAVY & _imported(proc.stderr)
    unknown = _python("-m", "vae_pyro", "fly", cache=tmp_path, cwd=tmp_path)
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1
    assert "unknown command 'fly'" in unknown.stderr


@pytest.mark.slow
def test_help_is_generated_from_the_schema_and_writes_nothing(tmp_path):
    """--help, both spellings, print the same text, generated each time (nothing cached)."""
    first = _python("-m", "vae_pyro.train", "--help", cache=tmp_path / "cache", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "Keys (key=default" in first.stdout and "+experiment=NAME" in first.stdout
    again = _python("-m", "vae_pyro", "train", "-h", cache=tmp_path / "cache", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout == first.stdout
    assert list(tmp_path.iterdir()) == []  # no cache, nothing in the working dir


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["outputs/z50"], "did you mean run_dir=outputs/z50?"),
        (["seed=1", "latest"], "did you mean run_dir=latest?"),
        (["run_dir=x", "--cfg", "job", "-cn", "sample", "--info", "defaults"], None),
        (
            ["--num_samples", "3"],
            "--num_samples is not a flag here: options are key=value, e.g. num_samples=3",
        ),
        (["--seed=2"], "--seed=2 is not a flag here: options are key=value, e.g. seed=2"),
        (["~seed", "+x=1", "-m", "--multirun", "--help"], None),
    ],
)
def test_a_bare_argument_is_named(args, expected):
    assert startup.bare_argument("sample", args, ["num_samples", "seed", "prior.num"]) == expected


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["vae_pyro.sample", "outputs/z50"],
            "vae_pyro.sample: error: did you mean run_dir=outputs/z50?",
        ),
        (["vae_pyro.evaluate", "outputs/z50"], "vae_pyro.evaluate: error: did you mean run_dir="),
        (["vae_pyro.train", "z_dim"], "vae_pyro.train: error: 'z_dim' is not key=value: keys are"),
    ],
)
def test_a_bare_argument_is_one_line_and_exit_2(args, line, tmp_path):
    proc = _python("-m", *args, cache=tmp_path / "cache", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith(line) and proc.stderr.count("\n") == 1, proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing written


# --- MNIST read by numpy ----------------------------------------------------------------------


@pytest.mark.slow
def test_the_shipped_mnist_is_read_without_torchvision(tmp_path):
    script = (
        "import sys; from vae_pyro.data import load_data; d = load_data('mnist'); "
        "print(len(d.train), len(d.test), 'torchvision' in sys.modules)"
    )
    for _ in range(2):  # the same each time: nothing is decoded, nothing cached
        proc = _python("-c", script, cache=tmp_path / "cache", cwd=tmp_path)
        assert proc.stdout.split() == ["60000", "10000", "False"], proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("n", "c", "nrow"), [(1, 1, 8), (7, 1, 3), (10, 3, 10), (5, 2, 8)])
def test_image_grid_is_make_grid_without_torchvision(n, c, nrow):
    from torchvision.utils import make_grid

    from vae_pyro.plots import image_grid

    images = torch.rand(n, c, 5, 4) * 1.2 - 0.1  # clamped to [0, 1] by both
    expected = make_grid(images.clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)
    assert image_grid(images, nrow).equal(expected.permute(1, 2, 0))
