"""The Python API: vae_pyro.fit trains as the CLI does; vae_pyro.load gives the trained model
with encode, decode, reconstruct, sample, log_likelihood, its config and metrics."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

import vae_pyro
from vae_pyro import report
from vae_pyro.errors import VaePyroError
from vae_pyro.estimators import negative_elbo

TINY = ("data.subset=512", "trainer.epochs=2", "model.z_dim=3", "model.hidden_dim=32")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    return vae_pyro.fit(*TINY, run_dir=tmp_path_factory.mktemp("api") / "run")


def test_fit_returns_the_run_dir_and_its_final_test_loss(fitted):
    assert (fitted.run_dir / "checkpoint.pt").is_file()
    assert fitted.final_loss == vae_pyro.api.metrics(fitted.run_dir)[-1]["test_loss"]


def test_load_gives_the_model_its_config_and_metrics(fitted, mnist):
    vae = vae_pyro.load(fitted.run_dir)
    assert vae.config["model"]["z_dim"] == 3 and vae.epoch == 2
    assert [m["epoch"] for m in vae.metrics] == [1, 2]
    x = mnist.test.x[:8]
    loc, scale = vae.encode(x)
    assert loc.shape == scale.shape == (8, 3) and bool((scale > 0).all())
    torch.testing.assert_close(loc, vae.vae.code(x))
    q = vae.encode(x[0], distribution=True)  # one image is a batch of one
    assert q.batch_shape == (1,) and q.event_shape == (3,)
    images = vae.decode(loc)
    assert images.shape == (8, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    torch.testing.assert_close(images, vae.vae.likelihood(loc).mean.reshape(8, 1, 28, 28))
    assert vae.reconstruct(x).shape == (8, 1, 28, 28)
    assert vae.sample(5).shape == (5, 1, 28, 28)


def test_log_likelihood_is_at_least_the_elbo(fitted, mnist):
    vae = vae_pyro.load(fitted.run_dir / "checkpoint.pt")  # the file works as well as the dir
    x = mnist.test.x[:64]
    torch.manual_seed(0)
    log_px = vae.log_likelihood(x, num_particles=200)
    assert log_px.shape == (64,)
    elbo = -negative_elbo(vae.vae, x)
    assert elbo < float(log_px.mean()) < 0


def test_wrong_inputs_are_one_clear_error(fitted, tmp_path):
    vae = vae_pyro.load(fitted.run_dir)
    with pytest.raises(VaePyroError, match=r"this model takes images of shape \(N, 1, 28, 28\)"):
        vae.encode(torch.zeros(2, 1, 32, 32))
    with pytest.raises(VaePyroError, match="no checkpoint at"):
        vae_pyro.load(tmp_path / "nothing")


def test_load_follows_latest_also_as_the_text_file_fallback(fitted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "latest").write_text(str(fitted.run_dir.resolve()))  # no symlink
    for name in ("latest", "outputs/latest"):
        assert vae_pyro.load(name).run_dir == fitted.run_dir.resolve()


def _vae(fitted):
    return vae_pyro.load(fitted.run_dir)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        # log_likelihood of x * 2 - 1 was +500 nats: values outside [0, 1] are refused
        (lambda v, x: v.log_likelihood(x * 2 - 1, 2), r"range from -1 to 1: .*floats in \[0, 1\]"),
        (lambda v, x: v.encode(x.expand(-1, 3, -1, -1)), r"shape \(8, 3, 28, 28\)"),  # was 24
        (lambda v, x: v.reconstruct((x * 255).to(torch.uint8)), r"dtype torch.uint8 \(pixels"),
        (lambda v, x: v.encode(torch.full_like(x, float("nan"))), "images hold nan or inf"),
        (lambda v, x: v.log_likelihood(x[:0]), "images: an empty batch"),
        (lambda v, x: v.encode(x.reshape(8, 784)), r"of shape \(N, 1, 28, 28\) or one of"),
        (lambda v, x: v.decode(torch.zeros(3, 8)), r"z of shape \(3, 8\) \(transposed\? give z.T"),
        (lambda v, x: v.decode(torch.zeros(8, 5)), r"z of shape \(N, 3\) or one of shape \(3,\)"),
        (lambda v, x: v.decode(torch.tensor([[0.0, float("inf"), 0.0]])), "z hold nan or inf"),
        (lambda v, x: v.sample(-1), "n=-1: give an integer >= 1"),
        (lambda v, x: v.sample(2.0), "n=2.0: give an integer >= 1"),
        (lambda v, x: v.log_likelihood(x, num_particles=0), "num_particles=0: give an integer"),
    ],
)
def test_every_method_refuses_what_the_model_does_not_take(fitted, mnist, call, message):
    with pytest.raises(VaePyroError, match=message):
        call(_vae(fitted), mnist.test.x[:8])


def test_the_forms_the_api_promises_are_taken(fitted, mnist):
    """(N, C, H, W); one (C, H, W); grey without the channel axis; numpy; one code (z_dim,)."""
    vae, x = _vae(fitted), mnist.test.x[:4]
    want = vae.encode(x)[0]
    for given in (x.squeeze(1), x.numpy(), x.double()):
        torch.testing.assert_close(vae.encode(given)[0], want)
    for one in (x[0], x[0, 0]):
        torch.testing.assert_close(vae.encode(one)[0], want[:1])
    assert vae.decode(want[0]).shape == (1, 1, 28, 28)
    assert vae.decode(torch.zeros(2, 3, dtype=torch.int64)).shape == (2, 1, 28, 28)
    assert vae.sample(torch.tensor(2)).shape == (2, 1, 28, 28)


def test_fit_refusals_name_run_dir_not_the_cli_option(fitted):
    with pytest.raises(VaePyroError) as err:
        vae_pyro.fit(*TINY, run_dir=fitted.run_dir)  # holds a run already
    assert "choose another run_dir" in str(err.value) and "hydra" not in str(err.value)


@pytest.mark.slow
def test_fit_records_its_run_like_the_cli_and_prints_its_epochs(tmp_path):
    """A notebook (a fresh interpreter, logging not set up) sees the epochs; the run dir holds
    the same record as a CLI run's, so report tabulates it beside them."""
    run = tmp_path / "sweep" / "0"
    code = f"import vae_pyro; vae_pyro.fit(*{list(TINY)!r}, run_dir={str(run)!r})"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/2  train " in proc.stdout and "epoch 2/2  train " in proc.stdout
    assert (run / "train.log").read_text().count(" - epoch ") == 2
    assert list(OmegaConf.load(run / ".hydra" / "overrides.yaml")) == list(TINY)
    assert [row["status"] for row in report.summarize(tmp_path / "sweep")] == ["ok"]


def test_fit_refuses_a_bad_override_as_the_cli_does(tmp_path):
    with pytest.raises(VaePyroError, match="^unknown key model.zdim: did you mean model.z_dim"):
        vae_pyro.fit("model.zdim=3", run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
