"""Two stochastic layers (model.latent_layers=2): z2 ~ p(z2), z1 ~ p(z1 | z2), x ~ p(x | z1),
inferred as q(z2 | x) q(z1 | x, z2). The evaluator's log-weights against Pyro's traces for every
prior x posterior, Pyro's objectives against them at the same draws, training, bit-identical
resume, evaluate and sample through the CLI, and the keys' refusals."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pyro
import pyro.poutine as poutine
import pytest
import torch

from vae_pyro import checkpoint
from vae_pyro.config import ElboConfig, ModelConfig
from vae_pyro.errors import VaePyroError
from vae_pyro.estimators import importance_sample, log_weights
from vae_pyro.model import VAE, build_elbo
from vae_pyro.posteriors import POSTERIORS, PosteriorConfig
from vae_pyro.priors import PRIORS, PriorConfig
from vae_pyro.schema import to_object
from vae_pyro.train import train


def two_layers(prior: str = "standard", posterior: str = "diagonal", **keys) -> VAE:
    cfg = ModelConfig(
        z_dim=3,
        lower_z_dim=5,
        latent_layers=2,
        hidden_dim=16,
        prior=PriorConfig(name=prior, components=4),
        posterior=PosteriorConfig(name=posterior, depth=2, hidden=12),
        **keys,
    )
    vae = VAE((1, 28, 28), cfg)
    if prior == "mog":  # trained-looking weights, not the equal start
        with torch.no_grad():
            vae.prior_net.logits.copy_(torch.randn(4))
            vae.prior_net.raw_scale.copy_(torch.randn(4, 3))
    return vae


def test_the_model_has_two_latent_sites_sized_by_the_keys():
    vae = two_layers()
    x = torch.rand(4, 1, 28, 28).bernoulli()
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    for tr in (guide_tr, model_tr):
        assert tr.nodes["latent"]["value"].shape == (4, 3)
        assert tr.nodes["lower"]["value"].shape == (4, 5)
    assert vae.decoder.fc1.in_features == 5  # the decoder reads z1
    assert ModelConfig(z_dim=50, latent_layers=2).decoder_z_dim == 100  # Burda's 100 under 50
    assert ModelConfig(z_dim=50).decoder_z_dim == 50


# Tomczak & Welling's HVAE: gated layers, He initialisation, log-variances in [-6, 2] (q and
# p(z1 | z2) alike), and the decoder p(x | z1, z2).
TW18 = {
    "activation": "gated",
    "init": "he",
    "scale_param": "logvar",
    "scale_bounds": [-6, 2],
    "decoder_reads": "z1z2",
}
PATHS = {**TW18, "merge": "paths"}  # and a first layer per input, q(z1 | x, z2) reading x
NETWORKS = pytest.mark.parametrize("keys", [{}, TW18, PATHS], ids=["default", "tw18", "tw18-paths"])


def test_the_decoder_reads_z1_and_z2_side_by_side():
    vae = two_layers(**TW18)
    assert vae.decoder.fc1.weight.shape == (2 * 16, 5 + 3)  # gated: two halves of 16
    assert ModelConfig(z_dim=40, lower_z_dim=40, latent_layers=2, **TW18).decoder_input_dim == 80
    x = torch.rand(4, 1, 28, 28).bernoulli()
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    z2, z1 = (guide_tr.nodes[s]["value"] for s in ("latent", "lower"))
    expected = vae.decoder.logits(torch.cat([z1, z2], -1))
    torch.testing.assert_close(model_tr.nodes["obs"]["fn"].base_dist.logits, expected)
    for tr in (guide_tr, model_tr):
        assert tr.nodes["latent"]["value"].shape == (4, 3)
        assert tr.nodes["lower"]["value"].shape == (4, 5)


def test_merge_paths_gives_each_input_a_first_layer_and_q_reads_the_image():
    vae = two_layers(**PATHS)
    fc1 = vae.decoder.fc1
    assert (fc1.a.in_features, fc1.b.in_features) == (5, 3)  # z1, z2
    assert vae.decoder.fc21.in_features == 2 * 16  # one hidden layer: the paths side by side
    deeper = two_layers(**PATHS, hidden_layers=2).decoder
    assert (deeper.deeper[0].in_features, deeper.fc21.in_features) == (2 * 16, 16)  # joined
    q = vae.lower.posterior.fc1
    assert (q.a.in_features, q.b.in_features) == (784, 3)  # x itself, z2
    x = torch.rand(4, 1, 28, 28).bernoulli()
    z2, hidden = torch.randn(4, 3), vae.encoder.features(x)
    flat = x.reshape(4, -1)
    moved = vae.lower.q(1 - flat, hidden, z2).base_dist.loc  # other pixels, the same h(x)
    assert not torch.allclose(vae.lower.q(flat, hidden, z2).base_dist.loc, moved)
    with pytest.raises(VaePyroError, match="model.merge=paths is how the networks of two"):
        ModelConfig(merge="paths")


@NETWORKS
@pytest.mark.parametrize("posterior", list(POSTERIORS))
@pytest.mark.parametrize("prior", list(PRIORS))
def test_two_layer_log_weights_equal_pyro_traces(prior, posterior, keys):
    """log p(x, z1, z2) - log q(z1, z2 | x) from the evaluator = the model trace's log-joint
    minus the guide trace's log-prob at the guide's draws, for every prior and posterior, with
    the default networks and with Tomczak & Welling's."""
    vae = two_layers(prior, posterior, **keys)
    x = torch.rand(3, 1, 28, 28).bernoulli()
    draws, expected = {"latent": [], "lower": []}, []
    for _ in range(3):
        guide_tr = poutine.trace(vae.guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
        model_tr.compute_log_prob()
        guide_tr.compute_log_prob()
        joint = sum(model_tr.nodes[s]["log_prob"] for s in ("latent", "lower", "obs"))
        q = sum(guide_tr.nodes[s]["log_prob"] for s in ("latent", "lower"))
        expected.append((joint - q).detach())
        for site in draws:
            draws[site].append(guide_tr.nodes[site]["value"].detach())
    given = {site: torch.stack(values) for site, values in draws.items()}
    got = log_weights(vae, x, given)
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-4, atol=2e-3)


