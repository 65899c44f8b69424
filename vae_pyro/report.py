"""Summarise a folder of runs: `python -m vae_pyro.report sweep_dir=multirun/<date>/<time>`
(or the path alone, `report multirun/<date>/<time>`; any folder holding run dirs works, e.g.
outputs/).

Writes summary.csv, summary.md and summary.png (the test loss against the key the runs vary)
into that directory and prints the table. It reads each job's `.hydra/config.yaml` and
`.hydra/overrides.yaml`, `metrics.jsonl`, `eval.json` (the importance-weighted -log p(x) of
`vae_pyro.evaluate`, when there is one, shown with the checkpoint epoch and the test images it
scored, and marked stale when that is not the run's final epoch) and the
`status.json` that `vae_pyro.train` writes in sweeps; never the logs, whose wording may change.
A job whose files are damaged is a row marked `error`, and the others are still summarised. When
runs differ only in `seed`, a second table gives the mean +- standard deviation over seeds.

Plain argparse rather than Hydra: the report composes no config and should not create a run
directory of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vae_pyro import plots, runs
from vae_pyro.config import flatten
from vae_pyro.errors import VaePyroError
from vae_pyro.files import atomic_write, check_output, write_failed

COLUMNS = [
    "job",
    "overrides",
    "data",
    "arch",
    "z_dim",
    "hidden_dim",
    "lr",
    "test_loss",
    "nll",
    "nll_epoch",
    "nll_images",
    "nll_stale",
    "train_loss",
    "epochs",
    "seconds",
    "status",
    "error",
]
OUTPUTS = ("summary.csv", "summary.md", "summary.png")  # what report writes (and redraws)
# How to read the -log p(x) column, said once above the table.
NLL_NOTE = (
    " -log p(x) is eval.json's importance-weighted estimate (vae_pyro.evaluate), with the"
    " checkpoint epoch and the test images it was computed on; stale: not of the final epoch,"
    " so not comparable with the final test loss."
)
# Keys that never make runs differ in what they compute (where they run, how they resume).
IGNORED = ("hydra.", "trainer.resume", "trainer.device", "trainer.dist_timeout_s")


def find_jobs(sweep_dir: Path) -> list[Path]:
    """Every run dir under sweep_dir (the dirs holding .hydra/config.yaml, or only the
    status.json of a job refused before it started), in job order."""

    def order(job: Path) -> tuple:
        name = job.relative_to(sweep_dir).as_posix()
        return (0, int(name), "") if name.isdigit() else (1, 0, name)

    jobs = {p.parent.parent for p in sweep_dir.rglob("config.yaml") if p.parent.name == ".hydra"}
    jobs |= {p.parent for p in sweep_dir.rglob("status.json")}
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


def _config(job_dir: Path) -> tuple[Any, list[str], str]:
    """The job's saved config and overrides; an empty config and the reason when unreadable."""
    status = job_dir / "status.json"
    if not (job_dir / ".hydra").exists() and status.is_file():  # refused before it started
        with contextlib.suppress(OSError, ValueError, AttributeError):
            return OmegaConf.create(), list(json.loads(status.read_text())["overrides"]), ""
    try:
        cfg = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
        overrides_path = job_dir / ".hydra" / "overrides.yaml"
        overrides = list(OmegaConf.load(overrides_path)) if overrides_path.is_file() else []
        return cfg, [str(o) for o in overrides], ""
    except Exception as err:  # YAML syntax, encoding, permissions: this row only
        reason = " ".join(str(err).split())[:120] or type(err).__name__
        return OmegaConf.create(), [], f".hydra/ is unreadable ({reason})"


