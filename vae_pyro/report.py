"""Summarise a sweep: `python -m vae_pyro.report multirun/<date>/<time>`.

Writes summary.csv, summary.md and summary.png into that directory and prints the table. It
reads each job's `.hydra/config.yaml` and `.hydra/overrides.yaml`, `metrics.jsonl` and the
`status.json` that `vae_pyro.train` writes in sweeps; never the logs, whose wording may change.

Plain argparse rather than Hydra: the report takes one path, composes no config, and should
not create a run directory of its own. The command stays exactly `report <dir>`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vae_pyro import plots
from vae_pyro.errors import VaePyroError

COLUMNS = [
    "job",
    "overrides",
    "data",
    "arch",
    "z_dim",
    "hidden_dim",
    "lr",
    "test_loss",
    "train_loss",
    "epochs",
    "seconds",
    "status",
    "error",
]


def find_jobs(sweep_dir: Path) -> list[Path]:
    """Every run dir under sweep_dir (the dirs holding .hydra/config.yaml), in job order."""

    def order(job: Path) -> tuple:
        name = job.relative_to(sweep_dir).as_posix()
        return (0, int(name), "") if name.isdigit() else (1, 0, name)

    jobs = {p.parent.parent for p in sweep_dir.rglob("config.yaml") if p.parent.name == ".hydra"}
    return sorted(jobs, key=order)


def _metrics(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise ValueError(f"{path.name} line {number} is not JSON") from None
    return records


def read_job(job_dir: Path, sweep_dir: Path) -> dict[str, Any]:
    """One summary row: what the job was asked to do (config) and what it wrote (metrics)."""
    cfg = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
    overrides_path = job_dir / ".hydra" / "overrides.yaml"
    overrides = list(OmegaConf.load(overrides_path)) if overrides_path.is_file() else []
    row: dict[str, Any] = {
        "job": job_dir.relative_to(sweep_dir).as_posix(),
        "overrides": [str(o) for o in overrides],
        "data": OmegaConf.select(cfg, "data.name", default=None),
        "arch": OmegaConf.select(cfg, "model.arch", default="mlp"),  # runs before model.arch
        "z_dim": OmegaConf.select(cfg, "model.z_dim", default=None),
        "hidden_dim": OmegaConf.select(cfg, "model.hidden_dim", default=None),
        "lr": OmegaConf.select(cfg, "optim.lr", default=None),
        "test_loss": None,
        "train_loss": None,
        "epochs": 0,
        "planned_epochs": OmegaConf.select(cfg, "trainer.epochs", default=None),
        "seconds": None,
        "status": None,
        "error": "",
    }
    status_path = job_dir / "status.json"
    if status_path.is_file():
        try:
            status = json.loads(status_path.read_text())
            row["status"], row["error"] = status["status"], status.get("error", "")
        except (json.JSONDecodeError, KeyError, TypeError):
            row["status"], row["error"] = "error", "status.json is unreadable"
    metrics_path = job_dir / "metrics.jsonl"
    if metrics_path.is_file():
        try:
            records = _metrics(metrics_path)
        except ValueError as err:
            row["status"], row["error"] = "error", str(err)
            records = []
        if records:
            tested = [r["test_loss"] for r in records if r.get("test_loss") is not None]
            row["test_loss"] = tested[-1] if tested else None
            row["train_loss"] = records[-1].get("train_loss")
            row["epochs"] = records[-1].get("epoch", len(records))
            row["seconds"] = sum(r.get("seconds") or 0.0 for r in records)
    if row["status"] is None:  # no status.json: a plain run, or a job still running or killed
        done = row["epochs"] and row["epochs"] == row["planned_epochs"]
        row["status"] = "ok" if done and row["test_loss"] is not None else "incomplete"
    return row


def summarize(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job of the sweep in sweep_dir; VaePyroError when there is nothing to read."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise VaePyroError(f"no such directory: {sweep_dir}")
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise VaePyroError(
            f"{sweep_dir} holds no sweep jobs (no <job>/.hydra/config.yaml); pass the directory "
            "a `python -m vae_pyro.train -m ...` run wrote, e.g. multirun/2026-11-21/14-00-00"
        )
    return [read_job(job, sweep_dir) for job in jobs]


def varying(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Per row, the overrides that differ between jobs (all of them when only one job)."""
    if len(rows) < 2:
        return [list(r["overrides"]) for r in rows]
    shared = set.intersection(*(set(r["overrides"]) for r in rows))
    return [[o for o in r["overrides"] if o not in shared] for r in rows]


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _epochs(row: dict[str, Any]) -> str:
    if row["planned_epochs"] is not None and row["epochs"] != row["planned_epochs"]:
        return f"{row['epochs']}/{row['planned_epochs']}"
    return str(row["epochs"])


def _status(row: dict[str, Any], width: int = 90) -> str:
    if not row["error"]:
        return row["status"]
    text = f"{row['status']}: {row['error']}"
    return text if len(text) <= width else text[: width - 3] + "..."


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The table of summary.md (and of the terminal): varying overrides only, rounded."""
    lines = [
        "| job | overrides | test loss | train loss | epochs | seconds | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for row, overrides in zip(rows, varying(rows), strict=True):
        cells = [
            row["job"],
            " ".join(overrides) or "-",
            _num(row["test_loss"], 2),
            _num(row["train_loss"], 2),
            _epochs(row),
            _num(row["seconds"], 1),
            _status(row),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def best(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The finished job with the lowest final test loss."""
    ok = [r for r in rows if r["status"] == "ok" and r["test_loss"] is not None]
    ok = [r for r in ok if math.isfinite(r["test_loss"])]
    return min(ok, key=lambda r: r["test_loss"]) if ok else None


def write_report(sweep_dir: str | Path) -> tuple[list[dict[str, Any]], str]:
    """Write summary.csv, summary.md and summary.png into sweep_dir; return the rows and text."""
    sweep_dir = Path(sweep_dir)
    rows = summarize(sweep_dir)
    with (sweep_dir / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:  # full precision: repr of a float reads back as the same float
            writer.writerow({**row, "overrides": " ".join(row["overrides"])})
    counts = Counter(r["status"] for r in rows)
    lines = [
        f"# Sweep summary: {sweep_dir}",
        "",
        f"{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ". Losses are"
        " the final test and train -ELBO in nats per image (metrics.jsonl); seconds are the"
        " summed epoch times.",
        "",
        markdown_table(rows),
    ]
    top = best(rows)
    if top is not None:
        lines += [
            "",
            f"Best: job {top['job']} ({' '.join(top['overrides'])}), "
            f"test loss {top['test_loss']:.2f}.",
        ]
    text = "\n".join(lines) + "\n"
    (sweep_dir / "summary.md").write_text(text + "\n![summary](summary.png)\n")
    plots.sweep_summary(rows, sweep_dir / "summary.png", title=str(sweep_dir))
    return rows, text


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print the summary; bad input is one line on stderr and exit code 2."""
    parser = argparse.ArgumentParser(
        prog="python -m vae_pyro.report",
        description="Summarise a Hydra multirun directory: summary.csv, summary.md, summary.png.",
    )
    parser.add_argument("sweep_dir", type=Path, help="e.g. multirun/2026-11-21/14-00-00")
    args = parser.parse_args(argv)
    try:
        _, text = write_report(args.sweep_dir)
    except VaePyroError as err:
        print(f"vae_pyro.report: error: {err}", file=sys.stderr)
        return 2
    print(text, end="")
    print(f"wrote summary.csv, summary.md, summary.png in {args.sweep_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
