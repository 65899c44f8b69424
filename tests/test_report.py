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
    evaluated: dict | None = None,
    extra: dict | None = None,
) -> Path:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    cfg = {"seed": seed, "model": {"z_dim": z_dim, "hidden_dim": 16}, "trainer": {"epochs": epochs}}
    cfg = OmegaConf.merge(cfg, extra or {})  # what the overrides changed
    OmegaConf.save(cfg, job / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides or []), job / ".hydra" / "overrides.yaml")
    lines = [
        {"epoch": e, "train_loss": test + 1, "test_loss": test, "seconds": 1.0}
        for e in range(1, epochs + 1)
    ]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if nll is not None:
        (job / "eval.json").write_text(json.dumps({"nll": nll, **(evaluated or {})}))
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


def _evaluated(epoch: int, images: int, step: int | None = None) -> dict:
    """The fields of vae_pyro.evaluate's eval.json that say what it scored."""
    fingerprint = {"sha256": "0" * 64, "train": 60000, "test": 10000, "source": "data"}
    return {
        "checkpoint_epoch": epoch,
        "checkpoint_step": step,
        "num_images": images,
        "data_fingerprint": fingerprint,
    }


def test_each_nll_says_its_epoch_and_images_and_a_stale_one_is_marked(tmp_path, capsys):
    """An eval.json of an earlier checkpoint, or of a subset of the test images, is not put
    beside the final test loss without a word."""
    for name, seed, evaluated in [
        ("0", 0, _evaluated(3, 10000)),
        ("1", 1, _evaluated(1, 10000)),
        ("2", 2, _evaluated(3, 500)),
    ]:
        overrides = [f"seed={seed}"]
        _job(
            tmp_path,
            name,
            seed=seed,
            z_dim=2,
            test=100.0,
            nll=90.0,
            epochs=3,
            overrides=overrides,
            evaluated=evaluated,
        )
    assert report.main([f"sweep_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "| -log p(x) (eval.json) |" in out and "stale: not of the final epoch" in out
    assert "| 0 | seed=0 | 100.00 | 101.00 | 90.00 (epoch 3, 10000 images) | 3 |" in out
    assert "| 90.00 (stale: epoch 1 of 3, 10000 images) |" in out
    assert "| 90.00 (epoch 3, 500 of 10000 images) |" in out
    assert "| 90.00 +- 0.00 (n=3; 1 stale, 1 on a test subset) |" in out  # over seeds
    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["nll_epoch"], r["nll_images"], r["nll_stale"]) for r in rows] == [
        ("3", "10000", "False"),
        ("1", "10000", "True"),
        ("3", "500", "False"),
    ]


def test_an_nll_of_a_checkpoint_inside_an_epoch_is_stale(tmp_path, capsys):
    _job(tmp_path, "0", seed=0, z_dim=2, test=1.0, nll=0.5, evaluated=_evaluated(2, 10000, 7))
    _job(tmp_path, "1", seed=0, z_dim=5, test=2.0)
    assert report.main([str(tmp_path)]) == 0
    assert "| 0.50 (stale: epoch 2 + 7 steps of 2, 10000 images) |" in capsys.readouterr().out


def _plotted(monkeypatch) -> dict:
    """What report hands to plots.sweep_summary (the summary.png is still drawn)."""
    given: dict = {}
    real = report.plots.sweep_summary

    def spy(points, path, x_label, title=""):
        given.update(points=points, x_label=x_label)
        return real(points, path, x_label, title)

    monkeypatch.setattr(report.plots, "sweep_summary", spy)
    return given


def test_summary_png_plots_against_the_key_the_runs_vary(tmp_path, monkeypatch):
    """Not always model.z_dim: here it is the same in every job, and hidden_dim and lr vary."""
    for i, (hidden, lr) in enumerate([(100, 0.001), (200, 0.001), (400, 0.001), (100, 0.01)]):
        over = [f"model.hidden_dim={hidden}", f"optim.lr={lr}"]
        extra = {"model": {"hidden_dim": hidden}, "optim": {"lr": lr}}
        _job(tmp_path, str(i), seed=0, z_dim=5, test=100.0 - i, overrides=over, extra=extra)
    given = _plotted(monkeypatch)
    assert report.main([str(tmp_path)]) == 0
    assert given["x_label"] == "model.hidden_dim"
    assert [(p.x, p.line, p.loss) for p in given["points"]] == [
        (100.0, "optim.lr=0.001", 100.0),
        (200.0, "optim.lr=0.001", 99.0),
        (400.0, "optim.lr=0.001", 98.0),
        (100.0, "optim.lr=0.01", 97.0),
    ]


def test_summary_png_of_a_choice_is_a_categorical_axis(tmp_path, monkeypatch):
    for i, prior in enumerate(["standard", "vamp", "mog"]):
        over, extra = [f"model/prior={prior}"], {"model": {"prior": {"name": prior}}}
        _job(tmp_path, str(i), seed=0, z_dim=5, test=90.0 + i, overrides=over, extra=extra)
    given = _plotted(monkeypatch)
    assert report.main([str(tmp_path)]) == 0
    assert given["x_label"] == "model/prior"
    assert [p.x for p in given["points"]] == ["standard", "vamp", "mog"]
