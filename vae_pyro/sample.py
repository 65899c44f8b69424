"""Hydra entry point: `python -m vae_pyro.sample run_dir=outputs/<run>`.

Shows what a trained VAE learned: posterior and prior draws, interpolations and the latent space,
as PNGs in `<run_dir>/samples/`. Everything about the model comes from the run's checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import pyro
import torch
from omegaconf import DictConfig

from vae_pyro import cli, plots
from vae_pyro.checkpoint import Checkpoint, check_image_shape, load_vae
from vae_pyro.config import SampleConfig, resolve_device, to_object
from vae_pyro.data import Split, load_data_config, one_per_class
from vae_pyro.errors import VaePyroError
from vae_pyro.files import check_writable
from vae_pyro.model import VAE

CHECKPOINT = "checkpoint.pt"


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
    z = vae.posterior(x).sample((num_samples,)).transpose(0, 1)  # (n, k, z_dim)
    return _means_and_draws(vae, z)


@torch.no_grad()
def prior_draws(vae: VAE, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of p(x|z) at n draws z ~ p(z) and one draw of each, (n, C, H, W)."""
    return _means_and_draws(vae, vae.prior(n, next(vae.parameters())).sample())


@torch.no_grad()
def interpolate(vae: VAE, x_a: torch.Tensor, x_b: torch.Tensor, steps: int) -> torch.Tensor:
    """Decoder means at `steps` evenly spaced points from code(x_a) to code(x_b), ends included.

    Uses the posteriors' codes (their means for a diagonal Normal), no sampling, so the figure
    does not depend on the seed. Returns (n, steps, C, H, W) for n pairs.
    """
    z_a, z_b = vae.code(x_a), vae.code(x_b)
    t = torch.linspace(0, 1, steps, device=z_a.device).view(1, steps, 1)
    z = (1 - t) * z_a.unsqueeze(1) + t * z_b.unsqueeze(1)
    return vae.likelihood(z).mean.reshape(x_a.shape[0], steps, *vae.image_shape)


