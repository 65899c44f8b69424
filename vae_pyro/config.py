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
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from vae_pyro.data import SOURCES, DataConfig, DataName  # noqa: F401  (beside the sources)
from vae_pyro.errors import VaePyroError
from vae_pyro.figures import FIGURES
from vae_pyro.loggers import LoggerConfig, LoggerName  # noqa: F401  (beside the trackers)
from vae_pyro.model import (  # noqa: F401  (beside the model)
    Arch,
    ElboConfig,
    Likelihood,
    ModelConfig,
    Objective,
    ScaleParam,
)
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
    as_dict,
    config_diff,
    default_of,
    flatten,
    format_value,
    help_rows,
    int_at_least,
    is_interpolation,
    key,
    keys,
    omegaconf_message,
    rule_of,
    to_object,
    unknown_key,
)


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
    normalize_grads: bool = key(
        False,
        "divide each parameter tensor's gradient by its L2 norm before the optimizer steps "
        "(Tomczak & Welling's AdamNormGrad; vae_pyro.optim.UnitGrads)",
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
            if not isinstance(args, Mapping) or name not in args or is_interpolation(args[name]):
                continue
            value, rule = args[name], rule_of(OptimConfig, name)
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


def _readers() -> list[tuple[str, type[Section], str, Mapping[str, tuple[str, ...]]]]:
    """The sections whose keys only some choices read: (section, schema, the key that chooses,
    {choice: the keys it reads}), each table beside its implementations (data.SOURCES, PRIORS,
    POSTERIORS, ModelConfig.ARCH_READS; a tracker reads every key of logger)."""
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
    the component and those that read it. For a config a user gives (train);
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
        chosen = str(node.get(choice, default_of(fields[choice])))
        optional = {k for read in reads.values() for k in read}
        for name in sorted(optional - set(reads.get(chosen, ()))):
            value = node.get(name)
            if value is not None and value != default_of(fields[name]):
                names = [n for n, read in reads.items() if name in read]
                readers = " and ".join([", ".join(names[:-1]), names[-1]] if names[1:] else names)
                raise VaePyroError(
                    f"{prefix}.{name}={format_value(value)} is not read by "
                    f"{prefix}.{choice}={chosen} (only by {readers}): leave it out"
                )
