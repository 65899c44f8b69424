"""Milliseconds per training step of each variant, z50 (784-400-50), batch 256, one thread.

    OMP_NUM_THREADS=1 python experiments/bench_variants.py                 # every row
    OMP_NUM_THREADS=1 python experiments/bench_variants.py baseline "vamp"  # the rows named

Each row is train.svi_step on build_svi's SVI (our Adam, Pyro's checks off) over binarized
MNIST batches; the VampPrior rows are timed twice: with our SharedNormalMixture (what training
uses) and with Pyro's generic MixtureSameFamily of the same components, whose log_prob builds a
(particles, batch, K, z_dim) tensor. Median of `repeats` runs of `steps` steps.
"""

from __future__ import annotations

import statistics
import sys
import time

import pyro
import pyro.distributions as dist
import torch
from hydra import compose, initialize_config_dir

from vae_pyro import priors
from vae_pyro.cli import CONF_DIR
from vae_pyro.data import load_data
from vae_pyro.model import build_vae
from vae_pyro.train import build_svi, svi_step

ROWS = {
    "baseline": [],
    "iwae K=5": ["elbo=iwae"],
    "vamp": ["model/prior=vamp"],
    "iaf": ["model/posterior=iaf"],
    "hidden_layers=2": ["model.hidden_layers=2"],
    "vamp + iwae K=5": ["model/prior=vamp", "elbo=iwae"],
    "iwae K=5 + vamp + iaf + hidden_layers=2": [
        "elbo=iwae",
        "model/prior=vamp",
        "model/posterior=iaf",
        "model.hidden_layers=2",
    ],
    "latent_layers=2 (z 50 over 100)": ["model.latent_layers=2"],
    "latent_layers=2 + iwae K=5": ["model.latent_layers=2", "elbo=iwae"],
    "latent_layers=2 + vamp + iwae K=5": [
        "model.latent_layers=2",
        "model/prior=vamp",
        "elbo=iwae",
    ],
    "latent_layers=2 + iwae K=5 + vamp + iaf + hidden_layers=2": [
        "model.latent_layers=2",
        "elbo=iwae",
        "model/prior=vamp",
        "model/posterior=iaf",
        "model.hidden_layers=2",
    ],
}


def _generic(loc: torch.Tensor, scale: torch.Tensor) -> dist.Distribution:
    weights = dist.Categorical(logits=loc.new_zeros(loc.shape[0]))
    return dist.MixtureSameFamily(weights, dist.Normal(loc, scale).to_event(1))


def step_ms(overrides: list[str], x: torch.Tensor, steps: int, repeats: int) -> float:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=["+experiment=z50_binarized", *overrides])
    pyro.clear_param_store()
    vae = build_vae((1, 28, 28), cfg.model)
    _, svi = build_svi(cfg, vae)
    svi_step(svi, x[:256])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(steps):
            svi_step(svi, x[i * 256 : (i + 1) * 256])
        times.append((time.perf_counter() - start) / steps * 1000)
    return statistics.median(times)


def main(names: list[str], steps: int = 10, repeats: int = 3) -> None:
    """The rows named (all without names), then the generic-mixture comparison when all."""
    torch.manual_seed(0)
    x = load_data().train.x[: steps * 256].bernoulli()
    print(f"threads {torch.get_num_threads()}, batch 256, median of {repeats} x {steps} steps")
    for name in names or ROWS:
        print(f"{name:58s} {step_ms(ROWS[name], x, steps, repeats):8.1f} ms/step", flush=True)
    if names:
        return
    shared = priors.SharedNormalMixture
    priors.SharedNormalMixture = lambda loc, scale: _generic(loc, scale)  # type: ignore
    try:
        for name in ("vamp", "vamp + iwae K=5"):
            ms = step_ms(ROWS[name], x, steps, repeats)
            print(f"{name + ' (generic MixtureSameFamily)':58s} {ms:8.1f} ms/step", flush=True)
    finally:
        priors.SharedNormalMixture = shared


if __name__ == "__main__":
    main(sys.argv[1:])
