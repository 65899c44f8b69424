"""The one CLI shell of `python -m vae_pyro.train | sample | evaluate`.

Every command runs through `run`: Hydra composes conf/<command>.yaml onto the command's schema
(vae_pyro/config.py), the task runs, and every refusal, whether Hydra's (a wrong type, choice
or key while composing) or ours (a range, a missing file, a damaged checkpoint), is one line on
stderr and exit code 2. So is a failure of the machine (a full disk, a file-size limit, memory
that cannot be had, an image that cannot be decoded), and an unexpected exception (a bug) is one
line and exit code 1: `shell` maps exception types to lines, in one place (`explain`);
VAE_PYRO_DEBUG=1 prints the traceback before the line. Ctrl-C or SIGTERM is one line naming what
was kept and exit code 128 + the signal (130, 143), whenever it comes (`shell`; report runs in
it too). In a sweep (-m) a failed job is recorded in its run dir and returns inf instead, so the
other jobs run; the sweep then exits 1, naming them. `--help` is generated from the schema:
keys, meanings, allowed values.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import math
import os
import re
import signal
import sys
import textwrap
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from vae_pyro import config, distributed, files, runs, startup
from vae_pyro.errors import (
    VaePyroError,
    first_line,
    os_error_in,
    os_reason,
    raise_interrupted,
    signal_name,
)

CONF_DIR = files.shipped("conf", "conf")  # conf/; in a wheel, vae_pyro/conf/

log = logging.getLogger(__name__)

# What --help says of each command: a summary, three examples, whether it has config groups.
COMMANDS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "train": (
        "train a VAE with Pyro's SVI; checkpoint.pt, metrics.jsonl, TensorBoard and figures go "
        "to the run dir (outputs/<date>/<time>_<experiment>/, or hydra.run.dir=...); "
        "outputs/latest names the newest run",
        (
            "python -m vae_pyro.train +experiment=z50",
            "python -m vae_pyro.train +experiment=z50_binarized trainer.epochs=500 seed=1",
            "python -m vae_pyro.train -m +experiment=z50 model.z_dim=2,10,50   # a sweep",
        ),
        True,
    ),
    "sample": (
        "figures of a trained run (posterior and prior draws, interpolations, latent space) "
        "as PNGs in <run_dir>/samples/; the model and its data come from the run's checkpoint",
        (
            "python -m vae_pyro.sample run_dir=outputs/z50",
            "python -m vae_pyro.sample run_dir=outputs/z50 seed=1 num_samples=8 'indices=[0,1,2]'",
            "python -m vae_pyro.sample run_dir=outputs/z2 manifold.steps=20 scale=2",
        ),
        False,
    ),
    "evaluate": (
        "importance-weighted estimate of -log p(x) on a run's test set (Burda et al. 2015); "
        "prints it and writes <run_dir>/eval.json",
        (
            "python -m vae_pyro.evaluate run_dir=outputs/z50_dynamic",
            "python -m vae_pyro.evaluate run_dir=outputs/z50_dynamic num_particles=200 "
            "output=eval_k200.json",
            "python -m vae_pyro.evaluate run_dir=outputs/z50_dynamic num_images=1000 device=cpu",
        ),
        False,
    ),
}


# The end of every command's --help (report's too): exit codes and the debug switch.
EXITS = (
    "An error is one line on stderr: exit code 2 (refused, or the machine failed: disk, memory), "
    "1 for an unexpected error; Ctrl-C / SIGTERM: 130 / 143, naming what was kept. "
    "VAE_PYRO_DEBUG=1 python -m ... prints the traceback too."
)


def _help_row(key: str, meaning: str, width: int = 36) -> str:
    """`  key=default   meaning [allowed]`, the meaning wrapped at 100 columns."""
    indent = " " * (width + 2)
    key = key.replace("${run_dir}", "<run_dir>")  # an interpolation, shown as what it means
    first = f"  {key.ljust(width)}" if len(key) < width else f"  {key}\n{indent}"
    return textwrap.fill(meaning, 100, initial_indent=first, subsequent_indent=indent)


def help_template(command: str, summary: str, examples: Sequence[str], groups: bool) -> str:
    """The text of `python -m vae_pyro.<command> --help` (a Hydra help template)."""
    rows = config.help_rows(config.SCHEMAS[command])
    keys = "\n".join(_help_row(k, meaning) for k, meaning in rows)
    lines = [
        textwrap.fill(f"python -m vae_pyro.{command}: {summary}", 100),
        "",
        f"Usage: python -m vae_pyro.{command} [key=value ...]"
        + (" [group=option ...] [+experiment=NAME]" if groups else ""),
        "",
    ]
    if groups:
        lines += [
            "Groups (group=option; +experiment=NAME appends conf/experiment/NAME.yaml):",
            "$APP_CONFIG_GROUPS",
            "",
        ]
    lines += [
        "Keys (key=default: meaning [allowed values]):",
        keys,
        "",
        "Examples:",
        *(f"  {e}" for e in examples),
        "",
        "--cfg job prints the composed config and runs nothing; --hydra-help lists Hydra's flags.",
        textwrap.fill(EXITS, 100),
    ]
    return "\n".join(lines).replace("$", "$$").replace("$$APP_CONFIG_GROUPS", "$APP_CONFIG_GROUPS")


def register() -> None:
    """Store the schemas and, as hydra/help=vae_pyro_<command> (which conf/<command>.yaml
    selects), each command's help."""
    config.register()
    runs.register_resolvers()  # ${vae_pyro.suffix:experiment}: conf/train.yaml
    for command, (summary, examples, groups) in COMMANDS.items():
        template = help_template(command, summary, examples, groups)
        node = {"app_name": f"vae_pyro.{command}", "header": "", "footer": "", "template": template}
        ConfigStore.instance().store(group="hydra/help", name=f"vae_pyro_{command}", node=node)


