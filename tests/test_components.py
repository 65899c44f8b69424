"""The components declare what they are (priors, posteriors, likelihoods, networks), each with its
config beside its class, and the learned mixture-of-Gaussians prior, added through the registry
alone: its maths against Pyro's own mixture and traces, its training, checkpoint and resume."""

from __future__ import annotations

from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from vae_pyro import checkpoint, config, evaluate
from vae_pyro.config import ModelConfig
from vae_pyro.estimators import importance_sample, log_weights
from vae_pyro.model import LIKELIHOODS, VAE, PixelModel, build_vae
from vae_pyro.networks import ARCHS, GaussianEncoder, PixelDecoder
from vae_pyro.posteriors import POSTERIORS, Posterior, PosteriorConfig
from vae_pyro.priors import PRIORS, GaussianMixturePrior, Prior, PriorConfig, SharedNormalMixture

CONF = Path(__file__).resolve().parent.parent / "conf"


def small(prior: str = "mog", posterior: str = "diagonal", **keys) -> VAE:
    cfg = ModelConfig(
        z_dim=4,
        hidden_dim=16,
        prior=PriorConfig(name=prior, components=6),
        posterior=PosteriorConfig(name=posterior, depth=2, hidden=12),
        **keys,
    )
    return VAE((1, 28, 28), cfg)


# --- the interfaces ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PRIORS))
def test_every_prior_declares_what_it_is_and_has_its_yaml(name):
    vae = small(name)
    prior = vae.prior_net
    assert isinstance(prior, Prior) and isinstance(prior.uses_encoder, bool)
    assert isinstance(prior.label, str) and prior.label
    assert isinstance(prior.components, int) and prior.components >= 1
    assert set(type(prior).defaults) <= {f for f in config.keys(PriorConfig) if f != "name"}
    p = vae.prior(3, torch.zeros(()))
    assert p.batch_shape == (3,) and p.event_shape == (4,)
    assert (CONF / "model" / "prior" / f"{name}.yaml").is_file()


def test_the_choices_are_the_registries_and_their_yaml_files():
    """model.prior.name / model.posterior.name are made from the registries: one place to edit."""
    assert [m.name for m in config.PriorName] == list(PRIORS)
    assert [m.name for m in config.PosteriorName] == list(POSTERIORS)
    assert {p.stem for p in (CONF / "model" / "prior").glob("*.yaml")} == set(PRIORS)
    assert {p.stem for p in (CONF / "model" / "posterior").glob("*.yaml")} == set(POSTERIORS)
    assert config.PriorConfig is PriorConfig and config.PosteriorConfig is PosteriorConfig


@pytest.mark.parametrize("name", list(POSTERIORS))
def test_every_posterior_declares_what_it_is(name):
    vae = small(posterior=name)
    assert isinstance(vae.posterior_net, Posterior)
    assert set(type(vae.posterior_net).defaults) <= set(config.keys(PosteriorConfig))
    x = torch.rand(3, 1, 28, 28)
    assert vae.posterior(x).event_shape == (4,) and vae.code(x).shape == (3, 4)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_network_declares_its_interface_and_the_fast_bernoulli_is_exact(arch):
    """log_bernoulli (the evaluator's Bernoulli log-likelihood) equals Bernoulli(logits)'s
    log_prob for gray and binary targets and particles, whatever the decoder computes it by."""
    vae = small("standard", arch=arch, channels=[4, 8])
    assert isinstance(vae.encoder, GaussianEncoder) and isinstance(vae.decoder, PixelDecoder)
    assert not hasattr(vae.encoder, "scale_param")  # the config says it; nothing read it
    z, gray = torch.randn(3, 2, 4), torch.rand(2, 784)
    for flat in (gray, gray.bernoulli()):
        expected = dist.Bernoulli(logits=vae.decoder.logits(z), validate_args=False)
        expected = expected.to_event(1).log_prob(flat)
        torch.testing.assert_close(vae.decoder.log_bernoulli(z, flat), expected)


def test_every_likelihood_is_a_pixel_model_without_figure_words():
    for pixels in LIKELIHOODS.values():
        assert isinstance(pixels, PixelModel) and not hasattr(pixels, "noun")


def test_the_evaluator_names_no_layer_of_the_networks():
    source = Path(evaluate.__file__).read_text()
    assert "fc2" not in source and "fc1" not in source and "networks" not in source


# --- each default once, beside its class ------------------------------------------------------


def test_each_component_fills_its_own_defaults_and_nulls_what_it_does_not_read():
    assert PriorConfig(name="mog").components == GaussianMixturePrior.defaults["components"] == 10
    assert PriorConfig(name="vamp").components == 500
    assert PriorConfig(name="mog", components=3).components == 3
    # N(0, I) reads no key: an older checkpoint's components=500 reads as today's default.
    assert PriorConfig(name="standard", components=500) == PriorConfig()
    old = build_vae((1, 28, 28), {"z_dim": 2, "prior": {"name": "standard", "components": 500}})
    assert config.as_dict(old.cfg) == config.as_dict(ModelConfig(z_dim=2))
    assert (PosteriorConfig(name="iaf").depth, PosteriorConfig(name="iaf").hidden) == (2, 320)
    assert PosteriorConfig(name="diagonal", depth=4) == PosteriorConfig()
    with pytest.raises(config.VaePyroError, match="model.prior.components=0 is not allowed"):
        PriorConfig(name="mog", components=0)


def test_the_help_names_each_prior_default_from_its_class():
    helps = dict(config.help_rows(config.TrainConfig))
    assert "vamp 500, mog 10" in helps["model.prior.components=null"]
    assert "[standard | vamp | mog]" in helps["model.prior.name=standard"]


