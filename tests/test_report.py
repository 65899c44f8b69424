"""vae_pyro.report over folders of runs written by hand (no training): damaged jobs, the
key=value form, refusing a single run's dir, labels of what differs, means over seeds."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vae_pyro import report


def _job(
    root: Path,
    name: str,
    *,
    seed: int,
    z_dim: int,
    test: float,
    nll: float | None = None,
    overrides: list[str] | None = None,
    epochs: int = 2,
) -> Path:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    cfg = {"seed": seed, "model": {"z_dim": z_dim, "hidden_dim": 16}, "trainer": {"epochs": epochs}}
    OmegaConf.save(OmegaConf.create(cfg), job / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides or []), job / ".hydra" / "overrides.yaml")
    lines = [
        {"epoch": e, "train_loss": test + 1, "test_loss": test, "seconds": 1.0}
        for e in range(1, epochs + 1)
    ]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if nll is not None:
        (job / "eval.json").write_text(json.dumps({"nll": nll}))
    return job


def test_means_over_seeds_when_runs_differ_only_in_seed(tmp_path, capsys):
    losses = {(2, 0): 150.0, (2, 1): 152.0, (2, 2): 151.0, (5, 0): 120.0, (5, 1): 124.0}
    for i, ((z, seed), loss) in enumerate(sorted(losses.items())):
        _job(
            tmp_path,
            str(i),
            seed=seed,
            z_dim=z,
            test=loss,
            nll=loss - 10,
            overrides=[f"model.z_dim={z}", f"seed={seed}"],
        )
    assert report.main([f"sweep_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    z2 = [150.0, 152.0, 151.0]
    sd = statistics.stdev(z2)
    assert f"| model.z_dim=2 | 0,1,2 | 151.00 +- {sd:.2f} (n=3) | 141.00 +- {sd:.2f} (n=3) |" in out
    sd5 = statistics.stdev([120.0, 124.0])
    assert f"| model.z_dim=5 | 0,1 | 122.00 +- {sd5:.2f} (n=2) |" in out
    assert "Over seeds" in (tmp_path / "summary.md").read_text()


def test_no_seed_table_without_repeated_seeds(tmp_path, capsys):
    _job(tmp_path, "0", seed=0, z_dim=2, test=1.0, overrides=["model.z_dim=2"])
    _job(tmp_path, "1", seed=0, z_dim=5, test=2.0, overrides=["model.z_dim=5"])
    assert report.main([str(tmp_path)]) == 0  # the positional form still works
    assert "Over seeds" not in capsys.readouterr().out


def test_a_damaged_config_is_one_row_and_the_others_are_summarised(tmp_path, capsys):
    _job(tmp_path, "0", seed=0, z_dim=2, test=100.0, overrides=["model.z_dim=2"])
    bad = _job(tmp_path, "1", seed=0, z_dim=5, test=90.0, overrides=["model.z_dim=5"])
    (bad / ".hydra" / "config.yaml").write_text("model: {z_dim: [unclosed\n")
    assert report.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok", "error"]
    assert rows[1]["error"].startswith(".hydra/ is unreadable")
    assert "| 1 |" in out and "error: .hydra/ is unreadable" in out


def test_labels_name_the_config_values_that_differ_when_overrides_do_not(tmp_path, capsys):
    _job(tmp_path, "a", seed=0, z_dim=2, test=1.0)
    _job(tmp_path, "b", seed=0, z_dim=7, test=2.0)
    assert report.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| a | model.z_dim=2 |" in out and "| b | model.z_dim=7 |" in out


def test_a_single_run_dir_is_refused_and_left_untouched(tmp_path, capsys):
    job = _job(tmp_path, "run", seed=0, z_dim=2, test=1.0)
    before = sorted(p.name for p in job.iterdir())
    assert report.main([f"sweep_dir={job}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vae_pyro.report: error: {job} is one run's directory")
    assert err.count("\n") == 1
    assert sorted(p.name for p in job.iterdir()) == before


def test_an_unknown_key_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        report.main([f"dir={tmp_path}"])
    assert stop.value.code == 2
    assert "unknown argument dir=" in capsys.readouterr().err