register()


def compose_message(command: str, err: BaseException) -> str:
    """Hydra's composition error (and the OmegaConf error under it) as one line."""
    cause = err.__cause__ if err.__cause__ is not None else err
    text = str(err)
    unknown = re.search(r"Key '[^']+' not in '\w+'\s+full_key: (\S+)", text)
    if isinstance(cause, ConfigKeyError | ConfigAttributeError) or unknown:
        override = re.search(r"Could not override '([^']+)'", text)
        source = re.search(r"In '([^']+)'", text)
        origin = f" (set by conf/{source.group(1)}.yaml)" if source else ""
        dotted = override.group(1) if override else getattr(cause, "full_key", None)
        dotted = dotted or (unknown.group(1) if unknown else "?")
        return config.unknown_key(config.SCHEMAS[command], dotted, origin)
    tilde = re.search(r"LexerNoViableAltException: (\S+?)=(~\S*)", text)
    if tilde:  # zsh (and bash after key=) leaves ~ for Hydra's grammar, which has no ~
        key, value = tilde.groups()
        return (
            f"{key}={value}: the shell left ~ unexpanded and Hydra cannot read it; give "
            f"{key}=$HOME{value[1:]} or quote it: '{key}=\"{value}\"'"
        )
    parts = [text.split("Config search path")[0]]  # Hydra's list of folders: noise here
    if isinstance(cause, OmegaConfBaseException):
        parts = [parts[0] if cause is not err else "", config.omegaconf_message(cause)]
    joined = "; ".join(" ".join(p.split()) for p in parts if p.strip())
    return joined or type(err).__name__


def _statuses(sweep_dir: Path) -> dict[Path, tuple[int, int]]:
    """Every job's status.json under a sweep dir, with its (inode, mtime): what changed since
    the sweep began was written by it, whichever process or node ran the job (each write makes
    a new file, so a new inode, however coarse the clock)."""
    found = sweep_dir.rglob("status.json") if sweep_dir.is_dir() else ()
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in found}


def _failed(status: Path) -> bool:
    try:
        return json.loads(status.read_text()).get("status") == "failed"
    except (OSError, ValueError, AttributeError):  # half-written or foreign: not a success
        return True


_MADE: list[Path] = []  # the run dir Hydra is about to make: `shell` removes it if left empty


