"""The Python API: vae_pyro.fit trains as the CLI does; vae_pyro.load gives the trained model
with encode, decode, reconstruct, sample, log_likelihood, its config and metrics."""

from __future__ import annotations

import pytest
import torch

import vae_pyro
from vae_pyro.errors import VaePyroError
from vae_pyro.evaluate import negative_elbo

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
    with pytest.raises(VaePyroError, match=r"this model takes \(1, 28, 28\)"):
        vae.encode(torch.zeros(2, 1, 32, 32))
    with pytest.raises(VaePyroError, match="no checkpoint at"):
        vae_pyro.load(tmp_path / "nothing")


def test_load_follows_latest_also_as_the_text_file_fallback(fitted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "latest").write_text(str(fitted.run_dir.resolve()))  # no symlink
    for name in ("latest", "outputs/latest"):
        assert vae_pyro.load(name).run_dir == fitted.run_dir.resolve()
