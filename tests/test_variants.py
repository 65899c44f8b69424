"""The variants: IWAE objective, VampPrior, IAF posterior, deeper networks. The maths is checked
against hand computations at fixed noise; every combination trains, resumes and evaluates."""

from __future__ import annotations

import math
import shutil

import pyro
import pyro.distributions as dist
import pytest
import torch
from PIL import Image
from pyro.infer import RenyiELBO, Trace_ELBO

from vae_pyro import checkpoint, config
from vae_pyro.config import ElboConfig, ModelConfig, PosteriorConfig, PriorConfig
from vae_pyro.errors import VaePyroError
from vae_pyro.figures import posterior_draws, prior_draws
from vae_pyro.model import VAE, build_elbo
from vae_pyro.sample import sample
from vae_pyro.train import train

PRIORS = ["standard", "vamp"]
POSTERIORS = ["diagonal", "iaf"]


def small(prior: str = "standard", posterior: str = "diagonal", **keys) -> VAE:
    cfg = ModelConfig(
        z_dim=4,
        hidden_dim=16,
        prior=PriorConfig(name=prior, components=7),
        posterior=PosteriorConfig(name=posterior, depth=2, hidden=12),
        **keys,
    )
    return VAE((1, 28, 28), cfg)


class _FixedNoise(dist.Normal):
    """A Normal whose reparametrized draw is loc + scale * a fixed noise tensor."""

    noise: torch.Tensor

    def rsample(self, sample_shape=()):
        return self.loc + self.scale * self.noise


def test_iwae_loss_is_the_log_mean_exp_of_k_log_weights_at_fixed_noise():
    vae, k = small(), 6
    x = torch.rand(5, 1, 28, 28).bernoulli()
    _FixedNoise.noise = torch.randn(k, 5, 4)
    vae.posterior_net.forward = lambda loc, scale, _: _FixedNoise(loc, scale).to_event(1)
    elbo = build_elbo(ElboConfig(name="iwae", num_particles=k))
    assert isinstance(elbo, RenyiELBO) and elbo.alpha == 0 and elbo.vectorize_particles
    loss = elbo.loss(vae.model, vae.guide, x)
    with torch.no_grad():  # by hand: w_k = p(x, z_k) / q(z_k | x), z_k = loc + scale * noise_k
        loc, scale = vae.encoder(x)
        z = loc + scale * _FixedNoise.noise
        q = dist.Normal(loc, scale).to_event(1)
        p = dist.Normal(torch.zeros(4), torch.ones(4)).to_event(1)
        bern = dist.Bernoulli(logits=vae.decoder.logits(z)).to_event(1)
        lw = bern.log_prob(x.reshape(5, -1)) + p.log_prob(z) - q.log_prob(z)  # (k, 5)
        by_hand = -float((lw.logsumexp(0) - math.log(k)).sum())
    assert loss == pytest.approx(by_hand, rel=1e-5)
    mean_lw = -float(lw.mean(0).sum())  # the ELBO of the same draws: a looser bound
    assert by_hand < mean_lw - 1e-3


def test_iwae_with_one_particle_is_the_elbo():
    vae = small()
    x = torch.rand(5, 1, 28, 28).bernoulli()
    _FixedNoise.noise = torch.randn(5, 4)
    vae.posterior_net.forward = lambda loc, scale, _: _FixedNoise(loc, scale).to_event(1)
    iwae = build_elbo(ElboConfig(name="iwae", num_particles=1)).loss(vae.model, vae.guide, x)
    elbo = Trace_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, x)
    assert iwae == pytest.approx(elbo, rel=1e-6)


def test_vamp_prior_log_prob_is_a_logsumexp_over_its_components():
    vae = small("vamp")
    z = torch.randn(3, 5, 4)  # (particles, images, z_dim)
    with torch.no_grad():
        got = vae.prior(5, z).log_prob(z)
        loc, scale = vae.encoder(vae.prior_net.inputs())
        per_component = torch.stack(
            [dist.Normal(loc[k], scale[k]).log_prob(z).sum(-1) for k in range(7)]
        )
    expected = per_component.logsumexp(0) - math.log(7)
    assert got.shape == (3, 5)
    torch.testing.assert_close(got, expected)
    inputs = vae.prior_net.inputs()
    assert inputs.shape == (7, 1, 28, 28) and inputs.min() >= 0 and inputs.max() <= 1