class RunDirs(Callback):
    """A Hydra callback (conf/train.yaml: hydra.callbacks.run_dirs). A run dir Hydra makes is
    named before it is made, so that `shell` removes it if the command ends with nothing in it
    (refused, failed or interrupted, even between Hydra's mkdir and the task's first line). A
    sweep dir belongs to one sweep, locked for its life, and one that holds another sweep is
    refused before any job runs; after the sweep, exits 1 if any of its jobs failed (each job
    records its outcome in its dir: `_record_job`)."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.before: dict[Path, tuple[int, int]] = {}
        self.locked: Path | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        made = Path(config.hydra.run.dir).absolute()  # ${now:} is cached: the dir Hydra makes
        if not made.exists():
            _MADE.append(made)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).absolute()
        if not distributed.leads():
            return
        try:
            if (sweep_dir / "multirun.yaml").exists():
                raise VaePyroError(
                    f"hydra.sweep.dir={_shown(sweep_dir)} holds another sweep (multirun.yaml): "
                    "choose another hydra.sweep.dir; python -m vae_pyro.report "
                    f"{_shown(sweep_dir)} shows what it holds"
                )
            self.locked = files.acquire(sweep_dir)  # a sweep started at the same time: refused
        except VaePyroError as err:
            _fail(self.command, str(err).replace("hydra.run.dir", "hydra.sweep.dir"))
        self.before = _statuses(sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).absolute()
        if self.locked is not None:
            files.release(self.locked)
            self.locked = None
        ran = [p for p, seen in _statuses(sweep_dir).items() if self.before.get(p) != seen]
        failed = [p for p in ran if _failed(p)]
        if distributed.leads():
            runs.mark_latest(sweep_dir, runs.SWEEPS)
        if failed:
            shown = ", ".join(map(str, failed[:3])) + (" ..." if len(failed) > 3 else "")
            _fail(
                self.command,
                f"{len(failed)} of {len(ran)} sweep jobs failed (their "
                f"status.json: {shown}); python -m vae_pyro.report {sweep_dir} lists them",
                code=1,
            )
        where = _shown(sweep_dir)
        distributed.print_once(
            f"sweep of {len(ran)} jobs in {where}; its summary: "
            f"python -m vae_pyro.report sweep_dir={where}"
        )


def _shown(path: Path) -> Path:
    """path relative to the working directory when inside it (shorter to copy), else as is."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _fail(command: str, message: str, code: int = 2, once: bool = False) -> None:
    """One line on stderr and exit; `once`: a refusal that every rank of a torchrun run shares,
    said by rank 0 alone (an error of one rank's own is said by that rank)."""
    text = f"vae_pyro.{command}: error: {message}"
    if once:
        distributed.print_once(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)
    raise SystemExit(code)


# The shell of every command (`shell`): interruptions and exceptions as one line.

DEBUG = "VAE_PYRO_DEBUG"  # =1: an error's traceback is printed before its line
# The keys that size what a command allocates, named when memory runs out.
SIZE_KEYS = {
    "train": (
        "data.batch_size",
        "trainer.eval_batch_size",
        "model.hidden_dim",
        "model.z_dim",
        "model.channels",
        "model.prior.components",
        "elbo.num_particles",
    ),
    "sample": ("num_samples", "scale", "prior.num", "interpolation.steps", "manifold.steps"),
    "evaluate": ("max_batch_elements", "num_images"),
}
_MEMORY = re.compile(r"out of memory|can't allocate memory|not enough memory", re.I)
_written_before = 0  # len(files.WRITTEN) when the shell began: what this command wrote follows


def _kept() -> str:
    """What the command wrote before it stopped (files.WRITTEN): whole files,
    since every output is written atomically."""
    paths = list(dict.fromkeys(files.WRITTEN[_written_before:]))
    if not paths:
        return "nothing was written"
    shown = ", ".join(map(str, paths[:3])) + (f" and {len(paths) - 3} more" if paths[3:] else "")
    s = "s" if len(paths) > 1 else ""
    return f"kept {len(paths)} complete file{s} ({shown}); no partial file was left"


def _size_keys(command: str, cfg: DictConfig | None) -> str:
    """The size keys set above their defaults, or else all of them, with their values where
    the config is known."""
    keys = SIZE_KEYS.get(command, ())
    if not keys:
        return "the amount of data"
    if cfg is None:
        return f"one of {', '.join(keys)}"
    defaults = OmegaConf.structured(config.SCHEMAS[command])
    values = {k: OmegaConf.select(cfg, k, default=None) for k in keys}
    raised = []
    for k, v in values.items():
        default = OmegaConf.select(defaults, k, default=None)
        if isinstance(v, int) and (default is None or v > default):
            raised.append(f"{k}={v}" + ("" if default is None else f" (default {default})"))
    shown = [f"{k}={v}" for k, v in values.items() if v is not None]
    return " and ".join(raised) if raised else f"one of {', '.join(shown)}"


