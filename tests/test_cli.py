"""The README's commands, run exactly as a user would: a subprocess per command."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vae_pyro.errors import VaePyroError
from vae_pyro.train import train

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _run(args, cwd):
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _readme_train_command():
    """The quick start's train command, less the keys the tests set themselves."""
    match = re.search(r"^python (-m vae_pyro\.train .+)$", README, re.M)
    assert match, "README lost its train command"
    return [a for a in match.group(1).split() if not a.startswith(("trainer.epochs=", "hydra.run"))]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    args = _readme_train_command() + [
        "trainer.epochs=1",
        "data.subset=512",
        f"hydra.run.dir={run_dir}",
    ]
    # From a foreign working directory: data and config must not depend on it.
    proc = _run(args, cwd=tmp_path_factory.mktemp("elsewhere"))
    return proc, run_dir


@pytest.mark.slow
def test_readme_train_command(cli_run):
    proc, run_dir = cli_run
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/1" in proc.stdout and "final test loss" in proc.stdout
    (record,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert record["epoch"] == 1 and record["test_loss"] < 543
    for path in ("checkpoint.pt", "figures/loss.png", "figures/reconstructions.png", "train.log"):
        assert (run_dir / path).is_file(), path


# The full table of bad values is in test_config.py; these also check an earlier run is kept.
BAD = [
    ("model.z_dim=0", "model.z_dim=0 is not allowed: use an integer >= 1"),
    ("optim.lr=-0.001", "optim.lr=-0.001 is not allowed: use a finite number > 0"),
    ("trainer.device=tpu", "trainer.device=tpu is not allowed"),
    ("data.subset=60001", "data.subset=60001 is larger than the 60000 training images"),
]
if not torch.cuda.is_available():
    BAD.append(("trainer.device=cuda", "CUDA is not available"))


@pytest.mark.parametrize(("override", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_clear_error(make_cfg, cli_run, override, message):
    """Fails before any work and leaves an earlier run in the same dir intact."""
    _, run_dir = cli_run
    before = {p: (run_dir / p).read_bytes() for p in ("checkpoint.pt", "metrics.jsonl")}
    with pytest.raises(VaePyroError) as err:
        train(make_cfg("+experiment=z50", override), run_dir)
    assert message in str(err.value)
    assert before == {p: (run_dir / p).read_bytes() for p in before}


@pytest.mark.slow
@pytest.mark.parametrize(("override", "message"), BAD[:2], ids=[b[0] for b in BAD[:2]])
def test_bad_input_from_the_command_line_is_one_line_and_exit_2(cli_run, override, message):
    _, run_dir = cli_run
    before = {p: (run_dir / p).read_bytes() for p in ("checkpoint.pt", "metrics.jsonl")}
    proc = _run(
        ["-m", "vae_pyro.train", "+experiment=z50", override, f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().count("\n") == 0, proc.stderr  # one line
    assert before == {p: (run_dir / p).read_bytes() for p in before}
