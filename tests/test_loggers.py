"""Runs you can watch and compare: TensorBoard's images and HPARAMS tab, and logger=mlflow."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest
import torch
from hydra import compose, initialize_config_dir

from vae_pyro import cli, config, loggers
from vae_pyro.cli import CONF_DIR
from vae_pyro.errors import VaePyroError
from vae_pyro.train import train

pytest.importorskip("mlflow")  # the [mlflow] extra, which [dev] installs

TINY = [
    "data.subset=256",
    "trainer.epochs=2",
    "model.z_dim=2",
    "model.hidden_dim=16",
    "data.batch_size=64",
    "trainer.device=cpu",
]


def _cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(config_name="train", overrides=[*TINY, *overrides])


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory):
    """A tiny run with logger=mlflow and its default store (sqlite:///mlflow.db in the working
    directory: a temp dir here), and the start-up log's messages."""
    here, cwd = tmp_path_factory.mktemp("mlflow"), os.getcwd()
    said, handler, log = [], logging.Handler(), logging.getLogger("vae_pyro.train")
    handler.emit = lambda record: said.append(record.getMessage())
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    os.chdir(here)
    try:
        train(_cfg("logger=mlflow"), here / "run")
    finally:
        os.chdir(cwd)
        log.removeHandler(handler)
        log.setLevel(level)
    return here, here / "run", said


def _client(store):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")


def _history(client, run_id, key):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_mlflow_gets_params_metrics_per_epoch_and_artifacts(mlflow_run):
    store, run_dir, _ = mlflow_run
    client = _client(store)
    experiment = client.get_experiment_by_name("vae-pyro")  # no +experiment: the default name
    (run,) = client.search_runs([experiment.experiment_id])
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == run.info.run_id
    assert run.info.status == "FINISHED" and run.data.tags["run_dir"] == str(run_dir)
    params = run.data.params
    assert params["model.z_dim"] == "2" and params["logger.name"] == "mlflow"
    assert params["data.subset"] == "256" and params["model.channels"] == "[32, 64, 128]"
    assert len(params) == len(config.flatten(config.as_dict(config.TrainConfig())))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "test_loss", "seconds"):
        assert _history(client, run.info.run_id, key) == [(r["epoch"], r[key]) for r in records]
    paths = {a.path for a in client.list_artifacts(run.info.run_id)}
    hydra = {"hydra"} if (run_dir / ".hydra").is_dir() else set()
    assert paths == {"figures", "metrics.jsonl", *hydra}  # and eval*.json when present
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {"figures/loss.png", "figures/reconstructions.png"}
    assert experiment.artifact_location == (store / "mlruns" / "vae-pyro").as_uri()
    assert (
        store / "mlruns" / "vae-pyro" / run.info.run_id / "artifacts" / "metrics.jsonl"
    ).is_file()


@pytest.mark.slow
def test_the_readmes_mlflow_ui_shows_the_run_from_the_same_install(mlflow_run):
    """README's `mlflow ui --backend-store-uri sqlite:///mlflow.db` over the store a run wrote:
    the UI's server (the same install as the logging: no "out-of-date database schema") lists
    the run with its metrics."""
    store, run_dir, _ = mlflow_run
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ui = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", "sqlite:///mlflow.db"]
        + ["--host", "127.0.0.1", "--port", str(port)],
        cwd=store,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert ui.poll() is None, ui.communicate()[1][-3000:]
            try:
                query = urllib.parse.urlencode({"experiment_name": "vae-pyro"})
                with urllib.request.urlopen(f"{url}/experiments/get-by-name?{query}") as r:
                    experiment = json.load(r)["experiment"]
                break
            except OSError:
                assert time.monotonic() < deadline, "the UI never answered"
                time.sleep(0.5)
        body = json.dumps({"experiment_ids": [experiment["experiment_id"]]}).encode()
        request = urllib.request.Request(
            f"{url}/runs/search", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request) as r:
            (run,) = json.load(r)["runs"]
    finally:
        ui.terminate()
        ui.wait(timeout=60)
    assert run["info"]["run_id"] == json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    assert {m["key"] for m in run["data"]["metrics"]} >= {"train_loss", "test_loss"}


