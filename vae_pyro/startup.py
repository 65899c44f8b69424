"""What happens before Hydra and torch: the command listing (`python -m vae_pyro`), a hint for an
argument that is not key=value, and `--help` from a cache.

A command's `--help` is generated from its schema (cli.help_template), whose modules import torch
and Pyro; the text, once printed, is kept in the user's cache folder under a hash of everything
it is made from (the package's .py files, conf/, Hydra's version), so the next `--help` prints
it without importing them. An edit to any of those makes a new hash: the text is generated again.
`vae_pyro/__init__.py` asks `answer_help` first when the package is imported by `python -m`.
This module imports only the standard library and vae_pyro.files.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import runpy
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from vae_pyro import files

# name -> one line; `python -m vae_pyro <name>` runs `python -m vae_pyro.<name>`.
COMMANDS = {
    "train": "train a VAE (Pyro SVI) into a new run dir; outputs/latest names the newest",
    "sample": "figures of a trained run: python -m vae_pyro.sample run_dir=latest",
    "evaluate": "importance-weighted -log p(x) on a run's test set (run_dir=latest)",
    "report": "tables and a plot of a sweep: python -m vae_pyro.report sweep_dir=multirun/latest",
}
HYDRA_COMMANDS = ("train", "sample", "evaluate")  # key=value commands with a generated --help
HELP_FLAGS = (["--help"], ["-h"])
# Hydra's flags that take the next argument as their value (--info takes one of its topics).
_VALUE_FLAGS = {"-c", "--cfg", "-p", "--package", "-cp", "--config-path", "-cn", "--config-name"}
_VALUE_FLAGS |= {"-cd", "--config-dir", "--experimental-rerun"}
_INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def cache_dir() -> Path:
    """The user's cache folder: $VAE_PYRO_CACHE, default ~/.cache/vae_pyro."""
    return Path(os.environ.get("VAE_PYRO_CACHE", Path.home() / ".cache" / "vae_pyro"))


def listing() -> str:
    """The text of `python -m vae_pyro`: one line per command."""
    width = max(map(len, COMMANDS))
    lines = [
        "usage: python -m vae_pyro <command> [key=value ...]  (= python -m vae_pyro.<command>)",
        "commands:",
        *(f"  {name.ljust(width)}  {summary}" for name, summary in COMMANDS.items()),
        "python -m vae_pyro.<command> --help lists a command's keys, options and examples.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m vae_pyro [<command> args...]` (the `vae-pyro` script): the listing, or the
    command run exactly as `python -m vae_pyro.<command> args...` would run it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(listing(), end="")
        return 0
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"vae_pyro: error: unknown command {command!r}; the commands: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    if command in HYDRA_COMMANDS and args in HELP_FLAGS:
        text = cached_help(command)
        if text is not None:
            print(text, end="")
            return 0
    sys.argv = [sys.argv[0], *args]
    runpy.run_module(f"vae_pyro.{command}", run_name="__main__", alter_sys=True)
    return 0


def bare_argument(command: str, args: Sequence[str]) -> str | None:
    """The one-line error for the first argument that is neither a flag (with its value) nor
    key=value (nor ~key, which deletes a key), or None. Hydra would say "missing EQUAL"."""
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg.startswith("-"):
            skip = arg in _VALUE_FLAGS or (
                arg in ("-i", "--info") and i + 1 < len(args) and args[i + 1] in _INFO_TOPICS
            )
            continue
        if "=" in arg or arg.startswith("~"):
            continue
        if command in ("sample", "evaluate"):
            return f"did you mean run_dir={arg}?"
        return (
            f"{arg!r} is not key=value: keys are given as key=value (model.z_dim=2), groups as "
            "group=option (model=conv), experiments as +experiment=NAME; see --help"
        )
    return None


# --help from the cache


def _help_path(command: str) -> Path:
    """Where `command`'s --help is kept: named by a hash of what the text is made from."""
    digest = hashlib.sha256(f"{command}\0{sys.version_info[:2]}\0".encode())
    package = Path(__file__).resolve().parent
    conf = files.shipped("conf", "conf")
    sources = [*sorted(package.rglob("*.py")), *sorted(conf.rglob("*.yaml"))]
    hydra = importlib.util.find_spec("hydra")  # finds, does not import
    if hydra is not None and hydra.origin:
        sources.append(Path(hydra.origin))  # hydra/__init__.py: its version
    for path in sources:
        digest.update(f"\0{path.relative_to(path.anchor)}\0".encode())
        digest.update(path.read_bytes())
    return cache_dir() / "help" / f"{command}-{digest.hexdigest()[:20]}.txt"


def cached_help(command: str) -> str | None:
    """`python -m vae_pyro.<command> --help`'s text if it is cached for this code, else None."""
    try:
        return _help_path(command).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _store_help(command: str, text: str) -> None:
    """Keep the text (replacing the command's older ones); a cache that cannot be written is
    only slower next time."""
    with contextlib.suppress(OSError):
        path = _help_path(command)
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob(f"{command}-*.txt"):
            if old != path:
                old.unlink(missing_ok=True)
        files.atomic_write(path, lambda f: f.write(text.encode()))


def answer_help(orig_argv: Sequence[str]) -> None:
    """For `python [options] -m vae_pyro.<command> --help`: print the cached text and exit 0,
    before the command's module imports torch; otherwise return (the command generates it)."""
    args = list(orig_argv)
    if "-m" not in args:
        return
    i = args.index("-m")
    module, rest = args[i + 1 : i + 2], args[i + 2 :]
    command = module[0].removeprefix("vae_pyro.") if module else ""
    if command in HYDRA_COMMANDS and module[0] != command and rest in HELP_FLAGS:
        text = cached_help(command)
        if text is not None:
            sys.stdout.write(text)
            sys.stdout.flush()
            raise SystemExit(0)


@contextlib.contextmanager
def recording_help(command: str, args: Sequence[str]) -> Iterator[None]:
    """Around Hydra's main: when args ask for --help, keep the text Hydra prints (answer_help
    and `python -m vae_pyro <command> --help` print it next time). Otherwise nothing."""
    if list(args) not in HELP_FLAGS:
        yield
        return
    printed = io.StringIO()
    clean = False
    try:
        with contextlib.redirect_stdout(printed):
            try:
                yield
                clean = True
            except SystemExit as done:
                clean = done.code in (None, 0)
                raise
    finally:
        text = printed.getvalue()
        sys.stdout.write(text)
        sys.stdout.flush()
        if clean and text.strip():
            _store_help(command, text)