@NETWORKS
@pytest.mark.parametrize("objective", ["trace", "jit", "iwae"])
@pytest.mark.parametrize("prior", list(PRIORS))
def test_pyros_objective_at_the_same_draws_is_the_evaluators_bound(prior, objective, keys):
    """With the same seed, Pyro's objective draws what the evaluator draws: Trace_ELBO (and its
    JIT) is minus the log-weight, IWAE (RenyiELBO, alpha 0, K = 4) minus the log-mean-exp of K
    of them, per image, summed over the batch."""
    vae = two_layers(prior, **keys)
    x = torch.rand(6, 1, 28, 28).bernoulli()
    k = 4 if objective == "iwae" else 1
    elbo = build_elbo(ElboConfig(name=objective, num_particles=k))
    pyro.set_rng_seed(3)
    loss = elbo.loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(3)
    with torch.no_grad():
        _, log_w = vae.importance(x)(k)
    bound = float((log_w.logsumexp(0) - math.log(k)).sum())
    assert loss == pytest.approx(-bound, rel=1e-5, abs=1e-2)


def test_importance_sampling_is_a_tighter_bound_than_the_elbo():
    vae = two_layers("vamp")
    x = torch.rand(10, 1, 28, 28).bernoulli()
    stats = importance_sample(vae, x, 50, max_batch_elements=120)  # several particle chunks
    assert torch.isfinite(stats["log_px"]).all() and (stats["log_px"] >= stats["elbo"]).all()
    assert (stats["ess"] >= 1).all() and (stats["ess"] <= 50).all()


@pytest.mark.parametrize(("keys", "reads"), [({}, 5), (TW18, 5 + 3)], ids=["z1", "z1z2"])
def test_figures_read_both_layers(keys, reads):
    vae = two_layers(**keys).eval()
    x = torch.rand(4, 1, 28, 28).bernoulli()
    assert vae.posterior_sample(x, 7).shape == (7, 4, reads)  # what the decoder reads, via z2
    assert vae.code(x).shape == (4, 3) and vae.code(x, layer=1).shape == (4, 5)
    assert vae.descend(vae.code(x)).shape == (4, reads)
    means, draws = vae.sample_prior(6, draws=True)
    assert means.shape == draws.shape == (6, 1, 28, 28)
    assert vae.reconstruct(x).shape == x.shape


