"""The VAE as a Pyro model/guide pair. Pyro primitives only: no Hydra, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from vae_pyro.networks import Decoder, Encoder


class VAE(nn.Module):
    """Generative story, one image at a time under the plate "data":

        z ~ N(0, I)                       (site "latent", z_dim dims)
        x ~ Bernoulli(decoder(z))         (site "obs", one Bernoulli per pixel)

    and the amortized guide q(z | x) = N(encoder(x)) with a diagonal covariance.
    Pixels are gray levels in [0, 1] used directly as Bernoulli targets (Pyro's
    tutorial protocol), hence ``validate_args=False`` on the likelihood.
    """

    def __init__(self, image_shape: tuple[int, ...], z_dim: int = 50, hidden_dim: int = 400):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.z_dim = z_dim
        self.encoder = Encoder(self.image_shape, z_dim, hidden_dim)
        self.decoder = Decoder(self.image_shape, z_dim, hidden_dim)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        batch = x.shape[0]
        with pyro.plate("data", batch):
            z_loc = x.new_zeros(batch, self.z_dim)
            z_scale = x.new_ones(batch, self.z_dim)
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            probs = self.decoder(z)
            pyro.sample(
                "obs",
                dist.Bernoulli(probs, validate_args=False).to_event(1),
                obs=x.reshape(batch, -1),
            )

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder mean at one draw z ~ q(z | x), shaped like x."""
        z_loc, z_scale = self.encoder(x)
        z = dist.Normal(z_loc, z_scale).sample()
        return self.decoder(z).reshape(x.shape)

    @torch.no_grad()
    def sample_prior(self, n: int) -> torch.Tensor:
        """Decoder means of n draws z ~ N(0, I), as (n, C, H, W) images."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.z_dim, device=device)
        return self.decoder(z).reshape(n, *self.image_shape)


def build_vae(image_shape: tuple[int, ...], model_cfg: Mapping[str, Any]) -> VAE:
    """The one place a config's `model` section becomes a VAE (training and every loader)."""
    return VAE(tuple(image_shape), z_dim=model_cfg["z_dim"], hidden_dim=model_cfg["hidden_dim"])
