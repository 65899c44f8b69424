"""The modelling options: binarization, ELBO variants, KL weight and warm-up, encoder scale
head, pixel likelihood. Maths checked exactly where it can be; each option trains."""

import json
import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from vae_pyro import checkpoint
from vae_pyro.config import ModelConfig
from vae_pyro.data import load_data
from vae_pyro.estimators import importance_sample, summarize
from vae_pyro.model import VAE, build_vae, kl_scale
from vae_pyro.train import train

SMALL = ["model.z_dim=8", "model.hidden_dim=64", "data.subset=512", "trainer.device=cpu"]


def _elbo(cls, **kwargs):
    return cls(max_plate_nesting=1, vectorize_particles=True, **kwargs)


def test_kl_weight_scales_exactly_the_kl_term():
    """Same seed = same z: the loss is -log p(x|z) + w * (log q(z|x) - log p(z)) at that z."""
    vae = VAE((1, 28, 28), z_dim=4, hidden_dim=16)
    x = torch.rand(5, 1, 28, 28)
    pyro.set_rng_seed(3)
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    z = guide_tr.nodes["latent"]["value"]
    with torch.no_grad():
        recon = -float(vae.likelihood(z).log_prob(x.reshape(5, -1)).sum())
        kl_mc = float((vae.posterior(x).log_prob(z) - vae.prior(5, x).log_prob(z)).sum())
        kl_exact = float(torch.distributions.kl_divergence(vae.posterior(x), vae.prior(5, x)).sum())
    for cls, kl in ((Trace_ELBO, kl_mc), (TraceMeanField_ELBO, kl_exact)):
        for weight in (0.0, 0.5, 1.0, 2.0):
            pyro.set_rng_seed(3)
            loss = _elbo(cls).loss(vae.model, vae.guide, x, kl_scale=weight)
            assert loss == pytest.approx(recon + weight * kl, rel=1e-6), (cls, weight)
    assert kl_mc != pytest.approx(kl_exact, rel=1e-3)  # the two estimators differ per draw


def test_analytic_and_monte_carlo_kl_agree_within_monte_carlo_error():
    vae = VAE((1, 28, 28), z_dim=6, hidden_dim=32)
    x = torch.rand(4, 1, 28, 28)
    n = 4000
    pyro.set_rng_seed(0)
    loss_mc = _elbo(Trace_ELBO, num_particles=n).loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(0)
    loss_exact = _elbo(TraceMeanField_ELBO, num_particles=n).loss(vae.model, vae.guide, x)
    # Same seed, same z: the losses differ only by mean(MC KL) - analytic KL.
    with torch.no_grad():
        q, p = vae.posterior(x), vae.prior(4, x)
        z = q.sample((n,))
        per_particle = (q.log_prob(z) - p.log_prob(z)).sum(-1)
        kl_exact = float(torch.distributions.kl_divergence(q, p).sum())
    se = float(per_particle.std() / math.sqrt(n))
    assert abs(float(per_particle.mean()) - kl_exact) < 4 * se
    assert abs(loss_mc - loss_exact) < 4 * se, (loss_mc - loss_exact, se)
    assert kl_exact > 20 * se  # the test would see a wrong KL, not only noise


def test_kl_warmup_is_linear_from_zero_to_the_weight():
    cfg = ModelConfig(kl_weight=0.8, kl_warmup_epochs=4)
    assert [kl_scale(cfg, e) for e in range(1, 8)] == pytest.approx(
        [0.0, 0.2, 0.4, 0.6, 0.8, 0.8, 0.8]
    )
    assert [kl_scale(ModelConfig(kl_weight=0.5), e) for e in (1, 9)] == [0.5, 0.5]
    assert kl_scale(ModelConfig(), 1) == 1.0  # the default: the plain ELBO


def test_scale_heads_keep_layer_names_and_transform():
    h = torch.linspace(-3, 3, 7)
    names = None
    for param, expected in (
        ("exp", h.exp()),
        ("logvar", (0.5 * h).exp()),
        ("softplus", torch.nn.functional.softplus(h)),
    ):
        vae = build_vae((1, 28, 28), {"z_dim": 7, "hidden_dim": 5, "scale_param": param})
        with torch.no_grad():
            vae.encoder.fc22.weight.zero_()
            vae.encoder.fc22.bias.copy_(h)
            _, scale = vae.encoder(torch.rand(2, 1, 28, 28))
        torch.testing.assert_close(scale, expected.expand(2, 7))
        keys = list(vae.state_dict())
        assert names is None or keys == names  # fc1/fc21/fc22 whatever the head means
        names = keys