def read_job(job_dir: Path, sweep_dir: Path) -> dict[str, Any]:
    """One summary row: what the job was asked to do (config) and what it wrote (metrics)."""
    cfg, overrides, damaged = _config(job_dir)
    row: dict[str, Any] = {
        "job": job_dir.relative_to(sweep_dir).as_posix(),
        "overrides": overrides,
        "config": {} if damaged else _flat(cfg),
        "data": OmegaConf.select(cfg, "data.name", default=None),
        "arch": OmegaConf.select(cfg, "model.arch", default="mlp"),  # runs before model.arch
        "z_dim": OmegaConf.select(cfg, "model.z_dim", default=None),
        "hidden_dim": OmegaConf.select(cfg, "model.hidden_dim", default=None),
        "lr": OmegaConf.select(cfg, "optim.lr", default=None),
        "seed": OmegaConf.select(cfg, "seed", default=None),
        "test_loss": None,
        "nll": None,  # eval.json's, with the checkpoint epoch and the images it scored
        "nll_epoch": None,
        "nll_step": None,
        "nll_images": None,
        "nll_test_images": None,
        "nll_stale": None,
        "train_loss": None,
        "epochs": 0,
        "planned_epochs": OmegaConf.select(cfg, "trainer.epochs", default=None),
        "seconds": None,
        "status": None,
        "error": "",
    }
    _read_status(job_dir, row)
    _read_metrics(job_dir, row)
    _read_eval(job_dir, row)
    if damaged:
        row["status"], row["error"] = "error", damaged
    if row["status"] is None:  # no status.json: a plain run, or a job still running or killed
        done = row["epochs"] and row["epochs"] == row["planned_epochs"]
        row["status"] = "ok" if done and row["test_loss"] is not None else "incomplete"
    return row


def _flat(cfg: Any) -> dict[str, Any]:
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that no longer resolves: compare the raw text
        plain = OmegaConf.to_container(cfg, resolve=False)
    return flatten(plain) if isinstance(plain, dict) else {}


def _read_status(job_dir: Path, row: dict[str, Any]) -> None:
    status_path = job_dir / "status.json"
    if status_path.is_file():
        try:
            status = json.loads(status_path.read_text())
            row["status"], row["error"] = status["status"], status.get("error", "")
        except (OSError, ValueError, KeyError, TypeError):
            row["status"], row["error"] = "error", "status.json is unreadable"


def _read_metrics(job_dir: Path, row: dict[str, Any]) -> None:
    metrics_path = job_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        return
    try:
        records = _metrics(metrics_path)
    except (OSError, ValueError) as err:
        row["status"], row["error"] = "error", str(err)
        return
    if records:
        tested = [r["test_loss"] for r in records if r.get("test_loss") is not None]
        row["test_loss"] = tested[-1] if tested else None
        row["train_loss"] = records[-1].get("train_loss")
        row["epochs"] = records[-1].get("epoch", len(records))
        row["seconds"] = sum(r.get("seconds") or 0.0 for r in records)