def test_shared_mixture_is_pyros_mixture_same_family_at_a_fraction_of_the_cost():
    """The VampPrior's mixture: log_prob (and its gradient) equal Pyro's MixtureSameFamily of
    the same components, also where a z sits on a component (the expansion's cancellation)."""
    from vae_pyro.priors import SharedNormalMixture

    loc = (3 * torch.randn(9, 5)).requires_grad_()
    scale = (0.02 + torch.rand(9, 5)).requires_grad_()
    z = torch.cat([3 * torch.randn(2, 4, 5), loc[:4].detach()[None] + 1e-3])  # (3, 4, 5)
    ours = SharedNormalMixture(loc, scale).expand((4,))
    weights = dist.Categorical(logits=torch.zeros(9))
    pyros = dist.MixtureSameFamily(weights, dist.Normal(loc, scale).to_event(1)).expand((4,))
    a, b = ours.log_prob(z), pyros.log_prob(z)
    assert a.shape == b.shape == (3, 4) and ours.batch_shape == (4,)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    grads = [torch.autograd.grad(v.sum(), (loc, scale)) for v in (a, b)]
    for g_ours, g_pyro in zip(*grads, strict=True):
        torch.testing.assert_close(g_ours, g_pyro, rtol=1e-4, atol=1e-3)
    assert ours.sample((6,)).shape == (6, 4, 5)


