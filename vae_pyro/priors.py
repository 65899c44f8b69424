"""p(z): the priors a VAE can have (model.prior.name), as Pyro distributions.

Every prior is a `Prior`: an nn.Module holding its learned parts (none for N(0, I)), so the
model can register it with pyro.module, that says what it is (`uses_encoder`, `label`,
`components`) and which keys of model.prior it reads, with their defaults (`defaults`).
Calling it gives p(z) for a batch of images.

Adding a prior is one class here, its entry in PRIORS and conf/model/prior/<name>.yaml: the
choice model.prior.name (PriorName) is made from PRIORS, and PriorConfig holds the keys the
priors read (a new key is one field there).
"""

# No `from __future__ import annotations`: OmegaConf reads PriorConfig's field types at runtime.
import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from vae_pyro.schema import POSITIVE, Choice, Section, key


class Prior(nn.Module, ABC):
    """The interface of p(z), what the model, the evaluator and the figures may rely on."""

    uses_encoder: ClassVar[bool] = False  # p(z) reads the encoder: the model registers it too
    label: str  # the distribution's short name, e.g. "N(0, I)"
    components: int  # mixture components (1: none); bounds the evaluator's memory
    # The keys of model.prior this prior reads, with its defaults (others are null for it).
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, cfg: "PriorConfig", z_dim: int, image_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.z_dim = z_dim

    @abstractmethod
    def forward(self, batch: int, like: torch.Tensor, encoder: nn.Module) -> dist.Distribution:
        """p(z) for `batch` images, with batch_shape (batch,) and event_shape (z_dim,), on
        like's device and dtype; `encoder` is the VAE's (read only where uses_encoder)."""


class StandardPrior(Prior):
    """p(z) = N(0, I)."""

    label = "N(0, I)"
    components = 1

    def forward(self, batch: int, like: torch.Tensor, encoder: nn.Module) -> dist.Distribution:
        """One scalar Normal expanded to (batch, z_dim), on like's device and dtype: ~0.1 ms
        per training step less than full tensors of zeros and ones."""
        standard = dist.Normal(like.new_zeros(()), like.new_ones(()))
        return standard.expand((batch, self.z_dim)).to_event(1)


class SharedNormalMixture(dist.MixtureSameFamily):
    """Pyro's MixtureSameFamily of diagonal Normals whose K components are shared by every
    batch element (as the VampPrior's are), with the log-density as matrix products.

    The parent's log_prob builds a (..., K, z_dim) tensor: for 5 particles x 256 images x 500
    components x 50 dims that is 32M numbers per step, 40x the cost of the rest of a training
    step on a CPU. sum_d (z_d - m_kd)^2 / s_kd^2 expands into z^2 @ (1/s^2)^T - 2 z @ (m/s^2)^T
    + sum_d m_kd^2 / s_kd^2: two (N, z_dim) x (z_dim, K) products, in float64 against the
    cancellation of those terms. Same numbers as the parent's (tested); sampling, shapes and
    expansion are the parent's.
    """

    def __init__(
        self, loc: torch.Tensor, scale: torch.Tensor, logits: torch.Tensor | None = None
    ) -> None:
        """Components N(loc[k], diag(scale[k])^2), loc and scale (K, D), weighted by
        softmax(logits) (K,), or equally without logits."""
        weights = dist.Categorical(logits=loc.new_zeros(loc.shape[0]) if logits is None else logits)
        super().__init__(weights, dist.Normal(loc, scale).to_event(1))
        self.shared = (loc, scale, logits)

    def expand(self, batch_shape: torch.Size, _instance: object = None) -> "SharedNormalMixture":
        new = self._get_checked_instance(SharedNormalMixture, _instance)
        new.shared = self.shared  # the (K, D) parameters: no gradient through expanded copies
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        loc, scale = (t.double() for t in self.shared[:2])
        logits = self.shared[2]
        precision = scale.pow(-2)  # (K, z_dim)
        z = value.double()
        quadratic = (z * z) @ precision.T - 2 * z @ (loc * precision).T
        quadratic = quadratic + (loc.pow(2) * precision).sum(-1)
        log_norm = scale.log().sum(-1) + 0.5 * loc.shape[-1] * math.log(2 * math.pi)
        log_weights = -math.log(loc.shape[0]) if logits is None else logits.double().log_softmax(-1)
        per_component = -0.5 * quadratic - log_norm + log_weights
        log_prob = per_component.logsumexp(-1).to(value.dtype)
        return log_prob.expand(torch.broadcast_shapes(log_prob.shape, self.batch_shape))


