"""Every command as safe as train, through the real CLI: nothing a run wrote is damaged by a later
command (outputs replace only their own kind of regular file), outputs go where the help says
(evaluate's output is a file name inside run_dir), every file is written atomically (a signal,
a file-size limit or a full disk leaves the previous version and no temp file), JSON is strict
(null, never NaN) and `~` expands in every path key."""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from vae_pyro import files
from vae_pyro.errors import VaePyroError

TINY = ["model.z_dim=2", "model.hidden_dim=16", "data.subset=512", "trainer.device=cpu"]
FAST_EVAL = ["device=cpu", "num_particles=5", "num_images=20"]
FIGURES = ["posterior", "prior", "interpolation", "latent", "manifold"]  # of a z_dim = 2 run


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _cli(*args: str, cwd: Path, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env or _env(),
        **kw,
    )


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry by relative path: a file's SHA-256, "dir", or what else it is."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            found[str(path.relative_to(folder))] = "special"
        elif path.is_dir():
            found[str(path.relative_to(folder))] = "dir"
        else:
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.tmp")]


def _one_line(proc: subprocess.CompletedProcess, command: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"vae_pyro.{command}: error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished one-epoch z_dim = 2 run, trained through the CLI, with sample's figures."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    proc = _cli(
        "vae_pyro.train", *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=run_dir.parent
    )
    assert proc.returncode == 0, proc.stderr
    proc = _cli("vae_pyro.sample", f"run_dir={run_dir}", "device=cpu", cwd=run_dir.parent)
    assert proc.returncode == 0, proc.stderr
    return run_dir


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run, for one test to change."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


# --- 1. nothing the project wrote is damaged by a later command -----------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["checkpoint.pt", "metrics.jsonl", "train.log", ".hydra", "figures", "status.json"]
)
def test_evaluate_never_replaces_the_runs_own_files(run, name):
    """Not even with overwrite=true, and refused before the work (K = 10^6 would take hours)."""
    before = _snapshot(run)
    proc = _cli(
        "vae_pyro.evaluate",
        f"run_dir={run}",
        f"output={name}",
        "overwrite=true",
        "num_particles=1000000",
        "device=cpu",
        cwd=run.parent,
    )
    line = _one_line(proc, "evaluate")
    assert f"output={name} is not allowed: use a file name inside run_dir" in line
    assert "IW K=" not in proc.stderr
    assert _snapshot(run) == before


@pytest.mark.slow
@pytest.mark.parametrize("what", ["directory", "named pipe", "symbolic link"])
def test_evaluate_replaces_only_a_regular_file(run, what):
    """A folder, a FIFO (which would block the write) or a link to /dev/null at the output path:
    refused before the work, even with overwrite=true."""
    target = run / "k.json"
    if what == "directory":
        target.mkdir()
    elif what == "named pipe":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/null")
    before = _snapshot(run)
    proc = _cli(
        "vae_pyro.evaluate",
        f"run_dir={run}",
        "output=k.json",
        "overwrite=true",
        "num_particles=1000000",
        "device=cpu",
        cwd=run.parent,
    )
    line = _one_line(proc, "evaluate")
    assert line.endswith(
        f"{target} is a {what}: an output replaces only a file, or choose another output="
    )
    assert "IW K=" not in proc.stderr
    assert _snapshot(run) == before


@pytest.mark.slow
def test_evaluate_replaces_an_existing_output_only_with_overwrite(run):
    (run / "notes.json").write_text('{"mine": 1}\n')
    before = _snapshot(run)
    proc = _cli("vae_pyro.evaluate", f"run_dir={run}", "output=notes.json", *FAST_EVAL, cwd=run)
    line = _one_line(proc, "evaluate")
    assert f"{run / 'notes.json'} already exists; give overwrite=true to replace it" in line
    assert _snapshot(run) == before
    for _ in range(2):  # the second replaces the first's record
        proc = _cli(
            "vae_pyro.evaluate",
            f"run_dir={run}",
            "output=k5.json",
            "overwrite=true",
            *FAST_EVAL,
            cwd=run.parent,
        )
        assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "k5.json").read_text())["num_particles"] == 5
    assert _temp_files(run) == []


