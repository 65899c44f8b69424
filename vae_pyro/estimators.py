"""The estimators every command shares: the single-sample test ELBO (train's test loss) and the
importance-weighted log-likelihood (evaluate, the Python API).

The importance-weighted (IW) estimate of Burda et al. (2015),

    log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k | x),   z_k ~ q(z | x),

is a lower bound in expectation that rises to log p(x) as K grows; K = 1 is the ELBO. It is
computed from the VAE's own `prior`, `posterior` and `likelihood`, the distributions that
`vae.model` and `vae.guide` sample, never with the training-time KL weight.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.poutine.util import site_is_subsample
from tqdm import tqdm

from vae_pyro.model import VAE


@torch.no_grad()
def negative_elbo(vae: VAE, x: torch.Tensor, batch_size: int = 2000) -> float:
    """Single-sample negative ELBO in nats per image (Pyro tutorial protocol).

    Always the plain Trace_ELBO (KL weight 1: vae.model's default), whatever objective trained
    the model, so numbers compare. The estimate does not depend on batch_size; it only bounds
    memory.
    """
    elbo = Trace_ELBO(max_plate_nesting=1)
    total = sum(elbo.loss(vae.model, vae.guide, xb) for xb in x.split(batch_size))
    return total / x.shape[0]


def _weigher(vae: VAE, x: torch.Tensor) -> Callable[..., tuple[dict, torch.Tensor]]:
    """k -> (sites, log-weights (k, b)) for images x: the VAE's own (VAE.importance, every layer
    of the hierarchy), or for any model with prior, posterior and likelihood the one-layer
    log p(x | z) + log p(z) - log q(z | x)."""
    if isinstance(vae, VAE):
        return vae.importance(x)
    b = x.shape[0]
    flat, prior, posterior = x.reshape(b, -1), vae.prior(b, x), vae.posterior(x)

    def weigh(k: int, given: Mapping[str, torch.Tensor] | None = None) -> tuple[dict, Any]:
        z = given["latent"] if given else posterior.sample((k,))
        log_w = vae.likelihood(z).log_prob(flat) + prior.log_prob(z) - posterior.log_prob(z)
        return {"latent": z}, log_w

    return weigh


@torch.no_grad()
def log_weights(
    vae: VAE, x: torch.Tensor, z: torch.Tensor | Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """log p(x, z) - log q(z | x) at given particles of images x (b, ...): z (k, b, z_dim), or
    with two layers a mapping of the sites' values ("latent": z2, "lower": z1).

    Returns (k, b): what importance_sample averages, the same numbers as the model trace's
    log-joint minus the guide trace's log-prob at z.
    """
    given = z if isinstance(z, Mapping) else {"latent": z}
    return _weigher(vae, x)(given["latent"].shape[0], given)[1]


def _chunks(num_particles: int, max_batch_elements: int) -> tuple[int, int]:
    """(images, particles) per decoder call, their product at most max_batch_elements."""
    images = max(1, max_batch_elements // num_particles)
    return images, max(1, min(num_particles, max_batch_elements // images))


@torch.no_grad()
def importance_sample(
    vae: VAE,
    x: torch.Tensor,
    num_particles: int,
    max_batch_elements: int = 100_000,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-image IW statistics over K = num_particles draws z ~ q(z | x); float64, shape (N,).

    log_px: log-mean-exp of the log-weights (the IW estimate of log p(x)); elbo: their mean (a
    K-sample estimate of the ELBO); ess: effective sample size (sum w)^2 / sum w^2, in [1, K].
    One encoder pass per image chunk; particles are drawn in chunks and the decoder sees
    (particles x images) rows, at most max_batch_elements; the log-sum-exps are accumulated
    across particle chunks, so the result does not depend on the chunking (up to rounding).
    """
    n = x.shape[0]
    # A mixture prior holds a (particle, image, component, z_dim) tensor: as many numbers per
    # pair as that over the pixels bounds memory like the decoder's rows.
    components = vae.prior_net.components if isinstance(vae, VAE) else 1
    per_pair = (components * vae.z_dim) // x[0].numel()
    images, particles = _chunks(num_particles, max(1, max_batch_elements // max(1, per_pair)))
    out = {key: torch.empty(n, dtype=torch.float64) for key in ("log_px", "elbo", "ess")}
    bar = _Progress(n, f"IW K={num_particles}", progress)
    for start in range(0, n, images):
        xb = x[start : start + images]
        b, weigh = xb.shape[0], _weigher(vae, xb)
        lse = xb.new_full((b,), -math.inf, dtype=torch.float64)  # log sum w
        lse2 = lse.clone()  # log sum w^2
        total = torch.zeros(b, dtype=torch.float64, device=xb.device)  # sum log w
        for k0 in range(0, num_particles, particles):
            lw = weigh(min(particles, num_particles - k0))[1].double()
            lse = torch.logaddexp(lse, lw.logsumexp(0))
            lse2 = torch.logaddexp(lse2, (2 * lw).logsumexp(0))
            total += lw.sum(0)
        out["log_px"][start : start + b] = (lse - math.log(num_particles)).cpu()
        out["elbo"][start : start + b] = (total / num_particles).cpu()
        out["ess"][start : start + b] = (2 * lse - lse2).exp().cpu()
        bar.update(b)
    bar.close()
    return out


SAY_COST_S = 60.0  # an estimate that will take longer says so after its second chunk


class _Progress:
    """A bar on a terminal; in a log file (a batch job, nohup) one line at each tenth of the
    images with the time spent and left, since tqdm draws nothing there."""

    def __init__(self, total: int, desc: str, shown: bool) -> None:
        self.lines = shown and not sys.stderr.isatty()
        self.bar = tqdm(total=total, unit="img", desc=desc, disable=None if shown else True)
        self.total, self.desc, self.done, self.tenths = total, desc, 0, 0
        self.start = time.perf_counter()
        self.first: tuple[float, int] | None = None  # (time, images) when the first chunk ended

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.done += n
        now = time.perf_counter()
        if self.first is None:
            self.first = (now, self.done)
        elif self.first[1] == self.done - n and self.done < self.total:
            # after the second chunk, the cost ahead at its pace: the first carries the warm-up
            pace = (now - self.first[0]) / n
            whole = now - self.start + pace * (self.total - self.done)
            if whole > SAY_COST_S:
                print(
                    f"{self.desc}: about {whole / 60:.1f} min for {self.total} images at this "
                    "pace (num_particles=100 num_images=1000 gives a quick estimate in seconds)",
                    file=sys.stderr,
                    flush=True,
                )
        if self.lines and self.done * 10 // self.total > self.tenths:
            self.tenths = self.done * 10 // self.total
            spent = now - self.start
            left = spent * (self.total - self.done) / self.done
            print(
                f"{self.desc}: {self.done} of {self.total} images, {spent / 60:.1f} min, "
                f"about {left / 60:.1f} min left",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        self.bar.close()


def summarize(stats: dict[str, torch.Tensor], num_particles: int) -> dict[str, float]:
    """Test-set means in nats per image, with two standard errors.

    *_se: spread over images / sqrt(N), the error of a mean over this many test images.
    nll_mc_se: Monte Carlo error of the IW estimate itself on these images, by the delta method:
    Var(log mean w) ~= Var(w) / (K E[w]^2) = 1/ESS - 1/K per image (None for K = 1). It is the
    estimate's spread, not its downward bias: that shows as a rise of log p(x) with K.
    """
    n = stats["log_px"].numel()
    log_px, elbo, ess = stats["log_px"], stats["elbo"], stats["ess"]
    mc_var = (1.0 / ess - 1.0 / num_particles).clamp(min=0.0)
    se = (lambda v: float(v.std() / math.sqrt(n))) if n > 1 else (lambda v: math.nan)
    return {
        "nll": float(-log_px.mean()),
        "nll_se": se(log_px),
        "nll_mc_se": float(mc_var.sum().sqrt() / n) if num_particles > 1 else None,
        "negative_elbo": float(-elbo.mean()),
        "negative_elbo_se": se(elbo),
        "ess_mean": float(ess.mean()),
        "ess_min": float(ess.min()),
    }


ACTIVE = 0.01  # Burda et al. (2015): a unit is active when Cov_x(E_q[z_u | x]) exceeds it


@torch.no_grad()
def latent_usage(vae: VAE, x: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per latent site of the guide (latent; lower for two layers): `kl`, the Monte Carlo
    KL(q || p) in nats per image at one draw (E_q[log q - log p], from Pyro's own traces of
    guide and model), and `active`, the number of active units (Burda et al.'s measure:
    Cov_x(E_q[z_u | x]) > 0.01, from the posterior's mean where it has one, else the mean of
    32 draws), of `dims`. A layer with no active units and near-zero KL is unused: collapsed."""
    guide = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    guide.compute_log_prob()
    model.compute_log_prob()
    usage = {}
    for name, site in guide.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        kl = (site["log_prob"] - model.nodes[name]["log_prob"]).mean()
        try:
            mean = site["fn"].mean
        except NotImplementedError:  # a flow's q(z|x): its mean by draws
            mean = site["fn"].sample((32,)).mean(0)
        means = mean.reshape(x.shape[0], -1)
        variance = means.var(0) if x.shape[0] > 1 else torch.zeros(means.shape[1])
        usage[name] = {
            "kl": float(kl),
            "active": int((variance > ACTIVE).sum()),
            "dims": means.shape[1],
        }
    return usage
