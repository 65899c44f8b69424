"""The building blocks of every configuration schema: a closed choice, a range rule, a field
with its default, meaning and range, and the Section base that checks the ranges.

Kept apart from config.py (which assembles the commands' schemas) so that a component can
declare its own config section beside its class (priors.py, posteriors.py, sample's figures)
without importing the whole schema.
"""

# No `from __future__ import annotations`: OmegaConf reads the field types at runtime.
import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from omegaconf import MISSING

from vae_pyro.errors import VaePyroError
from vae_pyro.files import RUN_FILES


class Choice(str, Enum):
    """A closed set of values: OmegaConf accepts exactly the member names; equal to its name."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Rule:
    """A range: `ok(value)` must hold (null passes where the field is optional)."""

    ok: Callable[[Any], bool]
    allowed: str


def int_at_least(low: int) -> Rule:
    return Rule(lambda v: v >= low, f"an integer >= {low}")


POSITIVE = int_at_least(1)
DEVICE = Rule(
    lambda v: re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None,
    "auto, cpu, cuda or cuda:N (auto = cuda when available)",
)
SEED = Rule(lambda v: 0 <= v < 2**32, "an integer from 0 to 4294967295")
# A file name inside a folder the command names (evaluate's output): never a path elsewhere,
# never one of the run's own files.
FILE_NAME = Rule(
    lambda v: v not in ("", ".", "..") and not set(v) & set("/\\\0") and v not in RUN_FILES,
    "a file name inside run_dir (no /, \\ or ..), not one of the run's own files "
    f"({', '.join(sorted(RUN_FILES))})",
)


def key(
    default: Any = MISSING, help: str = "", rule: Rule | None = None, path: bool = False
) -> Any:
    """A schema field: its default, what it means (for --help) and its range. `path`: a path
    (or a list of paths) whose leading `~` is expanded, once, here, for every command."""
    meta = {"help": help, "rule": rule, "path": path}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def format_value(value: Any) -> str:
    return str(value) if isinstance(value, Enum | int | float | str) else repr(value)


@dataclass
class Section:
    """Base of every schema: checks each field's rule once the values are final."""

    PREFIX: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.metadata.get("path") and getattr(self, f.name) is not None:
                setattr(self, f.name, _expand(getattr(self, f.name)))
            rule, value = f.metadata.get("rule"), getattr(self, f.name)
            if rule is not None and value is not None and not rule.ok(value):
                shown = f"{self.PREFIX}{f.name}={format_value(value)}"
                raise VaePyroError(f"{shown} is not allowed: use {rule.allowed}")


def _expand(value: Any) -> Any:
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return os.path.expanduser(value) if isinstance(value, str) else value
