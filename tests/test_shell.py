"""Every command as safe as train, through the real CLI (a subprocess each): Ctrl-C or SIGTERM at
any moment is one line and exit 130 / 143 with nothing partial left; no exception reaches the
user as a traceback (VAE_PYRO_DEBUG=1 shows it); a resume never skips or repeats data; every key
given is used, or refused before any work."""

from __future__ import annotations

import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from vae_pyro import checkpoint, cli, config, report
from vae_pyro.errors import Interrupted, VaePyroError
from vae_pyro.train import svi_step, train

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ENV.pop("VAE_PYRO_DEBUG", None)
SIGNALS = [signal.SIGINT, signal.SIGTERM]
pytestmark = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc")


def _start(*args: str, cwd: Path, env: dict | None = None, fsize: int | None = None):
    """`python -m <args>` as a user starts it: Ctrl-C and SIGTERM at their defaults (a test run
    in the background would hand its child an ignored SIGINT), optionally a file-size limit."""

    def child() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env={**ENV, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=child,
    )


def _run(*args: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    proc = _start(*args, cwd=cwd, **kw)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the command never got there"
        time.sleep(0.005)


def _interrupt(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _importing(proc: subprocess.Popen) -> bool:
    """Whether the command is importing its modules: torch is mapped (vae_pyro/__init__.py,
    which imports no torch, has run), seconds before the command's own code starts."""
    try:
        return "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text()
    except OSError:
        return False


def _cpu_seconds(proc: subprocess.Popen) -> float:
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp")]


# 4. Interruptions are one line in every command.

STARTING = {
    "train": ["vae_pyro.train", "trainer.device=cpu", "hydra.run.dir=run"],
    "sample": ["vae_pyro.sample", "run_dir=run", "device=cpu"],
    "evaluate": ["vae_pyro.evaluate", "run_dir=run", "device=cpu"],
    "report": ["vae_pyro.report", "sweep_dir=run"],
}


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("command", list(STARTING))
def test_a_signal_while_a_command_imports_ends_it_and_writes_nothing(command, sig, tmp_path):
    """While Python imports torch and Pyro (the first second or two), no handler of ours is
    installed yet (the shell owns interruptions once the command runs): the signal ends the
    process as Python ends it, with the signal's exit status, and nothing is written."""
    proc = _start(*STARTING[command], cwd=tmp_path)
    _wait_for(proc, lambda: _importing(proc))
    code, err = _interrupt(proc, sig)
    assert code in (128 + sig, -sig), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_signal_before_trains_first_step_leaves_no_run_dir(sig, tmp_path):
    """After Hydra made the new run dir, while the data loads: the dir goes."""
    run_dir = tmp_path / "run"
    proc = _start("vae_pyro.train", "trainer.device=cpu", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    _wait_for(proc, lambda: run_dir.exists())
    code, err = _interrupt(proc, sig)
    assert code == 128 + sig, err
    assert _one_line(err) == f"vae_pyro.train: interrupted by {sig.name}: nothing was written"
    assert list(tmp_path.iterdir()) == []


def test_a_signal_that_breaks_a_library_mid_step_is_one_line(tmp_path):
    """A library that turns the signal into its own error (raised while handling it) inside a
    Hydra job: the signal's line and exit status, not Hydra's "Error executing job" as well."""
    code = (
        "import sys\n"
        "from vae_pyro import cli\n"
        "def task(cfg):\n"
        "    try:\n"
        "        raise KeyboardInterrupt\n"
        "    except KeyboardInterrupt:\n"
        "        raise RuntimeError('a library step broken by the signal')\n"
        "sys.argv = [sys.argv[0], 'trainer.device=cpu', 'hydra.run.dir=run']\n"
        "cli.run('train', task)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr
    assert _one_line(proc.stderr) == "vae_pyro.train: interrupted by SIGINT: nothing was written"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ctrl_c_while_sample_draws_keeps_whole_figures_only(released_run, tmp_path):
    out = tmp_path / "figures"
    args = ["vae_pyro.sample", f"run_dir={released_run}", f"out_dir={out}", "device=cpu"]
    proc = _start(*args, "latent.method=tsne", cwd=tmp_path)  # t-SNE: seconds still to go
    _wait_for(proc, lambda: any(out.glob("*.png")))
    code, err = _interrupt(proc, signal.SIGINT)
    assert code == 130, err
    line = _one_line(err)
    assert line.startswith("vae_pyro.sample: interrupted by SIGINT: kept "), line
    assert line.endswith("no partial file was left") and str(out / "posterior.png") in line
    for png in out.glob("*.png"):
        with Image.open(png) as img:
            img.load()  # whole: a truncated PNG would raise
    assert _temp_files(tmp_path) == []


@pytest.mark.slow
def test_sigterm_while_evaluate_estimates_writes_nothing(released_run, tmp_path):
    proc = _start("vae_pyro.evaluate", f"run_dir={released_run}", "device=cpu", cwd=tmp_path)
    _wait_for(proc, lambda: _cpu_seconds(proc) > 8)  # imports and loading take about 3
    code, err = _interrupt(proc, signal.SIGTERM)
    assert code == 143, err
    said = [line for line in err.strip().splitlines() if not line.startswith("IW K=")]  # cost
    assert said == ["vae_pyro.evaluate: interrupted by SIGTERM: nothing was written"], err
    assert sorted(p.name for p in released_run.iterdir()) == ["checkpoint.pt"]


@pytest.mark.slow
def test_ctrl_c_while_report_reads_is_one_line(tmp_path):
    """The job's config is a named pipe: report waits in its read until interrupted."""
    sweep = tmp_path / "sweep"
    (sweep / "0" / ".hydra").mkdir(parents=True)
    pipe = sweep / "0" / ".hydra" / "config.yaml"
    os.mkfifo(pipe)
    proc = _start("vae_pyro.report", f"sweep_dir={sweep}", cwd=tmp_path)
    writer: list[int] = []

    def reading() -> bool:  # opening the write end succeeds once report opened the read end
        try:
            writer.append(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            return False
        return True

    _wait_for(proc, reading)
    try:
        code, err = _interrupt(proc, signal.SIGINT)
    finally:
        os.close(writer[0])
    assert code == 130, err
    assert _one_line(err) == "vae_pyro.report: interrupted by SIGINT: nothing was written"
    assert sorted(p.name for p in sweep.iterdir()) == ["0"]


# 5. No exception type reaches the user as a traceback.


@pytest.mark.slow
def test_a_file_size_limit_while_checkpointing_is_one_line_and_metrics_agree(tmp_path):
    """torch.save reports the failed write as a RuntimeError; metrics.jsonl must not list an
    epoch that the checkpoint lacks."""
    run_dir = tmp_path / "run"
    args = ["vae_pyro.train", "data.subset=256", "trainer.epochs=1", "trainer.device=cpu"]
    proc = _run(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path, fsize=1 << 20)
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert f"could not write checkpoint {run_dir / 'checkpoint.pt'}: File too large" in line
    assert "ulimit -f" in line and "none was written" in line
    assert not (run_dir / "checkpoint.pt").exists()
    assert (run_dir / "metrics.jsonl").read_text() == ""  # no epoch the checkpoint lacks
    assert _temp_files(run_dir) == []


@pytest.mark.slow
def test_memory_that_cannot_be_had_names_the_size_key(tmp_path):
    """A weight matrix beyond any address space (285 TiB): refused by the allocator on every
    machine, whatever its overcommit policy."""
    args = ["vae_pyro.train", "model.hidden_dim=100000000000", "data.subset=256"]
    proc = _run(*args, "trainer.device=cpu", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert line.startswith("vae_pyro.train: error: out of memory (")
    assert "GiB asked for): lower model.hidden_dim=100000000000 (default 400)" in line
    assert list(tmp_path.iterdir()) == []  # the run dir it made held nothing else: removed


def _bomb_png(path: Path, side: int = 20000) -> None:
    """A PNG that says it is side x side pixels (more than PIL decodes: a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


@pytest.mark.slow
def test_an_image_that_cannot_be_decoded_is_one_line(released_run, tmp_path):
    bomb = tmp_path / "bomb.png"
    _bomb_png(bomb)
    out = tmp_path / "figures"
    args = ["vae_pyro.sample", f"run_dir={released_run}", f"out_dir={out}", f"images=[{bomb}]"]
    proc = _run(*args, "device=cpu", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert f"images: cannot read {bomb} as an image" in line and "decompression bomb" in line
    assert not out.exists()


# A task that fails unexpectedly, run through the real shell (cli.run) by the command's main.
BUG = (
    "import sys, vae_pyro.evaluate as e\n"
    "def broken(cfg): return 1 / 0\n"
    "e.evaluate = broken\n"
    "sys.argv = ['evaluate', 'run_dir={run}', 'device=cpu']\n"
    "e.main()\n"
)


@pytest.mark.slow
def test_an_unexpected_error_is_one_line_and_the_debug_switch_shows_where(released_run, tmp_path):
    code = BUG.format(run=released_run)
    plain = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True
    )
    assert plain.returncode == 1, plain.stderr
    assert _one_line(plain.stderr) == (
        "vae_pyro.evaluate: error: unexpected ZeroDivisionError: division by zero "
        "(a bug: VAE_PYRO_DEBUG=1 shows where)"
    )
    debug = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**ENV, "VAE_PYRO_DEBUG": "1"},
        capture_output=True,
        text=True,
    )
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "in broken" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == _one_line(plain.stderr)


EXPLAINED = [
    (MemoryError(), "out of memory: lower one of data.batch_size", False),
    (
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0)"),
        "out of memory (20.00 GiB asked for): lower one of",
        False,
    ),
    (
        RuntimeError(
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 2147483648 bytes"
        ),
        "out of memory (2.0 GiB asked for)",
        False,
    ),
    (OSError(28, "No space left on device"), "a write failed: No space left on device;", False),
    (OSError(27, "File too large"), "File too large (a file-size limit: see ulimit -f)", False),
    (PermissionError(13, "Permission denied", "/x/eval.json"), "/x/eval.json: Permission", False),
    (Image.DecompressionBombError("Image size (4 pixels) exceeds"), "an image could not be", False),
    (VaePyroError("data.path: no such file"), "data.path: no such file", False),
    (KeyError("encoder"), "unexpected KeyError: 'encoder' (a bug: VAE_PYRO_DEBUG=1", True),
]


def _wrapped_full_disk() -> RuntimeError:
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] pos")  # noqa: B904
    except RuntimeError as err:
        return err


@pytest.mark.parametrize(("err", "words", "bug"), EXPLAINED, ids=lambda v: type(v).__name__)
def test_the_shell_maps_each_exception_type_to_one_line(err, words, bug):
    message, unexpected = cli.explain("train", err)
    assert words in message and unexpected is bug and "\n" not in message


def test_a_failed_write_inside_torch_save_is_the_full_disk_it_wraps():
    message, bug = cli.explain("evaluate", _wrapped_full_disk())
    assert message.startswith("a write failed: No space left on device;") and not bug


def test_every_help_names_the_exit_codes_and_the_debug_switch(capsys):
    for command, (summary, examples, groups) in cli.COMMANDS.items():
        assert "VAE_PYRO_DEBUG=1" in cli.help_template(command, summary, examples, groups)
    with pytest.raises(SystemExit):
        report.main(["--help"])
    assert "VAE_PYRO_DEBUG=1" in capsys.readouterr().out


# 7. Resume never skips or repeats data silently.


def _interrupted_mid_epoch(make_cfg, run_dir: Path, quick: list[str], at_step: int) -> None:
    """Train in-process until `at_step` of epoch 1, then SIGTERM as a user sends it: train's
    handler writes a mid-epoch checkpoint."""
    steps = []

    def step(svi, batch, kl_scale=1.0):
        steps.append(1)
        if len(steps) == at_step:
            signal.raise_signal(signal.SIGTERM)
        return svi_step(svi, batch, kl_scale)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("vae_pyro.train.svi_step", step)
        with pytest.raises(Interrupted):
            train(make_cfg(*quick), run_dir)


@pytest.mark.slow
def test_resuming_mid_epoch_with_another_batch_size_is_refused(make_cfg, tmp_path):
    run_dir = tmp_path / "run"
    quick = ["data.subset=1000", "data.batch_size=100", "trainer.epochs=1", "trainer.device=cpu"]
    _interrupted_mid_epoch(make_cfg, run_dir, quick, at_step=3)
    saved = checkpoint.read(run_dir / "checkpoint.pt")
    assert saved.epoch == 0 and saved.position.step == 3
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    resume = ["vae_pyro.train", *quick, "trainer.resume=true", f"hydra.run.dir={run_dir}"]
    proc = _run(*resume, "data.batch_size=250", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert "stopped inside epoch 1 (step 3) with data.batch_size=100" in line
    assert "this command has data.batch_size=250" in line
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before

    proc = _run(*resume, cwd=tmp_path)  # the same batch size: the epoch's other 700 images
    assert proc.returncode == 0, proc.stderr
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (record,) = [json.loads(line) for line in lines]
    assert record["epoch"] == 1 and 300 < record["train_loss"] < 600  # all 10 steps counted


# 8. Every key given is used, or refused.

UNREAD = [
    ("data.image_size=16", "data.image_size=16 is not read by data.name=mnist (only by image_f"),
    ("data.path=faces.npz", "data.path=faces.npz is not read by data.name=mnist (only by cifar10"),
    ("model.channels=[8,16]", "model.channels=[8, 16] is not read by model.arch=mlp (only by c"),
    ("model.prior.components=20", "model.prior.components=20 is not read by model.prior.name="),
    ("model.posterior.depth=3", "model.posterior.depth=3 is not read by model.posterior.name=d"),
    ("logger.experiment=x", "logger.experiment=x is not read by logger.name=none (only by mlflow"),
    ("optim.optimizer.optim_args.lr=-1", "optim.optimizer.optim_args.lr=-1 is not allowed: use"),
    ("optim.optimizer.optim_args.lr=0.01", "optim_args.lr=0.01 differs from optim.lr=0.001, wh"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("override", "message"), UNREAD, ids=[u[0] for u in UNREAD])
def test_a_key_the_command_would_not_use_is_refused_before_any_work(override, message, tmp_path):
    proc = _run("vae_pyro.train", override, "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert line.startswith("vae_pyro.train: error: ") and message in line
    assert list(tmp_path.iterdir()) == []  # refused before any work: not even the run dir


READ = [
    ["data=image_folder", "data.path=x", "data.image_size=16"],
    ["data=npz", "data.path=x.npz"],
    ["data=cifar10", "data.root=x", "data.path=x.npz"],
    ["data=fashion_mnist", "data.root=x"],
    ["model=conv", "model.channels=[8,16]"],
    ["model/prior=vamp", "model.prior.components=20"],
    ["model/posterior=iaf", "model.posterior.depth=3", "model.posterior.hidden=64"],
    ["optim.lr=0.01", "optim.optimizer.optim_args.fused=false"],
    *[[f"+experiment={p.stem}"] for p in sorted((REPO / "conf" / "experiment").glob("*.yaml"))],
]


@pytest.mark.parametrize("overrides", READ, ids=" ".join)
def test_keys_the_chosen_component_reads_are_accepted(overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(cli.CONF_DIR)):
        cfg = compose("train", overrides=overrides)
    config.refuse_unread(cfg, config.TrainConfig)  # raises nothing
    config.to_object(cfg, config.TrainConfig)
