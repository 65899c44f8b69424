"""Runs you can find: outputs/latest after a run, multirun/latest after a sweep, run_dir=latest
in sample and evaluate, a default run dir named after the experiment, and distinct dirs for runs
started in the same second (vae_pyro/runs.py through the real CLI)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing import io_wrapper

from vae_pyro import runs
from vae_pyro.errors import VaePyroError

TINY = ["data.subset=256", "trainer.epochs=1", "model.z_dim=2", "model.hidden_dim=16"]
TINY += ["trainer.device=cpu"]
SAME_SECOND = "hydra.run.dir=outputs/same_${now:%Y}"  # time-stamped, the same name for a year


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def _start(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    proc = _start(cwd, *args)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _runs(folder: Path) -> list[Path]:
    """The <date>/<time> dirs in outputs/ or multirun/ (not `latest`)."""
    return [run for day in folder.iterdir() if day.is_dir() for run in day.iterdir()]


def _latest(folder: Path) -> Path:
    """The run folder/latest names: one line, its path relative to folder."""
    [line] = (folder / "latest").read_text().splitlines()
    assert not Path(line).is_absolute()  # the folder can move
    return (folder / line).resolve()


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny run with the default run dir, from a fresh working directory."""
    cwd = tmp_path_factory.mktemp("work")
    proc = _ok(_cli(cwd, "vae_pyro.train", "+experiment=z50", *TINY))
    return cwd, proc


@pytest.mark.slow
def test_latest_points_at_the_run_named_after_its_experiment(finished):
    cwd, proc = finished
    [run] = _runs(cwd / "outputs")
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d_z50", str(run.relative_to(cwd / "outputs"))
    )
    assert _latest(cwd / "outputs") == run.resolve()
    assert f"artifacts in {run}" in proc.stdout


@pytest.mark.slow
def test_tensorboard_over_outputs_lists_each_run_once(finished):
    cwd, _ = finished
    [run] = _runs(cwd / "outputs")
    found = io_wrapper.GetLogdirSubdirectories(str(cwd / "outputs"))
    assert [Path(d).resolve() for d in found] == [run.resolve() / "tensorboard"]


@pytest.mark.slow
def test_logs_that_are_not_a_terminal_hold_no_colour_codes(finished):
    cwd, proc = finished
    log = (_latest(cwd / "outputs") / "train.log").read_text()
    assert "\x1b" not in proc.stdout + proc.stderr + log


@pytest.mark.slow
def test_run_dir_latest_works_in_sample_and_evaluate(finished):
    cwd, _ = finished
    real = _latest(cwd / "outputs")
    sampled = _ok(_cli(cwd, "vae_pyro.sample", "run_dir=latest", "device=cpu"))
    printed = [Path(line) for line in sampled.stdout.split()]
    assert printed and all(p.parent == real / "samples" and p.is_file() for p in printed)
    evaluated = _ok(
        _cli(
            cwd,
            "vae_pyro.evaluate",
            "run_dir=outputs/latest",
            "num_particles=2",
            "num_images=50",
            "device=cpu",
        )
    )
    assert evaluated.stdout.startswith(f"{real}: checkpoint after epoch 1")
    assert json.loads((real / "eval.json").read_text())["run_dir"] == str(real)


@pytest.mark.slow
def test_run_dir_latest_without_a_run_is_one_line(tmp_path):
    proc = _cli(tmp_path, "vae_pyro.evaluate", "run_dir=latest")
    assert proc.returncode == 2
    assert proc.stderr.startswith("vae_pyro.evaluate: error: run_dir=latest: there is no ")
    assert proc.stderr.strip().count("\n") == 0 and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_runs_started_in_the_same_second_get_their_own_dirs(tmp_path):
    """Two runs whose time-stamped run dir has the same name (one year here, one second by
    default), started together: both train, each in its own dir; latest names one of them,
    and a run that ends later takes latest."""
    both = [_start(tmp_path, "vae_pyro.train", *TINY, SAME_SECOND) for _ in range(2)]
    for proc in both:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    year = time.strftime("%Y")
    first, second = tmp_path / "outputs" / f"same_{year}", tmp_path / "outputs" / f"same_{year}-2"
    for run in (first, second):
        assert (run / "checkpoint.pt").is_file() and (run / "metrics.jsonl").is_file()
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # one run in each
    assert _latest(tmp_path / "outputs") in (first.resolve(), second.resolve())
    _ok(_cli(tmp_path, "vae_pyro.train", *TINY, SAME_SECOND))
    assert _latest(tmp_path / "outputs") == (tmp_path / "outputs" / f"same_{year}-3").resolve()


