"""The VAE as a Pyro model/guide pair. Pyro primitives only: no Hydra, no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from torch import nn

from vae_pyro.errors import VaePyroError
from vae_pyro.networks import ConvDecoder, ConvEncoder, Decoder, Encoder

LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian")
ARCHS = ("mlp", "conv")  # model.arch: the encoder/decoder pair (networks.py)
DEFAULT_CHANNELS = (32, 64, 128)  # conv: feature maps after each stride-2 convolution


def _kl_weighted(kl_scale: float) -> AbstractContextManager:
    """Weight of the latent site's log-densities: poutine.scale demands > 0, so 0 is a mask
    (which zeroes the site's terms in every ELBO, the analytic KL included); 1, the plain
    ELBO, needs no handler at all."""
    if kl_scale == 1:
        return nullcontext()
    return poutine.mask(mask=False) if kl_scale == 0 else poutine.scale(scale=kl_scale)


class VAE(nn.Module):
    """Generative story, one image at a time under the plate "data":

        z ~ N(0, I)                       (site "latent", z_dim dims)
        x ~ Bernoulli(decoder(z))         (site "obs", one Bernoulli per pixel)

    and the amortized guide q(z | x) = N(encoder(x)) with a diagonal covariance.
    Pixels are gray levels in [0, 1] used directly as Bernoulli targets (Pyro's
    tutorial protocol), hence ``validate_args=False`` on the likelihood.

    ``likelihood`` swaps the pixel model (see `likelihood`). ``kl_scale`` multiplies the
    latent site's log-densities in model and guide alike (poutine.scale), so the ELBO becomes
    E[log p(x|z)] - kl_scale * KL(q || p): the beta-VAE objective. It defaults to 1, so every
    caller that does not pass it (test ELBO, importance sampling) gets the plain model.
    The distributions come from `prior`, `posterior` and `likelihood`, which the
    importance-weighted evaluator also uses: one definition of the model.
    """

    def __init__(
        self,
        image_shape: tuple[int, ...],
        z_dim: int = 50,
        hidden_dim: int = 400,
        likelihood: str = "bernoulli",
        scale_param: str = "exp",
        arch: str = "mlp",
        channels: Sequence[int] = DEFAULT_CHANNELS,
    ):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        self.image_shape = tuple(image_shape)
        self.z_dim = z_dim
        self.likelihood_name = likelihood
        learn_scale = likelihood == "gaussian"
        if arch == "mlp":
            self.encoder = Encoder(self.image_shape, z_dim, hidden_dim, scale_param)
            self.decoder = Decoder(self.image_shape, z_dim, hidden_dim, learn_scale=learn_scale)
        elif arch == "conv":
            self.encoder = ConvEncoder(self.image_shape, z_dim, hidden_dim, channels, scale_param)
            self.decoder = ConvDecoder(self.image_shape, z_dim, hidden_dim, channels, learn_scale)
        else:
            raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")

    def prior(self, batch: int, like: torch.Tensor) -> dist.Distribution:
        """p(z) = N(0, I) for `batch` images, on like's device and dtype: one scalar Normal
        expanded, which saves ~0.1 ms per training step over full tensors of zeros and ones."""
        return (
            dist.Normal(like.new_zeros(()), like.new_ones(()))
            .expand((batch, self.z_dim))
            .to_event(1)
        )

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        """q(z | x): diagonal Normal from the encoder."""
        z_loc, z_scale = self.encoder(x)
        return dist.Normal(z_loc, z_scale).to_event(1)

    def likelihood(self, z: torch.Tensor) -> dist.Distribution:
        """p(x | z) over the flattened pixels; z may carry extra leading (particle) dims.

        bernoulli: gray levels as targets (not a density on [0, 1]; the seed's protocol) or
        binarized pixels (a proper likelihood). continuous_bernoulli: the normalized density on
        [0, 1] (Loaiza-Ganem & Cunningham 2019), proper for gray levels. gaussian: mean
        sigmoid(logits), one learned pixel standard deviation exp(decoder.log_scale) shared by
        all pixels (a calibrated decoder, Rybkin et al. 2021): a fixed sigma = 1 would reduce
        the reconstruction term to MSE / 2, tiny next to the KL on [0, 1] pixels.
        """
        logits = self.decoder.logits(z)
        if self.likelihood_name == "bernoulli":
            return dist.Bernoulli(logits=logits, validate_args=False).to_event(1)
        if self.likelihood_name == "continuous_bernoulli":
            return dist.ContinuousBernoulli(logits=logits).to_event(1)
        return dist.Normal(torch.sigmoid(logits), self.decoder.log_scale.exp()).to_event(1)

    def model(self, x: torch.Tensor, kl_scale: float = 1.0) -> None:
        pyro.module("decoder", self.decoder)
        batch = x.shape[0]
        with pyro.plate("data", batch):
            with _kl_weighted(kl_scale):
                z = pyro.sample("latent", self.prior(batch, x))
            pyro.sample("obs", self.likelihood(z), obs=x.reshape(batch, -1))

    def guide(self, x: torch.Tensor, kl_scale: float = 1.0) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]), _kl_weighted(kl_scale):
            pyro.sample("latent", self.posterior(x))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z) at one draw z ~ q(z | x), shaped like x."""
        z = self.posterior(x).sample()
        return self.likelihood(z).mean.reshape(x.shape)

    @torch.no_grad()
    def sample_prior(self, n: int) -> torch.Tensor:
        """Means of p(x | z) at n draws z ~ N(0, I), as (n, C, H, W) images."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.z_dim, device=device)
        return self.likelihood(z).mean.reshape(n, *self.image_shape)


def build_vae(image_shape: tuple[int, ...], model_cfg: Mapping[str, Any]) -> VAE:
    """The one place a config's `model` section becomes a VAE (training and every loader).

    Keys added after the first release default to the original model, so old checkpoints load
    (no `arch`: the MLP). Values that do not fit the images (a conv net too deep for their size)
    are a VaePyroError.
    """
    try:
        return VAE(
            tuple(image_shape),
            z_dim=model_cfg["z_dim"],
            hidden_dim=model_cfg["hidden_dim"],
            likelihood=model_cfg.get("likelihood", "bernoulli"),
            scale_param=model_cfg.get("scale_param", "exp"),
            arch=model_cfg.get("arch", "mlp"),
            channels=model_cfg.get("channels", DEFAULT_CHANNELS),
        )
    except ValueError as err:
        raise VaePyroError(
            f"cannot build the model for images of shape {tuple(image_shape)} (C, H, W): {err}"
        ) from None


def kl_scale(model_cfg: Mapping[str, Any], epoch: int) -> float:
    """KL weight for a 1-based epoch: 0 at epoch 1, rising linearly to kl_weight at epoch
    kl_warmup_epochs + 1 (no warm-up: kl_weight throughout). A function of the epoch alone,
    so a resumed run continues the schedule."""
    weight = float(model_cfg.get("kl_weight", 1.0))
    warmup = int(model_cfg.get("kl_warmup_epochs", 0))
    if warmup > 0:
        weight *= min(1.0, (epoch - 1) / warmup)
    return weight
