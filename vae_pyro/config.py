"""The schemas of every command's configuration, registered in Hydra's ConfigStore.

Hydra merges the YAML files in conf/ (values and comments) onto these dataclasses, so OmegaConf
rejects a wrong type, an unknown choice or an unknown key while it composes, before any work.
Ranges are the `rule` beside each field, checked in one place, `Section.__post_init__`, when
`to_object` turns the composed config into these objects. Each field's `help` is what
`--help` prints. Choices are Enums whose member names are the values users type; the name ->
implementation tables live beside the implementations (networks.ARCHS, model.LIKELIHOODS, ...).
"""

# No `from __future__ import annotations`: OmegaConf reads the field types at runtime.
import dataclasses
import difflib
import functools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from vae_pyro.errors import VaePyroError, first_line
from vae_pyro.figures import FIGURES
from vae_pyro.loggers import LoggerConfig, LoggerName  # noqa: F401  (beside the trackers)
from vae_pyro.posteriors import (  # noqa: F401  (beside their classes)
    POSTERIORS,
    PosteriorConfig,
    PosteriorName,
)
from vae_pyro.priors import PRIORS, PriorConfig, PriorName  # noqa: F401  (beside their classes)
from vae_pyro.schema import (  # noqa: F401  (re-exported: the schema's vocabulary)
    DEVICE,
    FILE_NAME,
    POSITIVE,
    SEED,
    Choice,
    Rule,
    Section,
    format_value,
    int_at_least,
    key,
)


class DataName(Choice):
    mnist = "mnist"
    fashion_mnist = "fashion_mnist"
    cifar10 = "cifar10"
    npz = "npz"
    image_folder = "image_folder"


class Binarize(Choice):
    none = "none"
    dynamic = "dynamic"
    static = "static"


class Arch(Choice):
    mlp = "mlp"
    conv = "conv"


class Likelihood(Choice):
    bernoulli = "bernoulli"
    continuous_bernoulli = "continuous_bernoulli"
    gaussian = "gaussian"


class ScaleParam(Choice):
    exp = "exp"
    logvar = "logvar"
    softplus = "softplus"


class Objective(Choice):
    trace = "trace"
    meanfield = "meanfield"
    jit = "jit"
    iwae = "iwae"