def test_sample_prior_gives_means_and_one_draw_of_each_at_the_same_z():
    vae = small()
    pyro.set_rng_seed(3)
    means = vae.sample_prior(5)
    pyro.set_rng_seed(3)
    again, draws = vae.sample_prior(5, draws=True)
    torch.testing.assert_close(means, again)
    assert means.shape == draws.shape == (5, 1, 28, 28) and set(draws.unique().tolist()) <= {0, 1}


# --- the mixture of Gaussians -----------------------------------------------------------------


def test_weighted_shared_mixture_is_pyros_mixture_same_family():
    """Values and gradients (weights included) equal Pyro's MixtureSameFamily of the same
    components, also where a z sits on a component (the expansion's cancellation)."""
    loc = (3 * torch.randn(7, 5)).requires_grad_()
    scale = (0.05 + torch.rand(7, 5)).requires_grad_()
    logits = torch.randn(7).requires_grad_()
    z = torch.cat([3 * torch.randn(2, 4, 5), loc[:4].detach()[None] + 1e-3])  # (3, 4, 5)
    ours = SharedNormalMixture(loc, scale, logits).expand((4,))
    weights = dist.Categorical(logits=logits)
    pyros = dist.MixtureSameFamily(weights, dist.Normal(loc, scale).to_event(1)).expand((4,))
    a, b = ours.log_prob(z), pyros.log_prob(z)
    assert a.shape == b.shape == (3, 4)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    grads = [torch.autograd.grad(v.sum(), (loc, scale, logits)) for v in (a, b)]
    for g_ours, g_pyro in zip(*grads, strict=True):
        torch.testing.assert_close(g_ours, g_pyro, rtol=1e-4, atol=1e-3)
    assert grads[0][2].abs().sum() > 0  # the weights learn


def test_mog_prior_starts_as_equal_unit_gaussians_and_is_a_learned_module():
    vae, x = small(), torch.rand(2, 1, 28, 28)
    prior = vae.prior_net
    assert prior.loc.shape == prior.raw_scale.shape == (6, 4) and prior.logits.shape == (6,)
    torch.testing.assert_close(prior.scale(), torch.ones(6, 4))
    p = vae.prior(2, x)
    assert isinstance(p, dist.MixtureSameFamily)
    torch.testing.assert_close(p.mixture_distribution.probs, torch.full((2, 6), 1 / 6))
    with torch.no_grad():
        prior.raw_scale.fill_(-30.0)  # softplus keeps the scale positive however far it goes
    assert (prior.scale() > 0).all()
    poutine.trace(vae.model).get_trace(x)  # the model alone: p(z) reads no encoder
    names = set(pyro.get_param_store().keys())
    assert {"prior$$$loc", "prior$$$raw_scale", "prior$$$logits"} <= names
    assert not any(n.startswith("encoder$$$") for n in names)


# Tomczak & Welling's networks: gated layers, He initialisation, log-variance in [-6, 2].
TW18 = {"activation": "gated", "init": "he", "scale_param": "logvar", "scale_bounds": [-6, 2]}


@pytest.mark.parametrize("keys", [{}, TW18], ids=["default", "tw18"])
@pytest.mark.parametrize("posterior", list(POSTERIORS))
@pytest.mark.parametrize("prior", list(PRIORS))
def test_evaluator_weights_equal_pyro_traces_for_every_registered_prior(prior, posterior, keys):
    """log-weights = the model trace's log-joint minus the guide trace's log-prob, at the same z,
    for every prior in the registry (the mixture of Gaussians with trained-looking weights), with
    the default networks and with Tomczak & Welling's."""
    vae = small(prior, posterior, **keys)
    if prior == "mog":
        with torch.no_grad():
            vae.prior_net.logits.copy_(torch.randn(6))
            vae.prior_net.raw_scale.copy_(torch.randn(6, 4))
    x = torch.rand(3, 1, 28, 28).bernoulli()
    zs, expected = [], []
    for _ in range(3):
        guide_tr = poutine.trace(vae.guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
        model_tr.compute_log_prob()
        guide_tr.compute_log_prob()
        zs.append(guide_tr.nodes["latent"]["value"].detach())
        joint = model_tr.nodes["latent"]["log_prob"] + model_tr.nodes["obs"]["log_prob"]
        expected.append((joint - guide_tr.nodes["latent"]["log_prob"]).detach())
    got = log_weights(vae, x, torch.stack(zs).clone())
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-4, atol=2e-3)


TINY = [
    "model/prior=mog",
    "model.prior.components=5",
    "model.z_dim=4",
    "model.hidden_dim=32",
    "data.subset=300",
    "data.batch_size=100",
    "data.binarize=dynamic",
    "trainer.device=cpu",
]


@pytest.mark.parametrize("objective", ["trace", "iwae"])
def test_mog_prior_trains_checkpoints_and_resumes_bit_identically(objective, resumed_run):
    weights, straight = resumed_run(*TINY, f"elbo={objective}")
    assert {"prior_net.loc", "prior_net.raw_scale", "prior_net.logits"} <= weights.keys()
    assert weights["prior_net.logits"].abs().sum() > 0  # the weights moved from equal
    vae, _ = checkpoint.load_vae(straight)
    assert (vae.cfg.prior.name, vae.prior_net.components) == ("mog", 5)
    torch.testing.assert_close(vae.prior_net.loc, weights["prior_net.loc"])
    x = torch.rand(20, 1, 28, 28).bernoulli()
    stats = importance_sample(vae, x, 10)
    assert torch.isfinite(stats["log_px"]).all() and (stats["log_px"] >= stats["elbo"]).all()
