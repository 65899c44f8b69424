"""The building blocks of every configuration schema: a closed choice, a range rule, a field
with its default, meaning and range, and the Section base that checks the ranges.

Kept apart from config.py (which assembles the commands' schemas) so that a component can
declare its own config section beside its class (priors.py, posteriors.py, sample's figures)
without importing the whole schema.
"""

# No `from __future__ import annotations`: OmegaConf reads the field types at runtime.
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from omegaconf import MISSING

from vae_pyro.errors import VaePyroError


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


def key(default: Any = MISSING, help: str = "", rule: Rule | None = None) -> Any:
    """A schema field: its default, what it means (for --help) and its range."""
    meta = {"help": help, "rule": rule}
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
            rule, value = f.metadata.get("rule"), getattr(self, f.name)
            if rule is not None and value is not None and not rule.ok(value):
                shown = f"{self.PREFIX}{f.name}={format_value(value)}"
                raise VaePyroError(f"{shown} is not allowed: use {rule.allowed}")
