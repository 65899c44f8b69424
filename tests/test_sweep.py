"""Sweeps through the real CLI (issue 4): a grid, a failing job, the joblib and submitit_local
launchers, the Optuna sweeper, and `vae_pyro.report` over what they wrote.

Every job trains 256 images for 1-2 epochs with a tiny network, so a sweep costs seconds. The
launcher/sweeper plugins come with `pip install -e ".[dev]"` (which pulls in [sweep]).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from vae_pyro import report
from vae_pyro.cli import CONF_DIR
from vae_pyro.train import train

TINY = ["data.subset=256", "trainer.epochs=1", "trainer.device=cpu"]
SWEEP_EXTRA = 'pip install -e ".[sweep]"'


def _plugin(name: str) -> None:
    pytest.importorskip(f"hydra_plugins.{name}", reason=f"{name} missing: {SWEEP_EXTRA}")


def _python(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _sweep(sweep_dir: Path, *overrides: str, code: int = 0) -> subprocess.CompletedProcess:
    """`python -m vae_pyro.train -m ...` from a foreign working directory; `code`: its exit
    code (1 when jobs failed)."""
    args = ["-m", "vae_pyro.train", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    proc = _python(args, cwd=sweep_dir.parent)
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    return proc


def _metrics(job: Path) -> list[dict]:
    return [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]


def _overrides(job: Path) -> list[str]:
    return list(OmegaConf.load(job / ".hydra" / "overrides.yaml"))


def _status(job: Path) -> dict:
    return json.loads((job / "status.json").read_text())


def _csv(sweep_dir: Path) -> list[dict]:
    with (sweep_dir / "summary.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A 2x2 sweep, two epochs per job, all jobs in one process (the basic launcher)."""
    sweep_dir = tmp_path_factory.mktemp("grid") / "sweep"
    overrides = ["data.subset=256", "trainer.epochs=2", "trainer.device=cpu"]
    overrides += ["model.z_dim=2,3", "model.hidden_dim=16,32"]
    return sweep_dir, _sweep(sweep_dir, *overrides)


@pytest.mark.slow
def test_grid_sweep_runs_every_combination_in_its_own_run_dir(grid):
    sweep_dir, _ = grid
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    combos = set()
    for job in jobs:
        sizes = {o.split("=")[0]: int(o.split("=")[1]) for o in _overrides(job) if "_dim=" in o}
        combos.add((sizes["model.z_dim"], sizes["model.hidden_dim"]))
        assert [r["epoch"] for r in _metrics(job)] == [1, 2]
        status = _status(job)
        assert status["status"] == "ok" and status["test_loss"] == _metrics(job)[-1]["test_loss"]
        assert status["overrides"] == _overrides(job)
        assert (job / "checkpoint.pt").is_file() and (job / "figures" / "loss.png").is_file()
    assert combos == {(2, 16), (2, 32), (3, 16), (3, 32)}


@pytest.mark.slow
def test_sweep_jobs_are_isolated(grid, make_cfg, tmp_path):
    """The last job of a one-process sweep equals the same config trained alone: no parameters
    or RNG state leak from the jobs before it."""
    sweep_dir, _ = grid
    last = sweep_dir / "3"
    alone = train(make_cfg(*_overrides(last)), tmp_path / "alone")
    # Same seed and data; only thread scheduling may differ between the two processes.
    assert alone == pytest.approx(_metrics(last)[-1]["test_loss"], abs=1e-2)
    assert _metrics(tmp_path / "alone")[0]["train_loss"] == pytest.approx(
        _metrics(last)[0]["train_loss"], abs=1e-2
    )