def resolve_device(spec: str, key: str = "trainer.device") -> torch.device:
    """auto -> cuda when available, else cpu; cpu, cuda and cuda:N as asked, if they exist.

    The spelling is checked by the schema (DEVICE); `key` is the config key the errors name
    (trainer.device, or device for sample/evaluate).
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise VaePyroError(
                f"{key}={spec} but CUDA is not available on this machine; "
                f"use {key}=cpu or {key}=auto"
            )
        if (device.index or 0) >= torch.cuda.device_count():
            raise VaePyroError(
                f"{key}={spec} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return device


@dataclass
class DataConfig(Section):
    PREFIX: ClassVar[str] = "data."
    name: DataName = key(DataName.mnist, "dataset (conf/data/<name>.yaml)")
    root: str | None = key(None, "folder holding the torchvision files; null = data/", path=True)
    path: str | None = key(None, "npz file or image folder (data=npz | image_folder)", path=True)
    image_size: int | None = key(None, "image_folder: resize to N x N; null = keep", POSITIVE)
    subset: int | None = key(None, "train on the first N training images only", POSITIVE)
    batch_size: int = key(256, "training batch size", POSITIVE)
    binarize: Binarize = key(
        Binarize.none, "gray levels as targets | fresh Bernoulli draw per use | one fixed draw"
    )

    def __post_init__(self) -> None:
        """root and path absolute: the run's config (checkpoint, .hydra) names the same data
        from whichever directory evaluate, sample or a resume runs."""
        super().__post_init__()
        for name in ("root", "path"):
            if getattr(self, name) is not None:
                setattr(self, name, os.path.abspath(getattr(self, name)))


@dataclass
class ModelConfig(Section):
    PREFIX: ClassVar[str] = "model."
    # Training-only keys: the networks a checkpoint holds do not depend on them.
    TRAINING_ONLY: ClassVar[tuple[str, ...]] = ("kl_weight", "kl_warmup_epochs")
    # The keys that only some architectures read (networks.ARCHS): see refuse_unread.
    ARCH_READS: ClassVar[dict[str, tuple[str, ...]]] = {"mlp": (), "conv": ("channels",)}
    arch: Arch = key(Arch.mlp, "encoder/decoder networks (conf/model/<arch>.yaml)")
    z_dim: int = key(50, "latent dimensions (of the top layer, where p(z) is)", POSITIVE)
    latent_layers: int = key(
        1,
        "stochastic layers: 1, or 2 (z2 ~ p(z2), z1 ~ p(z1|z2), x ~ p(x|z1); z2 has z_dim)",
        Rule(lambda v: v in (1, 2), "1 or 2"),
    )
    lower_z_dim: int | None = key(
        None,
        "latent_layers=2: dimensions of z1, the layer the decoder reads; null = 2 x z_dim",
        POSITIVE,
    )
    hidden_dim: int = key(400, "hidden layer width", POSITIVE)
    hidden_layers: int = key(1, "hidden layers of the encoder and of the decoder", POSITIVE)
    channels: list[int] = key(
        [32, 64, 128],
        "conv: feature maps after each stride-2 convolution",
        Rule(lambda v: len(v) > 0 and min(v) >= 1, "a non-empty list of integers >= 1"),
    )
    likelihood: Likelihood = key(Likelihood.bernoulli, "pixel model p(x|z)")
    scale_param: ScaleParam = key(
        ScaleParam.exp, "the encoder's fc22 as log-scale | log-variance | through softplus"
    )
    kl_weight: float = key(
        1.0,
        "beta: loss = -E[log p(x|z)] + beta KL",
        Rule(lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    )
    kl_warmup_epochs: int = key(0, "KL weight rises from 0 over N epochs", int_at_least(0))
    prior: PriorConfig = field(default_factory=PriorConfig)
    posterior: PosteriorConfig = field(default_factory=PosteriorConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.latent_layers == 1 and self.lower_z_dim is not None:
            raise VaePyroError(
                f"model.lower_z_dim={self.lower_z_dim} sizes the lower of two stochastic layers: "
                "give model.latent_layers=2 with it, or leave it out"
            )

    @property
    def decoder_z_dim(self) -> int:
        """Dimensions of the layer the decoder reads: z1 of two layers, else z."""
        if self.latent_layers == 1:
            return self.z_dim
        return 2 * self.z_dim if self.lower_z_dim is None else self.lower_z_dim


@dataclass
class OptimConfig(Section):
    PREFIX: ClassVar[str] = "optim."
    lr: float = key(
        1.0e-3, "Adam learning rate", Rule(lambda v: 0 < v < math.inf, "a finite number > 0")
    )
    betas: list[float] = key(
        [0.9, 0.999],
        "Adam's moment decay rates",
        Rule(lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    )
    optimizer: dict[str, Any] = key(
        {
            "_target_": "vae_pyro.optim.Adam",
            "_convert_": "all",
            # lr and betas are the keys above, range-checked there; fused: one kernel for all
            "optim_args": {"lr": "${optim.lr}", "betas": "${optim.betas}", "fused": True},
        },
        "the PyroOptim to build (_target_ and its args)",
    )

    def __post_init__(self) -> None:
        """optim_args.lr and .betas are optim.lr and optim.betas (interpolations): one given
        there directly passes their range check, and must not bypass them."""
        super().__post_init__()
        args = self.optimizer.get("optim_args")
        for name in ("lr", "betas"):
            if not isinstance(args, Mapping) or name not in args or _interpolation(args[name]):
                continue
            value, rule = args[name], _rule(OptimConfig, name)
            shown = f"optim.optimizer.optim_args.{name}={format_value(value)}"
            try:
                ok = rule.ok(value)
            except TypeError:  # a string, a list where a number goes
                ok = False
            if not ok:
                raise VaePyroError(f"{shown} is not allowed: use {rule.allowed} (as optim.{name})")
            if value != getattr(self, name):
                raise VaePyroError(
                    f"{shown} differs from optim.{name}={format_value(getattr(self, name))}, "
                    f"which it would silently replace: give optim.{name}={format_value(value)}"
                )


@dataclass
class ElboConfig(Section):
    PREFIX: ClassVar[str] = "elbo."
    name: Objective = key(Objective.trace, "training objective (conf/elbo/<name>.yaml)")
    num_particles: int = key(1, "samples per image and step (iwae: K)", POSITIVE)
    vectorize_particles: bool = key(True, "num_particles > 1: all in one pass")


@dataclass
class TrainerConfig(Section):
    PREFIX: ClassVar[str] = "trainer."
    epochs: int = key(10, "passes over the training set", POSITIVE)
    eval_every: int = key(1, "test ELBO every N epochs (and after the last)", POSITIVE)
    eval_batch_size: int = key(2000, "images per test batch (memory only)", POSITIVE)
    device: str = key("auto", "where to train", DEVICE)
    checkpoint_every: int = key(
        1, "write checkpoint.pt every N epochs (and after the last)", POSITIVE
    )
    resume: bool = key(False, "continue the checkpoint in hydra.run.dir")
    resume_from: str | None = key(None, "a checkpoint.pt or run dir to continue from", path=True)
    allow_other_data: bool = key(
        False, "resume on data other than the checkpoint's (its fingerprint differs)"
    )
    dist_timeout_s: float = key(
        600.0,
        "torchrun runs: seconds a rank waits for the others before failing",
        Rule(lambda v: 1 <= v < math.inf, "a finite number >= 1"),
    )
    image_every: int | None = key(
        None,
        "TensorBoard: reconstructions and prior draws every N epochs and after the last; "
        "null = 5 evenly spaced epochs; 0 = none",
        int_at_least(0),
    )


@dataclass
class TrainConfig(Section):
    DEVICE_KEY: ClassVar[str] = "trainer.device"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    elbo: ElboConfig = field(default_factory=ElboConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = key(0, "same config + seed = same numbers on the CPU", SEED)


def _vectors(value: list[Any]) -> bool:
    def number(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)

    return len(value) > 0 and all(isinstance(v, list) and all(map(number, v)) for v in value)


@dataclass
class SampleKeys(Section):
    """The keys of `sample` itself; SampleConfig adds each figure's section (sample_schema)."""

    DEVICE_KEY: ClassVar[str] = "device"
    run_dir: str = key(
        MISSING, "a training run's directory, holding checkpoint.pt (required)", path=True
    )
    out_dir: str = key("${run_dir}/samples", "where the PNGs go (any folder)", path=True)
    seed: int = key(0, "same seed and options = same figures", SEED)
    device: str = key("auto", "where to decode", DEVICE)
    indices: list[int] | None = key(
        None,
        "test images in posterior.png; null = the first of each class",
        Rule(lambda v: len(v) > 0 and min(v) >= 0, "a non-empty list of indices >= 0"),
    )
    num_samples: int = key(15, "draws z ~ q(z|x) per image in posterior.png", POSITIVE)
    scale: int = key(1, "each pixel becomes scale x scale pixels", POSITIVE)
    z: list[Any] | None = key(
        None,
        "latent vectors to decode into decoded.png (only that figure)",
        Rule(_vectors, "a non-empty list of lists of numbers, e.g. 'z=[[0.2,-1.0]]'"),
    )
    z_file: str | None = key(
        None,
        "a .npy file of latent vectors, shape (N, z_dim), to decode into decoded.png",
        path=True,
    )
    images: list[str] | None = key(
        None,
        "image files to encode into encoded.png (only that figure)",
        Rule(lambda v: len(v) > 0, "a non-empty list of paths"),
        path=True,
    )
    allow_other_data: bool = key(
        False, "draw on data other than the run was trained on (its fingerprint differs)"
    )


