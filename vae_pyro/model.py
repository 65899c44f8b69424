"""The VAE as a Pyro model/guide pair (Pyro primitives only: no Hydra, no I/O), with its config
section, ModelConfig (and ElboConfig, the objective), beside it."""

# No `from __future__ import annotations`: OmegaConf reads ModelConfig's field types at runtime.

import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, overload

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO, JitTrace_ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from vae_pyro.errors import VaePyroError
from vae_pyro.networks import (
    ACTIVATIONS,
    ARCHS,
    INITS,
    SCALE_PARAMS,
    ConditionalGaussian,
    PixelDecoder,
)
from vae_pyro.posteriors import POSTERIORS, PosteriorConfig
from vae_pyro.priors import PRIORS, PriorConfig
from vae_pyro.schema import POSITIVE, Choice, Rule, Section, int_at_least, key, to_object


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


# model.decoder_reads -> what the decoder of two stochastic layers reads, from (z2, z1); each
# may carry leading particle dims. The choice's names are config.ModelConfig.decoder_reads's.
DECODER_READS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "z1": lambda top, lower: lower,  # p(x | z1): the hierarchy of Burda et al.
    "z1z2": lambda top, lower: torch.cat([lower, top], -1),  # p(x | z1, z2): Tomczak & Welling
}

# model.merge -> how a network of two stochastic layers reads two inputs (the decoder that
# reads z1 and z2; q(z1 | x, z2)): side by side into one first layer, or with a first layer each
# (networks.Paths), Tomczak & Welling's; then q(z1 | x, z2) reads x itself, not h(x).
MERGES = ("concat", "paths")


