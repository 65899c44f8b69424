"""What happens before Hydra and torch: the command listing (`python -m vae_pyro`) and a hint
for an argument that is not key=value. Imports only the standard library."""

from __future__ import annotations

import runpy
import sys
from collections.abc import Sequence

# name -> one line; `python -m vae_pyro <name>` runs `python -m vae_pyro.<name>`.
COMMANDS = {
    "train": "train a VAE (Pyro SVI) into a new run dir; outputs/latest names the newest",
    "sample": "figures of a trained run: python -m vae_pyro.sample run_dir=latest",
    "evaluate": "importance-weighted -log p(x) on a run's test set (run_dir=latest)",
    "report": "tables and a plot of a sweep: python -m vae_pyro.report sweep_dir=multirun/latest",
}
# Hydra's flags that take the next argument as their value (--info takes one of its topics).
_VALUE_FLAGS = {"-c", "--cfg", "-p", "--package", "-cp", "--config-path", "-cn", "--config-name"}
_VALUE_FLAGS |= {"-cd", "--config-dir", "--experimental-rerun"}
_HYDRA_FLAGS = _VALUE_FLAGS | {"--help", "--hydra-help", "--version", "--info", "--multirun"}
_HYDRA_FLAGS |= {"--run", "--resolve", "--shell-completion"}
_INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


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
    sys.argv = [sys.argv[0], *args]
    runpy.run_module(f"vae_pyro.{command}", run_name="__main__", alter_sys=True)
    return 0


def bare_argument(command: str, args: Sequence[str], keys: Sequence[str] = ()) -> str | None:
    """The one-line error for the first argument that is neither a flag (with its value) nor
    key=value (nor ~key, which deletes a key), or None. Hydra would say "missing EQUAL".
    `--name value` (argparse's habit) names the key of `keys` that ends in .name."""
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg.startswith("--") and arg.split("=")[0] not in _HYDRA_FLAGS:
            name, _, value = arg[2:].partition("=")
            value = value or (args[i + 1] if i + 1 < len(args) else "...")
            found = [k for k in keys if k == name or k.endswith("." + name.replace("-", "_"))]
            key = found[0] if len(found) == 1 else "<key>"
            return f"{arg} is not a flag here: options are key=value, e.g. {key}={value}"
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