def test_tensorboard_gets_images_and_hparams_in_the_run_dir(mlflow_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    _, run_dir, _ = mlflow_run
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == {"reconstructions", "prior_draws"}
    # null: 5 evenly spaced epochs, the last included: both of 2 epochs
    assert [e.step for e in events.Images("reconstructions")] == [1, 2]
    recons, draws = events.Images("reconstructions")[-1], events.Images("prior_draws")[-1]
    # make_grid, padding 2: test images over their reconstructions (10 classes); 8 x 8 draws
    assert (recons.height, recons.width) == (2 * 28 + 3 * 2, 10 * 28 + 11 * 2)
    assert (draws.height, draws.width) == (8 * 28 + 9 * 2, 8 * 28 + 9 * 2)
    hparams = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(hparams[metadata.SESSION_START_INFO_TAG])
    values = start.hparams
    assert values["model.z_dim"].number_value == 2 and values["elbo.name"].string_value == "trace"
    assert "data.root" not in values  # null is left out: a number stays a number across runs
    end = metadata.parse_session_end_info_plugin_data(hparams[metadata.SESSION_END_INFO_TAG])
    assert end.status == 1  # STATUS_SUCCESS
    assert {"train_loss", "test_loss"} <= set(events.Tags()["scalars"])  # the HPARAMS metrics


def test_start_up_line_names_the_variant_and_the_data_protocol(mlflow_run):
    _, _, said = mlflow_run
    (line,) = [m for m in said if m.startswith("training on")]
    assert "mnist (binarize none), 256 train / 10000 test images of shape (1, 28, 28)" in line
    assert "batch 64" in line and "z_dim 2" in line
    assert "prior standard, posterior diagonal, likelihood bernoulli, objective trace" in line


def test_a_resumed_run_continues_its_mlflow_run(mlflow_run):
    store, run_dir, _ = mlflow_run
    cwd = os.getcwd()
    os.chdir(store)
    try:
        train(_cfg("logger=mlflow", "trainer.epochs=3", "trainer.resume=true"), run_dir)
    finally:
        os.chdir(cwd)
    client = _client(store)
    (run,) = client.search_runs([client.get_experiment_by_name("vae-pyro").experiment_id])
    assert run.info.status == "FINISHED"
    assert [step for step, _ in _history(client, run.info.run_id, "train_loss")] == [1, 2, 3]
    assert run.data.params["trainer.epochs"] == "2"  # MLflow keeps a param's first value


@pytest.mark.parametrize(
    ("epochs", "every", "shown"),
    [(100, None, [20, 40, 60, 80, 100]), (7, None, [2, 3, 5, 6, 7]), (2, None, [1, 2])]
    + [(10, 0, []), (10, 4, [4, 8, 10]), (3, 1, [1, 2, 3])],
)
def test_image_epochs(epochs, every, shown):
    assert [e for e in range(1, epochs + 1) if loggers.image_epoch(e, epochs, every)] == shown


def test_missing_mlflow_is_one_error_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(VaePyroError) as err:
        train(_cfg("logger=mlflow"), tmp_path / "run")
    assert str(err.value) == (
        'logger=mlflow needs the mlflow package: pip install "vae-pyro[mlflow]" '
        '(in a clone: pip install -e ".[mlflow]")'
    )
    assert not (tmp_path / "run").exists()
    assert config.to_object(_cfg(), config.TrainConfig).logger.name == "none"  # the default


def test_a_store_that_refuses_is_one_error_and_leaves_no_run(tmp_path):
    with pytest.raises(VaePyroError, match=r"^logger=mlflow: cannot log to nowhere://x: "):
        train(_cfg("logger=mlflow", "logger.tracking_uri=nowhere://x"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_tracking_failure_during_training_is_a_warning(caplog):
    tracker = loggers.MlflowTracker(config.to_object(_cfg(), config.TrainConfig).logger, {})

    class Broken:
        def log_batch(self, *args, **kwargs):
            raise ConnectionError("the server went away")

    tracker.client = Broken()
    with caplog.at_level(logging.WARNING, logger="vae_pyro.loggers"):
        tracker.log({"train_loss": 1.0, "test_loss": None, "seconds": 1.0}, 1)
        tracker.log({"train_loss": 1.0, "test_loss": None, "seconds": 1.0}, 2)
    assert tracker.client is None
    assert [r.getMessage() for r in caplog.records] == [
        "logger=mlflow: logging metrics failed (the server went away); training goes on "
        "without it, metrics.jsonl has every epoch"
    ]


class _Tracker:
    def __init__(self):
        self.calls = []

    def start(self, run_dir, history):
        self.calls.append(("start", len(history)))

    def log(self, record, step):
        self.calls.append(("log", step))

    def end(self, error):
        self.calls.append(("end", error))


@pytest.mark.parametrize("rank", [0, 1])
def test_only_rank_0_tracks_and_draws_images(rank, tmp_path):
    tracker, drawn = _Tracker(), []

    def make():
        drawn.append(True)
        return {"prior_draws": torch.zeros(3, 8, 8)}

    record = {"epoch": 2, "train_loss": 1.0, "test_loss": None, "seconds": 1.0}
    writer = loggers.Recorder(tmp_path, rank == 0)
    with writer.open([{**record, "epoch": 1}], 2, {"model.z_dim": 2}, tracker):
        writer.record(record, ("train_loss",), 2)
        writer.images(2, make)
    expected = [("start", 1), ("log", 2), ("end", None)] if rank == 0 else []
    assert tracker.calls == expected and drawn == ([True] if rank == 0 else [])
    assert (tmp_path / "tensorboard").is_dir() == (rank == 0)


def test_a_full_disk_under_tensorboard_names_the_event_file_without_a_thread_traceback(
    monkeypatch, tmp_path
):
    unhandled = []  # what threading.excepthook would print as "Exception in thread ..."
    monkeypatch.setattr(threading, "excepthook", unhandled.append)
    board = loggers.summary_writer(tmp_path / "tensorboard", 1)
    events = board._get_file_writer().event_writer

    def full(data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a write, so no file named

    monkeypatch.setattr(events._general_file_writer, "write", full)
    board.add_scalar("train_loss", 1.0, 1)  # written by TensorBoard's own thread
    with pytest.raises(OSError) as err:
        board.flush()  # raises what failed in that thread; so does close()
    with pytest.raises(OSError):
        board.close()
    path = events._file_name
    assert err.value.filename == path and path.startswith(str(tmp_path / "tensorboard"))
    assert unhandled == []
    line, bug = cli.explain("train", err.value)
    assert line.startswith(f"{path}: No space left on device; ") and not bug