class VampPrior(Prior):
    """The VampPrior of Tomczak & Welling (2018): p(z) = 1/K sum_k q(z | u_k), the encoder's
    diagonal Normals at K learned pseudo-inputs u_k, as Pyro's MixtureSameFamily.

    The pseudo-inputs are images: hardtanh(w_k) in [0, 1], w_k initialised from N(0.05, 0.01)
    (the paper's MNIST setting). With a flow posterior the components stay the encoder's
    diagonal Normals: the flow's density at an arbitrary z needs z_dim sequential passes.
    """

    uses_encoder = True
    label = "VampPrior"
    defaults = {"components": 500}  # Tomczak & Welling's K on MNIST

    def __init__(self, cfg: "PriorConfig", z_dim: int, image_shape: tuple[int, ...]) -> None:
        super().__init__(cfg, z_dim, image_shape)
        shape = (cfg.components, *image_shape)
        self.pseudo_inputs = nn.Parameter(0.05 + 0.01 * torch.randn(shape))

    @property
    def components(self) -> int:
        return self.pseudo_inputs.shape[0]

    def inputs(self) -> torch.Tensor:
        return F.hardtanh(self.pseudo_inputs, 0.0, 1.0)

    def forward(self, batch: int, like: torch.Tensor, encoder: nn.Module) -> dist.Distribution:
        loc, scale = encoder(self.inputs())  # (K, z_dim) each
        return SharedNormalMixture(loc, scale).expand((batch,))


class GaussianMixturePrior(Prior):
    """A learned mixture of Gaussians: p(z) = sum_k pi_k N(mu_k, diag(sigma_k)^2), as Pyro's
    MixtureSameFamily, with K learned means, scales and weights and no pseudo-inputs.

    sigma_k = softplus(rho_k) stays positive without a constraint; pi = softmax(logits). The
    means start at K draws of N(0, I), the scales at 1 and the weights equal, so the untrained
    prior covers N(0, I)'s mass.
    """

    defaults = {"components": 10}

    def __init__(self, cfg: "PriorConfig", z_dim: int, image_shape: tuple[int, ...]) -> None:
        super().__init__(cfg, z_dim, image_shape)
        k = cfg.components
        self.loc = nn.Parameter(torch.randn(k, z_dim))
        self.raw_scale = nn.Parameter(torch.full((k, z_dim), math.log(math.e - 1)))  # softplus: 1
        self.logits = nn.Parameter(torch.zeros(k))
        self.components = k
        self.label = f"a mixture of {k} Gaussians"

    def scale(self) -> torch.Tensor:
        return F.softplus(self.raw_scale)

    def forward(self, batch: int, like: torch.Tensor, encoder: nn.Module) -> dist.Distribution:
        return SharedNormalMixture(self.loc, self.scale(), self.logits).expand((batch,))


# model.prior.name -> the prior's module.
PRIORS: dict[str, type[Prior]] = {
    "standard": StandardPrior,
    "vamp": VampPrior,
    "mog": GaussianMixturePrior,
}

# The choice model.prior.name: OmegaConf refuses any other name while it composes.
PriorName = Choice("PriorName", {name: name for name in PRIORS}, module=__name__)


def own_defaults(registry: Mapping[str, Any], key_name: str) -> str:
    """Who reads a key and their defaults, for --help: "vamp 500, mog 10"."""
    read = [f"{n} {c.defaults[key_name]}" for n, c in registry.items() if key_name in c.defaults]
    return ", ".join(read)


@dataclass
class PriorConfig(Section):
    """model.prior: the prior's name and the keys the priors read. A key the named prior does
    not read is null; one it reads and left null takes the prior's own default."""

    PREFIX: ClassVar[str] = "model.prior."
    name: PriorName = key(PriorName["standard"], "p(z) (conf/model/prior/<name>.yaml)")
    components: int | None = key(
        None,
        f"mixture components K; null = the prior's own ({own_defaults(PRIORS, 'components')})",
        POSITIVE,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        fill_own_defaults(self, PRIORS[str(self.name)].defaults)


def fill_own_defaults(section: Section, own: Mapping[str, Any]) -> None:
    """Null the keys a component does not read; give the ones it reads and left null its own
    default. So each default is written once, beside its class, and a config holds no value that
    means nothing (an older checkpoint's N(0, I) with components=500 reads as today's)."""
    for f in dataclasses.fields(section):
        if f.name != "name":
            value = getattr(section, f.name) if f.name in own else None
            setattr(section, f.name, own[f.name] if f.name in own and value is None else value)
