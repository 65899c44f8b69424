"""The building blocks of every configuration schema: a closed choice, a range rule, a field
with its default, meaning and range, and the Section base that checks the ranges.

Kept apart from config.py (which assembles the commands' schemas) so that a component can
declare its own config section beside its class (priors.py, posteriors.py, sample's figures)
without importing the whole schema.
"""

# No `from __future__ import annotations`: OmegaConf reads the field types at runtime.
import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from vae_pyro.errors import VaePyroError, first_line
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


S = TypeVar("S", bound=Section)


def to_object(cfg: DictConfig | Mapping[str, Any], schema: type[S]) -> S:
    """The composed config (or a plain dict, e.g. a checkpoint's) as checked schema objects.

    Missing keys take the schema's defaults; a wrong type, choice, range, unknown key or a
    required value left out is one VaePyroError naming the key.
    """
    if isinstance(cfg, schema):
        return cfg
    _refuse_unknown_keys(cfg, schema)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        return OmegaConf.to_object(merged)
    except MissingMandatoryValue as err:
        raise VaePyroError(f"{err.full_key} is required: give {err.full_key}=...") from None
    except OmegaConfBaseException as err:
        raise VaePyroError(omegaconf_message(err)) from None


def keys(schema: type[Section], prefix: str = "") -> list[str]:
    """Every dotted key of a schema, nested sections included."""
    out: list[str] = []
    for f in dataclasses.fields(schema):
        if isinstance(f.type, type) and issubclass(f.type, Section):
            out += keys(f.type, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def unknown_key(schema: type[Section], dotted: str, origin: str = "") -> str:
    """The refusal of a key the schema lacks, with the closest known key as a hint."""
    close = difflib.get_close_matches(dotted, keys(schema), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"unknown key {dotted}{origin}: {hint}--help lists the keys"


def _refuse_unknown_keys(
    node: Any, schema: type[Section], prefix: str = "", root: type[Section] | None = None
) -> None:
    """Hydra's `+key=value` adds keys even to typed sections (its force_add): refuse them."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for name in node if isinstance(node, Mapping | DictConfig) else ():
        if name not in fields:
            raise VaePyroError(unknown_key(root or schema, f"{prefix}{name}"))
        kind = fields[name].type
        if isinstance(kind, type) and issubclass(kind, Section):
            _refuse_unknown_keys(node[name], kind, f"{prefix}{name}.", root or schema)


def is_interpolation(value: Any) -> bool:
    """A value as the schema's default writes it, before OmegaConf resolves it."""
    return isinstance(value, str) and value.startswith("${")


def rule_of(schema: type[Section], name: str) -> Rule:
    return next(f.metadata["rule"] for f in dataclasses.fields(schema) if f.name == name)


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def omegaconf_message(err: OmegaConfBaseException) -> str:
    """OmegaConf's error on one line, naming the key it concerns."""
    first = first_line(err)
    full_key = getattr(err, "full_key", None)
    if full_key and "not in" in first:  # an unknown key: typed sections accept only their own
        return f"unknown key {full_key}: {first}"
    return f"{full_key}: {first}" if full_key else first


def as_dict(section: Section) -> dict[str, Any]:
    """Plain data (choices as strings): what a checkpoint stores and a reader compares."""
    return OmegaConf.to_container(OmegaConf.structured(section), enum_to_str=True)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"prior": {"name": ...}}} -> {"model.prior.name": ...}: dotted keys to compare."""
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        flat.update(flatten(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {prefix + k: v})
    return flat


def help_rows(schema: type[Section], prefix: str = "") -> list[tuple[str, str]]:
    """(key=default, meaning and allowed values) for every key of a schema, nested included."""
    rows: list[tuple[str, str]] = []
    for f in dataclasses.fields(schema):
        kind = f.type if isinstance(f.type, type) else None
        if kind is not None and issubclass(kind, Section):
            rows += help_rows(kind, f"{prefix}{f.name}.")
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        name = f"{prefix}{f.name}"
        if isinstance(default, dict) and "_target_" in default:  # a class to build: name it
            name, default = f"{name}._target_", default["_target_"]
        shown = "???" if default is MISSING else _yaml(default)
        choices, rule = _choices(f.type), f.metadata.get("rule")
        allowed = choices or (rule.allowed if rule else "")
        meaning = f.metadata.get("help", "")
        rows.append((f"{name}={shown}", f"{meaning} [{allowed}]" if allowed else meaning))
    return rows


def _yaml(value: Any) -> str:
    """A value as it is typed on the command line."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return format_value(value).replace("'", "")


def _choices(annotation: Any) -> str:
    kind = annotation if isinstance(annotation, type) else None
    if kind is not None and issubclass(kind, Choice):
        return " | ".join(member.name for member in kind)
    return ""


def config_diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (before, after)} for each key whose value differs between two nested
    configs (None where a key is missing): the one comparison behind the resume-change log and
    the network-mismatch message. Keys in before's order, then those only in after."""
    old, new = flatten(before), flatten(after)
    keys = [*old, *(k for k in new if k not in old)]
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}
