"""What a run shows beside its files: TensorBoard's images and HPARAMS tab, and an optional
experiment tracker (logger=mlflow) that gets the run's parameters, per-epoch metrics and
artifacts, so that runs and the jobs of sweeps compare side by side.

The Recorder writes a run's epochs (metrics.jsonl, TensorBoard, the tracker), on rank 0 alone;
RankZero is the logger that speaks on rank 0 alone. A tracker
is a `Tracker`: built cheaply on every rank from the config, started by rank 0 alone. mlflow is
imported only when logger=mlflow (the `mlflow` extra); without it the schema refuses
logger=mlflow before any work. Adding a tracker is one class, its entry in LOGGERS and
conf/logger/<name>.yaml.
"""

# No `from __future__ import annotations`: OmegaConf reads LoggerConfig's field types at runtime.
import contextlib
import importlib.util
import json
import logging
import math
import os
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

from vae_pyro.distributed import leads
from vae_pyro.errors import VaePyroError, first_line, os_reason
from vae_pyro.files import atomic_write, to_json, write_json
from vae_pyro.schema import Choice, Rule, Section, key

try:
    import fcntl
except ImportError:  # Windows: no flock; parallel jobs there open the store unguarded
    fcntl = None

if TYPE_CHECKING:
    from vae_pyro.model import VAE

log = logging.getLogger(__name__)

METRICS = ("train_loss", "test_loss", "seconds")  # a metrics.jsonl record's numbers
INSTALL = 'pip install "vae-pyro[mlflow]" (in a clone: pip install -e ".[mlflow]")'
IMAGE_TIMES = 5  # trainer.image_every=null: this many evenly spaced epochs, the last included
PRIOR_DRAWS = 64


# --- TensorBoard -------------------------------------------------------------------------------


def image_epoch(epoch: int, epochs: int, every: int | None) -> bool:
    """Whether TensorBoard gets images after `epoch` (trainer.image_every: every N epochs and
    after the last; null: IMAGE_TIMES evenly spaced epochs, the last included; 0: never)."""
    if every == 0:
        return False
    if every is None:
        return epoch in {math.ceil(k * epochs / IMAGE_TIMES) for k in range(1, IMAGE_TIMES + 1)}
    return epoch % every == 0 or epoch == epochs


