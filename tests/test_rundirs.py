"""Run directories that are never damaged, and an install that works anywhere: a refused command
leaves a run byte for byte as it was, a run dir belongs to one process (an OS lock that dies with
it), nothing to train touches nothing, outputs are checked before the work, files get the user's
umask, and a wheel installed away from the clone trains offline from any directory."""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from vae_pyro import checkpoint, files
from vae_pyro import evaluate as evaluate_module
from vae_pyro.cli import CONF_DIR, RunDirs
from vae_pyro.errors import VaePyroError
from vae_pyro.evaluate import evaluate
from vae_pyro.sample import sample
from vae_pyro.train import train

REPO = Path(__file__).resolve().parent.parent
TINY = ["model.z_dim=2", "model.hidden_dim=16", "data.subset=512", "trainer.device=cpu"]
# 47 steps of 256 per epoch: a few seconds, so that a second command meets a running one.
LONG = ["+experiment=z50", "data.subset=12000", "trainer.device=cpu"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _cli(*args: str, cwd: Path, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=kw.pop("env", _env()),
        **kw,
    )


def _train_popen(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vae_pyro.train", *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file's SHA-256 and every directory, by relative path: the dir byte for byte."""
    found = {}
    for path in sorted(folder.rglob("*")):
        content = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        found[str(path.relative_to(folder))] = content
    return found


def _one_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _epochs(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines]


def _compose(command: str, *overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(command, overrides=list(overrides))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-epoch run, trained through the real CLI."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    proc = _cli(
        "vae_pyro.train", *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=run_dir.parent
    )
    assert proc.returncode == 0, proc.stderr
    return run_dir


# --- a refused command leaves the run as it was ---------------------------------------------


REFUSED = {
    # the example: a new run over a finished one (Hydra used to rewrite .hydra/)
    "existing-run": (["model.z_dim=3"], "already holds a run (checkpoint.pt); continue it"),
    "bad-value": (["model.z_dim=0", "trainer.resume=true"], "model.z_dim=0 is not allowed"),
    "locked": (["trainer.resume=true", "trainer.epochs=2"], "is in use by another run (pid"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(REFUSED))
def test_a_refused_command_leaves_a_finished_run_byte_for_byte(finished, case):
    overrides, message = REFUSED[case]
    before = _snapshot(finished)
    key = files.acquire(finished) if case == "locked" else None  # this process holds it
    try:
        proc = _cli(
            "vae_pyro.train", *TINY, *overrides, f"hydra.run.dir={finished}", cwd=finished.parent
        )
    finally:
        if key is not None:
            files.release(key)
    assert proc.returncode == 2
    line = _one_line(proc)
    assert message in line, line
    if case == "locked":
        assert f"(pid {os.getpid()} on host {socket.gethostname()})" in line
    assert _snapshot(finished) == before


@pytest.mark.slow
def test_nothing_to_train_exits_0_and_touches_nothing(finished):
    before = _snapshot(finished)
    proc = _cli(
        "vae_pyro.train",
        *TINY,
        "trainer.epochs=1",
        "trainer.resume=true",
        f"hydra.run.dir={finished}",
        cwd=finished.parent,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("nothing to train: the run already has 1 epoch "), proc.stdout
    assert proc.stderr == ""
    assert _snapshot(finished) == before


def test_nothing_to_train_in_process_returns_the_last_test_loss(tmp_path):
    final = train(_compose("train", *TINY, "trainer.epochs=2"), tmp_path)
    before = _snapshot(tmp_path)
    for epochs in (1, 2):
        cfg = _compose("train", *TINY, f"trainer.epochs={epochs}", "trainer.resume=true")
        assert train(cfg, tmp_path) == final
        assert _snapshot(tmp_path) == before


def _counted(real, calls: list):
    def wrapper(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    return wrapper


def test_a_run_is_claimed_once(tmp_path, monkeypatch):
    """train() is the one start of a run: one lock, one read of the checkpoint; the lock ends
    with the run."""
    train(_compose("train", *TINY, "trainer.epochs=1"), tmp_path)
    reads, locks = [], []
    monkeypatch.setattr(checkpoint, "read", _counted(checkpoint.read, reads))
    monkeypatch.setattr(files, "acquire", _counted(files.acquire, locks))
    train(_compose("train", *TINY, "trainer.epochs=2", "trainer.resume=true"), tmp_path)
    assert len(reads) == 1 and len(locks) == 1
    assert not (tmp_path / files.LOCK_NAME).exists()
    assert [m["epoch"] for m in checkpoint.load(tmp_path / "checkpoint.pt")["metrics"]] == [1, 2]


def test_nothing_to_train_says_so_writes_nothing_and_lets_go(tmp_path, capsys):
    train(_compose("train", *TINY, "trainer.epochs=1"), tmp_path)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    train(_compose("train", *TINY, "trainer.epochs=1", "trainer.resume=true"), tmp_path)
    assert capsys.readouterr().out.startswith("nothing to train: the run already has 1 epoch ")
    assert _snapshot(tmp_path) == before
    assert tmp_path.resolve() not in files._HELD  # let go: another run may take the dir


# --- one process per run dir ----------------------------------------------------------------


@pytest.mark.slow
def test_two_runs_started_together_one_trains_and_nothing_is_interleaved(tmp_path):
    run_dir = tmp_path / "run"
    seeds = (1, 2)  # tell the two apart in what the run dir records
    procs = [
        _train_popen(
            *LONG, "trainer.epochs=2", f"seed={s}", f"hydra.run.dir={run_dir}", cwd=tmp_path
        )
        for s in seeds
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], [o[1][-2000:] for o in outs]
    winner = codes.index(0)
    loser = subprocess.CompletedProcess([], codes[1 - winner], *outs[1 - winner])
    line = _one_line(loser)
    assert f"is in use by another run (pid {procs[winner].pid} on host " in line, line
    assert loser.stdout == ""
    assert _epochs(run_dir) == [1, 2]
    assert len(list((run_dir / "tensorboard").iterdir())) == 1
    assert (run_dir / "train.log").read_text().count("training on") == 1
    assert checkpoint.read(run_dir / "checkpoint.pt").config["seed"] == seeds[winner]
    assert f"seed: {seeds[winner]}\n" in (run_dir / ".hydra" / "config.yaml").read_text()
    assert not (run_dir / files.LOCK_NAME).exists()


@pytest.mark.slow
def test_sigkill_leaves_no_lock_that_blocks_resume(tmp_path):
    run = [*LONG, "trainer.epochs=3", f"hydra.run.dir={tmp_path}"]
    proc = _train_popen(*run, cwd=tmp_path)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "epoch 1 never finished"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / files.LOCK_NAME).exists()  # the file stays; its lock died with the run
    resumed = _cli("vae_pyro.train", *run, "trainer.resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert _epochs(tmp_path) == [1, 2, 3]
    assert not (tmp_path / files.LOCK_NAME).exists()


def test_the_lock_is_reentrant_names_its_holder_and_leaves_nothing(tmp_path):
    run_dir = tmp_path / "a" / "b"
    key = files.acquire(run_dir)
    assert files.acquire(run_dir) == key == run_dir.resolve()  # again in this process: fine
    holder = (run_dir / files.LOCK_NAME).read_text().split()
    assert holder == [str(os.getpid()), socket.gethostname()]
    code = (
        "import sys\nfrom vae_pyro import files\nfrom vae_pyro.errors import VaePyroError\n"
        "try:\n    files.acquire(sys.argv[1])\nexcept VaePyroError as err:\n"
        "    print(err)\n    sys.exit(3)\n"
    )
    other = subprocess.run(
        [sys.executable, "-c", code, str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert other.returncode == 3, other.stderr
    assert f"{key} is in use by another run (pid {os.getpid()} on host" in other.stdout
    files.release(key)
    assert (run_dir / files.LOCK_NAME).exists()  # still held once
    files.release(key)
    assert not (tmp_path / "a").exists()  # the dirs acquire made, empty again: removed
    with files.locked(run_dir):
        (run_dir / "kept.txt").write_text("written while locked")
    assert sorted(p.name for p in run_dir.iterdir()) == ["kept.txt"]


def test_a_run_started_as_the_holder_locks_still_names_it(tmp_path):
    """The holder locks, then writes its name: a run that finds the lock between the two waits
    for the name (the race test_two_runs_started_together_... met in CI)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    fd = os.open(run_dir / files.LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file: conflicts in-process too
    late = threading.Timer(0.2, os.pwrite, (fd, b"4242 elsewhere\n", 0))
    late.start()
    try:
        with pytest.raises(
            VaePyroError, match=r"in use by another run \(pid 4242 on host elsewhere\)"
        ):
            files.acquire(run_dir)
    finally:
        late.join()
        os.close(fd)


def test_a_run_dir_left_empty_goes_again(tmp_path, monkeypatch):
    """A run dir that holds nothing when its lock is released goes, with the empty folders
    above it inside the working directory (Hydra's outputs/<date>/); anything written stays."""
    monkeypatch.chdir(tmp_path)
    for written, kept in (([], False), (["metrics.jsonl"], True)):
        key = files.acquire(tmp_path / "outputs" / "day" / "time")
        for name in written:
            (key / name).write_text("x")
        files.release(key)
        assert (tmp_path / "outputs").exists() == kept, written
    (tmp_path / "outputs" / "other").mkdir()  # a folder of the user's beside it: kept
    files.prune(tmp_path / "outputs" / "day" / "time")
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["day", "other"]


@pytest.mark.slow
def test_a_refusal_after_hydra_wrote_its_files_leaves_no_run_dir(tmp_path):
    """data.subset is checked against the data, after Hydra made the run dir: that dir goes
    again, up to Hydra's default outputs/<date>/<time>/."""
    proc = _cli("vae_pyro.train", "data.subset=60001", "trainer.device=cpu", cwd=tmp_path)
    assert proc.returncode == 2
    assert "data.subset=60001 is larger than the 60000 training images" in _one_line(proc)
    assert list(tmp_path.iterdir()) == []


def test_a_stale_lock_file_is_no_run_and_blocks_nothing(tmp_path):
    (tmp_path / files.LOCK_NAME).write_text("999999 some-dead-host\n")  # left by a SIGKILL
    train(_compose("train", *TINY, "trainer.epochs=1"), tmp_path)  # no "already holds a run"
    assert _epochs(tmp_path) == [1]
    assert not (tmp_path / files.LOCK_NAME).exists()


def _write_status(job: Path, status: str) -> None:
    job.mkdir(parents=True, exist_ok=True)
    files.atomic_write(
        job / "status.json", lambda f: f.write(json.dumps({"status": status}).encode())
    )


def test_a_sweep_exits_1_for_its_own_failed_jobs_only(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    _write_status(sweep / "0", "failed")  # from an earlier sweep into the same dir
    _write_status(sweep / "1", "ok")
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    check = RunDirs("train")
    check.on_multirun_start(config=cfg)
    _write_status(sweep / "1", "ok")  # this sweep's jobs
    _write_status(sweep / "2", "ok")
    check.on_multirun_end(config=cfg)  # the old failure is not this sweep's: no exit
    _write_status(sweep / "2", "failed")
    with pytest.raises(SystemExit) as stop:
        check.on_multirun_end(config=cfg)
    assert stop.value.code == 1
    assert capsys.readouterr().err == (
        f"vae_pyro.train: error: 1 of 2 sweep jobs failed (their status.json: "
        f"{sweep / '2' / 'status.json'}); python -m vae_pyro.report {sweep} lists them\n"
    )


# --- outputs checked before the work --------------------------------------------------------


def _no_work(*args, **kwargs):
    raise AssertionError("the work started")


def test_evaluate_refuses_to_replace_an_output_before_the_work(released_run, monkeypatch):
    (released_run / "eval.json").write_text('{"nll": 1.0}\n')
    before = _snapshot(released_run)
    monkeypatch.setattr(evaluate_module, "load_vae", _no_work)
    monkeypatch.setattr(evaluate_module, "importance_sample", _no_work)
    with pytest.raises(VaePyroError) as err:
        evaluate(_compose("evaluate", f"run_dir={released_run}", "device=cpu"))
    assert f"{released_run / 'eval.json'} already exists; give overwrite=true" in str(err.value)
    assert _snapshot(released_run) == before


def test_evaluate_overwrite_true_replaces_and_the_numbers_come_first(released_run, capsys):
    (released_run / "eval.json").write_text('{"nll": 1.0}\n')
    options = [f"run_dir={released_run}", "device=cpu", "num_particles=5", "num_images=20"]
    record = evaluate(_compose("evaluate", *options, "overwrite=true"))
    assert json.loads((released_run / "eval.json").read_text()) == record
    out = capsys.readouterr().out
    assert f"-log p(x) (IW, K=5): {record['nll']:.2f}" in out
    assert out.index("-log p(x)") < out.index(f"written to {released_run / 'eval.json'}")


def test_evaluate_prints_the_numbers_when_the_write_fails(released_run, monkeypatch, capsys):
    def full_disk(path, write):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "atomic_write", full_disk)
    options = [f"run_dir={released_run}", "device=cpu", "num_particles=5", "num_images=20"]
    with pytest.raises(VaePyroError, match="No space left on device .the numbers are printed"):
        evaluate(_compose("evaluate", *options, "output=k5.json"))
    assert "-log p(x) (IW, K=5): " in capsys.readouterr().out
    assert sorted(p.name for p in released_run.iterdir()) == ["checkpoint.pt"]


def test_an_output_folder_that_cannot_exist_is_refused_before_the_work(released_run, monkeypatch):
    """A file where sample's out_dir would go: refused before loading anything (this works as
    root too; read-only folders are in the test below). evaluate's output is a file name inside
    run_dir, never a path (test_outputs.py)."""
    (released_run / "blocker").write_text("a file, not a folder")
    from vae_pyro import sample as sample_module

    monkeypatch.setattr(sample_module, "load_vae", _no_work)
    out_dir = f"out_dir={released_run}/blocker/p"
    with pytest.raises(VaePyroError) as err:
        sample(_compose("sample", f"run_dir={released_run}", "device=cpu", out_dir))
    assert f"{released_run / 'blocker'} is not a directory" in str(err.value)


def _drop_dac_override() -> None:
    """In the child before exec: drop CAP_DAC_OVERRIDE from the bounding set, so that root
    there obeys the mode bits (read-only folders) like any user."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(24, 1, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, CAP_DAC_OVERRIDE
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture
def read_only_run(released_run):
    """The released run's dir made read-only, and how to run a command that must obey it."""
    released_run.chmod(0o555)
    preexec = _drop_dac_override if os.geteuid() == 0 else None
    probe = f"open({str(released_run / 'probe')!r}, 'w')"
    try:
        tried = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, preexec_fn=preexec, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as err:
        tried = None
        reason = f"root here cannot drop CAP_DAC_OVERRIDE ({err})"
    if tried is None or tried.returncode == 0:
        released_run.chmod(0o755)
        pytest.skip(reason if tried is None else "a read-only folder is still writable here")
    yield released_run, preexec
    released_run.chmod(0o755)


READ_ONLY = {
    # command line, what the one line says (RO: the read-only run dir)
    "evaluate": (
        ["vae_pyro.evaluate", "run_dir={RO}", "num_particles=1000000", "device=cpu"],
        "cannot write to {RO}: Permission denied",
    ),
    "sample": (
        ["vae_pyro.sample", "run_dir={RO}", "device=cpu"],
        "cannot write to {RO}/samples: Permission denied",
    ),
    "train-new": (
        ["vae_pyro.train", *TINY, "hydra.run.dir={RO}/run"],
        "{RO}/run: Permission denied; nothing was written",  # Hydra's mkdir, before the task
    ),
    "train-resume": (
        ["vae_pyro.train", *TINY, "trainer.resume=true", "hydra.run.dir={RO}"],
        "cannot write to {RO}: Permission denied",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(READ_ONLY))
def test_a_read_only_run_dir_is_one_line_before_the_work(read_only_run, case, tmp_path):
    """evaluate with K = 10^6 would run for hours: refused in seconds, nothing written."""
    run_dir, preexec = read_only_run
    args, message = READ_ONLY[case]
    before = _snapshot(run_dir)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    proc = _cli(
        *(a.format(RO=run_dir) for a in args), cwd=elsewhere, timeout=120, preexec_fn=preexec
    )
    assert proc.returncode == 2, proc.stderr
    assert _one_line(proc).endswith(message.format(RO=run_dir)), proc.stderr
    assert "IW K=" not in proc.stderr
    assert _snapshot(run_dir) == before
    assert list(elsewhere.iterdir()) == []


# --- file modes -----------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_files_a_run_writes_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        checkpoint.save(tmp_path / "checkpoint.pt", {"epoch": 1})
        evaluate_module._write_json(tmp_path / "eval.json", {"nll": 1.0})
        with files.locked(tmp_path / "run") as run_dir:
            lock_mode = (run_dir / files.LOCK_NAME).stat().st_mode & 0o777
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert (tmp_path / "checkpoint.pt").stat().st_mode & 0o777 == expected
    assert (tmp_path / "eval.json").stat().st_mode & 0o777 == expected
    assert lock_mode == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "eval.json"]


# --- an install that works anywhere ---------------------------------------------------------


def _copy_sources(dest: Path) -> None:
    """What a clone holds of the package (the working tree as it is, untracked files too)."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*-ubyte")  # torchvision's extracts
    for name in ("vae_pyro", "conf", "data"):
        shutil.copytree(REPO / name, dest / name, ignore=skip)


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_trains_offline_from_any_directory(tmp_path):
    src, dist, target, work = (tmp_path / n for n in ("src", "dist", "site", "work"))
    for folder in (src, work):
        folder.mkdir()
    _copy_sources(src)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("vae_pyro-*.whl")
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert (target / "vae_pyro" / "_data" / "MNIST" / "mnist.npz").is_file()
    # The installed copy alone (not the clone), and no network: a download would fail.
    offline = "http://127.0.0.1:9"
    env = _env(
        PYTHONPATH=str(target),
        http_proxy=offline,
        https_proxy=offline,
        HTTP_PROXY=offline,
        HTTPS_PROXY=offline,
    )
    show = "from vae_pyro import cli, data; print(cli.CONF_DIR, data.DEFAULT_ROOT)"
    where = subprocess.run(
        [sys.executable, "-c", show],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert where.stdout.split() == [
        str(target / "vae_pyro" / "conf"),
        str(target / "vae_pyro" / "_data"),
    ], where.stderr
    proc = _cli(
        "vae_pyro.train",
        "+experiment=z50",
        "trainer.epochs=1",
        "data.subset=512",
        "trainer.device=cpu",
        cwd=work,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = (work / "outputs").glob("*/*")  # Hydra's default outputs/<date>/<time>/
    (run_dir,) = [p for p in outputs if p.parent.name != "latest"]  # not outputs/latest/...
    assert _epochs(run_dir) == [1]
    cfg = checkpoint.read(run_dir / "checkpoint.pt").config
    assert (cfg["model"]["z_dim"], cfg["trainer"]["epochs"]) == (50, 1)  # experiment z50 found
