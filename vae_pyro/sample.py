"""Hydra entry point: `python -m vae_pyro.sample run_dir=outputs/<run>`.

Shows what a trained VAE learned: posterior and prior draws, interpolations and the latent space,
as PNGs in `<run_dir>/samples/`. Everything about the model comes from the run's checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import pyro
import pyro.distributions as dist
import torch
from omegaconf import DictConfig, OmegaConf

from vae_pyro import plots
from vae_pyro.checkpoint import check_image_shape, load_vae
from vae_pyro.data import Split, load_data_config, one_per_class, resolve_device
from vae_pyro.errors import VaePyroError
from vae_pyro.model import VAE
from vae_pyro.train import CONF_DIR

CHECKPOINT = "checkpoint.pt"


# What the figures call one draw of p(x | z), per model.likelihood.
SAMPLE_NOUNS = {
    "bernoulli": "Bernoulli",
    "continuous_bernoulli": "continuous Bernoulli",
    "gaussian": "Gaussian",
}


@torch.no_grad()
def _means_and_draws(vae: VAE, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of p(x | z) and one draw of it, shaped (*z.shape[:-1], C, H, W). The likelihood's
    own mean: the decoder's sigmoid is the mean for Bernoulli and Gaussian pixels, not for the
    continuous Bernoulli."""
    likelihood = vae.likelihood(z)
    shape = (*z.shape[:-1], *vae.image_shape)
    return likelihood.mean.reshape(shape), likelihood.sample().reshape(shape)


@torch.no_grad()
def posterior_draws(vae: VAE, x: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, ...]:
    """Means of p(x|z) at `num_samples` draws z ~ q(z|x) per image, and one draw of each.

    Both are (n, num_samples, C, H, W): the spread shows the posterior's uncertainty in pixels.
    """
    z_loc, z_scale = vae.encoder(x)
    z = dist.Normal(z_loc, z_scale).sample((num_samples,)).transpose(0, 1)  # (n, k, z_dim)
    return _means_and_draws(vae, z)