@functools.cache
def _with_sections(sections: tuple[tuple[str, type[Section]], ...]) -> type[Section]:
    fields = [(name, kind, field(default_factory=kind)) for name, kind in sections]
    schema = dataclasses.make_dataclass("SampleConfig", fields, bases=(SampleKeys,))
    schema.__module__ = __name__  # where pickle and OmegaConf look the class up
    return schema


def sample_schema() -> type[Section]:
    """SampleKeys plus, under each figure's name, the section it declares (figures.FIGURES):
    a figure's keys are typed, range-checked and in --help with no line here."""
    return _with_sections(tuple((f.name, f.section) for f in FIGURES.values() if f.section))


SampleConfig = sample_schema()


@dataclass
class EvaluateConfig(Section):
    DEVICE_KEY: ClassVar[str] = "device"
    run_dir: str = key(
        MISSING, "a training run's directory, holding checkpoint.pt (required)", path=True
    )
    num_particles: int = key(5000, "K: importance samples per test image", POSITIVE)
    max_batch_elements: int = key(
        100_000, "(particle, image) pairs per decoder call (memory)", POSITIVE
    )
    num_images: int | None = key(None, "the first N test images only; null = all", POSITIVE)
    seed: int = key(0, "same seed and options = same numbers on the same device", SEED)
    device: str = key("auto", "where to evaluate", DEVICE)
    output: str = key("eval.json", "file name inside run_dir", FILE_NAME)
    overwrite: bool = key(False, "replace an existing output (else refused before any work)")
    allow_other_data: bool = key(
        False, "score data other than the run was trained on (recorded in the output)"
    )