def _read_eval(job_dir: Path, row: dict[str, Any]) -> None:
    """-log p(x) from eval.json (vae_pyro.evaluate's default output), when it is there, with
    what it was computed on: the checkpoint's epoch (and steps into the next, for one written
    inside an epoch), how many of how many test images. Stale when that checkpoint is not the
    one of the final test loss (None: an eval.json too old to say)."""
    path = job_dir / "eval.json"
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
        nll = record.get("nll")
    except (OSError, ValueError, AttributeError):
        return
    if not isinstance(nll, int | float):
        return
    known = record.get("data_fingerprint") or {}
    row["nll"] = float(nll)
    row["nll_epoch"] = _int(record.get("checkpoint_epoch"))
    row["nll_step"] = _int(record.get("checkpoint_step"))
    row["nll_images"] = _int(record.get("num_images"))
    row["nll_test_images"] = _int(known.get("test")) if isinstance(known, dict) else None
    if row["nll_epoch"] is not None:
        row["nll_stale"] = row["nll_epoch"] != row["epochs"] or bool(row["nll_step"])


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def summarize(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job of the sweep in sweep_dir; VaePyroError when there is nothing to read."""
    sweep_dir = Path(sweep_dir).expanduser()
    if not sweep_dir.is_dir():
        what = "not a directory" if sweep_dir.exists() else "no such directory"
        raise VaePyroError(f"{what}: {sweep_dir}")
    if (sweep_dir / ".hydra" / "config.yaml").is_file():
        raise VaePyroError(
            f"{sweep_dir} is one run's directory, not a folder of runs: report summarises the "
            f"runs under a folder (e.g. {sweep_dir.parent}) and writes nothing into a run"
        )
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise VaePyroError(
            f"{sweep_dir} holds no sweep jobs (no <job>/.hydra/config.yaml); pass the directory "
            "a `python -m vae_pyro.train -m ...` run wrote, e.g. multirun/2026-11-21/14-00-00"
        )
    return [read_job(job, sweep_dir) for job in jobs]


def varying(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Per row, what differs between the jobs: the overrides that differ, or, where those are the
    same (runs of separate commands, a changed default), the config values that differ."""
    if len(rows) < 2:
        return [list(r["overrides"]) for r in rows]
    shared = set.intersection(*(set(r["overrides"]) for r in rows))
    labels = [[o for o in r["overrides"] if o not in shared] for r in rows]
    if len({tuple(label) for label in labels}) == len({_key(r, ()) for r in rows}):
        return labels
    differing = _differing_keys(rows)
    return [[f"{k}={r['config'].get(k)}" for k in differing] for r in rows]


def _differing_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    keys = sorted({k for r in rows for k in r["config"] if not k.startswith(IGNORED)})
    return [k for k in keys if len({repr(r["config"].get(k)) for r in rows}) > 1]


def _key(row: dict[str, Any], without: tuple[str, ...]) -> tuple:
    """The row's config (less `without` and IGNORED keys) as something to group by."""
    items = row["config"].items()
    return tuple(sorted((k, repr(v)) for k, v in items if not k.startswith(IGNORED + without)))


def over_seeds(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished runs grouped by everything but `seed`: per group the seeds and the mean and
    standard deviation (n - 1) of the final test loss and of eval.json's -log p(x). Empty unless
    some group holds more than one seed."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "ok" and row["config"]:
            groups.setdefault(_key(row, ("seed",)), []).append(row)
    if not any(len({r["seed"] for r in g}) > 1 for g in groups.values()):
        return []
    differing = [k for k in _differing_keys(rows) if k != "seed"]
    out = []
    for members in groups.values():
        label = " ".join(f"{k}={members[0]['config'].get(k)}" for k in differing)
        out.append(
            {
                "setting": label or "-",
                "seeds": sorted(r["seed"] for r in members),
                "test_loss": _spread([r["test_loss"] for r in members]),
                "nll": _spread([r["nll"] for r in members]),
                "nll_caveats": _caveats(members),
            }
        )
    return out


def _caveats(members: Sequence[dict[str, Any]]) -> str:
    """What makes a group's -log p(x) differ from its test losses: stale or subset evaluations."""
    stale = sum(bool(r["nll_stale"]) for r in members if r["nll"] is not None)
    subset = sum(_subset(r) for r in members if r["nll"] is not None)
    words = [f"{stale} stale"] * bool(stale) + [f"{subset} on a test subset"] * bool(subset)
    return ", ".join(words)


def _subset(row: dict[str, Any]) -> bool:
    n, of = row["nll_images"], row["nll_test_images"]
    return n is not None and of is not None and n < of


def _spread(values: list[float | None]) -> tuple[float, float | None, int] | None:
    """(mean, standard deviation or None for one value, count) of the values given."""
    known = [v for v in values if v is not None and math.isfinite(v)]
    if not known:
        return None
    sd = statistics.stdev(known) if len(known) > 1 else None
    return statistics.fmean(known), sd, len(known)


def _pm(spread: tuple[float, float | None, int] | None) -> str:
    if spread is None:
        return "-"
    mean, sd, n = spread
    return f"{mean:.2f}" if sd is None else f"{mean:.2f} +- {sd:.2f} (n={n})"


def seeds_table(groups: Sequence[dict[str, Any]]) -> str:
    """The table of means over seeds (summary.md and the terminal)."""
    lines = [
        "| setting | seeds | test loss | -log p(x) (eval.json) |",
        "|---|---|---|---|",
    ]
    for g in groups:
        seeds = ",".join(map(str, g["seeds"]))
        nll, caveats = _pm(g["nll"]), g["nll_caveats"]
        if caveats and g["nll"] is not None:  # "(n=3)" -> "(n=3; 1 stale)"
            nll = f"{nll[:-1]}; {caveats})" if nll.endswith(")") else f"{nll} ({caveats})"
        cells = [g["setting"], seeds, _pm(g["test_loss"]), nll]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


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


def _nll(row: dict[str, Any]) -> str:
    """eval.json's -log p(x) and what it is of: "88.10 (stale: epoch 10 of 100, 500 of 10000
    images)"; stale when its checkpoint is not the one of the final test loss."""
    if row["nll"] is None:
        return "-"
    epoch, step = row["nll_epoch"], row["nll_step"]
    at = "epoch ?" if epoch is None else f"epoch {epoch}" + (f" + {step} steps" if step else "")
    if row["nll_stale"]:
        at = f"stale: {at} of {row['epochs']}"
    n, of = row["nll_images"], row["nll_test_images"]
    if n is not None:
        at += f", {n} images" if of is None or n == of else f", {n} of {of} images"
    return f"{row['nll']:.2f} ({at})"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The table of summary.md (and of the terminal): varying overrides only, rounded; eval.json's
    -log p(x), with its epoch and images, where a run has one."""
    evaluated = any(r["nll"] is not None for r in rows)
    header = ["job", "overrides", "test loss", "train loss", "epochs", "seconds", "status"]
    if evaluated:
        header.insert(4, "-log p(x) (eval.json)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, overrides in zip(rows, varying(rows), strict=True):
        cells = [
            row["job"],
            " ".join(overrides) or "-",
            _num(row["test_loss"], 2),
            _num(row["train_loss"], 2),
            *([_nll(row)] if evaluated else []),
            _epochs(row),
            _num(row["seconds"], 1),
            _status(row),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def plot_points(rows: Sequence[dict[str, Any]]) -> tuple[list[plots.SweepPoint], str]:
    """What summary.png draws, from the keys the table labels rows by (varying): the test loss
    against the key with the most distinct values (a numeric one first; `seed` only when
    nothing else varies), one line per setting of the other keys but seed, whose repeats stay
    unjoined points. With nothing varying, one point per job."""
    labels = [dict(item.partition("=")[::2] for item in label) for label in varying(rows)]
    keys = list(dict.fromkeys(k for label in labels for k in label))
    values = [{k: _value(r, label, k) for k in keys} for r, label in zip(rows, labels, strict=True)]

    def rank(key: str) -> tuple[bool, int]:
        taken = {v[key] for v in values} - {None}
        return all(_number(x) is not None for x in taken), len(taken)

    keys = [k for k in keys if rank(k)[1] > 1]  # one run alone varies nothing
    if not keys:
        return [plots.SweepPoint(r["job"], "", _loss(r)) for r in rows], "job"
    x = max([k for k in keys if k != "seed"] or keys, key=rank)
    numeric = rank(x)[0]
    points = []
    for r, v in zip(rows, values, strict=True):
        if v[x] is None:  # a damaged job: no value to place it at
            continue
        line = " ".join(f"{k}={v[k]}" for k in keys if k not in (x, "seed"))
        points.append(plots.SweepPoint(_number(v[x]) if numeric else v[x], line, _loss(r)))
    return points, x.lstrip("+~")


def _value(row: dict[str, Any], label: dict[str, str], key: str) -> str | None:
    """The row's value of a varying key: its label's, else its config's; None if unknown (a
    damaged job's)."""
    if not row["config"]:
        return None
    if key in label:
        return label[key]
    flat = key.lstrip("+~")
    return str(row["config"][flat]) if flat in row["config"] else None


def _draw_summary(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    points, x_label = plot_points(rows)
    return plots.sweep_summary(points, path, x_label, title)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _loss(row: dict[str, Any]) -> float | None:
    """The final test loss of a finished job; None marks it failed or unfinished."""
    return row["test_loss"] if row["status"] == "ok" else None


def best(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The finished job with the lowest final test loss."""
    ok = [r for r in rows if r["status"] == "ok" and r["test_loss"] is not None]
    ok = [r for r in ok if math.isfinite(r["test_loss"])]
    return min(ok, key=lambda r: r["test_loss"]) if ok else None


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:  # full precision: repr of a float reads back as the same float
        writer.writerow({**row, "overrides": " ".join(row["overrides"])})
    return out.getvalue()


def _summary_text(sweep_dir: Path, rows: Sequence[dict[str, Any]]) -> str:
    counts = Counter(r["status"] for r in rows)
    lines = [
        f"# Sweep summary: {sweep_dir}",
        "",
        f"{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ". Losses are"
        " the final test and train -ELBO in nats per image (metrics.jsonl); seconds are the"
        " summed epoch times." + (NLL_NOTE if any(r["nll"] is not None for r in rows) else ""),
        "",
        markdown_table(rows),
    ]
    groups = over_seeds(rows)
    if groups:
        lines += ["", "Over seeds (mean +- standard deviation):", "", seeds_table(groups)]
    top = best(rows)
    if top is not None:
        lines += [
            "",
            f"Best: job {top['job']} ({' '.join(top['overrides'])}), "
            f"test loss {top['test_loss']:.2f}.",
        ]
    return "\n".join(lines) + "\n"


def write_report(sweep_dir: str | Path) -> tuple[list[dict[str, Any]], str]:
    """Write summary.csv, summary.md and summary.png into sweep_dir (each atomically, each
    checked before any is written: files.check_output); return the rows and the text."""
    sweep_dir = runs.follow_latest(Path(sweep_dir).expanduser())  # multirun/latest names one
    rows = summarize(sweep_dir)
    text = _summary_text(sweep_dir, rows)
    for name in OUTPUTS:
        check_output(sweep_dir / name, True, " (or give another sweep_dir)")
    csv_bytes = _csv_text(rows).encode()
    md = (text + "\n![summary](summary.png)\n").encode()
    writes = {
        "summary.csv": lambda path: atomic_write(path, lambda f: f.write(csv_bytes)),
        "summary.md": lambda path: atomic_write(path, lambda f: f.write(md)),
        "summary.png": lambda path: _draw_summary(rows, path, str(sweep_dir)),
    }
    for i, (name, write) in enumerate(writes.items()):
        try:
            write(sweep_dir / name)
        except OSError as err:
            done = ", ".join(list(writes)[:i]) or "none"
            raise write_failed(sweep_dir / name, err, f"written before it: {done}") from None
    return rows, text


def _parse(argv: Sequence[str] | None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m vae_pyro.report",
        description="Summarise a folder of runs (a sweep's multirun/<date>/<time>, or outputs/): "
        "summary.csv, summary.md, summary.png in that folder.",
        epilog="An error is one line on stderr and exit code 2; Ctrl-C / SIGTERM: 130 / 143. "
        "VAE_PYRO_DEBUG=1 python -m vae_pyro.report ... prints the traceback too.",
    )
    parser.add_argument(
        "sweep_dir", metavar="sweep_dir=DIR", help="e.g. sweep_dir=multirun/2026-11-21/14-00-00"
    )
    args = parser.parse_args(argv)
    key, eq, value = args.sweep_dir.partition("=")
    if not eq:
        return Path(args.sweep_dir)  # the positional form
    if key != "sweep_dir" or not value:
        parser.error(f"unknown argument {args.sweep_dir}: give sweep_dir=DIR")
    return Path(value)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print the summary; bad input is one line on stderr and exit code 2."""
    sweep_dir = _parse(argv)
    try:
        _, text = write_report(sweep_dir)
    except VaePyroError as err:
        print(f"vae_pyro.report: error: {err}", file=sys.stderr)
        return 2
    print(text, end="")
    print(f"wrote summary.csv, summary.md, summary.png in {sweep_dir}")
    return 0


if __name__ == "__main__":
    from vae_pyro.cli import shell  # Ctrl-C, SIGTERM and any error: one line, as every command

    with shell("report"):
        raise SystemExit(main())
