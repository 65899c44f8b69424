"""The one CLI shell of `python -m vae_pyro.train | sample | evaluate`.

Every command runs through `run`: Hydra composes conf/<command>.yaml onto the command's schema
(vae_pyro/config.py), the task runs, and every refusal, whether Hydra's (a wrong type, choice
or key while composing) or ours (a range, a missing file, a damaged checkpoint), is one line on
stderr and exit code 2. An interruption exits 128 + the signal; a genuine bug keeps its
traceback. In a sweep (-m) a failed job is recorded in its run dir and returns inf instead, so
the other jobs run; the sweep then exits 1, naming them. `--help` is generated from the schema:
keys, meanings, allowed values.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from vae_pyro import config, distributed, files
from vae_pyro.errors import TrainingInterrupted, VaePyroError

CONF_DIR = files.shipped("conf", "conf")  # conf/; in a wheel, vae_pyro/conf/

log = logging.getLogger(__name__)

# What --help says of each command: a summary, three examples, whether it has config groups.
COMMANDS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "train": (
        "train a VAE with Pyro's SVI; checkpoint.pt, metrics.jsonl, TensorBoard and figures go "
        "to the run dir (outputs/<date>/<time>/, or hydra.run.dir=...)",
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
    ]
    return "\n".join(lines).replace("$", "$$").replace("$$APP_CONFIG_GROUPS", "$APP_CONFIG_GROUPS")


def register() -> None:
    """Store the schemas and, as hydra/help=vae_pyro_<command> (which conf/<command>.yaml
    selects), each command's help."""
    config.register()
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
    parts = [text.split("Config search path")[0]]  # Hydra's list of folders: noise here
    if isinstance(cause, OmegaConfBaseException):
        parts = [parts[0] if cause is not err else "", config.omegaconf_message(cause)]
    joined = "; ".join(" ".join(p.split()) for p in parts if p.strip())
    return joined or type(err).__name__


def precheck(command: str, cfg: DictConfig) -> config.Section:
    """Every check that needs no data: the schema's types, choices, ranges and keys, and the
    device. Run before Hydra creates or writes anything (Precheck) and again by the task.
    Returns the checked config."""
    schema = config.SCHEMAS[command]
    plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    checked = config.to_object(plain, schema)
    device = checked
    for part in schema.DEVICE_KEY.split("."):
        device = getattr(device, part)
    config.resolve_device(device, schema.DEVICE_KEY)
    return checked


class NothingToDo(Exception):
    """Raised by a claim: the command has nothing to do; Precheck prints it and exits 0."""


class Claimed(Protocol):
    """What a claim returns: the run dir this process's run uses (rank 0's, on every rank)."""

    run_dir: Path


# A claim runs in Precheck, before Hydra writes into the run dir (train: lock it, refuse to
# start over a run, read the checkpoint to continue), given the checked config and
# hydra.run.dir. It raises VaePyroError to refuse, NothingToDo to end with exit 0.
Claim = Callable[[Any, Path], Claimed]
# The claim of the one command this process runs: set by `run`, read by Precheck, which Hydra
# builds from the YAML (conf/<command>.yaml) and so cannot be handed it. What it claims is kept
# by that Precheck and handed to the job (Precheck.on_job_start), not kept here.
_claim: tuple[str, Claim] | None = None


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