def _allocation(text: str) -> str:
    """How much the failed allocation asked for, as said in torch's message, or ""."""
    found = re.search(r"allocate (\d+) bytes", text)
    if found:
        return f" ({int(found.group(1)) / 2**30:.1f} GiB asked for)"
    found = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]i?B)", text)
    return f" ({found.group(1)} asked for)" if found else ""


def _os_line(err: OSError) -> str:
    """The file (when the error names it) and the system's reason."""
    reason = os_reason(err)
    if err.filename:
        return f"{err.filename}: {reason}"
    full = err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    return f"{'a write' if full else 'a file operation'} failed: {reason}"


def _peer_died(err: BaseException) -> bool:
    """A collective call failed because another rank of a torchrun run went away."""
    if isinstance(err, torch.distributed.DistError):
        return True
    peer = r"gloo|nccl|[Cc]onnection (closed|reset) by peer|ProcessGroup"
    return isinstance(err, RuntimeError) and re.search(peer, str(err)) is not None


def explain(command: str, err: BaseException, cfg: DictConfig | None = None) -> tuple[str, bool]:
    """The one line for an exception, and whether it is unexpected (a bug): the one table from
    exception types to what the user reads. Memory: the size keys to lower; an OSError, however
    wrapped (torch.save's RuntimeError): what failed and what was kept; an image decoder's
    error (PIL): which; anything else: its type and first line."""
    if isinstance(err, VaePyroError):
        return str(err), False
    first = first_line(err)
    if isinstance(err, MemoryError | torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and _MEMORY.search(first)
    ):
        asked = _allocation(first)
        return f"out of memory{asked}: lower {_size_keys(command, cfg)}", False
    cause = os_error_in(err)
    if _peer_died(err):
        return (
            f"another process of this torchrun run stopped ({type(err).__name__}: {first}); "
            "its own error names the cause; the last checkpoint is kept (trainer.resume=true)"
        ), False
    pil = type(err).__module__.split(".")[0] == "PIL"
    if pil and (cause is None or cause.errno not in (errno.EMFILE, errno.ENFILE)):
        return f"an image could not be decoded ({type(err).__name__}: {first}); {_kept()}", False
    if cause is not None:
        return f"{_os_line(cause)}; {_kept()}", False
    return f"unexpected {type(err).__name__}: {first} (a bug: {DEBUG}=1 shows where)", True


def _error(
    command: str, err: BaseException, cfg: DictConfig | None = None, once: bool = False
) -> NoReturn:
    """One line on stderr (explain) and exit 2, or 1 for an unexpected exception; `once`: a
    refusal every rank of a torchrun run shares, said by rank 0 alone."""
    message, bug = explain(command, err, cfg)
    if os.environ.get(DEBUG) == "1":
        traceback.print_exception(err)
    _fail(command, message, code=1 if bug else 2, once=once)
    raise AssertionError  # _fail exits


def _handlers(handlers: dict[int, Any]) -> dict[int, Any]:
    """Install signal handlers, returning the previous ones; the main thread only (where
    Python runs them); a signal set to be ignored (nohup, a background job) stays ignored."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for signum, handler in handlers.items():
        if signal.getsignal(signum) not in (signal.SIG_IGN, None):
            previous[signum] = signal.signal(signum, handler)
    return previous


def _signal_behind(err: BaseException) -> KeyboardInterrupt | None:
    """The interruption an exception was raised while handling, if any."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _stopped(command: str, stop: KeyboardInterrupt, previous: dict[int, Any]) -> NoReturn:
    """One line naming what was kept (or training's own, with the resume command); exit
    128 + signum. Further signals are ignored: the command is ending."""
    _handlers({s: signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)})
    previous.clear()
    if os.environ.get(DEBUG) == "1":
        traceback.print_exception(stop)
    signum = getattr(stop, "signum", signal.SIGINT)
    said = getattr(stop, "message", "") or f"interrupted by {signal_name(signum)}: {_kept()}"
    distributed.print_once(f"vae_pyro.{command}: {said}", file=sys.stderr)
    raise SystemExit(128 + signum) from None


