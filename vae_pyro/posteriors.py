"""q(z | x): the amortized posteriors a VAE can have (model.posterior.name), as Pyro
distributions built from the encoder's outputs.

Every posterior is a `Posterior`: an nn.Module holding its learned parts beyond the encoder
(none for the diagonal Normal); calling it with the encoder's (loc, scale, hidden state) gives
q(z | x), and `code` gives one deterministic point of it (what interpolations and latent plots
use). Adding a posterior is one class here, its entry in POSTERIORS (the choice
model.posterior.name is made from it) and conf/model/posterior/<name>.yaml; `defaults` names
the keys of PosteriorConfig it reads.
"""

# No `from __future__ import annotations`: OmegaConf reads PosteriorConfig's types at runtime.
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from vae_pyro.priors import fill_own_defaults, own_defaults
from vae_pyro.schema import POSITIVE, Choice, Section, key


class Posterior(nn.Module, ABC):
    """The interface of q(z | x), what the model, the evaluator and the figures may rely on."""

    # The keys of model.posterior this posterior reads, with its defaults (others are null).
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, cfg: "PosteriorConfig", z_dim: int, context_dim: int) -> None:
        super().__init__()

    @abstractmethod
    def forward(
        self, loc: torch.Tensor, scale: torch.Tensor, hidden: torch.Tensor
    ) -> dist.Distribution:
        """q(z | x) from the encoder's loc, scale (batch, z_dim) and hidden state h(x)."""

    @abstractmethod
    def code(self, loc: torch.Tensor, scale: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """One deterministic point of q(z | x) per image, (batch, z_dim)."""


class DiagonalPosterior(Posterior):
    """q(z | x) = N(loc(x), diag(scale(x))^2)."""

    def forward(
        self, loc: torch.Tensor, scale: torch.Tensor, hidden: torch.Tensor
    ) -> dist.Distribution:
        return dist.Normal(loc, scale).to_event(1)

    def code(self, loc: torch.Tensor, scale: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return loc


class IAFPosterior(Posterior):
    """The diagonal Normal followed by inverse autoregressive flows (Kingma et al. 2016):
    `depth` steps of Pyro's ConditionalAffineAutoregressive in its stable (gated) form, each on a
    ConditionalAutoRegressiveNN with two hidden layers of `hidden` units that also reads the
    encoder's hidden state h(x). The variable order is reversed between steps.

    Sampling is one pass per step; log q of a draw reuses what the draw computed (Pyro's
    transform cache), as Trace_ELBO and the importance sampler ask for it right after drawing.
    """

    defaults = {"depth": 2, "hidden": 320}  # Kingma et al.: 2 steps on MNIST

    def __init__(self, cfg: "PosteriorConfig", z_dim: int, context_dim: int) -> None:
        super().__init__(cfg, z_dim, context_dim)
        z, width = z_dim, cfg.hidden
        order = torch.arange(z)
        self.flows = nn.ModuleList(
            T.ConditionalAffineAutoregressive(
                ConditionalAutoRegressiveNN(
                    z,
                    context_dim,
                    [width, width],
                    permutation=order if i % 2 == 0 else order.flip(0),
                ),
                stable=True,
            )
            for i in range(cfg.depth)
        )

    def forward(
        self, loc: torch.Tensor, scale: torch.Tensor, hidden: torch.Tensor
    ) -> dist.Distribution:
        base = dist.Normal(loc, scale).to_event(1)
        return dist.TransformedDistribution(base, [f.condition(hidden) for f in self.flows])

    def code(self, loc: torch.Tensor, scale: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The flow's image of the base mean."""
        z = loc
        for flow in self.flows:
            z = flow.condition(hidden)(z)
        return z


# model.posterior.name -> the posterior's module.
POSTERIORS: dict[str, type[Posterior]] = {"diagonal": DiagonalPosterior, "iaf": IAFPosterior}

# The choice model.posterior.name: OmegaConf refuses any other name while it composes.
PosteriorName = Choice("PosteriorName", {name: name for name in POSTERIORS}, module=__name__)


@dataclass
class PosteriorConfig(Section):
    """model.posterior: the posterior's name and the keys the posteriors read. A key the named
    posterior does not read is null; one it reads and left null takes its own default."""

    PREFIX: ClassVar[str] = "model.posterior."
    name: PosteriorName = key(PosteriorName["diagonal"], "q(z|x) (conf/model/posterior/)")
    depth: int | None = key(
        None,
        f"flow steps; null = the posterior's own ({own_defaults(POSTERIORS, 'depth')})",
        POSITIVE,
    )
    hidden: int | None = key(
        None,
        "width of each flow step's two hidden layers; null = the posterior's own "
        f"({own_defaults(POSTERIORS, 'hidden')})",
        POSITIVE,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        fill_own_defaults(self, POSTERIORS[str(self.name)].defaults)