@pytest.mark.slow
def test_a_sweep_ends_naming_its_dir_and_the_report_and_multirun_latest(tmp_path):
    proc = _ok(_cli(tmp_path, "vae_pyro.train", "-m", *TINY, "seed=0,1"))
    [sweep] = _runs(tmp_path / "multirun")
    where = sweep.relative_to(tmp_path)
    assert proc.stdout.splitlines()[-1] == (
        f"sweep of 2 jobs in {where}; its summary: python -m vae_pyro.report sweep_dir={where}"
    )
    assert _latest(tmp_path / "multirun") == sweep.resolve()
    assert not (tmp_path / "outputs").exists()  # a sweep's jobs do not move outputs/latest
    report = _ok(_cli(tmp_path, "vae_pyro.report", "sweep_dir=multirun/latest"))
    assert (sweep / "summary.md").is_file(), report.stdout  # the sweep multirun/latest names


# --- vae_pyro.runs in-process ----------------------------------------------------------------


def _hydra(run_dir: str) -> object:
    return OmegaConf.create({"hydra": {"run": {"dir": run_dir}}})


def test_a_taken_time_stamped_dir_gives_the_next_name(tmp_path, monkeypatch):
    from hydra.core.utils import setup_globals

    setup_globals()  # Hydra's ${now:...}
    monkeypatch.chdir(tmp_path)
    config = _hydra("outputs/a${now:%Y}")
    assert runs.time_stamped(config.hydra.run) and not runs.time_stamped(_hydra("x").hydra.run)
    first = Path(config.hydra.run.dir)
    first.mkdir(parents=True)  # Hydra made it; an earlier run of the same second holds it
    tried = []

    def claim(run_dir: Path) -> Path:
        tried.append(run_dir)
        if run_dir == first or run_dir.name.endswith("-2"):  # taken by other runs
            run_dir.mkdir(exist_ok=True)
            raise VaePyroError(f"{run_dir} is in use by another run")
        return run_dir

    assert runs.claim_free(first, True, claim) == Path(f"{first}-3")
    assert tried == [first, Path(f"{first}-2"), Path(f"{first}-3")]


def test_a_fixed_run_dir_is_never_renamed(tmp_path):
    (tmp_path / "run").mkdir()
    assert runs.claim_free(tmp_path / "run", False, lambda d: d) == tmp_path / "run"
    with pytest.raises(VaePyroError, match="refused"):
        runs.claim_free(
            tmp_path / "run", False, lambda d: (_ for _ in ()).throw(VaePyroError("refused"))
        )


def test_latest_moves_only_for_runs_inside_its_folder(tmp_path):
    outputs = tmp_path / "outputs"
    (outputs / "d" / "t1").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    assert runs.mark_latest(tmp_path / "elsewhere", outputs) is None
    assert not (outputs / "latest").exists()
    assert runs.mark_latest(outputs / "d" / "t1", outputs) == outputs / "latest"
    assert (outputs / "latest").read_text() == os.path.join("d", "t1") + "\n"
    (outputs / "latest2").mkdir()
    assert runs.mark_latest(outputs / "latest2", outputs) == outputs / "latest"  # replaced
    assert [p.name for p in outputs.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_run_dir_latest_reads_the_file_and_an_older_symlink(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "outputs" / "d" / "t1"
    run.mkdir(parents=True)
    os.symlink(os.path.join("d", "t0"), tmp_path / "outputs" / "latest")  # an older vae-pyro's
    latest = runs.mark_latest(run, "outputs")
    assert latest.is_file() and latest.read_text() == os.path.join("d", "t1") + "\n"
    assert runs.resolve_run_dir("latest") == str(run.resolve())
    assert runs.resolve_run_dir("outputs/latest") == str(run.resolve())
    assert runs.resolve_run_dir("outputs/d/t1") == "outputs/d/t1"  # other paths as given


def test_a_latest_that_names_a_removed_run_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(VaePyroError, match="no run has ended here yet"):
        runs.resolve_run_dir("latest")
    run = tmp_path / "outputs" / "t1"
    run.mkdir(parents=True)
    runs.mark_latest(run, "outputs")
    run.rmdir()
    with pytest.raises(VaePyroError, match="which no longer exists"):
        runs.resolve_run_dir("latest")


def test_the_default_run_dir_carries_the_experiment():
    from hydra import compose, initialize_config_dir
    from hydra.core.utils import setup_globals

    from vae_pyro.cli import CONF_DIR

    setup_globals()
    for overrides, suffix in (([], ""), (["+experiment=z50"], "_z50")):
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
        name = Path(cfg.hydra.run.dir).name
        assert re.fullmatch(rf"\d\d-\d\d-\d\d{suffix}", name), name


def test_two_fits_in_a_row_get_two_dirs_and_latest_names_the_second(tmp_path, monkeypatch):
    import vae_pyro

    monkeypatch.chdir(tmp_path)
    first, second = (vae_pyro.fit("+experiment=z50", *TINY) for _ in range(2))
    assert first.run_dir != second.run_dir  # within one second too (<name>-2)
    assert re.fullmatch(r"\d\d-\d\d-\d\d_z50(-2)?", second.run_dir.name), second.run_dir
    assert _latest(tmp_path / "outputs") == second.run_dir.resolve()
    assert vae_pyro.load("outputs/latest").epoch == 1