@torch.no_grad()
def posterior_means(vae: VAE, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """The posterior's code (z_loc for a diagonal Normal) of every image, (N, z_dim);
    batch_size only bounds memory."""
    return torch.cat([vae.code(xb) for xb in x.split(batch_size)])


def tsne_2d(z: torch.Tensor, seed: int) -> torch.Tensor:
    """scikit-learn's t-SNE of (N, D) codes to (N, 2), as Pyro's VAE example plots them."""
    from sklearn.manifold import TSNE  # imported here: only this figure needs it

    points = TSNE(n_components=2, init="pca", random_state=seed).fit_transform(z.cpu().numpy())
    return torch.as_tensor(points)


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


def _check_indices(items: list[int], key: str, n: int) -> list[int]:
    for i in items:
        if not 0 <= i < n:
            raise VaePyroError(
                f"{key}={items} has {i}, which is not a test-image index: the test set has "
                f"{n} images (0 to {n - 1})"
            )
    return items


def _test_split(ckpt: Checkpoint, device: torch.device) -> Split:
    """The test split of the data the run was trained on, checked against the checkpoint: the
    binarized draw if the run trained on binarized data. Only the test split is used: subset=1
    keeps the unused training split small."""
    data_cfg = ckpt.data_config
    data = load_data_config(data_cfg, device, subset=1)
    check_image_shape(
        ckpt.path, ckpt.image_shape, data.image_shape, f"data.name={data_cfg.name} now gives"
    )
    return data.test


def _chosen(cfg: SampleConfig, test: Split) -> tuple[list[int], list[tuple[int, int]]]:
    """The test images of posterior.png and the pairs of interpolation.png."""
    if cfg.indices is None:
        indices = one_per_class(test.y).tolist()
    else:
        indices = _check_indices(cfg.indices, "indices", len(test))
    if cfg.interpolation.pairs is None:
        if len(indices) < 2:
            raise VaePyroError("interpolation needs two images: give 2+ indices or pairs")
        return indices, list(zip(indices[:-1], indices[1:], strict=True))
    for pair in cfg.interpolation.pairs:
        _check_indices(pair, "interpolation.pairs", len(test))
    return indices, [tuple(p) for p in cfg.interpolation.pairs]


def _latent_figures(cfg: SampleConfig, vae: VAE, test: Split, out: Path) -> dict[str, Path]:
    """latent.png (the plane, a line, or a PCA or t-SNE of the posterior codes) and, for
    z_dim = 2, manifold.png. None when the command asked for given z or images only."""
    if cfg.z is not None or cfg.images is not None:
        return {}
    pyro.set_rng_seed(cfg.seed)  # torch.pca_lowrank is randomized
    z, n = posterior_means(vae, test.x), len(test)
    title = f"posterior means of {n} test images"
    if vae.z_dim == 2:
        images, z_max = manifold(vae, cfg.manifold.steps, cfg.manifold.quantile)
        return {
            "latent": plots.latent_scatter(z, test.y, out / "latent.png", title=title, box=z_max),
            "manifold": plots.manifold(images, z_max, out / "manifold.png", cfg.scale),
        }
    if vae.z_dim == 1:
        points = torch.cat([z, test.y.unsqueeze(1).float()], 1)
        return {
            "latent": plots.latent_scatter(
                points, test.y, out / "latent.png", ("z1", "label"), title
            )
        }
    if cfg.latent.method == "tsne":
        points, axes = tsne_2d(z, cfg.seed), ("t-SNE 1", "t-SNE 2")
        title = f"{title}, t-SNE of {vae.z_dim} dims"
    else:
        points, explained = pca_2d(z)
        axes = tuple(f"PC{i + 1} ({100 * e:.0f}% of variance)" for i, e in enumerate(explained))
        title = f"{title}, PCA of {vae.z_dim} dims"
    return {"latent": plots.latent_scatter(points, test.y, out / "latent.png", axes, title)}


def _given_z(cfg: SampleConfig, vae: VAE) -> torch.Tensor:
    for i, vector in enumerate(cfg.z):
        if len(vector) != vae.z_dim:
            raise VaePyroError(
                f"z: vector {i} has {len(vector)} numbers; this run's latent space has "
                f"z_dim={vae.z_dim} (give {vae.z_dim} numbers per vector)"
            )
    return torch.tensor(cfg.z, dtype=torch.float32, device=next(vae.parameters()).device)


def _read_image(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """An image file as (C, H, W) in [0, 1], converted to the run's channels and size (the
    shorter side resized, then the centre crop, as data=image_folder does)."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import center_crop, pil_to_tensor, resize

    c, h, w = shape
    if c not in (1, 3):
        raise VaePyroError(f"images: this run's images have {c} channels; only 1 or 3 convert")
    try:
        with Image.open(path) as img:
            img = img.convert("L" if c == 1 else "RGB")
    except FileNotFoundError:
        raise VaePyroError(f"images: no such file {path}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise VaePyroError(f"images: cannot read {path} as an image ({err})") from None
    if img.size != (w, h):
        img = center_crop(resize(img, min(h, w)), [h, w])
    return pil_to_tensor(img).float() / 255


def _requested_figures(cfg: SampleConfig, vae: VAE, out: Path) -> dict[str, Path]:
    """decoded.png of the given z and posterior.png of the given image files."""
    written, noun = {}, vae.pixels.noun
    if cfg.z is not None:
        pyro.set_rng_seed(cfg.seed)
        means, draws = _means_and_draws(vae, _given_z(cfg, vae))
        written["decoded"] = plots.prior_samples(
            means,
            out / "decoded.png",
            draws if cfg.prior.bernoulli else None,
            nrow=cfg.prior.nrow,
            scale=cfg.scale,
            noun=noun,
            source="given z",
        )
    if cfg.images is not None:
        device = next(vae.parameters()).device
        x = torch.stack([_read_image(Path(p), vae.image_shape) for p in cfg.images]).to(device)
        pyro.set_rng_seed(cfg.seed)
        means, draws = posterior_draws(vae, x, cfg.num_samples)
        written["posterior"] = plots.posterior_samples(
            x, means, draws, out / "posterior.png", cfg.scale, noun
        )
    return written


def _draw_figures(cfg: SampleConfig, vae: VAE, test: Split, out: Path) -> dict[str, Path]:
    """posterior.png, prior.png and interpolation.png; or only the figures of given z or
    images."""
    if cfg.z is not None or cfg.images is not None:
        return _requested_figures(cfg, vae, out)
    indices, pairs = _chosen(cfg, test)
    noun = vae.pixels.noun
    pyro.set_rng_seed(cfg.seed)
    x = test.x[indices]
    means, draws = posterior_draws(vae, x, cfg.num_samples)
    written = {
        "posterior": plots.posterior_samples(
            x, means, draws, out / "posterior.png", cfg.scale, noun
        )
    }
    pyro.set_rng_seed(cfg.seed)
    means, draws = prior_draws(vae, cfg.prior.num)
    written["prior"] = plots.prior_samples(
        means,
        out / "prior.png",
        draws if cfg.prior.bernoulli else None,
        nrow=cfg.prior.nrow,
        scale=cfg.scale,
        noun=noun,
        source=f"z ~ {vae.prior_net.label}",
    )
    a, b = (test.x[[p[i] for p in pairs]] for i in (0, 1))
    path = torch.cat([a.unsqueeze(1), interpolate(vae, a, b, cfg.interpolation.steps)], 1)
    rows = torch.cat([path, b.unsqueeze(1)], 1)
    written["interpolation"] = plots.interpolation(rows, out / "interpolation.png", cfg.scale)
    return written


def sample(cfg: DictConfig | SampleConfig) -> dict[str, Path]:
    """Write the figures of one training run; returns {figure name: PNG path}.

    Every figure re-seeds with `seed` before it draws, so each depends only on the seed and its
    own options (changing num_samples does not change prior.png). An out_dir that cannot be
    written is refused before the work; figures of the same names in it are replaced (the same
    checkpoint, seed and options draw them again).
    """
    cfg = to_object(cfg, SampleConfig)
    device = resolve_device(cfg.device, key="device")
    run_dir = Path(cfg.run_dir)
    if not run_dir.is_dir():
        raise VaePyroError(f"run directory not found: {run_dir} (run_dir= names a training run)")
    ckpt_path = run_dir / CHECKPOINT
    if not ckpt_path.is_file():
        raise VaePyroError(
            f"no checkpoint in {run_dir}: expected {ckpt_path}, which python -m vae_pyro.train "
            "writes after each epoch"
        )
    out = Path(cfg.out_dir).expanduser()
    check_writable(out)
    vae, ckpt = load_vae(ckpt_path, device)
    test = _test_split(ckpt, device)
    return {**_draw_figures(cfg, vae, test, out), **_latent_figures(cfg, vae, test, out)}


def _print_paths(cfg: DictConfig) -> None:
    for path in sample(cfg).values():
        print(path)


def main() -> None:
    cli.run("sample", _print_paths)


if __name__ == "__main__":
    main()