def test_old_model_config_builds_the_original_model():
    vae = build_vae((1, 28, 28), {"z_dim": 4, "hidden_dim": 8})
    assert vae.likelihood_name == "bernoulli" and vae.cfg.scale_param == "exp"
    assert not hasattr(vae.decoder, "log_scale")


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "gaussian"])
def test_likelihood_means_are_images(likelihood):
    vae = VAE((1, 28, 28), z_dim=4, hidden_dim=16, likelihood=likelihood)
    assert hasattr(vae.decoder, "log_scale") == (likelihood == "gaussian")
    for images in (vae.sample_prior(3), vae.reconstruct(torch.rand(3, 1, 28, 28))):
        assert images.shape == (3, 1, 28, 28) and ((images >= 0) & (images <= 1)).all()


def test_static_and_dynamic_binarization_data():
    gray = load_data("mnist", subset=1000)
    static = load_data("mnist", subset=1000, binarize="static")
    dynamic = load_data("mnist", subset=1000, binarize="dynamic")
    for x in (static.train.x, static.test.x, dynamic.test.x):
        assert ((x == 0) | (x == 1)).all()
    # A Bernoulli(gray) draw: exact where the gray level is 0 or 1, mean near the gray level.
    for drawn, source in ((static.train.x, gray.train.x), (static.test.x, gray.test.x)):
        assert torch.equal(drawn[source == 0], source[source == 0])
        assert torch.equal(drawn[source == 1], source[source == 1])
        assert abs(float(drawn.mean() - source.mean())) < 0.002
    # Fixed draws: the same on every load and for every subset; one test draw for both.
    assert torch.equal(static.train.x, load_data("mnist", binarize="static").train.x[:1000])
    assert torch.equal(static.test.x, dynamic.test.x)
    # Dynamic: the stored training images stay gray; each use is a fresh draw.
    assert torch.equal(dynamic.train.x, gray.train.x)
    idx = torch.arange(100)
    first, second = dynamic.train_batch(idx), dynamic.train_batch(idx)
    assert ((first == 0) | (first == 1)).all() and not torch.equal(first, second)
    assert torch.equal(static.train_batch(idx), static.train_batch(idx))
    assert "dynamic" in dynamic.protocol and "static" in static.protocol


@pytest.mark.parametrize("binarize", ["none", "static", "dynamic"])
def test_training_sees_fresh_draws_each_epoch_only_when_dynamic(
    binarize, make_cfg, tmp_path, monkeypatch
):
    """One training image, two epochs: what svi.step received each time."""
    seen = []
    step = SVI.step

    def spy(self, *args, **kwargs):
        seen.append(args[0].clone())
        return step(self, *args, **kwargs)

    monkeypatch.setattr(SVI, "step", spy)
    cfg = make_cfg(*SMALL, "data.subset=1", "trainer.epochs=2", f"data.binarize={binarize}")
    train(cfg, tmp_path)
    assert len(seen) == 2
    binary = all(((x == 0) | (x == 1)).all() for x in seen)
    assert binary == (binarize != "none")
    assert torch.equal(seen[0], seen[1]) == (binarize != "dynamic")


OPTIONS = [
    ["elbo=meanfield"],
    ["elbo=jit"],
    ["elbo.num_particles=3"],
    ["elbo=meanfield", "elbo.num_particles=3"],
    ["model.kl_weight=0.5", "model.kl_warmup_epochs=3"],
    ["model.kl_weight=0"],
    ["model.scale_param=logvar"],
    ["model.scale_param=softplus"],
    ["model.likelihood=continuous_bernoulli"],
    ["model.likelihood=gaussian"],
    ["data.binarize=static"],
    ["data.binarize=dynamic", "model.likelihood=continuous_bernoulli"],
]


@pytest.mark.parametrize("overrides", OPTIONS, ids=[" ".join(o) for o in OPTIONS])
def test_each_option_trains_an_epoch_with_finite_losses(overrides, make_cfg, tmp_path, mnist):
    cfg = make_cfg(*SMALL, "trainer.epochs=1", *overrides)
    final = train(cfg, tmp_path)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (record,) = [json.loads(line) for line in lines]
    assert math.isfinite(record["train_loss"]) and math.isfinite(final)
    vae, ckpt = checkpoint.load_vae(tmp_path / "checkpoint.pt")  # the option survives a reload
    for key, value in (o.split("=") for o in overrides if "." in o.split("=")[0]):
        group, name = key.split(".")
        assert str(ckpt.config[group][name]) == str(type(ckpt.config[group][name])(value))
    stats = importance_sample(vae, mnist.test.x[:20], 10)
    assert all(math.isfinite(v) for v in summarize(stats, 10).values())