@contextlib.contextmanager
def shell(command: str) -> Iterator[None]:
    """Around everything a command does. Ctrl-C raises KeyboardInterrupt and SIGTERM
    errors.Interrupted where they arrive, so every cleanup runs (temp files, the run dir's
    lock, a run dir that got nothing); then one line naming what was kept, exit 128 + signum.
    Any exception: one line (explain). Training's own handler takes over inside its loop."""
    global _written_before
    _written_before = len(files.WRITTEN)
    previous = _handlers(
        {
            signal.SIGINT: signal.default_int_handler,
            signal.SIGTERM: raise_interrupted,
            signal.SIGHUP: raise_interrupted,  # a closed terminal: the same clean stop
        }
    )
    try:
        yield
    except Exception as err:
        stop = _signal_behind(err)  # a library broken mid-step by the signal raised anew
        if stop is None:
            _error(command, err)
        _stopped(command, stop, previous)
    except KeyboardInterrupt as stop:  # errors.Interrupted too
        _stopped(command, stop, previous)
    finally:
        while _MADE:
            files.prune(_MADE.pop())  # only if nothing was written there
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _record_job(status: str, **fields: Any) -> None:
    """A sweep job's outcome as status.json in its run dir: vae_pyro.report reads it, not logs."""
    path = Path(HydraConfig.get().runtime.output_dir) / "status.json"
    path.parent.mkdir(parents=True, exist_ok=True)  # a refused job's empty dir was removed
    overrides = list(HydraConfig.get().overrides.task)  # what report shows of a refused job
    record = {"status": status, **fields, "overrides": overrides}
    text = files.to_json(record) + "\n"  # strict JSON: null for NaN
    files.atomic_write(path, lambda f: f.write(text.encode()))  # a new file: see _statuses


def _interrupted(stop: KeyboardInterrupt, sweep: bool) -> None:
    """A signal ends the job (and a sweep: all of it); `shell` says so, once."""
    if sweep:
        name = signal_name(getattr(stop, "signum", signal.SIGINT))
        _record_job("interrupted", error=getattr(stop, "message", "") or f"interrupted by {name}")


def _job(command: str, task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """One Hydra job: the task, with errors mapped as the module docstring says."""
    sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        result = task(cfg)
    except Exception as err:
        stop = _signal_behind(err)  # a library broken mid-step by the signal
        if stop is not None:
            _interrupted(stop, sweep)
            raise stop from err  # a KeyboardInterrupt: Hydra passes it on (it prints an Exception)
        if not sweep:
            _error(command, err, cfg, once=isinstance(err, VaePyroError))  # before Hydra's words
        message, bug = explain(command, err, cfg)
        log.error("job failed: %s", message, exc_info=bug)
        _record_job("failed", error=message)
        return math.inf
    except KeyboardInterrupt as stop:  # errors.Interrupted too
        _interrupted(stop, sweep)
        raise
    if sweep and isinstance(result, float):
        ok = math.isfinite(result)
        _record_job("ok", test_loss=result) if ok else _record_job(
            "failed", error=f"final test loss is {result}"
        )
        return result if ok else math.inf
    return result


def run(command: str, task: Callable[[DictConfig], Any]) -> None:
    """`python -m vae_pyro.<command>`: compose conf/<command>.yaml with the command line's
    overrides and run `task` on it, through this module's error handling. The task owns
    everything after composition: it checks the config (once), and a training task claims its
    run dir and writes its record (.hydra/, train.log) once the run is accepted."""
    keys = config.keys(config.SCHEMAS[command])
    bare = startup.bare_argument(command, sys.argv[1:], keys)  # else Hydra's "missing EQUAL"
    if bare is not None:
        _fail(command, bare)
    if "run_dir" in config.SCHEMAS[command].__dataclass_fields__:
        task = runs.with_run_dir(task)  # run_dir=latest
    # Hydra prints its own composition errors over several lines and exits 1; with this set it
    # raises them instead, and they become our one line and exit code 2.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=command)
    with shell(command):
        try:
            main(functools.partial(_job, command, task))()
        except (HydraException, OmegaConfBaseException) as err:
            _fail(command, compose_message(command, err))