def progress_images(vae: "VAE", shown: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Grids (make_grid) of `shown` test images over their reconstructions, and of prior
    draws. The draws use their own seed and leave the training's random state as it was: the
    same z from epoch to epoch (the decoder's progress, not new noise), and a run's numbers do
    not depend on whether it shows images."""
    from torchvision.utils import make_grid  # imported here: torchvision is slow to import

    device = shown.device
    with torch.random.fork_rng([device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        pairs = torch.cat([shown, vae.reconstruct(shown)])
        draws = vae.sample_prior(PRIOR_DRAWS)

    def grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
        return make_grid(images.float().cpu().clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)

    return {
        "reconstructions": grid(pairs, len(shown)),
        "prior_draws": grid(draws, math.isqrt(PRIOR_DRAWS)),
    }


def hparam_value(value: Any) -> int | float | str:
    """A config value as MLflow's params and the HPARAMS tab take it: numbers and strings as
    they are, anything else (true, a list, null) as the text a command line would carry."""
    if isinstance(value, bool) or value is None or not isinstance(value, int | float | str):
        return json.dumps(value)
    return value


def hparams_summaries(params: Mapping[str, Any]) -> tuple[Any, Any]:
    """The HPARAMS tab's (session start, session end) summaries of the flattened config, for the
    run's own event files (SummaryWriter.add_hparams would make a sub-run with copies of the
    metrics). No experiment summary: TensorBoard then makes the table from every run under its
    --logdir, with the scalars (train_loss, test_loss) as the metrics; a null key is left out,
    so that a number stays a number across runs."""
    from torch.utils.tensorboard.summary import hparams

    values = {k: hparam_value(v) for k, v in params.items() if v is not None}
    _, start, end = hparams(values, {})
    return start, end


def summary_writer(log_dir: str | Path, purge_step: int) -> Any:
    """TensorBoard's SummaryWriter for log_dir. It writes from a thread of its own, and the next
    call in the training's thread raises what failed there (a full disk): that thread's
    traceback is not printed, and the error names the event file (else it names no file)."""
    from torch.utils.tensorboard import SummaryWriter  # slow to import: only here

    _quiet_writer_threads()
    try:
        board = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
    except OSError as err:
        err.filename = err.filename or str(log_dir)
        raise
    events = board._get_file_writer().event_writer
    path = getattr(events, "_file_name", str(log_dir))
    records = getattr(getattr(events, "_async_writer", None), "_writer", None)  # RecordWriter
    for name in ("write", "flush", "close") if records is not None else ():
        setattr(records, name, _naming(getattr(records, name), path))
    return board


def _naming(call: Callable[..., Any], path: str) -> Callable[..., Any]:
    """call, with `path` as the filename of an OSError that has none."""

    def named(*args: Any) -> Any:
        try:
            return call(*args)
        except OSError as err:
            err.filename = err.filename or path
            raise

    return named


def _quiet_writer_threads() -> None:
    """threading.excepthook without TensorBoard's writer threads (their error is raised again
    in the thread that writes next); installed once, on whatever hook is there."""
    previous = threading.excepthook
    if getattr(previous, "quiet_tensorboard", False):
        return

    def hook(args: Any) -> None:
        if type(args.thread).__name__ != "_AsyncWriterThread":
            previous(args)

    hook.quiet_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


# --- experiment trackers -----------------------------------------------------------------------


class Tracker(Protocol):
    """An experiment tracker as the Recorder drives it (rank 0 alone)."""

    def start(self, run_dir: Path, history: list[dict]) -> None:
        """Open the run (a resumed one continues its own) and log what it has not got of
        `history` (the checkpoint's epochs); a VaePyroError if the tracker cannot be used."""

    def log(self, record: dict[str, Any], step: int) -> None:
        """One epoch's metrics."""

    def end(self, error: BaseException | None) -> None:
        """The run's files as artifacts, and its end: finished, or how it stopped."""


def _store(tracking_uri: str | None) -> str:
    """logger.tracking_uri; null: MLflow's own local default, sqlite:///mlflow.db in the working
    directory (its artifacts in mlruns/ beside it), resolved once so that every job agrees."""
    return tracking_uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _needs(uri: str) -> list[str]:
    """The modules logging to `uri` imports (a SQL store: SQLAlchemy and its migrations)."""
    sql = re.match(r"(sqlite|postgresql|mysql|mssql)(\+\w+)?://", uri) is not None
    return ["mlflow", *(["sqlalchemy", "alembic"] if sql else [])]


@contextlib.contextmanager
def _one_at_a_time(uri: str) -> Iterator[None]:
    """For a local SQLite store, an exclusive lock (<file>.lock beside it) while a run opens it:
    MLflow makes a new store by migrations that fail when two processes run them at once (the
    parallel jobs of a sweep), and two jobs must not both make one experiment."""
    if fcntl is None or not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///") :]).absolute()
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def _one_line(err: BaseException) -> str:
    return " ".join(first_line(err).split())  # MLflow's messages carry runs of spaces


# MLflow's client retries a server that does not answer for minutes (7 times, backoff 2 s)
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
CONNECT_SECONDS = 5
CHATTY = ("mlflow.store", "alembic", "sqlalchemy", "urllib3")  # see _quiet
ELSEWHERE = "or choose another store with logger.tracking_uri=URI (or logger=none)"
FIXES = {  # the reason's words (lower case): what to do
    "database is locked": "another process holds it: try again when that one is done",
    "not a database": "it is not an MLflow database: move it aside (a new one is made)",
    "malformed": "it is damaged: move it aside (a new one is made)",
    "readonly database": "make it and its folder writable",
    "read-only file system": "make it and its folder writable",
    "permission denied": "make it and its folder writable",
    "unable to open database file": "its folder is gone or not writable",
}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No log records from MLflow's store and what it uses while the tracker works: MLflow
    logs a database error with its traceback (some 90 lines), a new store each migration, an
    HTTP client each retry; the tracker says what matters in one line."""
    chatty = [logging.getLogger(name) for name in CHATTY]
    levels = [logger.level for logger in chatty]
    for logger in chatty:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(chatty, levels, strict=True):
            logger.setLevel(level)


def _reach(uri: str) -> None:
    """For a tracking server (http/https): MLflow's client bounded to seconds where it would
    retry for minutes (unless the environment sets its own limits), and first a short connect,
    so that a server that is not there is one line at once."""
    url = urllib.parse.urlsplit(uri)
    if url.scheme not in ("http", "https") or not url.hostname:
        return
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:  # not a port: MLflow says so
        return
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(url.hostname):
        return  # reached through a proxy: MLflow's client finds out
    try:
        socket.create_connection((url.hostname, port), timeout=CONNECT_SECONDS).close()
    except OSError as err:
        refused = isinstance(err, ConnectionRefusedError)
        fix = f"start it (mlflow server --port {port})" if refused else "check its address"
        raise VaePyroError(
            f"logger=mlflow: no tracking server answers at {uri} ({os_reason(err)}): {fix} "
            f"{ELSEWHERE}"
        ) from err


def _store_error(err: BaseException) -> bool:
    """Whether err is the tracking store's (MLflow's, the database's, the file system's, the
    network's) rather than a bug."""
    from mlflow.exceptions import MlflowException

    return isinstance(err, MlflowException | OSError) or type(err).__module__.startswith(
        "sqlalchemy."
    )


def _reason(err: BaseException) -> str:
    """What went wrong, in the database's words where a database said it (SQLAlchemy's message
    leads with its own notes, MLflow's repeats SQLAlchemy's)."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(getattr(cause, "orig", None), Exception):  # SQLAlchemy's DBAPIError
            return _one_line(cause.orig)  # type: ignore[attr-defined]
        cause = cause.__cause__ or cause.__context__
    return _one_line(err)


def _refusal(uri: str, err: BaseException) -> str:
    """The one line for a tracking store that cannot be used: why, and what to do."""
    reason = _reason(err)
    schema = re.search(r"found version ([0-9a-f]+), but expected ([0-9a-f]+)", reason)
    if schema:
        return _other_mlflow(uri, *schema.groups())
    fix = next((fix for words, fix in FIXES.items() if words in reason.lower()), "check it")
    return f"logger=mlflow: cannot log to {uri}: {reason}; {fix}, {ELSEWHERE}"


def _other_mlflow(uri: str, found: str, expected: str) -> str:
    """A store whose database schema is another MLflow version's: older when it is one of this
    MLflow's migrations (mlflow/store/db_migrations/versions/<revision>_*.py), else newer."""
    import mlflow
    import mlflow.store.db_migrations as migrations

    ours = f"this MLflow {mlflow.__version__} uses schema {expected}"
    if any((Path(migrations.__file__).parent / "versions").glob(f"{found}_*.py")):
        return (
            f"logger=mlflow: {uri} has an older MLflow's database schema ({found}; {ours}): "
            f"back it up, then upgrade it with `mlflow db upgrade {uri}`, {ELSEWHERE}"
        )
    return (
        f"logger=mlflow: {uri} has a newer MLflow's database schema ({found}; {ours}): upgrade "
        f'MLflow here (pip install -U "mlflow<4") to the one that wrote it, {ELSEWHERE}'
    )


class MlflowTracker:
    """One MLflow run per training run (per job of a sweep, all in one experiment): params (the
    flattened config), metrics per epoch, and at the end figures/, metrics.jsonl, eval*.json
    and .hydra/ as artifacts. The MLflow run's id is kept in <run_dir>/mlflow.json, so a resumed
    run continues it. A store that cannot be used at the start is one line (a VaePyroError)
    saying why and what to do; a failure to log during training is a warning, not the end of
    the training: metrics.jsonl holds every epoch whatever happens to the tracking store."""

    def __init__(self, cfg: "LoggerConfig", params: Mapping[str, Any]) -> None:
        self.cfg, self.uri = cfg, _store(cfg.tracking_uri)
        self.params = {k: str(hparam_value(v)) for k, v in params.items()}
        self.client: Any = None
        self.run_id = ""
        self.run_dir = Path()

    def start(self, run_dir: Path, history: list[dict]) -> None:
        with _quiet():
            _reach(self.uri)
            try:
                with _one_at_a_time(self.uri):
                    self._start(run_dir, history)
            except Exception as err:
                if not _store_error(err):
                    raise
                raise VaePyroError(_refusal(self.uri, err)) from err

    def _start(self, run_dir: Path, history: list[dict]) -> None:
        from mlflow.tracking import MlflowClient

        self.client, self.run_dir = MlflowClient(tracking_uri=self.uri), run_dir
        own = self._own_run(run_dir / "mlflow.json")
        if own is not None:
            self.run_id = own
            self.client.update_run(own, status="RUNNING")
        else:
            tags = _hydra_tags(run_dir)
            name = tags.pop("mlflow.runName")
            run = self.client.create_run(self._experiment(), run_name=name, tags=tags)
            self.run_id = run.info.run_id
            write_json(run_dir / "mlflow.json", {"tracking_uri": self.uri, "run_id": self.run_id})
        self._log_params()
        logged = {m.step for m in self.client.get_metric_history(self.run_id, "train_loss")}
        self._metrics([r for r in history if r["epoch"] not in logged])
        log.info("logger=mlflow: run %s in %s", self.run_id, self.uri)

    def _own_run(self, path: Path) -> str | None:
        """The MLflow run this run dir started in this store, if it is still there."""
        from mlflow.exceptions import MlflowException

        try:
            saved = json.loads(path.read_text())
            if saved["tracking_uri"] != self.uri:
                return None
            run = self.client.get_run(saved["run_id"])
        except (OSError, ValueError, KeyError, TypeError, MlflowException):
            return None
        return run.info.run_id if run.info.lifecycle_stage == "active" else None

    def _experiment(self) -> str:
        """The id of the experiment (made if new: its artifacts beside a local SQL store)."""
        from mlflow.exceptions import MlflowException

        hydra = _hydra(self.run_dir)
        chosen = hydra.runtime.choices.get("experiment") if hydra is not None else None
        name = self.cfg.experiment or chosen or "vae-pyro"
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                where = _artifacts(self.uri, name)
                return self.client.create_experiment(name, artifact_location=where)
            except MlflowException:  # a parallel sweep job made it first
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage != "active":
            raise VaePyroError(
                f"logger=mlflow: experiment {name!r} is deleted in {self.uri}; restore it "
                "(mlflow experiments restore) or choose another with logger.experiment=NAME"
            )
        return found.experiment_id

    def _log_params(self) -> None:
        """The config's keys the run has not got yet (MLflow keeps a param's first value: a run
        resumed with other settings keeps the ones it started with; the log says what changed)."""
        from mlflow.entities import Param

        have = self.client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in self.params.items() if k not in have]
        for i in range(0, len(new), 100):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, params=new[i : i + 100])

    def _metrics(self, records: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(k, float(r[k]), now, r["epoch"])
            for r in records
            for k in METRICS
            if r.get(k) is not None
        ]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def log(self, record: dict[str, Any], step: int) -> None:
        self._guard("logging metrics", lambda: self._metrics([{**record, "epoch": step}]))

    def end(self, error: BaseException | None) -> None:
        self._guard("logging artifacts", self._artifacts)
        interrupted = isinstance(error, KeyboardInterrupt)
        status = "FINISHED" if error is None else "KILLED" if interrupted else "FAILED"
        self._guard("ending the run", lambda: self.client.set_terminated(self.run_id, status))
        self.client = None

    def _artifacts(self) -> None:
        for folder, into in (("figures", "figures"), (".hydra", "hydra")):
            if (self.run_dir / folder).is_dir():
                self.client.log_artifacts(self.run_id, str(self.run_dir / folder), into)
        for path in [self.run_dir / "metrics.jsonl", *sorted(self.run_dir.glob("eval*.json"))]:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))

    def _guard(self, what: str, call: Callable[[], object]) -> None:
        if self.client is None:
            return
        try:
            with _quiet():
                call()
        except Exception as err:  # the tracking store's trouble must not end a training run
            log.warning(
                "logger=mlflow: %s failed (%s); training goes on without it, metrics.jsonl "
                "has every epoch",
                what,
                _reason(err),
            )
            self.client = None


