"""Test-set metrics."""

from __future__ import annotations

import torch
from pyro.infer import Trace_ELBO

from vae_pyro.model import VAE


@torch.no_grad()
def negative_elbo(vae: VAE, x: torch.Tensor, batch_size: int = 2000) -> float:
    """Single-sample negative ELBO in nats per image (Pyro tutorial protocol).

    Always the plain Trace_ELBO, whatever objective trained the model, so numbers compare.
    The estimate does not depend on batch_size; it only bounds memory.
    """
    elbo = Trace_ELBO(max_plate_nesting=1)
    total = sum(elbo.loss(vae.model, vae.guide, xb) for xb in x.split(batch_size))
    return total / x.shape[0]
