"""q(z | x): the amortized posteriors a VAE can have (model.posterior.name), as Pyro
distributions built from the encoder's outputs.

Each is an nn.Module holding its learned parts beyond the encoder (none for the diagonal
Normal); calling it with the encoder's (loc, scale, hidden state) gives q(z | x), and `code`
gives one deterministic point of it (what interpolations and latent plots use). A new
posterior is one class here, one entry in POSTERIORS, one config.PosteriorName member and
conf/model/posterior/<name>.yaml.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

if TYPE_CHECKING:
    from vae_pyro.config import ModelConfig


class DiagonalPosterior(nn.Module):
    """q(z | x) = N(loc(x), diag(scale(x))^2)."""

    def __init__(self, cfg: ModelConfig, context_dim: int) -> None:
        super().__init__()

    def forward(
        self, loc: torch.Tensor, scale: torch.Tensor, hidden: torch.Tensor
    ) -> dist.Distribution:
        return dist.Normal(loc, scale).to_event(1)

    def code(self, loc: torch.Tensor, scale: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return loc


class IAFPosterior(nn.Module):
    """The diagonal Normal followed by inverse autoregressive flows (Kingma et al. 2016):
    `depth` steps of Pyro's ConditionalAffineAutoregressive in its stable (gated) form, each on a
    ConditionalAutoRegressiveNN with two hidden layers of `hidden` units that also reads the
    encoder's hidden state h(x). The variable order is reversed between steps.

    Sampling is one pass per step; log q of a draw reuses what the draw computed (Pyro's
    transform cache), as Trace_ELBO and the importance sampler ask for it right after drawing.
    """

    def __init__(self, cfg: ModelConfig, context_dim: int) -> None:
        super().__init__()
        z, width = cfg.z_dim, cfg.posterior.hidden
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
            for i in range(cfg.posterior.depth)
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
POSTERIORS: dict[str, type[nn.Module]] = {"diagonal": DiagonalPosterior, "iaf": IAFPosterior}