class Precheck(Callback):
    """A Hydra callback (conf/<command>.yaml: hydra.callbacks.precheck): refuses a bad config
    at the start of a run, before Hydra makes the run dir and writes .hydra/ and the log, and
    claims the run dir there (see Claim), handing what it claimed to the job; after a sweep,
    exits 1 if any of its jobs failed."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.before: dict[Path, tuple[int, int]] = {}
        self.claimed: Claimed | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:  # in a torchrun run every rank checks (no files: the same answer on each)
            checked = precheck(self.command, config)
            if _claim is not None and _claim[0] == self.command:
                self.claimed = _claim[1](checked, Path(config.hydra.run.dir))
        except VaePyroError as err:  # Hydra turns a callback's exception into a warning
            _fail(self.command, str(err), once=True)
        except NothingToDo as done:
            distributed.print_once(str(done))
            raise SystemExit(0) from None
        if self.claimed is not None and not distributed.leads():
            _follow(config, str(self.claimed.run_dir))

    def on_job_start(self, config: DictConfig, *, task_function: Any, **kwargs: Any) -> None:
        if isinstance(task_function, _Job):
            task_function.claimed, self.claimed = self.claimed, None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).absolute()
        try:
            files.check_writable(sweep_dir)  # else a traceback from Hydra's launcher
        except VaePyroError as err:
            _fail(self.command, str(err))
        self.before = _statuses(sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).absolute()
        ran = [p for p, seen in _statuses(sweep_dir).items() if self.before.get(p) != seen]
        failed = [p for p in ran if _failed(p)]
        if failed:
            shown = ", ".join(map(str, failed[:3])) + (" ..." if len(failed) > 3 else "")
            _fail(
                self.command,
                f"{len(failed)} of {len(ran)} sweep jobs failed (their "
                f"status.json: {shown}); python -m vae_pyro.report {sweep_dir} lists them",
                code=1,
            )


def _follow(config: DictConfig, run_dir: str) -> None:
    """A rank other than 0 uses rank 0's run dir, and writes nothing there: no .hydra/, no
    log file; it logs warnings and errors to the console."""
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.run.dir = run_dir
        config.hydra.output_subdir = None
        logging_cfg = config.hydra.job_logging
        logging_cfg.handlers.pop("file", None)
        logging_cfg.root.handlers = [h for h in logging_cfg.root.handlers if h != "file"]
        logging_cfg.root.level = "WARNING"


def _fail(command: str, message: str, code: int = 2, once: bool = False) -> None:
    """One line on stderr and exit; `once`: a refusal that every rank of a torchrun run shares,
    said by rank 0 alone (an error of one rank's own is said by that rank)."""
    text = f"vae_pyro.{command}: error: {message}"
    if once:
        distributed.print_once(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)
    raise SystemExit(code)


def _record_job(status: str, **fields: Any) -> None:
    """A sweep job's outcome as status.json in its run dir: vae_pyro.report reads it, not logs."""
    path = Path(HydraConfig.get().runtime.output_dir) / "status.json"
    text = json.dumps({"status": status, **fields}) + "\n"
    files.atomic_write(path, lambda f: f.write(text.encode()))  # a new file: see _statuses


def _job(command: str, task: Callable[..., Any], cfg: DictConfig, *claimed: Any) -> Any:
    """One Hydra job: the task, with errors mapped as the module docstring says."""
    sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        result = task(cfg, *claimed)
    except TrainingInterrupted as stop:  # Ctrl-C / SIGTERM stops a whole sweep too
        if sweep:
            _record_job("interrupted", error=str(stop))
        distributed.print_once(f"vae_pyro.{command}: {stop}", file=sys.stderr)
        raise SystemExit(stop.exit_code) from None
    except Exception as err:
        if not sweep and isinstance(err, VaePyroError):
            _fail(command, str(err))
        if not sweep:
            raise
        log.error("job failed: %s", err, exc_info=not isinstance(err, VaePyroError))
        _record_job("failed", error=str(err) or type(err).__name__)
        return math.inf
    if sweep and isinstance(result, float):
        ok = math.isfinite(result)
        _record_job("ok", test_loss=result) if ok else _record_job(
            "failed", error=f"final test loss is {result}"
        )
        return result if ok else math.inf
    return result


class _Job:
    """The task as Hydra calls it. A command that claims its run dir gets task(cfg, claimed):
    what Precheck claimed, or None in a sweep's job (Hydra makes each job's dir after the
    callbacks' on_run_start: the task claims it itself)."""

    def __init__(self, command: str, task: Callable[..., Any], claims: bool) -> None:
        self.command, self.task, self.claims = command, task, claims
        self.claimed: Claimed | None = None  # set by Precheck.on_job_start

    def __call__(self, cfg: DictConfig) -> Any:
        claimed, self.claimed = self.claimed, None
        return _job(self.command, self.task, cfg, *([claimed] if self.claims else []))


def run(command: str, task: Callable[..., Any], claim: Claim | None = None) -> None:
    """`python -m vae_pyro.<command>`: compose conf/<command>.yaml with the command line's
    overrides and run `task` on it, through this module's error handling. `claim` runs before
    Hydra writes into the run dir (see Claim), and the task gets what it claimed (see _Job)."""
    global _claim
    _claim = None if claim is None else (command, claim)
    # Hydra prints its own composition errors over several lines and exits 1; with this set it
    # raises them instead, and they become our one line and exit code 2.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=command)
    try:
        main(_Job(command, task, claim is not None))()
    except (HydraException, OmegaConfBaseException) as err:
        _fail(command, compose_message(command, err))