@pytest.mark.slow
def test_report_cli_equals_each_runs_metrics(grid):
    sweep_dir, _ = grid
    proc = _python(["-m", "vae_pyro.report", str(sweep_dir)], cwd=sweep_dir.parent)
    assert proc.returncode == 0, proc.stderr
    for name in ("summary.csv", "summary.md", "summary.png"):
        assert (sweep_dir / name).is_file(), name
    assert (sweep_dir / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _csv(sweep_dir)
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    for row in rows:
        job = sweep_dir / row["job"]
        metrics = _metrics(job)
        assert row["status"] == "ok" and row["error"] == ""
        assert float(row["test_loss"]) == metrics[-1]["test_loss"]
        assert float(row["train_loss"]) == metrics[-1]["train_loss"]
        assert int(row["epochs"]) == 2
        assert float(row["seconds"]) == pytest.approx(sum(m["seconds"] for m in metrics))
        assert row["overrides"].split() == _overrides(job)
        assert f"model.z_dim={row['z_dim']}" in row["overrides"]
        assert f"model.hidden_dim={row['hidden_dim']}" in row["overrides"]
        # The printed table shows only what varies, rounded to 0.01 nats.
        varied = " ".join(o for o in _overrides(job) if "_dim=" in o)
        losses = f"{metrics[-1]['test_loss']:.2f} | {metrics[-1]['train_loss']:.2f}"
        assert f"| {row['job']} | {varied} | {losses} | 2 |" in proc.stdout
    assert proc.stdout.count("| ok |") == 4
    assert (sweep_dir / "summary.md").read_text().count("| ok |") == 4
    best = min(rows, key=lambda r: float(r["test_loss"]))
    assert f"Best: job {best['job']} " in proc.stdout


@pytest.mark.slow
def test_failed_job_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    """The first job fails validation; the second still trains, and the report marks both.
    The sweep then exits 1 with one line saying how many jobs failed and where to look."""
    sweep_dir = tmp_path / "sweep"
    proc = _sweep(sweep_dir, *TINY, "model.z_dim=2", "model.hidden_dim=-3,16", code=1)
    message = "model.hidden_dim=-3 is not allowed: use an integer >= 1"
    assert f"job failed: {message}" in proc.stdout
    failed, ok = sweep_dir / "0", sweep_dir / "1"
    assert proc.stderr.splitlines()[-1] == (
        f"vae_pyro.train: error: 1 of 2 sweep jobs failed (their status.json: "
        f"{failed / 'status.json'}); python -m vae_pyro.report {sweep_dir} lists them"
    )
    assert _status(failed) == {
        "status": "failed",
        "error": message,
        "overrides": [*TINY, "model.z_dim=2", "model.hidden_dim=-3"],
    }
    assert not (failed / "metrics.jsonl").exists()
    assert _status(ok)["status"] == "ok" and len(_metrics(ok)) == 1

    assert report.main([str(sweep_dir)]) == 0
    printed = capsys.readouterr().out
    rows = _csv(sweep_dir)
    assert [(r["job"], r["status"]) for r in rows] == [("0", "failed"), ("1", "ok")]
    assert rows[0]["test_loss"] == "" and "hidden_dim=-3" in rows[0]["error"]
    assert float(rows[1]["test_loss"]) == _metrics(ok)[-1]["test_loss"]
    # refused before it started: no config to say how many epochs it was asked for
    assert "| 0 | model.hidden_dim=-3 | - | - | 0 | - | failed: model.hidden_dim" in printed
    assert "1 failed, 1 ok" in printed


@pytest.mark.slow
def test_joblib_launcher_runs_two_jobs_in_parallel(tmp_path):
    _plugin("hydra_joblib_launcher")
    sweep_dir = tmp_path / "sweep"
    proc = _sweep(
        sweep_dir,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *TINY,
        "model.hidden_dim=16",
        "model.z_dim=2,3",
    )
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    for job in ("0", "1"):
        assert _status(sweep_dir / job)["status"] == "ok"
        assert len(_metrics(sweep_dir / job)) == 1


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_job(tmp_path):
    _plugin("hydra_submitit_launcher")
    sweep_dir = tmp_path / "sweep"
    _sweep(
        sweep_dir,
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        *TINY,
        "model.hidden_dim=16",
    )
    assert (sweep_dir / ".submitit").is_dir()  # it really went through submitit
    assert _status(sweep_dir / "0")["status"] == "ok"
    assert len(_metrics(sweep_dir / "0")) == 1


@pytest.mark.slow
def test_optuna_sweeper_runs_two_trials(tmp_path):
    _plugin("hydra_optuna_sweeper")
    sweep_dir = tmp_path / "sweep"
    _sweep(
        sweep_dir,
        "+hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        *TINY,
    )
    jobs = [sweep_dir / "0", sweep_dir / "1"]
    assert not (sweep_dir / "2").exists()
    losses = [_metrics(job)[-1]["test_loss"] for job in jobs]
    result = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert result.best_value == min(losses)
    assert set(result.best_params) == {"optim.lr", "model.z_dim", "model.hidden_dim"}
    for job in jobs:
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        assert 1e-4 <= cfg.optim.lr <= 1e-2
        assert cfg.model.z_dim in (2, 5, 10, 20, 50) and cfg.model.hidden_dim in (100, 200, 400)
    rows, _ = report.write_report(sweep_dir)
    assert [r["test_loss"] for r in rows] == losses


@pytest.mark.parametrize("launcher", ["submitit_slurm", "slurm"])
def test_slurm_launcher_configs_compose(launcher):
    """The issue's `hydra/launcher=submitit_slurm` and ours (its settings from conf/)."""
    _plugin("hydra_submitit_launcher")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train", [f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    if launcher == "slurm":
        ours = OmegaConf.load(CONF_DIR / "hydra" / "launcher" / "slurm.yaml")
        for key in ("partition", "timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb"):
            assert cfg.hydra.launcher[key] == ours[key], key


def test_report_on_a_file_says_it_is_not_a_directory(tmp_path, capsys):
    (tmp_path / "f.txt").write_text("x")
    assert report.main([str(tmp_path / "f.txt")]) == 2
    assert (
        capsys.readouterr().err
        == f"vae_pyro.report: error: not a directory: {tmp_path / 'f.txt'}\n"
    )


def test_report_on_a_missing_directory_is_one_clear_error(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err == f"vae_pyro.report: error: no such directory: {tmp_path / 'nope'}\n"


def test_report_on_a_directory_without_jobs_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vae_pyro.report: error: {tmp_path} holds no sweep jobs")
    assert err.count("\n") == 1
    assert not (tmp_path / "summary.csv").exists()