def test_keys_of_the_lower_layer_without_two_layers_are_refused():
    with pytest.raises(VaePyroError, match="model.lower_z_dim=20 sizes the lower"):
        ModelConfig(lower_z_dim=20)
    with pytest.raises(VaePyroError, match=r"model.latent_layers=3 is not allowed: use 1 or 2"):
        ModelConfig(latent_layers=3)
    with pytest.raises(VaePyroError, match="model.decoder_reads=z1z2 lets the decoder read the"):
        ModelConfig(decoder_reads="z1z2")
    with pytest.raises(VaePyroError, match=r"decoder_reads: Invalid value 'z2'.*z1, z1z2"):
        to_object({"latent_layers": 2, "decoder_reads": "z2"}, ModelConfig)


TINY = [
    "model.latent_layers=2",
    "model.z_dim=3",
    "model.lower_z_dim=4",
    "model.hidden_dim=24",
    "data.subset=300",
    "data.batch_size=100",
    "data.binarize=dynamic",
    "trainer.device=cpu",
]


TW18_KEYS = [f"model.{k}={v}".replace(" ", "") for k, v in TW18.items()]


@pytest.mark.parametrize(
    "variant",
    [
        ["elbo=trace"],
        ["elbo=iwae", "model/prior=vamp", "model.prior.components=5"],
        ["model/prior=vamp", "model.prior.components=5", *TW18_KEYS],
        [
            *("model/prior=vamp", "model.prior.components=5", *TW18_KEYS, "model.merge=paths"),
            "optim.normalize_grads=true",  # and their optimizer: the preset hvae_vamp_tw18
        ],
    ],
    ids=["trace", "iwae-vamp", "vamp-tw18", "vamp-tw18-paths"],
)
def test_two_layers_train_and_resume_bit_identically(variant, resumed_run):
    weights, straight = resumed_run(*TINY, *variant)
    assert {"lower.prior.fc21.weight", "lower.posterior.fc22.bias"} <= weights.keys()
    vae, _ = checkpoint.load_vae(straight)
    reads = 4 + 3 if "model.decoder_reads=z1z2" in variant else 4
    first = vae.decoder.fc1
    assert vae.layers == 2
    assert (
        first.a.in_features + first.b.in_features if "paths" in str(variant) else first.in_features
    ) == reads


@pytest.mark.slow
def test_a_two_layer_run_evaluates_and_samples_through_the_cli(tmp_path):
    run_dir = tmp_path / "run"
    python = [sys.executable, "-m"]
    steps = [
        ["vae_pyro.train", *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}"],
        ["vae_pyro.evaluate", f"run_dir={run_dir}", "num_particles=20", "num_images=50"],
        ["vae_pyro.sample", f"run_dir={run_dir}", "latent.layer=1", "interpolation.steps=3"],
    ]
    said = []
    for step in steps:
        proc = subprocess.run([*python, *step], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        said.append(proc.stdout + proc.stderr)
    assert "mlp z_dim 3 over z1 of 4, prior standard" in said[0]  # the start-up line
    assert "IW K=20: 50 of 50 images" in said[1]  # progress in a log file, not only a terminal
    record = json.loads((run_dir / "eval.json").read_text())
    assert record["num_images"] == 50 and record["nll"] <= record["negative_elbo"] + 1e-6
    figures = {p.name for p in (run_dir / "samples").iterdir()}
    assert {"posterior.png", "prior.png", "interpolation.png", "latent.png"} <= figures
    proc = subprocess.run(
        [*python, "vae_pyro.sample", f"run_dir={run_dir}", "latent.layer=2", "out_dir=x"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr


def test_latent_layer_2_of_a_one_layer_run_is_one_line(tmp_path, make_cfg):
    run_dir = tmp_path / "one"
    cfg = make_cfg("model.z_dim=2", "model.hidden_dim=16", "data.subset=200", "trainer.epochs=1")
    train(cfg, run_dir)
    proc = subprocess.run(
        [sys.executable, "-m", "vae_pyro.sample", f"run_dir={run_dir}", "latent.layer=2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith(
        "latent.layer=2: this run has 1 stochastic layer (model.latent_layers=1); "
        "give 1 or leave it out"
    )
    assert not (run_dir / "samples").exists()
