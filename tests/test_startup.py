"""Start-up: `python -m vae_pyro` and a cached `--help` import no torch; an argument that is not
key=value is one line; MNIST decoded once is read later without torchvision (a damaged cache
is rebuilt)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vae_pyro import data, startup
from vae_pyro.cli import CONF_DIR


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
def test_help_is_generated_once_then_printed_without_torch(tmp_path):
    """The first `--help` generates the text (importing the schema, so torch); the next ones,
    both spellings, print the same text without importing torch, Pyro or Hydra."""
    first = _python("-m", "vae_pyro.train", "--help", cache=tmp_path, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "Keys (key=default" in first.stdout and "+experiment=NAME" in first.stdout
    for args in (["-m", "vae_pyro.train", "--help"], ["-m", "vae_pyro", "train", "-h"]):
        again = _python("-X", "importtime", *args, cache=tmp_path, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert again.stdout == first.stdout
        assert not (HEAVY | {"hydra"}) & _imported(again.stderr), args
    assert [p.name for p in tmp_path.iterdir()] == ["help"]  # nothing in the working dir


def test_the_cached_help_is_keyed_by_what_it_is_made_from(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    monkeypatch.setenv("VAE_PYRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(startup.files, "shipped", lambda inside, clone: conf)
    before = startup._help_path("train")
    assert startup._help_path("sample") != before
    with (conf / "experiment" / "z50.yaml").open("a") as f:
        f.write("# changed\n")
    assert startup._help_path("train") != before
    assert startup.cached_help("train") is None
    startup._store_help("train", "the text\n")
    assert startup.cached_help("train") == "the text\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["outputs/z50"], "did you mean run_dir=outputs/z50?"),
        (["seed=1", "latest"], "did you mean run_dir=latest?"),
        (["run_dir=x", "--cfg", "job", "-cn", "sample", "--info", "defaults"], None),
        (["~seed", "+x=1", "-m", "--multirun", "--help"], None),
    ],
)
def test_a_bare_argument_is_named(args, expected):
    assert startup.bare_argument("sample", args) == expected


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


# --- MNIST decoded once ---------------------------------------------------------------------


@pytest.mark.slow
def test_mnist_is_read_without_torchvision_once_decoded(tmp_path):
    script = (
        "import sys; from vae_pyro.data import load_data; d = load_data('mnist'); "
        "print(len(d.train), len(d.test), 'torchvision' in sys.modules)"
    )
    first = _python("-c", script, cache=tmp_path, cwd=tmp_path)
    assert first.stdout.split() == ["60000", "10000", "True"], first.stderr
    second = _python("-c", script, cache=tmp_path, cwd=tmp_path)
    assert second.stdout.split() == ["60000", "10000", "False"], second.stderr
    assert sorted(p.name.split("-")[1] for p in (tmp_path / "decoded").iterdir()) == [
        "test",
        "train",
    ]


def test_the_decoded_cache_holds_what_torchvision_reads_and_a_damaged_one_is_rebuilt(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("VAE_PYRO_CACHE", str(tmp_path))
    root = data.DEFAULT_ROOT
    read = data._torchvision_read("mnist", root, False, "")
    assert data._torchvision_split("mnist", root, train=False)[0].equal(read[0])  # decoded
    path = data._decoded("mnist", root, train=False)
    cached = data._read_decoded(path)
    assert cached[0].dtype == torch.uint8 and cached[0].equal(read[0])
    assert cached[1].dtype == torch.int64 and cached[1].equal(read[1])
    for damage in (b"", path.read_bytes()[:1000], b"not an npz"):
        path.write_bytes(damage)
        x, y = data._torchvision_split("mnist", root, train=False)
        assert x.equal(read[0]) and y.equal(read[1])
        assert data._read_decoded(path)[0].equal(read[0])  # rebuilt
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files


def test_a_changed_source_file_is_decoded_again(tmp_path, monkeypatch):
    monkeypatch.setenv("VAE_PYRO_CACHE", str(tmp_path / "cache"))
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in data._IDX_FILES:
        (raw / f).symlink_to(data.DEFAULT_ROOT / "MNIST" / "raw" / f)
    key = data._decoded("mnist", tmp_path / "root", train=True)
    assert key is not None and key != data._decoded("mnist", tmp_path / "root", train=False)
    (raw / data._IDX_FILES[0]).unlink()
    assert data._decoded("mnist", tmp_path / "root", train=True) is None  # not all there
    shutil.copy(data.DEFAULT_ROOT / "MNIST" / "raw" / data._IDX_FILES[0], raw)
    changed = data._decoded("mnist", tmp_path / "root", train=True)
    assert changed != key and changed.name.rsplit("-", 1)[0] == key.name.rsplit("-", 1)[0]
    x, y = torch.zeros(2, 1, 3, 3, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64)
    data._write_decoded(key, x, y)
    data._write_decoded(changed, x, y)
    assert [p.name for p in changed.parent.iterdir()] == [changed.name]  # the older one went


@pytest.mark.parametrize(("n", "c", "nrow"), [(1, 1, 8), (7, 1, 3), (10, 3, 10), (5, 2, 8)])
def test_image_grid_is_make_grid_without_torchvision(n, c, nrow):
    from torchvision.utils import make_grid

    from vae_pyro.plots import image_grid

    images = torch.rand(n, c, 5, 4) * 1.2 - 0.1  # clamped to [0, 1] by both
    expected = make_grid(images.clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)
    assert image_grid(images, nrow).equal(expected.permute(1, 2, 0))


def test_the_decoded_cache_keeps_the_most_recently_used(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_DECODED", 3)
    x, y = torch.zeros(2, 1, 3, 3, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64)
    paths = [tmp_path / f"mnist-train-{folder}-0.npz" for folder in ("a", "b", "c")]
    for age, path in enumerate(paths):
        data._write_decoded(path, x, y)
        os.utime(path, (age, age))  # a, then b, then c
    monkeypatch.setattr(data, "MAX_DECODED", 2)
    assert data._read_decoded(paths[0]) is not None  # a used now
    data._write_decoded(tmp_path / "mnist-train-d-0.npz", x, y)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mnist-train-a-0.npz",
        "mnist-train-d-0.npz",
    ]
