"""The VAE as a Pyro model/guide pair. Pyro primitives only: no Hydra, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal, overload

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO, JitTrace_ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from vae_pyro.config import ElboConfig, ModelConfig, to_object
from vae_pyro.errors import VaePyroError
from vae_pyro.networks import ARCHS, PixelDecoder
from vae_pyro.posteriors import POSTERIORS
from vae_pyro.priors import PRIORS


@dataclass(frozen=True)
class PixelModel:
    """The interface of a likelihood p(x | z): one distribution per pixel, made from the
    decoder's logits (and its learned log-sigma when `learns_scale`).

    `fast_log_prob`, when given, computes sum over pixels of log p(x | z) from the decoder
    itself, the same numbers as make(...).log_prob(x) summed without the (k, b, pixels) tensor of
    parameters (what the importance-weighted evaluator spends its time on).
    """

    make: Callable[[torch.Tensor, torch.Tensor | None], dist.Distribution]  # (logits, log_scale)
    learns_scale: bool = False  # the decoder carries one learned pixel log-sigma
    fast_log_prob: Callable[[PixelDecoder, torch.Tensor, torch.Tensor], torch.Tensor] | None = None


# model.likelihood -> its pixel model. bernoulli: gray levels as targets (not a density on
# [0, 1]; the seed's protocol) or binarized pixels (a proper likelihood), hence no argument
# checks. continuous_bernoulli: the normalized density on [0, 1] (Loaiza-Ganem & Cunningham
# 2019). gaussian: mean sigmoid(logits), one learned pixel standard deviation shared by all
# pixels (a calibrated decoder, Rybkin et al. 2021): a fixed sigma = 1 would reduce the
# reconstruction term to MSE / 2, tiny next to the KL on [0, 1] pixels.
LIKELIHOODS: dict[str, PixelModel] = {
    "bernoulli": PixelModel(
        lambda logits, _: dist.Bernoulli(logits=logits, validate_args=False),
        fast_log_prob=lambda decoder, z, flat: decoder.log_bernoulli(z, flat),
    ),
    "continuous_bernoulli": PixelModel(lambda logits, _: dist.ContinuousBernoulli(logits=logits)),
    "gaussian": PixelModel(
        lambda logits, log_scale: dist.Normal(torch.sigmoid(logits), log_scale.exp()),
        learns_scale=True,
    ),
}


def _kl_weighted(kl_scale: float) -> AbstractContextManager:
    """Weight of the latent site's log-densities: poutine.scale demands > 0, so 0 is a mask
    (which zeroes the site's terms in every ELBO, the analytic KL included); 1, the plain
    ELBO, needs no handler at all."""
    if kl_scale == 1:
        return nullcontext()
    return poutine.mask(mask=False) if kl_scale == 0 else poutine.scale(scale=kl_scale)


class VAE(nn.Module):
    """A VAE composed from registries, one image at a time under the plate "data":

        z ~ p(z)              (site "latent", z_dim dims)
        x ~ p(x | z)          (site "obs", one distribution per pixel from decoder(z))

    with the amortized guide q(z | x) from the encoder. Which p(z), p(x | z) and q(z | x):

    - ``cfg.arch`` the networks (networks.ARCHS: mlp, conv);
    - ``cfg.likelihood`` p(x | z) (LIKELIHOODS): bernoulli, gray levels in [0, 1] used directly
      as targets (Pyro's tutorial protocol, hence ``validate_args=False``) or binarized pixels;
      continuous_bernoulli, the normalized density on [0, 1]; gaussian, one learned pixel sigma;
    - ``cfg.prior`` p(z) (priors.PRIORS): N(0, I), the VampPrior (which reads the encoder: the
      model then registers it too), a learned mixture of Gaussians;
    - ``cfg.posterior`` q(z | x) (posteriors.POSTERIORS): the diagonal Normal, or IAF flows on
      the encoder's hidden state after it.

    ``kl_scale`` multiplies the latent site's log-densities in model and guide alike
    (poutine.scale), so the ELBO becomes E[log p(x|z)] - kl_scale * KL(q || p): the beta-VAE
    objective. It defaults to 1, so every caller that does not pass it (test ELBO, importance
    sampling) gets the plain model. `prior`, `posterior` and `likelihood` are the distributions
    model and guide sample, which the importance-weighted evaluator also uses.
    """

    def __init__(
        self, image_shape: tuple[int, ...], cfg: ModelConfig | None = None, **keys: Any
    ) -> None:
        """`cfg`, or a ModelConfig of the given keys: VAE((1, 28, 28), z_dim=2)."""
        super().__init__()
        self.cfg = cfg if cfg is not None else ModelConfig(**keys)
        self.image_shape = tuple(image_shape)
        self.z_dim = self.cfg.z_dim
        self.likelihood_name = str(self.cfg.likelihood)
        self.pixels = LIKELIHOODS[self.likelihood_name]
        self.encoder, self.decoder = ARCHS[self.cfg.arch](
            self.image_shape, self.cfg, self.pixels.learns_scale
        )
        prior, posterior = self.cfg.prior, self.cfg.posterior
        self.prior_net = PRIORS[str(prior.name)](prior, self.z_dim, self.image_shape)
        self.posterior_net = POSTERIORS[str(posterior.name)](
            posterior, self.z_dim, self.cfg.hidden_dim
        )

    def prior(self, batch: int, like: torch.Tensor) -> dist.Distribution:
        """p(z) for `batch` images, on like's device and dtype."""
        return self.prior_net(batch, like, self.encoder)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = self.encoder.features(x)
        return (*self.encoder.heads(hidden), hidden)

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        """q(z | x)."""
        return self.posterior_net(*self._encode(x))

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """One deterministic point of q(z | x) per image: its mean for the diagonal Normal."""
        return self.posterior_net.code(*self._encode(x))

    def likelihood(self, z: torch.Tensor) -> dist.Distribution:
        """p(x | z) over the flattened pixels; z may carry extra leading (particle) dims."""
        log_scale = getattr(self.decoder, "log_scale", None)
        return self.pixels.make(self.decoder.logits(z), log_scale).to_event(1)

    def log_likelihood(self, z: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        """likelihood(z).log_prob(flat) for flattened images (b, D) and z (k, b, z_dim), (k, b):
        through the likelihood's fast form where it has one."""
        fast = self.pixels.fast_log_prob
        return self.likelihood(z).log_prob(flat) if fast is None else fast(self.decoder, z, flat)

    def model(self, x: torch.Tensor, kl_scale: float = 1.0) -> None:
        """The generative story of a batch x (batch, C, H, W), each image independent:

            z ~ p(z)          "latent"  (its log-density scaled by kl_scale)
            x ~ p(x | z)      "obs"     observed: the flattened pixels

        The decoder is registered with Pyro, and the prior's learned parts (pseudo-inputs,
        mixture components) and the encoder when p(z) has or reads them.
        """
        pyro.module("decoder", self.decoder)
        if _learns(self.prior_net):
            pyro.module("prior", self.prior_net)
        if self.prior_net.uses_encoder:
            pyro.module("encoder", self.encoder)
        batch = x.shape[0]
        with pyro.plate("data", batch):
            with _kl_weighted(kl_scale):
                z = pyro.sample("latent", self.prior(batch, x))
            pyro.sample("obs", self.likelihood(z), obs=x.reshape(batch, -1))

    def guide(self, x: torch.Tensor, kl_scale: float = 1.0) -> None:
        """The amortized inference story: for each image, z ~ q(z | x) at "latent" (scaled by
        kl_scale as in the model), q from the encoder and the posterior's own learned parts
        (flows), both registered with Pyro."""
        pyro.module("encoder", self.encoder)
        if _learns(self.posterior_net):
            pyro.module("posterior", self.posterior_net)
        with pyro.plate("data", x.shape[0]), _kl_weighted(kl_scale):
            pyro.sample("latent", self.posterior(x))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z) at one draw z ~ q(z | x), shaped like x."""
        z = self.posterior(x).sample()
        return self.likelihood(z).mean.reshape(x.shape)

    @overload
    def sample_prior(self, n: int, draws: Literal[False] = False) -> torch.Tensor: ...

    @overload
    def sample_prior(self, n: int, draws: Literal[True]) -> tuple[torch.Tensor, torch.Tensor]: ...

    @torch.no_grad()
    def sample_prior(
        self, n: int, draws: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Means of p(x | z) at n draws z ~ p(z), as (n, C, H, W) images; with draws=True also
        one draw of p(x | z) at each z, (means, draws). The likelihood's own mean: the
        decoder's sigmoid for Bernoulli and Gaussian pixels, not for the continuous Bernoulli."""
        z = self.prior(n, next(self.parameters())).sample()
        likelihood = self.likelihood(z)
        means = likelihood.mean.reshape(n, *self.image_shape)
        return (means, likelihood.sample().reshape(n, *self.image_shape)) if draws else means


def _learns(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def build_vae(image_shape: tuple[int, ...], model_cfg: ModelConfig | Mapping[str, Any]) -> VAE:
    """The one place a config's `model` section becomes a VAE (training and every loader).

    A mapping (a checkpoint's saved config) is read through the schema: keys added after the
    first release take their defaults, the original model (no `arch`: the MLP). Values that do
    not fit the images (a conv net too deep for their size) are a VaePyroError.
    """
    try:
        return VAE(tuple(image_shape), to_object(model_cfg, ModelConfig))
    except ValueError as err:
        raise VaePyroError(
            f"cannot build the model for images of shape {tuple(image_shape)} (C, H, W): {err}"
        ) from None


def kl_scale(model_cfg: ModelConfig, epoch: int) -> float:
    """KL weight for a 1-based epoch: 0 at epoch 1, rising linearly to kl_weight at epoch
    kl_warmup_epochs + 1 (no warm-up: kl_weight throughout). A function of the epoch alone,
    so a resumed run continues the schedule."""
    weight = float(model_cfg.kl_weight)
    if model_cfg.kl_warmup_epochs > 0:
        weight *= min(1.0, (epoch - 1) / model_cfg.kl_warmup_epochs)
    return weight


# elbo.name -> Pyro's estimator of the training objective. The model has one plate ("data").
OBJECTIVES: dict[str, Callable[..., ELBO]] = {
    "trace": Trace_ELBO,
    "meanfield": TraceMeanField_ELBO,  # KL(q || p) in closed form: both are Normal
    "jit": lambda **kw: JitTrace_ELBO(ignore_jit_warnings=True, **kw),
    # Burda et al.'s importance-weighted bound: per image, log mean_k p(x, z_k) / q(z_k | x)
    "iwae": lambda **kw: RenyiELBO(alpha=0, **kw),
}


def build_elbo(cfg: ElboConfig) -> ELBO:
    """The configured estimator. One particle needs no particle plate: vectorizing would only
    add a size-1 dim (and ~4% to a CPU step) for the same draws and the same loss."""
    vectorize = cfg.vectorize_particles and cfg.num_particles > 1
    return OBJECTIVES[cfg.name](
        num_particles=cfg.num_particles, vectorize_particles=vectorize, max_plate_nesting=1
    )
