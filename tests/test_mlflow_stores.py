"""logger=mlflow with a tracking store that cannot be used: one line naming the store and what
to do, within seconds, without MLflow's or SQLAlchemy's tracebacks, and never at the cost of the
run's own files."""

from __future__ import annotations

import io
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from vae_pyro import loggers
from vae_pyro.errors import VaePyroError
from vae_pyro.loggers import LoggerConfig, LoggerName

mlflow = pytest.importorskip("mlflow")  # the [mlflow] extra, which [dev] installs

ELSEWHERE = "or choose another store with logger.tracking_uri=URI (or logger=none)"
RECORD = {"epoch": 1, "train_loss": 1.0, "test_loss": None, "seconds": 1.0}


def _tracker(uri: str) -> loggers.MlflowTracker:
    return loggers.tracker(LoggerConfig(name=LoggerName["mlflow"], tracking_uri=uri), {"a": 1})


def _refusal(uri: str, tmp_path) -> str:
    with pytest.raises(VaePyroError) as err:
        _tracker(uri).start(tmp_path / "run", [])
    return str(err.value)


@pytest.fixture(scope="module")
def good_db(tmp_path_factory):
    """An MLflow store as this MLflow makes it, to copy."""
    here = tmp_path_factory.mktemp("store")
    (here / "run").mkdir()
    tracker = _tracker(f"sqlite:///{here / 'mlflow.db'}")
    tracker.start(here / "run", [])
    tracker.end(None)
    return here / "mlflow.db"


@pytest.fixture
def store(good_db, tmp_path):
    """A copy of good_db, and its URI."""
    db = tmp_path / "mlflow.db"
    shutil.copy(good_db, db)
    (tmp_path / "run").mkdir()
    return db, f"sqlite:///{db}"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on leaving: nothing listens there


def test_a_server_that_refuses_is_one_line_at_once(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the user's own stays
    uri = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    line = _refusal(uri, tmp_path)
    assert time.monotonic() - started < 3  # MLflow's own retries took 4.5 minutes
    port = uri.rsplit(":", 1)[1]
    assert line == (
        f"logger=mlflow: no tracking server answers at {uri} (Connection refused): start it "
        f"(mlflow server --port {port}) {ELSEWHERE}"
    )
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"  # minutes of retries: seconds
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


@pytest.mark.slow
def test_the_cli_says_a_refused_server_in_one_line_and_exit_2(tmp_path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    tiny = ["data.subset=64", "trainer.epochs=1", "model.z_dim=2", "trainer.device=cpu"]
    done = subprocess.run(
        [sys.executable, "-m", "vae_pyro.train", *tiny, "logger=mlflow"]
        + [f"logger.tracking_uri={uri}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"vae_pyro.train: error: logger=mlflow: no tracking server answers at {uri} "
        f"(Connection refused): start it (mlflow server --port {uri.rsplit(':', 1)[1]}) "
        f"{ELSEWHERE}"
    ]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_locked_store_is_one_line(store, tmp_path):
    db, uri = store
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process in the middle of a write
    try:
        line = _refusal(uri, tmp_path)
    finally:
        holder.close()
    assert line == (
        f"logger=mlflow: cannot log to {uri}: database is locked; another process holds it: "
        f"try again when that one is done, {ELSEWHERE}"
    )


def test_a_corrupt_store_is_one_line(store, tmp_path):
    db, uri = store
    db.write_bytes(os.urandom(4096))
    assert _refusal(uri, tmp_path) == (
        f"logger=mlflow: cannot log to {uri}: file is not a database; it is not an MLflow "
        f"database: move it aside (a new one is made), {ELSEWHERE}"
    )


def test_a_read_only_store_is_one_line_without_tracebacks(store, tmp_path, monkeypatch, capfd):
    db, _ = store
    monkeypatch.chdir(tmp_path)  # the lock file of a file: URI lands under the working dir
    uri = f"sqlite:///file:{db}?mode=ro&uri=true"  # read-only for root too (chmod is not)
    levels = [logging.getLogger(name).level for name in loggers.CHATTY]
    # MLflow's message led with SQLAlchemy's note "(raised as a result of Query-invoked
    # autoflush; ...)", after its own 80-odd lines of traceback
    assert _refusal(uri, tmp_path) == (
        f"logger=mlflow: cannot log to {uri}: attempt to write a readonly database; make it "
        f"and its folder writable, {ELSEWHERE}"
    )
    assert capfd.readouterr().err == ""
    assert [logging.getLogger(name).level for name in loggers.CHATTY] == levels


@pytest.mark.parametrize("newer", [True, False])
def test_a_store_of_another_mlflow_version_is_one_line_naming_both(store, tmp_path, newer):
    db, uri = store
    with sqlite3.connect(db) as con:
        (ours,) = con.execute("SELECT version_num FROM alembic_version").fetchone()
        theirs = "ffffffffffff" if newer else "0584bdc529eb"  # one of MLflow's first migrations
        con.execute("UPDATE alembic_version SET version_num = ?", (theirs,))
    con.close()
    said = f"({theirs}; this MLflow {mlflow.__version__} uses schema {ours})"
    if newer:
        fix = 'upgrade MLflow here (pip install -U "mlflow<4") to the one that wrote it'
        assert _refusal(uri, tmp_path) == (
            f"logger=mlflow: {uri} has a newer MLflow's database schema {said}: {fix}, {ELSEWHERE}"
        )
    else:
        fix = f"back it up, then upgrade it with `mlflow db upgrade {uri}`"
        assert _refusal(uri, tmp_path) == (
            f"logger=mlflow: {uri} has an older MLflow's database schema {said}: {fix}, {ELSEWHERE}"
        )


def test_a_store_that_vanishes_mid_run_is_a_warning_and_the_run_keeps_its_files(
    store, tmp_path, caplog, capfd, monkeypatch
):
    db, uri = store
    run_dir = tmp_path / "run"
    console = io.StringIO()  # the terminal of a CLI run: what every logger prints there
    handlers = [caplog.handler, logging.StreamHandler(console)]  # no other test's stale ones
    monkeypatch.setattr(logging.getLogger(), "handlers", handlers)
    writer = loggers.Recorder(run_dir, True)
    with caplog.at_level(logging.WARNING, logger="vae_pyro.loggers"):
        with writer.open([RECORD], 2, None, _tracker(uri)):
            db.unlink()  # deleted, or its disk unmounted, while the run trains
            writer.record({**RECORD, "epoch": 2}, ("train_loss",), 2)
    assert [r.getMessage() for r in caplog.records] == [
        "logger=mlflow: logging metrics failed (attempt to write a readonly database); "
        "training goes on without it, metrics.jsonl has every epoch"
    ]
    assert "Traceback" not in capfd.readouterr().err + console.getvalue()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_store_that_refuses_leaves_a_resumed_runs_files_as_they_were(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    kept = {"checkpoint.pt": b"the checkpoint", "metrics.jsonl": b'{"epoch": 1}\n'}
    for name, data in kept.items():
        (run_dir / name).write_bytes(data)
    writer = loggers.Recorder(run_dir, True)
    with pytest.raises(VaePyroError, match="no tracking server answers"):
        writer.open([RECORD], 2, None, _tracker(f"http://127.0.0.1:{_closed_port()}"))
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == kept