class OneLayer(nn.Module):
    """One stochastic layer: the decoder reads z, the "latent" site's value; no weights."""

    def register(self, side: str) -> None:
        """Register its networks of `side` ("prior": the model's, "posterior": the guide's)
        with Pyro: none here."""

    def model(self, z: torch.Tensor) -> torch.Tensor:
        """Sample the sites below z in the model; return what the decoder reads."""
        return z

    def guide(self, flat: torch.Tensor, hidden: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Sample the sites below z in the guide, given the images (batch, pixels) and their
        hidden state h(x); return what the decoder reads."""
        return z

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """What the decoder reads at z, through the prior's means below it."""
        return z

    def prior_draw(self, z: torch.Tensor) -> torch.Tensor:
        """What the decoder reads at z, through draws of the prior below it."""
        return z

    def weigh(
        self, flat: torch.Tensor, hidden: torch.Tensor, z: torch.Tensor, given: Mapping, sites: dict
    ) -> Any:
        """(what the decoder reads, log p - log q of the sites below z): drawn from the guide,
        or taken from `given`, and put into `sites`."""
        return z, 0.0

    def code(self, flat: torch.Tensor, hidden: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The point of q below z: q's mean of z1."""
        raise ValueError("one stochastic layer has no layer below z")


class TwoLayers(OneLayer):
    """Two stochastic layers (the HVAE of Tomczak & Welling 2018, sec. 3.2): z2 at "latent",
    z1 at "lower" below it, with `prior` p(z1 | z2) and `posterior` q(z1 | x, z2), diagonal
    Normals: q reads the encoder's hidden state h(x) beside z2, or with merge=paths the image
    itself and z2, a first layer each; the decoder reads DECODER_READS[decoder_reads](z2, z1).
    Every z2 may carry leading particle dims."""

    def __init__(self, cfg: "ModelConfig", image_shape: tuple[int, ...]) -> None:
        super().__init__()
        top, lower, width = cfg.z_dim, cfg.decoder_z_dim, cfg.hidden_dim
        layers = (cfg.scale_param, cfg.hidden_layers, cfg.activation, cfg.scale_bounds)
        self.reads_x = cfg.merge == "paths"
        seen = math.prod(image_shape) if self.reads_x else width  # what q reads of x
        paths = (seen, top) if self.reads_x else None
        self.prior = ConditionalGaussian(top, lower, width, *layers)
        self.posterior = ConditionalGaussian(seen + top, lower, width, *layers, paths)
        self.reads = DECODER_READS[cfg.decoder_reads]

    def register(self, side: str) -> None:
        pyro.module(f"lower_{side}", getattr(self, side))

    def p(self, z2: torch.Tensor) -> dist.Distribution:
        return dist.Normal(*self.prior(z2)).to_event(1)

    def _q_input(self, flat: torch.Tensor, hidden: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        seen = flat if self.reads_x else hidden
        return torch.cat([seen.expand(*z2.shape[:-1], seen.shape[-1]), z2], -1)

    def q(self, flat: torch.Tensor, hidden: torch.Tensor, z2: torch.Tensor) -> dist.Distribution:
        return dist.Normal(*self.posterior(self._q_input(flat, hidden, z2))).to_event(1)

    def model(self, z: torch.Tensor) -> torch.Tensor:
        return self.reads(z, pyro.sample("lower", self.p(z)))

    def guide(self, flat: torch.Tensor, hidden: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.reads(z, pyro.sample("lower", self.q(flat, hidden, z)))

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return self.reads(z, self.prior(z)[0])

    def prior_draw(self, z: torch.Tensor) -> torch.Tensor:
        return self.reads(z, self.p(z).sample())

    def weigh(
        self, flat: torch.Tensor, hidden: torch.Tensor, z: torch.Tensor, given: Mapping, sites: dict
    ) -> Any:
        p, q = self.p(z), self.q(flat, hidden, z)
        z1 = given["lower"] if "lower" in given else q.sample()
        sites["lower"] = z1
        return self.reads(z, z1), p.log_prob(z1) - q.log_prob(z1)

    def code(self, flat: torch.Tensor, hidden: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.posterior(self._q_input(flat, hidden, z))[0]


# model.latent_layers -> the stochastic layers below the top one ("latent").
HIERARCHIES: dict[int, Callable[["ModelConfig", tuple[int, ...]], OneLayer]] = {
    1: lambda cfg, image_shape: OneLayer(),
    2: TwoLayers,
}


# elbo.name -> Pyro's estimator of the training objective. The model has one plate ("data").
OBJECTIVES: dict[str, Callable[..., ELBO]] = {
    "trace": Trace_ELBO,
    "meanfield": TraceMeanField_ELBO,  # KL(q || p) in closed form: both are Normal
    "jit": lambda **kw: JitTrace_ELBO(ignore_jit_warnings=True, **kw),
    # Burda et al.'s importance-weighted bound: per image, log mean_k p(x, z_k) / q(z_k | x)
    "iwae": lambda **kw: RenyiELBO(alpha=0, **kw),
}


# Every choice of the model's config section is made from its registry: a new entry is a new
# value users can type, refused by OmegaConf while it composes if unknown, listed by --help.
Arch = Choice("Arch", {name: name for name in ARCHS}, module=__name__)
Likelihood = Choice("Likelihood", {name: name for name in LIKELIHOODS}, module=__name__)
ScaleParam = Choice("ScaleParam", {name: name for name in SCALE_PARAMS}, module=__name__)
Activation = Choice("Activation", {name: name for name in ACTIVATIONS}, module=__name__)
Init = Choice("Init", {name: name for name in INITS}, module=__name__)
DecoderReads = Choice("DecoderReads", {name: name for name in DECODER_READS}, module=__name__)
Objective = Choice("Objective", {name: name for name in OBJECTIVES}, module=__name__)
Merge = Choice("Merge", {name: name for name in MERGES}, module=__name__)


@dataclass
class ModelConfig(Section):
    PREFIX: ClassVar[str] = "model."
    # Training-only keys: the networks a checkpoint holds do not depend on them.
    TRAINING_ONLY: ClassVar[tuple[str, ...]] = ("kl_weight", "kl_warmup_epochs")
    # The keys that only some architectures read (networks.ARCHS): see refuse_unread.
    ARCH_READS: ClassVar[dict[str, tuple[str, ...]]] = {
        "mlp": ("activation", "merge"),
        "conv": ("channels",),
    }
    arch: Arch = key(Arch.mlp, "encoder/decoder networks (conf/model/<arch>.yaml)")
    z_dim: int = key(50, "latent dimensions (of the top layer, where p(z) is)", POSITIVE)
    latent_layers: int = key(
        1,
        "stochastic layers: 1, or 2 (z2 ~ p(z2), z1 ~ p(z1|z2), x ~ p(x|z1); z2 has z_dim)",
        Rule(lambda v: v in HIERARCHIES, " or ".join(map(str, HIERARCHIES))),
    )
    lower_z_dim: int | None = key(
        None,
        "latent_layers=2: dimensions of z1, the layer the decoder reads; null = 2 x z_dim",
        POSITIVE,
    )
    hidden_dim: int = key(400, "hidden layer width", POSITIVE)
    hidden_layers: int = key(1, "hidden layers of the encoder and of the decoder", POSITIVE)
    activation: Activation = key(
        Activation.softplus,
        "mlp: hidden layers softplus(W x + b) | gated (W1 x + b1) * sigmoid(W2 x + b2), "
        "Tomczak & Welling's (the two-layer conditionals too)",
    )
    init: Init = key(
        Init.default,
        "the networks' Linear weights: PyTorch's | he, N(0, 2/fan_in), Tomczak & Welling's",
    )
    decoder_reads: DecoderReads = key(
        DecoderReads.z1, "latent_layers=2: p(x|z1) | z1z2, p(x|z1,z2), Tomczak & Welling's HVAE"
    )
    merge: Merge = key(
        Merge.concat,
        "latent_layers=2, mlp: how the decoder reading z1z2 and q(z1|x,z2) read two inputs: "
        "side by side (q reads h(x) beside z2) | paths, a first layer each (q reads x itself), "
        "Tomczak & Welling's",
    )
    channels: list[int] = key(
        [32, 64, 128],
        "conv: feature maps after each stride-2 convolution",
        Rule(lambda v: len(v) > 0 and min(v) >= 1, "a non-empty list of integers >= 1"),
    )
    likelihood: Likelihood = key(Likelihood.bernoulli, "pixel model p(x|z)")
    scale_param: ScaleParam = key(
        ScaleParam.exp, "the encoder's fc22 as log-scale | log-variance | through softplus"
    )
    scale_bounds: list[float] | None = key(
        None,
        "[low, high]: fc22 clipped (hardtanh) before scale_param's transform, in its units; "
        "null = unbounded; Tomczak & Welling: [-6, 2] with scale_param=logvar",
        Rule(
            lambda v: len(v) == 2 and all(map(math.isfinite, v)) and v[0] < v[1],
            "two finite numbers, low < high",
        ),
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
        if self.latent_layers == 1 and self.merge != "concat":
            raise VaePyroError(
                f"model.merge={self.merge} is how the networks of two stochastic layers read two "
                "inputs: give model.latent_layers=2 with it, or leave it out"
            )
        if self.latent_layers == 1 and self.decoder_reads != "z1":
            raise VaePyroError(
                f"model.decoder_reads={self.decoder_reads} lets the decoder read the top of two "
                "stochastic layers: give model.latent_layers=2 with it, or leave it out"
            )

    @property
    def decoder_z_dim(self) -> int:
        """Dimensions of the layer the decoder reads: z1 of two layers, else z."""
        if self.latent_layers == 1:
            return self.z_dim
        return 2 * self.z_dim if self.lower_z_dim is None else self.lower_z_dim

    @property
    def decoder_input_dim(self) -> int:
        """The decoder's input size: z1 (or z), with z2 beside it where it reads both."""
        return self.decoder_z_dim + (self.z_dim if self.decoder_reads == "z1z2" else 0)

    @property
    def decoder_paths(self) -> tuple[int, int] | None:
        """The sizes of z1 and z2 for a decoder that reads them a first layer each, else None."""
        both = self.decoder_reads == "z1z2" and self.merge == "paths"
        return (self.decoder_z_dim, self.z_dim) if both else None


@dataclass
class ElboConfig(Section):
    PREFIX: ClassVar[str] = "elbo."
    name: Objective = key(Objective.trace, "training objective (conf/elbo/<name>.yaml)")
    num_particles: int = key(1, "samples per image and step (iwae: K)", POSITIVE)
    vectorize_particles: bool = key(True, "num_particles > 1: all in one pass")


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

    with the amortized guide q(z | x) from the encoder. With ``cfg.latent_layers = 2`` the
    latent is a hierarchy of two stochastic layers, z2 on top (site "latent": p(z2) is the
    configured prior) and z1 below (site "lower", lower_z_dim dims), the decoder reading z1:

        z2 ~ p(z2),   z1 ~ N(mu(z2), diag sigma(z2)^2),   x ~ p(x | z1)

    or x ~ p(x | z1, z2) with ``cfg.decoder_reads = "z1z2"`` (the decoder reads both, side by
    side),

    inferred top-down, as the HVAE of Tomczak & Welling (2018, sec. 3.2):
    q(z2 | x) q(z1 | x, z2), q(z2 | x) the configured posterior on the encoder and
    q(z1 | x, z2) a diagonal Normal from the encoder's hidden state h(x) and z2. So the
    VampPrior (which reads q(z2 | x) at its pseudo-inputs) and the IAF posterior act on the
    top layer unchanged. Which p(z), p(x | z) and q(z | x):

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
        self.layers = self.cfg.latent_layers
        self.lower = HIERARCHIES[self.layers](self.cfg, self.image_shape)  # below "latent"
        for net in (self.encoder, self.decoder, self.lower):
            INITS[self.cfg.init](net)

    def prior(self, batch: int, like: torch.Tensor) -> dist.Distribution:
        """p(z) for `batch` images, on like's device and dtype."""
        return self.prior_net(batch, like, self.encoder)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = self.encoder.features(x)
        return (*self.encoder.heads(hidden), hidden)

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        """q(z | x) (of the top layer, q(z2 | x), with two)."""
        return self.posterior_net(*self._encode(x))

    def descend(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's input at a point z of the top layer: the mean of p(z1 | z2) with two
        layers (beside z where the decoder reads both), z itself with one (what interpolations,
        grids and given codes decode)."""
        return self.lower.mean(z)

    def code(self, x: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """One deterministic point of q per image: of the top layer (its mean for the diagonal
        Normal), or with layer=1 of two, the mean of q(z1 | x, z2) at that point."""
        loc, scale, hidden = self._encode(x)
        z = self.posterior_net.code(loc, scale, hidden)
        if layer is None or layer == self.layers:
            return z
        return self.lower.code(x.reshape(x.shape[0], -1), hidden, z)

    @torch.no_grad()
    def posterior_sample(self, x: torch.Tensor, num: int) -> torch.Tensor:
        """num draws per image of what the decoder reads, through every layer of q:
        (num, batch, decoder input dims)."""
        loc, scale, hidden = self._encode(x)
        z = self.posterior_net(loc, scale, hidden).sample((num,))
        with poutine.block():
            return self.lower.guide(x.reshape(x.shape[0], -1), hidden, z)

    def importance(self, x: torch.Tensor) -> Callable[..., tuple[dict[str, torch.Tensor], Any]]:
        """For images x (b, C, H, W), with the encoder's pass made once: a function
        (k, given={}) -> (sites, log_w) that draws k particles per image through the guide's
        sites (or takes the values in `given`, site name -> (k, b, dims)) and returns them with
        log_w (k, b) = log p(x, z) - log q(z | x): the model trace's log-joint minus the guide
        trace's log-prob at those values (tested), what the importance-weighted bound averages.
        """
        b = x.shape[0]
        flat = x.reshape(b, -1)
        loc, scale, hidden = self._encode(x)
        q_top, p_top = self.posterior_net(loc, scale, hidden), self.prior(b, x)

        def weigh(k: int, given: Mapping[str, torch.Tensor] | None = None) -> tuple[dict, Any]:
            given = given or {}
            z = given["latent"] if "latent" in given else q_top.sample((k,))
            log_w = p_top.log_prob(z) - q_top.log_prob(z)  # the flow's cached draw first
            sites = {"latent": z}
            reads, log_w_below = self.lower.weigh(flat, hidden, z, given, sites)
            return sites, log_w + log_w_below + self.log_likelihood(reads, flat)

        return weigh

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

        With two layers z is z2 and one more site sits between it and x:

            z1 ~ p(z1 | z2)   "lower"   (scaled by kl_scale too); x ~ p(x | z1) or p(x | z1, z2)

        The decoder is registered with Pyro, and the prior's learned parts (pseudo-inputs,
        mixture components) and the encoder when p(z) has or reads them, and p(z1 | z2).
        """
        pyro.module("decoder", self.decoder)
        if _learns(self.prior_net):
            pyro.module("prior", self.prior_net)
        if self.prior_net.uses_encoder:
            pyro.module("encoder", self.encoder)
        self.lower.register("prior")
        batch = x.shape[0]
        with pyro.plate("data", batch):
            with _kl_weighted(kl_scale):
                z = self.lower.model(pyro.sample("latent", self.prior(batch, x)))
            pyro.sample("obs", self.likelihood(z), obs=x.reshape(batch, -1))

    def guide(self, x: torch.Tensor, kl_scale: float = 1.0) -> None:
        """The amortized inference story: for each image, z ~ q(z | x) at "latent" (scaled by
        kl_scale as in the model), q from the encoder and the posterior's own learned parts
        (flows), both registered with Pyro. With two layers, z2 ~ q(z2 | x) at "latent", then
        z1 ~ q(z1 | x, z2) at "lower"."""
        pyro.module("encoder", self.encoder)
        if _learns(self.posterior_net):
            pyro.module("posterior", self.posterior_net)
        self.lower.register("posterior")
        with pyro.plate("data", x.shape[0]), _kl_weighted(kl_scale):
            loc, scale, hidden = self._encode(x)
            z = pyro.sample("latent", self.posterior_net(loc, scale, hidden))
            self.lower.guide(x.reshape(x.shape[0], -1), hidden, z)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z) at one draw z ~ q(z | x) (through both layers), shaped like x."""
        return self.likelihood(self.posterior_sample(x, 1)[0]).mean.reshape(x.shape)

    @overload
    def sample_prior(self, n: int, draws: Literal[False] = False) -> torch.Tensor: ...

    @overload
    def sample_prior(self, n: int, draws: Literal[True]) -> tuple[torch.Tensor, torch.Tensor]: ...

    @torch.no_grad()
    def sample_prior(
        self, n: int, draws: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Means of p(x | z) at n draws z ~ p(z) (through both layers), as (n, C, H, W)
        images; with draws=True also one draw of p(x | z) at each z, (means, draws). The
        likelihood's own mean: the decoder's sigmoid for Bernoulli and Gaussian pixels, not for
        the continuous Bernoulli."""
        z = self.lower.prior_draw(self.prior(n, next(self.parameters())).sample())
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


def build_elbo(cfg: ElboConfig) -> ELBO:
    """The configured estimator. One particle needs no particle plate: vectorizing would only
    add a size-1 dim (and ~4% to a CPU step) for the same draws and the same loss."""
    vectorize = cfg.vectorize_particles and cfg.num_particles > 1
    return OBJECTIVES[cfg.name](
        num_particles=cfg.num_particles, vectorize_particles=vectorize, max_plate_nesting=1
    )