def test_iaf_log_prob_of_its_samples_is_base_minus_log_det_jacobian():
    vae = small(posterior="iaf")
    x = torch.rand(1, 1, 28, 28)
    loc, scale, hidden = (t.detach() for t in vae._encode(x))
    flows = [f.condition(hidden) for f in vae.posterior_net.flows]

    def push(u):  # base draw -> z through every flow step
        for flow in flows:
            u = flow(u)
        return u

    base = dist.Normal(loc, scale).to_event(1)
    u = base.sample()
    q = vae.posterior_net(loc, scale, hidden)
    jac = torch.autograd.functional.jacobian(lambda v: push(v[None])[0], u[0])  # (4, 4)
    by_hand = base.log_prob(u) - torch.linalg.slogdet(jac).logabsdet
    z = push(u)
    with torch.no_grad():
        torch.testing.assert_close(q.log_prob(z.clone()), by_hand, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(z, u)  # the flow does something
    # Its samples depend on x beyond the base Normal: the same base noise, another context.
    other = vae.posterior_net(loc, scale, hidden + 1.0)
    torch.manual_seed(0)
    a = q.sample()
    torch.manual_seed(0)
    b = other.sample()
    assert not torch.allclose(a, b)


def test_deeper_networks_add_layers_and_keep_the_seed_names():
    one, two = small(), small(hidden_layers=3)
    assert list(one.encoder.state_dict()) == [
        "fc1.weight",
        "fc1.bias",
        "fc21.weight",
        "fc21.bias",
        "fc22.weight",
        "fc22.bias",
    ]
    extra = [k for k in two.state_dict() if "deeper" in k]
    assert len(extra) == 8  # 2 more Linear layers in each of encoder and decoder
    out = two.decoder.logits(torch.randn(2, 4))
    assert out.shape == (2, 784)


COMBOS = [
    (prior, posterior, objective)
    for prior in PRIORS
    for posterior in POSTERIORS
    for objective in ("trace", "iwae")
]
TINY = [
    "model.z_dim=4",
    "model.hidden_dim=32",
    "data.subset=300",
    "data.batch_size=100",
    "data.binarize=dynamic",
    "trainer.device=cpu",
]


def _combo(prior, posterior, objective):
    k = ["elbo.num_particles=3"] if objective == "iwae" else []
    layers = ["model.hidden_layers=2"] if prior == posterior == "vamp" else []
    # Each component's own keys only (a key the chosen one does not read is refused).
    own = ["model.prior.components=10"] if prior != "standard" else []
    own += ["model.posterior.hidden=16"] if posterior == "iaf" else []
    return [
        f"model/prior={prior}",
        f"model/posterior={posterior}",
        *own,
        f"elbo={objective}",
        *k,
        *layers,
    ]


@pytest.mark.parametrize(
    ("prior", "posterior", "objective"), COMBOS, ids=["-".join(c) for c in COMBOS]
)
def test_every_combination_trains_and_resumes_bit_identically(
    prior, posterior, objective, resumed_run
):
    _, straight = resumed_run(*TINY, *_combo(prior, posterior, objective))
    vae, ckpt = checkpoint.load_vae(straight)
    assert (vae.cfg.prior.name, vae.cfg.posterior.name) == (prior, posterior)


def test_sampling_draws_from_the_vamp_prior_and_through_the_flow():
    vae = small("vamp", "iaf")
    with torch.no_grad():  # move every component far from N(0, I)'s mass
        vae.encoder.fc21.bias.fill_(6.0)
    like = next(vae.parameters())
    pyro.set_rng_seed(1)
    means, _ = prior_draws(vae, 16)
    pyro.set_rng_seed(1)
    z = vae.prior(16, like).sample()
    assert z.mean() > 3  # drawn from the mixture, not N(0, I)
    torch.testing.assert_close(means, vae.likelihood(z).mean.reshape(16, 1, 28, 28))
    x = torch.rand(2, 1, 28, 28)
    pyro.set_rng_seed(2)
    means, _ = posterior_draws(vae, x, 3)
    pyro.set_rng_seed(2)
    z = vae.posterior(x).sample((3,)).transpose(0, 1)
    torch.testing.assert_close(means, vae.likelihood(z).mean.reshape(2, 3, 1, 28, 28))


@pytest.fixture(scope="module")
def vamp_run(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from vae_pyro.cli import CONF_DIR

    run = tmp_path_factory.mktemp("vamp")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(
            "train", overrides=[*TINY, *_combo("vamp", "iaf", "iwae"), "trainer.epochs=1"]
        )
    train(cfg, run)
    return run


def _sample(run, tmp_path, *overrides):
    from hydra import compose, initialize_config_dir

    from vae_pyro.cli import CONF_DIR

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("sample", overrides=[f"run_dir={run}", f"out_dir={tmp_path}", *overrides])
    return sample(cfg)


def test_sample_decodes_given_z_and_refuses_a_wrong_length(vamp_run, tmp_path):
    written = _sample(vamp_run, tmp_path, "z=[[0.28,1.22,-0.46,0],[1,2,3,4]]")
    assert list(written) == ["decoded"] and Image.open(written["decoded"]).size[0] > 0
    from vae_pyro.errors import VaePyroError

    with pytest.raises(
        VaePyroError, match="vector 0 has 3 numbers; this run's latent space has z_dim=4"
    ):
        _sample(vamp_run, tmp_path, "z=[[0.1,0.2,0.3]]")


def test_sample_decodes_codes_from_a_npy_file(vamp_run, tmp_path):
    np = pytest.importorskip("numpy")
    codes = tmp_path / "codes.npy"
    np.save(codes, np.array([[0.28, 1.22, -0.46, 0.0], [1, 2, 3, 4]], dtype=np.float32))
    by_file = _sample(vamp_run, tmp_path / "a", f"z_file={codes}")
    by_list = _sample(vamp_run, tmp_path / "b", "z=[[0.28,1.22,-0.46,0],[1,2,3,4]]")
    assert list(by_file) == ["decoded"]
    assert by_file["decoded"].read_bytes() == by_list["decoded"].read_bytes()
    from vae_pyro.errors import VaePyroError

    np.save(codes, np.zeros((2, 3)))
    with pytest.raises(VaePyroError, match="vector 0 has 3 numbers"):
        _sample(vamp_run, tmp_path / "c", f"z_file={codes}")
    with pytest.raises(VaePyroError, match="z and z_file both give latent vectors"):
        _sample(vamp_run, tmp_path / "d", f"z_file={codes}", "z=[[0,0,0,0]]")
    with pytest.raises(VaePyroError, match="z_file: no such file"):
        _sample(vamp_run, tmp_path / "e", f"z_file={tmp_path / 'none.npy'}")


def test_decoded_png_titles_fit_their_panels(tmp_path):
    """One decoded vector makes a 30-pixel grid: each panel is widened to its title, so the two
    titles cannot overlap."""
    from vae_pyro import plots

    means = torch.rand(1, 1, 28, 28)
    path = plots.prior_samples(means, tmp_path / "d.png", means.bernoulli(), source="given z")
    titles = ["decoder means, given z", "a Bernoulli sample of each"]
    needed = sum(plots._title_px(title) for title in titles) + plots.GAP_PX
    assert Image.open(path).size[0] >= needed > 2 * 30 + plots.GAP_PX


def test_sample_encodes_the_users_images_converted_to_the_run(vamp_run, tmp_path):
    colour = tmp_path / "digit.png"
    Image.new("RGB", (40, 56), (200, 10, 30)).save(colour)  # colour, another size
    out = tmp_path / "out"
    standard = _sample(vamp_run, out, "num_samples=4")  # posterior.png of the test images
    before = standard["posterior"].read_bytes()
    written = _sample(vamp_run, out, f"images=[{colour}]", "num_samples=4")
    assert list(written) == ["encoded"] and written["encoded"] == out / "encoded.png"
    assert standard["posterior"].read_bytes() == before  # never replaced by the user's images
    from vae_pyro.errors import VaePyroError

    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(VaePyroError, match=f"images: cannot read {text} as an image"):
        _sample(vamp_run, tmp_path / "out2", f"images=[{text}]")
    with pytest.raises(VaePyroError, match="images: no such file"):
        _sample(vamp_run, tmp_path / "out3", f"images=[{tmp_path / 'missing.png'}]")


def test_tsne_latent_figure(vamp_run, tmp_path, monkeypatch):
    from vae_pyro import figures

    assert figures.tsne_2d(torch.randn(200, 4), seed=0).shape == (200, 2)
    seen = []  # the figure gets every test image's code (a fast stand-in does the embedding)
    monkeypatch.setattr(figures, "tsne_2d", lambda z, seed: seen.append(z.shape) or z[:, :2])
    written = _sample(vamp_run, tmp_path, "latent.method=tsne")
    assert seen == [(10000, 4)] and written["latent"].is_file()


def test_released_checkpoint_still_loads_as_the_plain_model(tmp_path):
    from pathlib import Path

    fixture = Path(__file__).parent / "fixtures" / "checkpoint_v1.pt"
    shutil.copy(fixture, tmp_path / "checkpoint.pt")
    vae, ckpt = checkpoint.load_vae(tmp_path / "checkpoint.pt")
    assert (vae.cfg.prior.name, vae.cfg.posterior.name, vae.cfg.hidden_layers) == (
        "standard",
        "diagonal",
        1,
    )


@pytest.mark.parametrize(("name", "layers"), [("vamp_tw18", 1), ("hvae_vamp_tw18", 2)])
def test_the_tw18_presets_are_the_papers_settings(name, layers, make_cfg):
    cfg = make_cfg(f"+experiment={name}")
    config.refuse_unread(cfg, config.TrainConfig)  # every key read
    run = config.to_object(cfg, config.TrainConfig)
    m = run.model
    assert (m.z_dim, m.hidden_dim, m.hidden_layers) == (40, 300, 2)
    assert (m.activation, m.init) == ("gated", "he")
    assert (m.scale_param, m.scale_bounds, m.kl_warmup_epochs) == ("logvar", [-6.0, 2.0], 100)
    assert (m.prior.name, m.prior.components, m.latent_layers) == ("vamp", 500, layers)
    assert (run.data.binarize, run.data.subset, run.data.batch_size) == ("dynamic", 50000, 100)
    assert (run.optim.lr, run.optim.normalize_grads) == (5e-4, True)  # their AdamNormGrad
    if layers == 2:
        assert (m.lower_z_dim, m.decoder_reads, m.decoder_input_dim) == (40, "z1z2", 80)


def test_keys_of_the_new_parts_are_refused_where_unread_or_out_of_range(make_cfg):
    cfg = make_cfg("model=conv", "model.activation=gated")
    with pytest.raises(VaePyroError, match=r"activation=gated is not read by model.arch=conv"):
        config.refuse_unread(cfg, config.TrainConfig)
    for given in ([2, -6], [0, float("inf")], [1]):
        with pytest.raises(VaePyroError, match="use two finite numbers, low < high"):
            ModelConfig(scale_bounds=given)
    for key, value in (("activation", "relu"), ("init", "xavier")):
        with pytest.raises(VaePyroError, match=rf"model.{key}: Invalid value '{value}'"):
            config.to_object({"model": {key: value}}, config.TrainConfig)