@torch.no_grad()
def prior_draws(vae: VAE, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of p(x|z) at n draws z ~ N(0, I) and one draw of each, (n, C, H, W)."""
    device = next(vae.parameters()).device
    return _means_and_draws(vae, torch.randn(n, vae.z_dim, device=device))


@torch.no_grad()
def interpolate(vae: VAE, x_a: torch.Tensor, x_b: torch.Tensor, steps: int) -> torch.Tensor:
    """Decoder means at `steps` evenly spaced points from z_loc(x_a) to z_loc(x_b), ends included.

    Uses posterior means, no sampling, so the figure does not depend on the seed.
    Returns (n, steps, C, H, W) for n pairs.
    """
    z_a, z_b = vae.encoder(x_a)[0], vae.encoder(x_b)[0]
    t = torch.linspace(0, 1, steps, device=z_a.device).view(1, steps, 1)
    z = (1 - t) * z_a.unsqueeze(1) + t * z_b.unsqueeze(1)
    return vae.likelihood(z).mean.reshape(x_a.shape[0], steps, *vae.image_shape)


@torch.no_grad()
def posterior_means(vae: VAE, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """z_loc for every image, (N, z_dim); batch_size only bounds memory."""
    return torch.cat([vae.encoder(xb)[0] for xb in x.split(batch_size)])


def pca_2d(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project (N, D) codes on their first two principal axes.

    Returns the (N, 2) projection and the fraction of the total variance on each axis.
    q = D lets the randomized range finder span all of the codes' space, so the axes are exact
    (with q = 2 the flat spectrum of a VAE's code misplaces them); D is small, so it is cheap.
    """
    centered = z - z.mean(0)
    _, s, v = torch.pca_lowrank(centered, q=z.shape[1], center=False)
    return centered @ v[:, :2], s[:2] ** 2 / centered.pow(2).sum()


@torch.no_grad()
def manifold(vae: VAE, steps: int, quantile: float = 0.05) -> tuple[torch.Tensor, float]:
    """Decoder means over a steps x steps grid of the 2-D latent plane (z_dim must be 2).

    The grid sits at the N(0, 1) quantiles `quantile` ... 1 - `quantile` in each direction, so
    each cell holds the same prior mass and the grid covers where the prior puts it. Rows run
    from high z2 (top) to low z2, columns from low z1 to high z1, as in the latent scatter plot.
    Returns (steps, steps, C, H, W) images and the largest |z| on the grid.
    """
    device = next(vae.parameters()).device
    q = torch.linspace(quantile, 1 - quantile, steps)
    values = torch.distributions.Normal(0.0, 1.0).icdf(q).to(device)
    z1, z2 = torch.meshgrid(values, values.flip(0), indexing="xy")
    z = torch.stack([z1, z2], dim=-1).reshape(-1, 2)
    images = vae.likelihood(z).mean.reshape(steps, steps, *vae.image_shape)
    return images, float(values[-1])


def _int(value: object, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise VaePyroError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _index_list(value: object, key: str, n: int) -> list[int]:
    items = OmegaConf.to_container(value) if OmegaConf.is_list(value) else value
    if not isinstance(items, list) or not items:
        raise VaePyroError(f"{key} must be a non-empty list of test-image indices, got {items!r}")
    for i in items:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
            raise VaePyroError(
                f"{key}={items} has {i!r}, which is not a test-image index: the test set has "
                f"{n} images (0 to {n - 1})"
            )
    return items


def validate(cfg: DictConfig) -> torch.device:
    """Check every option before any work starts; returns the device."""
    if OmegaConf.is_missing(cfg, "run_dir"):
        raise VaePyroError("run_dir is required: python -m vae_pyro.sample run_dir=outputs/<run>")
    _int(cfg.seed, "seed", 0)
    _int(cfg.num_samples, "num_samples", 1)
    _int(cfg.prior.num, "prior.num", 1)
    _int(cfg.prior.nrow, "prior.nrow", 1)
    _int(cfg.interpolation.steps, "interpolation.steps", 2)
    _int(cfg.manifold.steps, "manifold.steps", 2)
    q = cfg.manifold.quantile
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q < 0.5:
        raise VaePyroError(f"manifold.quantile must be a number in (0, 0.5), got {q!r}")
    _int(cfg.scale, "scale", 1)
    if not isinstance(cfg.prior.bernoulli, bool):
        raise VaePyroError(f"prior.bernoulli must be true or false, got {cfg.prior.bernoulli!r}")
    return resolve_device(cfg.device, key="device")


def _test_split(ckpt: dict, path: Path, device: torch.device) -> Split:
    """The test split of the data the run was trained on, checked against the checkpoint."""
    try:
        data_cfg = ckpt["config"]["data"]
        name = data_cfg["name"]
    except (KeyError, TypeError):
        raise VaePyroError(f"checkpoint {path} has no data config (data.name, ...)") from None
    # The test images the model was evaluated on: binarized too if the run trained on binarized
    # data (older checkpoints have no data.binarize). Only the test split is used: subset=1 keeps
    # the unused training split small.
    data = load_data_config(data_cfg, device, subset=1)
    check_image_shape(path, ckpt["image_shape"], data.image_shape, f"data.name={name} now gives")
    return data.test


def sample(cfg: DictConfig) -> dict[str, Path]:
    """Write the figures of one training run; returns {figure name: PNG path}.

    Every figure re-seeds with `seed` before it draws, so each depends only on the seed and its
    own options (changing num_samples does not change prior.png).
    """
    device = validate(cfg)
    run_dir = Path(cfg.run_dir)
    if not run_dir.is_dir():
        raise VaePyroError(f"run directory not found: {run_dir} (run_dir= names a training run)")
    ckpt_path = run_dir / CHECKPOINT
    if not ckpt_path.is_file():
        raise VaePyroError(
            f"no checkpoint in {run_dir}: expected {ckpt_path}, which python -m vae_pyro.train "
            "writes after each epoch"
        )
    vae, ckpt = load_vae(ckpt_path, device)
    test = _test_split(ckpt, ckpt_path, device)
    if cfg.indices is None:
        indices = one_per_class(test.y).tolist()
    else:
        indices = _index_list(cfg.indices, "indices", len(test))
    if cfg.interpolation.pairs is None:
        if len(indices) < 2:
            raise VaePyroError("interpolation needs two images: give 2+ indices or pairs")
        pairs = list(zip(indices[:-1], indices[1:], strict=True))
    else:
        raw = cfg.interpolation.pairs
        pairs = OmegaConf.to_container(raw) if OmegaConf.is_list(raw) else raw
        if not isinstance(pairs, list) or not pairs or any(len(p) != 2 for p in pairs):
            raise VaePyroError(f"interpolation.pairs must be a list of [a, b] pairs, got {pairs!r}")
        for pair in pairs:
            _index_list(pair, "interpolation.pairs", len(test))

    out, scale, seed = Path(cfg.out_dir), cfg.scale, cfg.seed
    written: dict[str, Path] = {}
    x = test.x[indices]
    pyro.set_rng_seed(seed)
    means, draws = posterior_draws(vae, x, cfg.num_samples)
    noun = SAMPLE_NOUNS.get(vae.likelihood_name, vae.likelihood_name)
    written["posterior"] = plots.posterior_samples(
        x, means, draws, out / "posterior.png", scale, noun
    )

    pyro.set_rng_seed(seed)
    means, draws = prior_draws(vae, cfg.prior.num)
    written["prior"] = plots.prior_samples(
        means,
        out / "prior.png",
        draws if cfg.prior.bernoulli else None,
        nrow=cfg.prior.nrow,
        scale=scale,
        noun=noun,
    )

    a, b = (test.x[[p[i] for p in pairs]] for i in (0, 1))
    path = torch.cat([a.unsqueeze(1), interpolate(vae, a, b, cfg.interpolation.steps)], 1)
    rows = torch.cat([path, b.unsqueeze(1)], 1)
    written["interpolation"] = plots.interpolation(rows, out / "interpolation.png", scale)

    pyro.set_rng_seed(seed)  # torch.pca_lowrank is randomized
    z = posterior_means(vae, test.x)
    n = len(test)
    if vae.z_dim == 2:
        images, z_max = manifold(vae, cfg.manifold.steps, cfg.manifold.quantile)
        written["latent"] = plots.latent_scatter(
            z, test.y, out / "latent.png", title=f"posterior means of {n} test images", box=z_max
        )
        written["manifold"] = plots.manifold(images, z_max, out / "manifold.png", scale)
    elif vae.z_dim == 1:
        written["latent"] = plots.latent_scatter(
            torch.cat([z, test.y.unsqueeze(1).float()], 1),
            test.y,
            out / "latent.png",
            ("z1", "label"),
            f"posterior means of {n} test images",
        )
    else:
        points, explained = pca_2d(z)
        written["latent"] = plots.latent_scatter(
            points,
            test.y,
            out / "latent.png",
            tuple(f"PC{i + 1} ({100 * e:.0f}% of variance)" for i, e in enumerate(explained)),
            f"posterior means of {n} test images, PCA of {vae.z_dim} dims",
        )
    return written


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="sample")
def main(cfg: DictConfig) -> None:
    try:
        written = sample(cfg)
    except VaePyroError as err:
        print(f"vae_pyro.sample: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    for path in written.values():
        print(path)


if __name__ == "__main__":
    main()