@pytest.mark.slow
@pytest.mark.parametrize("what", ["directory", "named pipe"])
def test_sample_replaces_only_files(run, what):
    """sample redraws the PNGs of its figures' names; a folder or a FIFO of a figure's name is
    refused before any figure is drawn."""
    out = run / "samples"
    prior = out / "prior.png"
    prior.unlink()
    if what == "directory":
        prior.mkdir()
    else:
        os.mkfifo(prior)
    before = _snapshot(run)
    proc = _cli("vae_pyro.sample", f"run_dir={run}", "device=cpu", cwd=run.parent)
    line = _one_line(proc, "sample")
    said = f"is a {what}: an output replaces only a file"
    assert f"{prior} {said}" in line and line.endswith("or choose another out_dir=")
    assert _snapshot(run) == before


@pytest.mark.slow
def test_sample_redraws_its_own_figures_byte_for_byte(run):
    before = _snapshot(run)
    proc = _cli("vae_pyro.sample", f"run_dir={run}", "device=cpu", cwd=run.parent)
    assert proc.returncode == 0, proc.stderr
    assert _snapshot(run) == before
    for name in FIGURES:
        assert Image.open(run / "samples" / f"{name}.png").info["Software"] == "vae_pyro"


def _sweep(tmp_path: Path, trained: Path) -> Path:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    shutil.copytree(trained, sweep / "0")
    return sweep


