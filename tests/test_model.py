import math

import pyro
import pyro.poutine as poutine
import torch
from torch import nn

from vae_pyro import VAE
from vae_pyro.config import ModelConfig
from vae_pyro.estimators import negative_elbo
from vae_pyro.priors import PriorConfig


def _traces(vae, x):
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    return model_tr, guide_tr


def test_trace_sites_shapes_and_plate():
    vae = VAE((1, 28, 28), z_dim=50, hidden_dim=400)
    x = torch.rand(6, 1, 28, 28)
    model_tr, guide_tr = _traces(vae, x)
    for tr in (model_tr, guide_tr):
        latent = tr.nodes["latent"]
        assert latent["value"].shape == (6, 50)
        assert latent["fn"].event_shape == (50,)
        assert [f.name for f in latent["cond_indep_stack"]] == ["data"]
    obs = model_tr.nodes["obs"]
    assert obs["is_observed"]
    assert obs["fn"].batch_shape == (6,) and obs["fn"].event_shape == (784,)
    prior = model_tr.nodes["latent"]["fn"].base_dist
    assert torch.equal(prior.loc, torch.zeros(6, 50)) and torch.equal(
        prior.scale, torch.ones(6, 50)
    )


def test_modules_registered_in_param_store():
    vae = VAE((1, 28, 28), z_dim=2, hidden_dim=8)
    _traces(vae, torch.rand(2, 1, 28, 28))
    names = set(pyro.get_param_store().keys())
    assert {"encoder$$$fc1.weight", "encoder$$$fc21.bias", "encoder$$$fc22.weight"} <= names
    assert {"decoder$$$fc1.weight", "decoder$$$fc21.bias"} <= names


def test_elbo_matches_hand_computed_estimate():
    """Trace_ELBO on our model/guide equals log p(x|z) + log p(z) - log q(z|x) at the same z."""
    vae = VAE((1, 28, 28), z_dim=5, hidden_dim=16)
    x = torch.rand(3, 1, 28, 28)
    model_tr, guide_tr = _traces(vae, x)
    model_tr.compute_log_prob()
    guide_tr.compute_log_prob()
    z = guide_tr.nodes["latent"]["value"]
    loc, scale = vae.encoder(x)
    probs = vae.decoder(z)
    flat = x.reshape(3, -1)
    log_lik = (flat * probs.log() + (1 - flat) * (1 - probs).log()).sum()
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
    log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum()
    pyro_elbo = model_tr.log_prob_sum() - guide_tr.log_prob_sum()
    torch.testing.assert_close(pyro_elbo, log_lik + log_prior - log_q, rtol=1e-5, atol=1e-3)


def test_untrained_test_loss_is_in_the_784_ln2_region(mnist):
    """An untrained decoder outputs probabilities near 0.5: about 784 ln 2 = 543.4 nats per image.

    With zero-mean random logits the expected cross-entropy is at least ln 2 per pixel (Jensen),
    and PyTorch's default init gives logits of std ~0.5 plus a KL of 10-17 nats: measured
    578-590 nats for seeds 0-3. Anything outside [543, 620] means a wrong likelihood or scale.
    """
    vae = VAE(mnist.image_shape, z_dim=50, hidden_dim=400)
    loss = negative_elbo(vae, mnist.test.x)
    assert math.isfinite(loss)
    assert 784 * math.log(2) < loss < 620, loss


def test_reconstruct_and_prior_samples_are_images():
    vae = VAE((1, 28, 28), z_dim=4, hidden_dim=16)
    x = torch.rand(3, 1, 28, 28)
    recon = vae.reconstruct(x)
    prior = vae.sample_prior(5)
    assert recon.shape == x.shape and prior.shape == (5, 1, 28, 28)
    assert ((prior >= 0) & (prior <= 1)).all()


def test_the_default_model_is_the_tutorial_network_at_pytorchs_init():
    """The defaults of the keys added for Tomczak & Welling's networks (softplus layers,
    PyTorch's init, an unbounded log-scale, one decoder input) build the seed's network: the
    same names, and from the same seed the same weights as plain Linear layers made in order."""
    cfg = ModelConfig(z_dim=5, hidden_dim=16)
    assert (cfg.activation, cfg.init, cfg.scale_param, cfg.scale_bounds, cfg.decoder_reads) == (
        "softplus",
        "default",
        "exp",
        None,
        "z1",
    )
    torch.manual_seed(0)
    vae = VAE((1, 28, 28), cfg)
    torch.manual_seed(0)
    sizes = [(784, 16), (16, 5), (16, 5), (5, 16), (16, 784)]
    linears = [nn.Linear(*size) for size in sizes]
    names = ["encoder.fc1", "encoder.fc21", "encoder.fc22", "decoder.fc1", "decoder.fc21"]
    state = vae.state_dict()
    assert list(state) == [f"{n}.{p}" for n in names for p in ("weight", "bias")]
    for name, linear in zip(names, linears, strict=True):
        assert torch.equal(state[f"{name}.weight"], linear.weight)
        assert torch.equal(state[f"{name}.bias"], linear.bias)
    x = torch.rand(3, 1, 28, 28)
    hidden = nn.functional.softplus(linears[0](x.flatten(1)))
    loc, scale = vae.encoder(x)
    torch.testing.assert_close(loc, linears[1](hidden))
    torch.testing.assert_close(scale, linears[2](hidden).exp())


def test_vamp_pseudo_inputs_start_as_the_authors_near_0_05():
    """Tomczak & Welling's MNIST setting (their load_data): N(0.05, 0.01), through hardtanh."""
    cfg = ModelConfig(z_dim=4, hidden_dim=8, prior=PriorConfig(name="vamp", components=50))
    inputs = VAE((1, 28, 28), cfg).prior_net.inputs()
    assert inputs.shape == (50, 1, 28, 28) and inputs.min() >= 0
    assert abs(inputs.mean() - 0.05) < 1e-3 and abs(inputs.std() - 0.01) < 1e-3
