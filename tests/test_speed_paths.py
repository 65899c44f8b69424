"""The speed paths compute the same numbers as the plain ones (correctness, not timings)."""

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from vae_pyro import VAE
from vae_pyro.evaluate import negative_elbo
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