@pytest.mark.slow
def test_report_redraws_its_summaries(trained, tmp_path):
    sweep = _sweep(tmp_path, trained)
    proc = _cli("vae_pyro.report", str(sweep), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (sweep / "summary.md").write_text("# my notes\n")
    proc = _cli("vae_pyro.report", str(sweep), cwd=tmp_path)  # replaced: report's own name
    assert proc.returncode == 0, proc.stderr
    assert (sweep / "summary.md").read_text().startswith("# Sweep summary")
    (sweep / "summary.md").unlink()
    (sweep / "summary.md").mkdir()  # never a folder
    proc = _cli("vae_pyro.report", str(sweep), cwd=tmp_path)
    assert proc.returncode == 2 and "is a directory: an output replaces only a file" in proc.stderr


# --- 2. outputs go where the help says ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("output", ["../x.json", "{tmp}/abs.json", "sub/x.json", ".."])
def test_evaluate_output_is_a_file_name_inside_run_dir(run, tmp_path, output):
    output = output.format(tmp=tmp_path)
    before = _snapshot(tmp_path)
    proc = _cli(
        "vae_pyro.evaluate",
        f"run_dir={run}",
        f"output={output}",
        "num_particles=1000000",
        "device=cpu",
        cwd=run,
    )
    line = _one_line(proc, "evaluate")
    assert f"output={output} is not allowed: use a file name inside run_dir (no /" in line
    assert "IW K=" not in proc.stderr
    assert _snapshot(tmp_path) == before


@pytest.mark.slow
def test_sample_out_dir_may_be_any_folder(trained, tmp_path):
    out = tmp_path / "anywhere" / "figs"
    proc = _cli(
        "vae_pyro.sample", f"run_dir={trained}", f"out_dir={out}", "device=cpu", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.png" for n in FIGURES)


# --- 3. every file is written atomically ----------------------------------------------------

# Runs a command with matplotlib's first savefig cut off halfway (sample's first figure is
# posterior.png): part of the PNG is written, then the process sends itself the signal argv[1],
# then the rest would follow.
INTERRUPTED = """
import os, runpy, signal, sys
from matplotlib.figure import Figure
real = Figure.savefig
signum, command = getattr(signal, sys.argv[1]), sys.argv[2]
signal.signal(signum, signal.SIG_DFL)  # as from a terminal: under nohup SIGHUP starts ignored
def savefig(self, f, **kw):
    f.write(b"\\x89PNG\\r\\n\\x1a\\n half a figure")
    f.flush()
    os.kill(os.getpid(), signum)
    return real(self, f, **kw)
Figure.savefig = savefig
sys.argv = [command, *sys.argv[3:]]
runpy.run_module(command, run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_signal_while_sample_writes_keeps_the_old_figure_and_no_temp_file(run, signame):
    """The issue's case: posterior.png was left truncated (SIGTERM) or cut to 0 bytes (SIGINT
    on a re-run). Now the previous figure stays byte for byte, and no temp file is left."""
    before = _snapshot(run)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            INTERRUPTED,
            signame,
            "vae_pyro.sample",
            f"run_dir={run}",
            "device=cpu",
        ],
        cwd=run.parent,
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    signum = getattr(signal, signame)
    assert proc.returncode in (-signum, 128 + signum), proc.stderr
    assert _snapshot(run) == before
    assert _temp_files(run) == []


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_atomic_write_under_the_shell_leaves_no_temp_file_on_a_signal(tmp_path, signame):
    """The helper itself, for every writer (JSON, metrics, checkpoints, summaries): the shell
    turns the signal into an exception where it arrives, atomic_write removes its temp file,
    and the command ends with 128 + signum."""
    path = tmp_path / "eval.json"
    path.write_text('{"nll": 1.0}\n')
    code = (
        "import os, signal, sys\n"
        "from vae_pyro import cli, files\n"
        f"signal.signal(signal.{signame}, signal.SIG_DFL)\n"  # under nohup SIGHUP starts ignored
        "def write(f):\n"
        "    f.write(b'{\"nll\": 2')\n"
        "    f.flush()\n"
        f"    os.kill(os.getpid(), signal.{signame})\n"
        "    f.write(b'.0}')\n"
        "with cli.shell('evaluate'):\n"
        "    files.write_json(sys.argv[1], {'nll': 2.0})\n"  # unaffected: a new temp file
        "    files.atomic_write(sys.argv[1], write)\n"
        "    print('not reached')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 128 + getattr(signal, signame), proc.stderr
    assert "not reached" not in proc.stdout
    assert proc.stderr.startswith(f"vae_pyro.evaluate: interrupted by {signame}: kept 1")
    assert json.loads(path.read_text()) == {"nll": 2.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]


def _limit_file_size(limit: int):
    def preexec() -> None:
        # Python ignores SIGXFSZ itself; the child must too until then, or the kernel kills it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


@pytest.mark.slow
def test_a_file_size_limit_hit_by_sample_is_one_line_and_keeps_every_old_figure(run):
    sizes = {n: (run / "samples" / f"{n}.png").stat().st_size for n in FIGURES}
    limit = sorted(sizes.values())[1] - 1  # the smallest figure fits, the others do not
    before = _snapshot(run)
    proc = _cli(
        "vae_pyro.sample",
        f"run_dir={run}",
        "device=cpu",
        cwd=run.parent,
        preexec_fn=_limit_file_size(limit),
    )
    line = _one_line(proc, "sample")
    first_big = next(n for n in FIGURES if sizes[n] > limit)
    written = FIGURES[: FIGURES.index(first_big)]
    assert line == (
        f"vae_pyro.sample: error: could not write {run / 'samples' / first_big}.png: File too "
        f"large (written before it: {', '.join(f'{n}.png' for n in written) or 'none'}; not "
        f"drawn: {', '.join(FIGURES[FIGURES.index(first_big) + 1 :]) or 'none'}); the previous "
        f"{first_big}.png is unchanged"
    )
    assert _snapshot(run) == before  # the ones redrawn are the same bytes
    assert _temp_files(run) == []


@pytest.mark.slow
def test_a_file_size_limit_hit_by_report_names_what_was_written(trained, tmp_path):
    sweep = _sweep(tmp_path, trained)
    proc = _cli("vae_pyro.report", str(sweep), cwd=tmp_path, preexec_fn=_limit_file_size(8000))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"vae_pyro.report: error: could not write {sweep / 'summary.png'}: File too large "
        "(written before it: summary.csv, summary.md); no summary.png was written"
    )
    assert _temp_files(sweep) == []


def test_a_full_disk_while_evaluate_writes_keeps_the_old_record(monkeypatch, tmp_path):
    """One line naming the file and what was kept (the numbers were printed before)."""
    from vae_pyro import evaluate as evaluate_module

    path = tmp_path / "eval.json"
    path.write_text('{"nll": 1.0}\n')
    real = files.atomic_write

    def full(path, write):
        def partial(f):
            f.write(b'{"nll": ')
            raise OSError(28, "No space left on device")

        real(path, partial)

    monkeypatch.setattr(files, "atomic_write", full)
    with pytest.raises(VaePyroError) as err:
        evaluate_module._write_json(path, {"nll": 2.0})
    assert str(err.value) == (
        f"could not write {path}: No space left on device (the numbers are printed above); the "
        "previous eval.json is unchanged"
    )
    assert path.read_text() == '{"nll": 1.0}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]


def test_metrics_jsonl_is_rewritten_atomically_with_null_for_nan(tmp_path, monkeypatch):
    """Each epoch rewrites the whole file through a temp file: a failed write keeps the epochs
    before it; a diverged loss is null."""
    from vae_pyro import loggers

    writer = loggers.Recorder(tmp_path, True)
    writer._board = object()  # what open() sets on rank 0; no TensorBoard needed here
    writer._metrics([{"epoch": 1, "train_loss": 1.5, "test_loss": None}])
    writer.record({"epoch": 2, "train_loss": math.nan, "test_loss": math.inf}, (), 2)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines[1] == '{"epoch": 2, "train_loss": null, "test_loss": null}'

    def fail(path, write):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loggers, "atomic_write", fail)
    with pytest.raises(OSError):
        writer.record({"epoch": 3, "train_loss": 1.0, "test_loss": None}, (), 3)
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


# --- 9. values stay valid -------------------------------------------------------------------


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"bare {constant} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_json_writer_maps_nan_and_infinity_to_null(tmp_path):
    path = tmp_path / "x.json"
    files.write_json(path, {"a": math.nan, "b": [math.inf, 1.5, -math.inf], "c": {"d": math.nan}})
    assert _strict(path.read_text()) == {"a": None, "b": [None, 1.5, None], "c": {"d": None}}
    assert files.to_json([0.1, math.nan]) == "[0.1, null]"


@pytest.mark.slow
def test_evaluate_of_one_image_writes_null_for_its_undefined_spread(run):
    proc = _cli(
        "vae_pyro.evaluate",
        f"run_dir={run}",
        "device=cpu",
        "num_particles=5",
        "num_images=1",
        cwd=run.parent,
    )
    assert proc.returncode == 0, proc.stderr
    record = _strict((run / "eval.json").read_text())
    assert record["nll_se"] is None and record["negative_elbo_se"] is None
    assert math.isfinite(record["nll"])


@pytest.mark.slow
def test_tilde_expands_in_every_path_key(trained, tmp_path):
    """run_dir, out_dir (sample), run_dir (evaluate), sweep_dir (report): relative to HOME. A
    literal ~ (a shell that leaves it, or quotes) reaches Hydra quoted: its grammar refuses a
    bare ~ in a value."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copytree(trained, home / "sweep" / "run")
    import matplotlib

    env = _env(HOME=str(home), MPLCONFIGDIR=matplotlib.get_cachedir())  # no new font cache
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = _cli(
        "vae_pyro.sample",
        "run_dir='~/sweep/run'",
        "out_dir='~/figs'",
        "device=cpu",
        cwd=cwd,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == str(home / "figs" / "posterior.png")
    proc = _cli(
        "vae_pyro.evaluate", "run_dir='~/sweep/run'", "output=k5.json", *FAST_EVAL, cwd=cwd, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert (home / "sweep" / "run" / "k5.json").is_file()
    proc = _cli("vae_pyro.report", "sweep_dir=~/sweep", cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (home / "sweep" / "summary.csv").is_file()
    assert list(cwd.iterdir()) == []  # no literal "~" folder anywhere


def test_every_path_key_of_every_command_expands_tilde():
    from vae_pyro.config import SCHEMAS, DataConfig, TrainerConfig, to_object

    home = os.path.expanduser("~")
    sample = to_object({"run_dir": "~/r", "images": ["~/a.png"]}, SCHEMAS["sample"])
    assert (sample.run_dir, sample.out_dir, sample.images) == (
        f"{home}/r",
        f"{home}/r/samples",
        [f"{home}/a.png"],
    )
    assert to_object({"run_dir": "~/r"}, SCHEMAS["evaluate"]).run_dir == f"{home}/r"
    data = to_object({"root": "~/d", "path": "~/d.npz"}, DataConfig)
    assert (data.root, data.path) == (f"{home}/d", f"{home}/d.npz")
    assert to_object({"resume_from": "~/r"}, TrainerConfig).resume_from == f"{home}/r"
