"""vae_pyro.optim.Adam: pyro.optim.Adam's updates and checkpoint format from one torch Adam."""

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam as PyroAdam

from vae_pyro import VAE
from vae_pyro.optim import Adam, UnitGrads

X = torch.rand(32, 1, 28, 28)


def _svi(optim, seed=0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = VAE((1, 28, 28), z_dim=4, hidden_dim=16)
    return vae, SVI(vae.model, vae.guide, optim, Trace_ELBO())


def _weights(vae):
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


@pytest.mark.parametrize("fused", [False, True])
def test_same_updates_as_pyros_per_parameter_adam(fused):
    runs = []
    for optim in (PyroAdam({"lr": 1e-2, "fused": fused}), Adam({"lr": 1e-2, "fused": fused})):
        vae, svi = _svi(optim)
        losses = [svi.step(X) for _ in range(5)]
        runs.append((losses, _weights(vae)))
    (pyro_losses, pyro_w), (our_losses, our_w) = runs
    assert our_losses == pyro_losses  # bit for bit: Adam's arithmetic is per element
    assert all(torch.equal(our_w[k], pyro_w[k]) for k in pyro_w)
    assert any(
        not torch.equal(our_w[k], VAE((1, 28, 28), z_dim=4, hidden_dim=16).state_dict()[k])
        for k in our_w
    )


def test_gradients_released_after_each_step():
    vae, svi = _svi(Adam({"lr": 1e-2}))
    svi.step(X)
    assert all(p.grad is None for p in vae.parameters())


@pytest.mark.parametrize("first,second", [(Adam, PyroAdam), (PyroAdam, Adam), (Adam, Adam)])
def test_state_round_trips_between_the_two_formats(first, second):
    """Three steps, state saved and loaded into a fresh optimizer (either kind), three more:
    the same weights as six uninterrupted steps."""
    vae, svi = _svi(Adam({"lr": 1e-2}))
    for _ in range(6):
        svi.step(X)
    straight = _weights(vae)

    vae, svi = _svi(first({"lr": 1e-2}))
    for _ in range(3):
        svi.step(X)
    state = svi.optim.get_state()
    assert set(state) == {name for name, _ in pyro.get_param_store().named_parameters()}
    assert int(state["encoder$$$fc1.weight"]["state"][0]["step"]) == 3
    rng = torch.get_rng_state()
    svi = SVI(vae.model, vae.guide, second({"lr": 1e-2}), Trace_ELBO())
    svi.optim.set_state(state)
    torch.set_rng_state(rng)
    for _ in range(3):
        svi.step(X)
    assert all(torch.equal(v, straight[k]) for k, v in _weights(vae).items())


def test_state_not_yet_consumed_is_kept():
    """Saving before the first step (a resumed run interrupted at once) loses nothing."""
    _, svi = _svi(Adam({"lr": 1e-2}))
    svi.step(X)
    state = svi.optim.get_state()
    fresh = Adam({"lr": 1e-2})
    fresh.set_state(state)
    kept = fresh.get_state()
    assert kept.keys() == state.keys()
    for name, saved in state.items():
        assert torch.equal(kept[name]["state"][0]["exp_avg"], saved["state"][0]["exp_avg"])


def test_learning_rate_comes_from_the_arguments_on_resume():
    vae, svi = _svi(Adam({"lr": 1e-2}))
    svi.step(X)
    state = svi.optim.get_state()
    slower = Adam({"lr": 1e-4})
    slower.set_state(state)
    SVI(vae.model, vae.guide, slower, Trace_ELBO()).step(X)
    groups = slower.get_state()["encoder$$$fc1.weight"]["param_groups"]
    assert groups[0]["lr"] == 1e-4


def test_rejects_per_parameter_arguments():
    with pytest.raises(TypeError, match="dict"):
        Adam(lambda name: {"lr": 1e-3})


@pytest.mark.parametrize("inner", [Adam, PyroAdam], ids=["ours", "pyro"])
def test_unit_grads_is_adam_on_each_gradient_over_its_norm(inner):
    """optim.normalize_grads: each tensor's gradient divided by its L2 norm, then the inner
    optimizer's step (Tomczak & Welling's AdamNormGrad), around either Adam; plain Adam, whose
    steps weigh a large gradient more, ends elsewhere."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    start = {"a": torch.randn(4, 3), "b": torch.randn(5)}
    steps = [{k: torch.randn_like(v) * s for k, v in start.items()} for s in (1, 100, 0.01, 10)]

    def run(optim, normalize):
        params = {k: torch.nn.Parameter(v.clone()) for k, v in start.items()}
        for grads in steps:
            for k, p in params.items():
                g = grads[k]
                p.grad = g / (g.norm() + 1e-7) if normalize else g.clone()
            optim(list(params.values()))
        return params

    ours = run(UnitGrads(inner({"lr": 0.1})), normalize=False)
    by_hand = run(inner({"lr": 0.1}), normalize=True)
    plain = run(inner({"lr": 0.1}), normalize=False)
    for k in start:
        torch.testing.assert_close(ours[k], by_hand[k])
        assert not torch.allclose(ours[k], plain[k], atol=1e-3)
