"""The importance-weighted estimator and the evaluate entry point.

Checked against an exact log p(x) (linear-Gaussian model), against Pyro's own traces of
vae.model / vae.guide, and on a trained VAE (IW >= ELBO, rising with K).
"""

import json
import math
import subprocess
import sys
import types

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from hydra import compose, initialize_config_dir
from pyro.infer import Trace_ELBO
from torch import nn

from vae_pyro import checkpoint, estimators, evaluate
from vae_pyro.cli import CONF_DIR
from vae_pyro.estimators import importance_sample, log_weights, negative_elbo, summarize
from vae_pyro.model import VAE
from vae_pyro.train import train


class LinearGaussian(nn.Module):
    """z ~ N(0, I_d), x | z ~ N(W z + c, s^2 I_D), so p(x) = N(c, W W^T + s^2 I) exactly.

    q(z | x) is the exact posterior mean shifted by 0.3, with 2.5 times its marginal standard
    deviations and no correlations: a poor guide (K = 1 is ~20 nats loose) that still covers
    the posterior, so the weights have a finite variance.
    """

    def __init__(self, d: int = 3, D: int = 8, s: float = 0.3) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.z_dim, self.s = d, s
        self.W = torch.randn(D, d, generator=g, dtype=torch.float64)
        self.c = torch.randn(D, generator=g, dtype=torch.float64)
        precision = torch.eye(d, dtype=torch.float64) + self.W.T @ self.W / s**2
        self.post_cov = torch.linalg.inv(precision)

    def marginal(self) -> dist.Distribution:
        cov = self.W @ self.W.T + self.s**2 * torch.eye(len(self.c), dtype=torch.float64)
        return dist.MultivariateNormal(self.c, cov)

    def exact_posterior(self, x: torch.Tensor) -> dist.Distribution:
        loc = (x - self.c) @ self.W @ self.post_cov / self.s**2
        return dist.MultivariateNormal(loc, self.post_cov)

    def prior(self, batch: int, like: torch.Tensor) -> dist.Distribution:
        return dist.Normal(like.new_zeros(batch, self.z_dim), 1.0).to_event(1)

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        loc = self.exact_posterior(x).loc + 0.3
        return dist.Normal(loc, 2.5 * self.post_cov.diagonal().sqrt()).to_event(1)

    def likelihood(self, z: torch.Tensor) -> dist.Distribution:
        return dist.Normal(z @ self.W.T + self.c, self.s).to_event(1)


