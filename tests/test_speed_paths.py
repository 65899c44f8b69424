"""The speed paths compute the same numbers as the plain ones (correctness, not timings)."""

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from vae_pyro import VAE
from vae_pyro.estimators import negative_elbo
from vae_pyro.train import svi_step


def test_unchecked_training_step_equals_pyros_checked_step():
    """svi_step switches Pyro's validation off for speed: same loss, same updated weights."""
    x = torch.rand(64, 1, 28, 28)
    results = []
    for step in (lambda svi: svi.step(x), lambda svi: svi_step(svi, x)):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        vae = VAE((1, 28, 28), z_dim=8, hidden_dim=32)
        svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-2, "fused": True}), Trace_ELBO())
        with pyro.validation_enabled(True):
            losses = [step(svi) for _ in range(3)]
        results.append((losses, vae.decoder.fc21.weight.detach().clone()))
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])


def test_evaluation_does_not_depend_on_batch_size(mnist):
    """With the posterior scale forced to ~0 the estimate is deterministic: batch sizes may then
    only change float summation order. With real noise, the difference stays within MC error."""
    x = mnist.test.x[:3000]
    vae = VAE(mnist.image_shape, z_dim=10, hidden_dim=64)
    with torch.no_grad():
        vae.encoder.fc22.bias.fill_(-40.0)  # scale = e^-40: z = loc
        vae.encoder.fc22.weight.zero_()
    exact = [negative_elbo(vae, x, batch_size=b) for b in (3000, 1000, 7)]
    assert max(exact) - min(exact) < 1e-5 * abs(exact[0]), exact
    noisy = VAE(mnist.image_shape, z_dim=10, hidden_dim=64)
    torch.manual_seed(0)
    a = negative_elbo(noisy, x, batch_size=3000)
    b = negative_elbo(noisy, x, batch_size=64)
    assert abs(a - b) < 1.0  # MC standard error over 3,000 images is ~0.1 nat


class _FixedNoise(dist.Normal):
    """q(z|x) whose reparametrized draw uses one fixed noise tensor: runs become deterministic
    while gradients still flow through loc and scale."""

    noise: torch.Tensor

    def rsample(self, sample_shape=()):
        return self.loc + self.scale * self.noise


def _loss_and_grads(elbo, vae, x):
    for p in vae.parameters():
        p.grad = None
    with pyro.validation_enabled(False):
        loss = elbo.loss_and_grads(vae.model, vae.guide, x)
    return loss, [p.grad.clone() for p in vae.parameters()]


def test_jit_elbo_computes_the_same_loss_and_gradients(make_cfg):
    """elbo=jit (JitTrace_ELBO, from the config the CLI uses) against Trace_ELBO at the same
    noise: the same loss and gradients up to float32 rounding."""
    from vae_pyro.config import TrainConfig, to_object
    from vae_pyro.model import build_elbo

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = VAE((1, 28, 28), z_dim=6, hidden_dim=32)
    x = torch.rand(16, 1, 28, 28).bernoulli()
    _FixedNoise.noise = torch.randn(16, 6)
    vae.posterior_net.forward = lambda loc, scale, _: _FixedNoise(loc, scale).to_event(1)
    jit = build_elbo(to_object(make_cfg("elbo=jit"), TrainConfig).elbo)
    assert type(jit).__name__ == "JitTrace_ELBO"
    _loss_and_grads(jit, vae, x)  # the first call compiles
    jit_loss, jit_grads = _loss_and_grads(jit, vae, x)
    loss, grads = _loss_and_grads(Trace_ELBO(max_plate_nesting=1), vae, x)
    assert abs(jit_loss - loss) < 1e-5 * abs(loss), (jit_loss, loss)
    for a, b in zip(jit_grads, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def test_training_step_equals_pyros_plain_svi(make_cfg):
    """train.build_svi + svi_step (one fused Adam, no particle plate for one particle) against
    the textbook SVI(model, guide, pyro.optim.Adam, Trace_ELBO(vectorized)) with Pyro's checks
    on: the same losses and weights, bit for bit."""
    from vae_pyro.model import build_vae
    from vae_pyro.train import build_svi

    cfg = make_cfg("model.z_dim=5", "model.hidden_dim=24")
    x = torch.rand(48, 1, 28, 28)
    results = []
    for ours in (True, False):
        pyro.clear_param_store()
        pyro.set_rng_seed(5)
        vae = build_vae((1, 28, 28), cfg.model)
        if ours:
            svi, step = build_svi(cfg, vae)[1], svi_step
        else:
            elbo = Trace_ELBO(max_plate_nesting=1, vectorize_particles=True)
            svi, step = SVI(vae.model, vae.guide, Adam({"lr": 1e-3, "fused": True}), elbo), SVI.step
        assert type(svi.optim).__module__ == ("vae_pyro.optim" if ours else "pyro.optim.optim")
        with pyro.validation_enabled(True):
            losses = [step(svi, x) for _ in range(4)]
        results.append((losses, [p.detach().clone() for p in vae.parameters()]))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1], strict=True))