SCHEMAS = {"train": TrainConfig, "sample": SampleConfig, "evaluate": EvaluateConfig}


def register() -> None:
    """Store each command's schema (`<command>_schema`, first in its YAML's defaults list)."""
    store = ConfigStore.instance()
    for command, schema in SCHEMAS.items():
        store.store(name=f"{command}_schema", node=schema)


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


def _interpolation(value: Any) -> bool:
    """A value as the schema's default writes it, before OmegaConf resolves it."""
    return isinstance(value, str) and value.startswith("${")


def _rule(schema: type[Section], name: str) -> Rule:
    return next(f.metadata["rule"] for f in dataclasses.fields(schema) if f.name == name)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _readers() -> list[tuple[str, type[Section], str, Mapping[str, tuple[str, ...]]]]:
    """The sections whose keys only some choices read: (section, schema, the key that chooses,
    {choice: the keys it reads}), each table beside its implementations (data.SOURCES, PRIORS,
    POSTERIORS, ModelConfig.ARCH_READS; a tracker reads every key of logger)."""
    from vae_pyro.data import SOURCES  # data.py imports this module: read when asked

    tracker = tuple(f.name for f in dataclasses.fields(LoggerConfig) if f.name != "name")
    return [
        ("data", DataConfig, "name", {n: source.reads for n, source in SOURCES.items()}),
        ("model", ModelConfig, "arch", ModelConfig.ARCH_READS),
        ("model.prior", PriorConfig, "name", {n: tuple(c.defaults) for n, c in PRIORS.items()}),
        (
            "model.posterior",
            PosteriorConfig,
            "name",
            {n: tuple(c.defaults) for n, c in POSTERIORS.items()},
        ),
        (
            "logger",
            LoggerConfig,
            "name",
            {n.name: () if n.name == "none" else tracker for n in LoggerName},
        ),
    ]


def refuse_unread(cfg: Any, schema: type[Section]) -> None:
    """Every key given is used, or refused: a key set away from its default that the chosen
    component does not read (data.image_size with data=mnist, model.channels with
    model.arch=mlp, model.prior.components with the N(0, I) prior) is one VaePyroError naming
    the component and those that read it. For a config a user gives (cli.precheck, train);
    a checkpoint's config is read as it is (the schema nulls what its component ignores)."""
    if schema is not TrainConfig or isinstance(cfg, Section):
        return
    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    for prefix, section, choice, reads in _readers():
        node: Any = tree
        for part in prefix.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if not isinstance(node, Mapping):
            continue
        fields = {f.name: f for f in dataclasses.fields(section)}
        chosen = str(node.get(choice, _default(fields[choice])))
        optional = {k for keys in reads.values() for k in keys}
        for name in sorted(optional - set(reads.get(chosen, ()))):
            value = node.get(name)
            if value is not None and value != _default(fields[name]):
                names = [n for n, keys in reads.items() if name in keys]
                readers = " and ".join([", ".join(names[:-1]), names[-1]] if names[1:] else names)
                raise VaePyroError(
                    f"{prefix}.{name}={format_value(value)} is not read by "
                    f"{prefix}.{choice}={chosen} (only by {readers}): leave it out"
                )


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