def test_iw_estimate_converges_to_exact_log_px_from_below():
    lg = LinearGaussian()
    x = lg.marginal().sample((400,))
    exact = lg.marginal().log_prob(x)
    # The exact ELBO: log p(x) - KL(q(z|x) || p(z|x)), both Gaussian.
    q = lg.posterior(x).base_dist
    q_full = dist.MultivariateNormal(q.loc, scale_tril=torch.diag_embed(q.scale))
    exact_elbo = exact - torch.distributions.kl_divergence(q_full, lg.exact_posterior(x))
    gaps = []
    for k in (1, 10, 100, 1000, 10000):
        stats = importance_sample(lg, x, k, max_batch_elements=200_000)
        if k == 1:  # one weight: its log is both the IW estimate and the ELBO estimate
            torch.testing.assert_close(stats["log_px"], stats["elbo"])
        diff = stats["log_px"] - exact  # per image; E[diff] <= 0 by Jensen
        se = float(diff.std() / math.sqrt(len(x)))  # pure Monte Carlo spread: exact is exact
        gaps.append(-float(diff.mean()))
        assert gaps[-1] > -3 * se, (k, gaps[-1], se)  # not above log p(x) on average
    # Measured gaps (nats): 20.8, 2.3, 0.27, 0.016, 0.006 for K = 1, 10, ..., 10^4.
    assert gaps[0] > 10, gaps
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3], gaps
    assert gaps[-1] < 0.02 and gaps[-1] < gaps[0] / 1000, gaps
    # The delta-method Monte Carlo error matches the spread seen (measured 0.0029 vs 0.0033).
    mc_se = summarize(stats, 10000)["nll_mc_se"]
    assert se / 2 < mc_se < 2 * se, (mc_se, se)
    # The mean of the K log-weights is the ELBO, not log p(x).
    elbo_diff = stats["elbo"] - exact_elbo
    elbo_se = float(elbo_diff.std() / math.sqrt(len(x)))
    assert abs(float(elbo_diff.mean())) < 4 * elbo_se, (float(elbo_diff.mean()), elbo_se)
    assert float((exact - exact_elbo).mean()) > 10


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "gaussian"])
@pytest.mark.parametrize("binary", [False, True], ids=["gray", "binary"])
def test_log_weights_equal_pyro_trace_log_joint_minus_guide(likelihood, binary):
    """The estimator's weights are vae.model's log-joint minus vae.guide's log-prob, per image."""
    vae = VAE((1, 28, 28), z_dim=5, hidden_dim=16, likelihood=likelihood)
    x = torch.rand(3, 1, 28, 28)
    if binary:
        x = torch.bernoulli(x)
    zs, expected = [], []
    for _ in range(4):
        guide_tr = poutine.trace(vae.guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
        model_tr.compute_log_prob()
        guide_tr.compute_log_prob()
        zs.append(guide_tr.nodes["latent"]["value"])
        expected.append(
            model_tr.nodes["latent"]["log_prob"]
            + model_tr.nodes["obs"]["log_prob"]
            - guide_tr.nodes["latent"]["log_prob"]
        )
    got = log_weights(vae, x, torch.stack(zs))
    assert got.shape == (4, 3)
    torch.testing.assert_close(got, torch.stack(expected).detach(), rtol=1e-5, atol=1e-3)


def test_log_weights_of_a_conv_vae_equal_pyro_traces():
    """The fast Bernoulli path reads MLP layers; other decoders take the general path."""
    vae = VAE((1, 28, 28), z_dim=5, hidden_dim=16, arch="conv", channels=(4, 8))
    x = torch.bernoulli(torch.rand(3, 1, 28, 28))
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    model_tr.compute_log_prob()
    guide_tr.compute_log_prob()
    expected = sum(model_tr.nodes[s]["log_prob"] for s in ("latent", "obs"))
    expected = expected - guide_tr.nodes["latent"]["log_prob"]
    got = log_weights(vae, x, guide_tr.nodes["latent"]["value"][None])
    torch.testing.assert_close(got[0], expected.detach(), rtol=1e-5, atol=1e-3)


def test_chunking_respects_the_memory_bound_and_not_the_result(monkeypatch):
    lg = LinearGaussian()
    x = lg.marginal().sample((30,))
    seen = []
    original = estimators._weigher

    def spy(vae, images):
        weigh = original(vae, images)

        def counted(k, given=None):
            sites, log_w = weigh(k, given)
            seen.append(log_w.shape[0] * log_w.shape[1])  # (particle, image) pairs at once
            return sites, log_w

        return counted

    monkeypatch.setattr(estimators, "_weigher", spy)
    small = summarize(importance_sample(lg, x, 500, max_batch_elements=64), 500)
    assert max(seen) <= 64 and sum(seen) == 30 * 500
    seen.clear()
    big = summarize(importance_sample(lg, x, 500, max_batch_elements=10**6), 500)
    assert len(seen) == 1
    mc = math.hypot(small["nll_mc_se"], big["nll_mc_se"])
    assert abs(small["nll"] - big["nll"]) < 4 * mc + 1e-4, (small, big)


def _compose(config_name, *overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(config_name, overrides=list(overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small VAE trained 2 epochs on 10,000 dynamically binarized images (a few seconds)."""
    cfg = _compose(
        "train",
        "+experiment=z50_binarized",
        "model.z_dim=10",
        "model.hidden_dim=200",
        "data.subset=10000",
        "trainer.epochs=2",
        "trainer.device=cpu",
    )
    run_dir = tmp_path_factory.mktemp("trained")
    pyro.set_rng_seed(0)
    train(cfg, run_dir)
    vae, _ = checkpoint.load_vae(run_dir / "checkpoint.pt")
    return run_dir, vae


def test_iw_at_least_elbo_and_rising_with_k_on_a_trained_vae(trained, mnist):
    _, vae = trained
    x = torch.bernoulli(mnist.test.x[:100], generator=torch.Generator().manual_seed(0))
    pyro.set_rng_seed(0)
    elbo = Trace_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=1)
    neg_elbo = elbo.loss(vae.model, vae.guide, x) / len(x)
    nll = {}
    for k in (1, 10, 100, 1000):
        res = summarize(importance_sample(vae, x, k), k)
        nll[k] = res["nll"]
        # The evaluator's ELBO is Pyro's Trace_ELBO (200 particles: noise ~0.05 nat here).
        assert abs(res["negative_elbo"] - neg_elbo) < 0.5, (k, res, neg_elbo)
    assert abs(nll[1] - neg_elbo) < 1.0  # K = 1 is one-sample ELBO
    # Measured: 1 -> 10 -> 100 -> 1000 gain about 2.8, 1.2 and 0.6 nats.
    assert nll[10] < neg_elbo - 1.0
    assert nll[1] > nll[10] > nll[100] > nll[1000], nll


def test_evaluate_cli_writes_eval_json(trained, tmp_path):
    """The README's command, as a subprocess from another directory: nothing written there."""
    run_dir, _ = trained
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vae_pyro.evaluate",
            f"run_dir={run_dir}",
            "num_particles=50",
            "num_images=200",
            "output=eval_small.json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads((run_dir / "eval_small.json").read_text())
    assert record["num_particles"] == 50 and record["num_images"] == 200
    assert record["binarize"] == "dynamic" and "dynamic binarization" in record["protocol"]
    assert record["checkpoint_epoch"] == 2 and record["likelihood"] == "bernoulli"
    assert 0 < record["nll"] < record["negative_elbo"] < 250
    assert record["nll_se"] > record["nll_mc_se"] > 0 and 1 <= record["ess_mean"] <= 50
    assert f"-log p(x) (IW, K=50): {record['nll']:.2f}" in proc.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("num_particles=0", "num_particles=0 is not allowed: use an integer >= 1"),
        ("max_batch_elements=-5", "max_batch_elements=-5 is not allowed: use an integer >= 1"),
        ("num_images=0", "num_images=0 is not allowed: use an integer >= 1"),
        ("device=tpu", "device=tpu is not allowed: use auto, cpu, cuda or cuda:N"),
        ("num_images=10001", "num_images=10001 but the test set has 10000 images: give 10000"),
    ],
)
def test_bad_options_are_one_clear_error(trained, override, message, monkeypatch, capsys):
    run_dir, _ = trained
    monkeypatch.setattr(sys, "argv", ["evaluate", f"run_dir={run_dir}", override])
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("vae_pyro.evaluate: error: ") and message in err
    assert err.count("\n") == 1


def test_missing_run_dir_is_an_error_and_not_created(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "no_such_run"
    monkeypatch.setattr(sys, "argv", ["evaluate", f"run_dir={missing}"])
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main()
    assert exit_info.value.code == 2
    assert "run directory not found" in capsys.readouterr().err
    assert not missing.exists()


def test_checkpoint_from_before_the_options_still_evaluates(trained, tmp_path, mnist):
    """Old checkpoints lack data.binarize and model.likelihood/scale_param: they mean the
    original model on gray levels."""
    run_dir, vae = trained
    ckpt = checkpoint.load(run_dir / "checkpoint.pt")
    for key in ("likelihood", "scale_param", "kl_weight", "kl_warmup_epochs"):
        del ckpt["config"]["model"][key]
    del ckpt["config"]["data"]["binarize"]
    checkpoint.save(tmp_path / "checkpoint.pt", ckpt)
    old, _ = checkpoint.load_vae(tmp_path / "checkpoint.pt")
    assert old.likelihood_name == "bernoulli" and old.cfg.scale_param == "exp"
    record = evaluate.evaluate(
        _compose("evaluate", f"run_dir={tmp_path}", "num_particles=5", "num_images=50")
    )
    assert record["binarize"] == "none" and "gray levels" in record["protocol"]
    pyro.set_rng_seed(0)
    gray = negative_elbo(old, mnist.test.x[:50])
    assert abs(record["negative_elbo"] - gray) < 5  # gray-level test images, not binarized


def test_a_checkpoint_written_inside_an_epoch_says_how_far_it_got(trained, tmp_path, capsys):
    """An interrupted run's checkpoint holds the steps it took of the next epoch: evaluate
    names them instead of presenting the weights as those after the last whole epoch."""
    run_dir, _ = trained
    ckpt = checkpoint.load(run_dir / "checkpoint.pt")
    ckpt["position"] = vars(checkpoint.Position(torch.randperm(10), 7, 1.0, 2.0)).copy()
    checkpoint.save(tmp_path / "checkpoint.pt", ckpt)
    options = [f"run_dir={tmp_path}", "num_particles=2", "num_images=20"]
    record = evaluate.evaluate(_compose("evaluate", *options))
    assert record["checkpoint_epoch"] == 2 and record["checkpoint_step"] == 7
    assert (
        "checkpoint after epoch 2 and 7 steps of epoch 3, 20 test images" in capsys.readouterr().out
    )


def test_the_estimate_is_at_the_pace_after_the_first_chunk_which_carries_the_warm_up(
    monkeypatch, capsys
):
    clock = iter([0.0, 100.0, 101.0, 102.0])  # start; the first chunk 100 s, the next ones 1 s
    monkeypatch.setattr(estimators, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    monkeypatch.setattr(estimators, "SAY_COST_S", 0.0)
    progress = estimators._Progress(30, "IW K=5", shown=True)
    for _ in range(3):
        progress.update(10)
    progress.close()
    said = [line for line in capsys.readouterr().err.splitlines() if "for 30 images" in line]
    assert said == [  # 101 s spent + 10 images at 0.1 s: not 300 s at the first chunk's pace
        "IW K=5: about 1.7 min for 30 images at this pace (num_particles=100 num_images=1000 "
        "gives a quick estimate in seconds)"
    ]


def test_a_long_estimate_says_its_cost_and_the_quick_form_after_its_second_chunk(
    monkeypatch, capsys
):
    lg = LinearGaussian()
    x = lg.marginal().sample((30,))
    monkeypatch.setattr(estimators, "SAY_COST_S", 0.0)  # any estimate counts as long here
    importance_sample(lg, x, 50, max_batch_elements=500, progress=True)
    said = [line for line in capsys.readouterr().err.splitlines() if "for 30 images" in line]
    assert len(said) == 1 and said[0].startswith("IW K=50: about ")
    assert "num_particles=100 num_images=1000 gives a quick estimate" in said[0]
    monkeypatch.setattr(estimators, "SAY_COST_S", 1e9)
    importance_sample(lg, x, 50, max_batch_elements=500, progress=True)
    assert "for 30 images" not in capsys.readouterr().err
