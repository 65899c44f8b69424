"""Runs you can find: the default run dir's name, `outputs/latest` and `multirun/latest`, and
`run_dir=latest`.

A training run started without hydra.run.dir goes to outputs/<date>/<time>[_<experiment>] (the
`vae_pyro.suffix` resolver in conf/train.yaml adds the experiment); one whose time-stamped name
is taken, by a run started in the same second, gets the next free one (<name>-2, -3, ...). When a
run ends, `outputs/latest` names it, and `multirun/latest` the newest sweep: a one-line text file
holding the path relative to its folder (`cat outputs/latest`), replaced atomically, which
`resolve_run_dir` reads (a symlink would be followed by `tensorboard --logdir outputs`).
Only a run inside <cwd>/outputs (a sweep inside <cwd>/multirun) moves them: a run dir chosen
elsewhere leaves them alone. A run's record (.hydra/, train.log) is written by the run itself
once it is accepted (`recording`). Imports nothing heavy (no torch).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from vae_pyro import files
from vae_pyro.errors import VaePyroError

LATEST = "latest"
RUNS = "outputs"  # Hydra's run dirs (hydra.run.dir), relative to the working directory
SWEEPS = "multirun"  # Hydra's sweep dirs (hydra.sweep.dir)
MAX_TRIES = 1000
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's, in train.log

log = logging.getLogger(__name__)
T = TypeVar("T")


def _suffix(group: str, *, _root_: DictConfig) -> str:
    """`_<option>` when the config group `group` was chosen (+experiment=z50 -> `_z50`)."""
    choice = OmegaConf.select(_root_, f"hydra.runtime.choices.{group}", default=None)
    if choice is None or choice == "":
        return ""
    choices = [choice] if isinstance(choice, str) else list(choice)
    return "_" + "+".join(str(c).replace("/", "-") for c in choices)


def register_resolvers() -> None:
    """`${vae_pyro.suffix:experiment}`, which conf/train.yaml's hydra.run.dir uses."""
    OmegaConf.register_new_resolver("vae_pyro.suffix", _suffix, replace=True)


def time_stamped(hydra_run: DictConfig) -> bool:
    """Whether hydra.run.dir is a time-stamped template (the default, or one's own with
    ${now:...}): a new dir each time, so a taken one means another run and the next is chosen.
    A fixed dir is the user's choice (and how a run is resumed): never renamed."""
    raw = hydra_run._get_node("dir")._value()  # unresolved
    return isinstance(raw, str) and "${now:" in raw.replace(" ", "")


def claim_free(first: Path, stamped: bool, claim: Callable[[Path], T]) -> T:
    """claim(first), or, for a time-stamped run dir (`stamped`) already taken by another run,
    claim(<first>-2), claim(<first>-3)... A run that starts in the same second and claims the
    same name first makes this one's claim fail (its lock, or its checkpoint): the name then
    exists, and the next is tried."""
    candidate = first
    while True:  # each failed candidate exists: next_free moves on, and ends the names
        try:
            return claim(candidate)
        except VaePyroError:
            if not stamped or not os.path.lexists(candidate):  # not taken: a real refusal
                raise
        candidate = next_free(first)


@contextlib.contextmanager
def recording(run_dir: Path, config: dict[str, Any], origin: Any) -> Iterator[None]:
    """The record of a run that was accepted: .hydra/config.yaml (the config it runs with,
    defaults included), .hydra/overrides.yaml (what the command line changed), .hydra/hydra.yaml
    (under Hydra), and train.log, appended to for as long as the run lasts. Written by the run
    itself, only once nothing refused it, so a refused command never touches a run's record.
    `origin`: train.Origin, the overrides and, under Hydra, its config."""
    record = run_dir / ".hydra"
    record.mkdir(parents=True, exist_ok=True)
    overrides = _yaml_list(origin.overrides)
    texts = {"config.yaml": OmegaConf.to_yaml(config), "overrides.yaml": overrides}
    if origin.hydra is not None:
        texts["hydra.yaml"] = OmegaConf.to_yaml({"hydra": origin.hydra})
    for name, text in texts.items():
        files.atomic_write(record / name, lambda f, text=text: f.write(text.encode()))
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _yaml_list(items: list[str]) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(list(items)))


def next_free(first: Path) -> Path:
    """first, or the first of <first>-2, <first>-3... that does not exist yet."""
    for n in range(1, MAX_TRIES + 1):
        candidate = first if n == 1 else first.with_name(f"{first.name}-{n}")
        if not os.path.lexists(candidate):
            return candidate
    raise VaePyroError(f"{first} and the next {MAX_TRIES - 1} names are taken: set hydra.run.dir")


def _inside(path: Path, root: Path) -> bool:
    return path != root and root in path.parents


def mark_latest(target: str | os.PathLike, root: str | os.PathLike = RUNS) -> Path | None:
    """Name target, a run (or sweep) dir inside root, in root/latest: a one-line text file
    holding its path relative to root (replaced atomically), not a symlink, which `tensorboard
    --logdir outputs` would follow and list the run twice. Returns the file, or None where
    target is elsewhere or the file cannot be written (a warning: the run itself is fine)."""
    root, target = Path(root).absolute(), Path(target).absolute()
    latest = root / LATEST
    real_root, real_target = root.resolve(), target.resolve()
    if not _inside(real_target, real_root) or real_target == real_root / LATEST:
        return None  # elsewhere, or the run dir is itself named outputs/latest
    if latest.is_dir() and not latest.is_symlink():
        log.warning("%s is a directory, not the newest run's name: left as it is", latest)
        return None
    relative = os.path.relpath(real_target, real_root)
    try:
        files.atomic_write(latest, lambda f: f.write(f"{relative}\n".encode()))
    except OSError as err:
        log.warning("could not name %s in %s: %s", target, latest, err)
        return None
    return latest


def follow_latest(path: Path) -> Path:
    """What a `latest` link or text file names (the real path); any other path as it is."""
    if path.is_symlink():
        return path.resolve()
    if path.name == LATEST and path.is_file():
        try:
            named = path.read_text().strip()
        except (OSError, UnicodeDecodeError):
            return path
        return (path.parent / named).resolve() if named else path
    return path


def resolve_run_dir(value: str) -> str:
    """run_dir=latest (= outputs/latest), run_dir=outputs/latest or any `latest` link -> the
    real path of the run it names; any other value as given (the command reports a missing
    dir). A `latest` that names nothing is an error saying why."""
    given = Path(value).expanduser()
    path = Path(RUNS) / LATEST if value == LATEST else given
    if not (path.name == LATEST or path.is_symlink()):
        return value
    if not os.path.lexists(path):
        if value == LATEST:
            raise VaePyroError(
                f"run_dir=latest: there is no {path} in {Path.cwd()}: no run has ended here "
                "yet (python -m vae_pyro.train makes it), or give run_dir=<a run dir>"
            )
        return value
    real = follow_latest(path)
    if not real.is_dir():
        raise VaePyroError(f"run_dir={value}: {path} names {real}, which no longer exists")
    return str(real)


def with_run_dir(task: Callable[..., Any]) -> Callable[..., Any]:
    """The task of a command with a run_dir key, given the run dir resolved (resolve_run_dir)."""

    def resolved(cfg: DictConfig, *args: Any) -> Any:
        if isinstance(cfg.get("run_dir"), str):
            cfg.run_dir = resolve_run_dir(cfg.run_dir)
        return task(cfg, *args)

    return resolved