def _artifacts(uri: str, experiment: str) -> str | None:
    """Where a new experiment's artifacts go: for a local SQLite store, mlruns/<experiment>/
    beside its file (MLflow's default is mlruns/<id>/ in whatever the working directory is at
    the time); else wherever the store says."""
    if not uri.startswith("sqlite:///"):
        return None
    folder = re.sub(r"[^\w.-]+", "_", experiment).strip("._") or "experiment"
    return (Path(uri[len("sqlite:///") :]).absolute().parent / "mlruns" / folder).as_uri()


def _hydra(run_dir: Path) -> Any:
    """Hydra's config of the job training into run_dir; None for train(cfg) from Python (or
    when what Hydra last ran in this process was another job)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    return hydra if Path(hydra.runtime.output_dir).resolve() == run_dir.resolve() else None


def _hydra_tags(run_dir: Path) -> dict[str, str]:
    """The MLflow run's name (the job's overrides, else its dir) and tags: its run dir, and in a
    sweep the sweep dir and job number (what compares a sweep's jobs in the MLflow UI)."""
    from hydra.types import RunMode

    tags = {"run_dir": str(run_dir.absolute()), "mlflow.runName": run_dir.name}
    hydra = _hydra(run_dir)
    if hydra is not None:
        tags["overrides"] = " ".join(hydra.overrides.task)
        tags["mlflow.runName"] = hydra.job.override_dirname or run_dir.name
        if hydra.mode == RunMode.MULTIRUN:
            tags.update(sweep_dir=str(Path(hydra.sweep.dir).absolute()), job=str(hydra.job.num))
    return tags


LOGGERS: dict[str, Callable[..., Tracker] | None] = {"none": None, "mlflow": MlflowTracker}
LoggerName = Choice("LoggerName", {name: name for name in LOGGERS}, module=__name__)
NOT_EMPTY = Rule(lambda v: v.strip() != "", "a non-empty string")


@dataclass
class LoggerConfig(Section):
    """logger: an experiment tracker beside TensorBoard; refused before any work when the
    packages it needs are not installed."""

    PREFIX: ClassVar[str] = "logger."
    name: LoggerName = key(
        LoggerName["none"], "experiment tracker beside TensorBoard (conf/logger/<name>.yaml)"
    )
    tracking_uri: str | None = key(
        None,
        "mlflow: the tracking store, any MLflow URI; null = sqlite:///mlflow.db (artifacts in "
        "mlruns/) in the working directory",
        NOT_EMPTY,
    )
    experiment: str | None = key(
        None, "mlflow: the experiment's name; null = the +experiment name, else vae-pyro", NOT_EMPTY
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.name == "mlflow":
            uri = _store(self.tracking_uri)
            missing = [m for m in _needs(uri) if importlib.util.find_spec(m) is None]
            if "mlflow" in missing:
                raise VaePyroError(f"logger=mlflow needs the mlflow package: {INSTALL}")
            if missing:
                raise VaePyroError(
                    f"logger=mlflow with {uri} needs {' and '.join(missing)}: {INSTALL}"
                )


def tracker(cfg: LoggerConfig, params: Mapping[str, Any]) -> Tracker | None:
    """The configured tracker, not yet started (cheap: every rank builds it), or None."""
    kind = LOGGERS[str(cfg.name)]
    return None if kind is None else kind(cfg, params)


# --- the run's record and rank 0's messages -------------------------------------------------


class RankZero(logging.LoggerAdapter):
    """A logger that speaks on rank 0 alone (lightning-hydra-template's RankedLogger): every
    rank of a torchrun run logs the same lines, and one says them. The rank comes from
    torchrun's environment, known before the process group is joined."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if leads():
            super().log(level, msg, *args, **kwargs)


class Recorder:
    """The run's record of its epochs: metrics.jsonl, TensorBoard (scalars, images, HPARAMS) and
    the tracker (logger=...), written by rank 0 alone (`enabled`): elsewhere each method does
    nothing."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.run_dir, self.enabled = run_dir, enabled
        self._board: Any = None
        self._records: list[dict] = []  # metrics.jsonl's lines
        self._tracker: Tracker | None = None  # logger=mlflow's, started by rank 0
        self._hparams: tuple[Any, Any] | None = None  # the HPARAMS tab's start and end

    def open(
        self,
        history: list[dict],
        purge_step: int,
        params: dict[str, Any] | None = None,
        tracker: Tracker | None = None,
    ) -> "Recorder":
        """metrics.jsonl, rewritten from `history` (the checkpoint's, the truth), and a
        TensorBoard writer that drops what it had logged from purge_step on; given the flattened
        config `params`, TensorBoard's HPARAMS tab gets it; `tracker` (loggers.tracker) starts
        first, so that a tracking store that refuses leaves no files."""
        if self.enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if tracker is not None:
                tracker.start(self.run_dir, history)
                self._tracker = tracker
            self._metrics(history)
            log_dir = str(self.run_dir / "tensorboard")
            self._board = summary_writer(log_dir, purge_step)
            if params is not None:
                self._hparams = hparams_summaries(params)
                self._board._get_file_writer().add_summary(self._hparams[0])
        return self

    def _metrics(self, records: list[dict]) -> None:
        """metrics.jsonl as a whole, atomically (atomic_write): a kill or a full disk
        mid-write leaves the previous epochs' file, never half a line; null for NaN."""
        self._records = list(records)
        text = "".join(to_json(r) + "\n" for r in self._records)
        atomic_write(self.run_dir / "metrics.jsonl", lambda f: f.write(text.encode()))

    def record(self, record: dict[str, Any], scalars: tuple[str, ...], step: int) -> None:
        """One line of metrics.jsonl; each scalar that is not None to TensorBoard."""
        if self._board is not None:
            self._metrics([*self._records, record])
            for key in scalars:
                if record[key] is not None:
                    self._board.add_scalar(key, record[key], step)
        if self._tracker is not None:
            self._tracker.log(record, step)

    def images(self, step: int, make: Callable[[], dict[str, torch.Tensor]]) -> None:
        """TensorBoard's images at `step`: make() gives {tag: (C, H, W) grid}, on rank 0 only."""
        if self._board is not None:
            for tag, grid in make().items():
                self._board.add_image(tag, grid, step)

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        """Close TensorBoard (its HPARAMS tab says the run succeeded when it did) and end the
        tracker's run: finished, interrupted (KILLED) or failed, as `error` says."""
        board, self._board = self._board, None
        tracker, self._tracker = self._tracker, None
        try:
            if board is not None:
                if error is None and self._hparams is not None:
                    board._get_file_writer().add_summary(self._hparams[1])
                board.close()
        finally:  # a full disk at close still ends the tracker's run
            if tracker is not None:
                tracker.end(error)
