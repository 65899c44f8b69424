"""The figures of `python -m vae_pyro.sample`: one registry entry each.

A figure is a draw function registered with `@figure(name, Section)`. It writes
`<out_dir>/<name>.png` from a Scene (the options, the trained VAE, its test split) and returns
the path; its Section, if it has one, holds its keys `<name>.*`, which config.py adds to
SampleConfig, so the schema types and range-checks them and --help lists them. Figures are
drawn in the order they are registered. Adding one is one entry here; nothing else changes.

config.py imports this module to assemble SampleConfig, so it imports neither config.py nor
anything that does (data, model) at import time, and matplotlib only when a figure is drawn.
"""

# No `from __future__ import annotations`: OmegaConf reads the sections' field types at runtime.
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vae_pyro.data import one_per_class
from vae_pyro.errors import VaePyroError
from vae_pyro.schema import POSITIVE, Choice, Rule, Section, int_at_least, key

if TYPE_CHECKING:
    from vae_pyro.data import Split
    from vae_pyro.model import VAE

log = logging.getLogger(__name__)


# --- the registry ----------------------------------------------------------------------------


@dataclass
class Scene:
    """What every figure draws from: the command's options (a SampleConfig), the trained VAE,
    its test split and the folder of the PNGs. Shared choices (the test images of posterior.png
    and of the default interpolation pairs) are made once, here."""

    cfg: Any
    vae: "VAE"
    test: "Split"
    out: Path

    @property
    def requested(self) -> bool:
        """The command named latent vectors (z=, z_file=) or image files (images=): only their
        figures."""
        return self.given_codes or self.cfg.images is not None

    @property
    def given_codes(self) -> bool:
        return self.cfg.z is not None or self.cfg.z_file is not None

    def path(self, name: str) -> Path:
        return self.out / f"{name}.png"

    @cached_property
    def indices(self) -> list[int]:
        """The chosen test images: `indices`, or the first test image of each class."""
        if self.cfg.indices is not None:
            return check_indices(self.cfg.indices, "indices", len(self.test))

        return one_per_class(self.test.y).tolist()

    @cached_property
    def inputs(self) -> torch.Tensor:
        """The images to encode: the given image files (encoded.png), else the chosen test
        images (posterior.png)."""
        if self.cfg.images is None:
            return self.test.x[self.indices]
        device = next(self.vae.parameters()).device
        shape = self.vae.image_shape
        x = torch.stack([read_image(Path(p), shape) for p in self.cfg.images])
        warn_light_background(list(self.cfg.images), x, self.test.x)
        return x.to(device)


Draw = Callable[[Scene, Any], Path]


def standard(scene: Scene) -> bool:
    """The figures of a plain command (no z= or images=)."""
    return not scene.requested


@dataclass(frozen=True)
class Figure:
    """One PNG: `draw(scene, options)` writes `<name>.png` and returns its path, where `options`
    is the command's `section` instance (keys `<name>.*`), None for a figure without one.
    `when(scene)` says whether this command draws it; `check(scene, options)` refuses a bad
    option before any figure is drawn, so a refused command writes nothing."""

    name: str
    draw: Draw
    section: type[Section] | None = None
    when: Callable[[Scene], bool] = standard
    check: Callable[[Scene, Any], object] | None = None

    def __post_init__(self) -> None:
        if self.section is not None:  # range errors name the keys as users type them
            self.section.PREFIX = f"{self.name}."


FIGURES: dict[str, Figure] = {}


def figure(
    name: str,
    section: type[Section] | None = None,
    when: Callable[[Scene], bool] = standard,
    check: Callable[[Scene, Any], object] | None = None,
) -> Callable[[Draw], Draw]:
    """Register the decorated draw function as the figure `<name>.png` (see Figure)."""

    def register(draw: Draw) -> Draw:
        FIGURES[name] = Figure(name, draw, section, when, check)
        return draw

    return register


def options(scene: Scene, fig: Figure) -> Any:
    """The figure's config section in this command, None for a figure without one."""
    return getattr(scene.cfg, fig.name) if fig.section is not None else None


# --- what the figures compute ----------------------------------------------------------------


@torch.no_grad()
def _means_and_draws(vae: "VAE", z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of p(x | z) and one draw of it, shaped (*z.shape[:-1], C, H, W). The likelihood's
    own mean: the decoder's sigmoid is the mean for Bernoulli and Gaussian pixels, not for the
    continuous Bernoulli."""
    likelihood = vae.likelihood(z)
    shape = (*z.shape[:-1], *vae.image_shape)
    return likelihood.mean.reshape(shape), likelihood.sample().reshape(shape)


@torch.no_grad()
def posterior_draws(vae: "VAE", x: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, ...]:
    """Means of p(x|z) at `num_samples` draws z ~ q(z|x) per image, and one draw of each.

    Both are (n, num_samples, C, H, W): the spread shows the posterior's uncertainty in pixels.
    With two stochastic layers the draws go through both, z1 ~ q(z1 | x, z2), z2 ~ q(z2 | x).
    """
    z = vae.posterior_sample(x, num_samples).transpose(0, 1)  # (n, k, decoder z dims)
    return _means_and_draws(vae, z)


def prior_draws(vae: "VAE", n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of p(x|z) at n draws z ~ p(z) and one draw of each, (n, C, H, W): the model's
    own VAE.sample_prior."""
    return vae.sample_prior(n, draws=True)


@torch.no_grad()
def interpolate(vae: "VAE", x_a: torch.Tensor, x_b: torch.Tensor, steps: int) -> torch.Tensor:
    """Decoder means at `steps` evenly spaced points from code(x_a) to code(x_b), ends included.

    Uses the posteriors' codes (their means for a diagonal Normal), no sampling, so the figure
    does not depend on the seed; with two layers the line runs in the top layer, each point
    decoded through the mean of p(z1 | z2). Returns (n, steps, C, H, W) for n pairs.
    """
    z_a, z_b = vae.code(x_a), vae.code(x_b)
    t = torch.linspace(0, 1, steps, device=z_a.device).view(1, steps, 1)
    z = (1 - t) * z_a.unsqueeze(1) + t * z_b.unsqueeze(1)
    return vae.likelihood(vae.descend(z)).mean.reshape(x_a.shape[0], steps, *vae.image_shape)


@torch.no_grad()
def posterior_means(
    vae: "VAE", x: torch.Tensor, batch_size: int = 2000, layer: int | None = None
) -> torch.Tensor:
    """The posterior's code (z_loc for a diagonal Normal) of every image, (N, dims), of the top
    layer or of `layer` (VAE.code); batch_size only bounds memory."""
    return torch.cat([vae.code(xb, layer) for xb in x.split(batch_size)])


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


def grid_values(steps: int, quantile: float) -> torch.Tensor:
    """The manifold grid's coordinates: the N(0, 1) quantiles `quantile` ... 1 - `quantile`."""
    return torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(quantile, 1 - quantile, steps))


@torch.no_grad()
def manifold(vae: "VAE", steps: int, quantile: float = 0.05) -> tuple[torch.Tensor, float]:
    """Decoder means over a steps x steps grid of the 2-D latent plane (z_dim must be 2).

    The grid sits at the N(0, 1) quantiles `quantile` ... 1 - `quantile` in each direction, so
    each cell holds the same prior mass and the grid covers where the prior puts it. Rows run
    from high z2 (top) to low z2, columns from low z1 to high z1, as in the latent scatter plot.
    Returns (steps, steps, C, H, W) images and the largest |z| on the grid.
    """
    values = grid_values(steps, quantile).to(next(vae.parameters()).device)
    z1, z2 = torch.meshgrid(values, values.flip(0), indexing="xy")
    z = torch.stack([z1, z2], dim=-1).reshape(-1, 2)
    images = vae.likelihood(vae.descend(z)).mean.reshape(steps, steps, *vae.image_shape)
    return images, float(values[-1])


def check_indices(items: list[int], key: str, n: int) -> list[int]:
    for i in items:
        if not 0 <= i < n:
            raise VaePyroError(
                f"{key}={items} has {i}, which is not a test-image index: the test set has "
                f"{n} images (0 to {n - 1})"
            )
    return items


def read_image(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """An image file as (C, H, W) in [0, 1], read as data=image_folder reads it
    (images.read_image: 16-bit, float, palette, alpha, CMYK by their own meaning), converted to
    the run's channels and size (the shorter side resized, then the centre crop)."""
    from vae_pyro import images

    c, h, w = shape
    if c not in (1, 3):
        raise VaePyroError(f"images: this run's images have {c} channels; only 1 or 3 convert")
    try:
        x = images.read_image(path, "images")
    except FileNotFoundError:
        raise VaePyroError(f"images: no such file {path}") from None
    return images.fit(images.with_channels(x, c), h, w)


def warn_light_background(paths: list[str], x: torch.Tensor, test: torch.Tensor) -> None:
    """A logged warning for each input image whose background (its border's mean) is light
    while the run's images' is dark: dark ink on white paper, which the model never saw."""
    from vae_pyro.images import border_mean

    trained = border_mean(test[:1000])
    if trained >= 0.5:
        return
    for path, image in zip(paths, x, strict=True):
        given = border_mean(image)
        if given > 0.5:
            log.warning(
                "images: %s looks like dark ink on a light background (border mean %.2f), "
                "unlike the training images (%.2f, light on dark): invert it (e.g. "
                "PIL.ImageOps.invert(image), or 255 - pixels) for a faithful encoding",
                path,
                given,
                trained,
            )


def given_z(scene: Scene) -> torch.Tensor:
    """The latent vectors of z= or z_file=, each checked against the run's z_dim; an error
    names where the vectors came from (z, or the file)."""
    z_dim = scene.vae.z_dim
    if scene.cfg.z is not None and scene.cfg.z_file is not None:
        raise VaePyroError("z and z_file both give latent vectors: give one of them")
    if scene.cfg.z_file is None:
        vectors, source = scene.cfg.z, "z"
    else:
        vectors, source = read_codes(Path(scene.cfg.z_file)), f"z_file: {scene.cfg.z_file}"
    for i, vector in enumerate(vectors):
        if len(vector) != z_dim:
            raise VaePyroError(
                f"{source}: vector {i} has {len(vector)} numbers; this run's latent space has "
                f"z_dim={z_dim} (give {z_dim} numbers per vector)"
            )
    return torch.tensor(vectors, dtype=torch.float32, device=next(scene.vae.parameters()).device)


def read_codes(path: Path) -> list[list[float]]:
    """Latent vectors from a .npy file of shape (N, z_dim) (or one vector, (z_dim,)), or a .npz
    holding one such array: finite numbers, as numpy.save or numpy.savez write them (no
    pickles)."""
    import zipfile

    import numpy as np

    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):  # a zip of named arrays: one is expected
            with loaded:
                if len(loaded.files) != 1:
                    keys = ", ".join(loaded.files) or "none"
                    raise VaePyroError(
                        f"z_file: {path} holds {len(loaded.files)} arrays (keys: {keys}); "
                        "save one array of shape (N, z_dim) (numpy.save, or numpy.savez with one)"
                    )
                loaded = loaded[loaded.files[0]]
    except FileNotFoundError:
        raise VaePyroError(f"z_file: no such file {path}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise VaePyroError(f"z_file: cannot read {path} as a .npy or .npz array ({err})") from None
    codes = loaded.reshape(1, -1) if loaded.ndim == 1 else loaded
    if codes.ndim != 2 or codes.shape[0] == 0 or codes.dtype.kind not in "biuf":
        raise VaePyroError(
            f"z_file: {path} holds a {codes.dtype} array of shape {codes.shape}; "
            "give numbers of shape (N, z_dim)"
        )
    if not np.isfinite(codes).all():
        raise VaePyroError(f"z_file: {path} holds non-finite numbers (nan or inf)")
    return codes.astype(float).tolist()


def _word(vae: "VAE") -> str:
    """What the figures call one draw of the run's likelihood."""
    from vae_pyro.plots import LIKELIHOOD_WORDS

    return LIKELIHOOD_WORDS[vae.likelihood_name]


# --- the figures, in the order they are drawn ---------------------------------------------------


@dataclass
class PriorFigure(Section):
    num: int = key(64, "images decoded from z ~ p(z)", POSITIVE)
    nrow: int = key(8, "images per row", POSITIVE)
    bernoulli: bool = key(True, "also show one draw of p(x|z) of each")


def _decoded_grid(
    scene: Scene, name: str, means: torch.Tensor, draws: torch.Tensor | None, source: str
) -> Path:
    """prior.png's layout (prior.nrow, and the draws beside the means if prior.bernoulli)."""
    from vae_pyro import plots

    layout = scene.cfg.prior
    return plots.prior_samples(
        means,
        scene.path(name),
        draws if layout.bernoulli else None,
        nrow=layout.nrow,
        scale=scene.cfg.scale,
        noun=_word(scene.vae),
        source=source,
    )


@figure("decoded", when=lambda scene: scene.given_codes, check=lambda s, _: given_z(s))
def draw_decoded(scene: Scene, _: None) -> Path:
    """Decoder means of the vectors of z= or z_file=, laid out as prior.png."""
    means, draws = _means_and_draws(scene.vae, scene.vae.descend(given_z(scene)))
    return _decoded_grid(scene, "decoded", means, draws, "given z")


def _encode(scene: Scene, name: str) -> Path:
    """Each input beside decoder means of `num_samples` draws z ~ q(z|x) and one draw of p(x|z)
    of each."""
    from vae_pyro import plots

    x, cfg = scene.inputs, scene.cfg
    means, draws = posterior_draws(scene.vae, x, cfg.num_samples)
    return plots.posterior_samples(x, means, draws, scene.path(name), cfg.scale, _word(scene.vae))


@figure("posterior", check=lambda scene, _: scene.inputs)
def draw_posterior(scene: Scene, _: None) -> Path:
    """The chosen test images, encoded and decoded (_encode)."""
    return _encode(scene, "posterior")


@figure(
    "encoded",
    when=lambda scene: scene.cfg.images is not None,
    check=lambda scene, _: scene.inputs,
)
def draw_encoded(scene: Scene, _: None) -> Path:
    """The image files of images=, encoded and decoded as posterior.png's test images are, in a
    file of their own: posterior.png is never replaced by them."""
    return _encode(scene, "encoded")


@figure("prior", PriorFigure)
def draw_prior(scene: Scene, opts: PriorFigure) -> Path:
    """Decoder means at z ~ p(z), and one draw of p(x|z) of each."""
    means, draws = prior_draws(scene.vae, opts.num)
    label = scene.vae.prior_net.label
    return _decoded_grid(scene, "prior", means, draws, f"z ~ {label}")


@dataclass
class InterpolationFigure(Section):
    pairs: list[list[int]] | None = key(
        None,
        "[[a, b], ...] test indices; null = consecutive pairs of `indices`",
        Rule(lambda v: len(v) > 0 and all(len(p) == 2 for p in v), "a list of [a, b] pairs"),
    )
    steps: int = key(10, "decoded points on each line, both ends included", int_at_least(2))


def _pairs(scene: Scene, opts: InterpolationFigure) -> list[tuple[int, int]]:
    if opts.pairs is not None:
        for pair in opts.pairs:
            check_indices(pair, "interpolation.pairs", len(scene.test))
        return [tuple(p) for p in opts.pairs]
    if len(scene.indices) < 2:
        raise VaePyroError("interpolation needs two images: give 2+ indices or pairs")
    return list(zip(scene.indices[:-1], scene.indices[1:], strict=True))


@figure("interpolation", InterpolationFigure, check=_pairs)
def draw_interpolation(scene: Scene, opts: InterpolationFigure) -> Path:
    """Per pair: image a | decoder means on the line between their codes | image b."""
    from vae_pyro import plots

    pairs = _pairs(scene, opts)
    a, b = (scene.test.x[[p[i] for p in pairs]] for i in (0, 1))
    line = interpolate(scene.vae, a, b, opts.steps)
    rows = torch.cat([a.unsqueeze(1), line, b.unsqueeze(1)], 1)
    return plots.interpolation(rows, scene.path("interpolation"), scene.cfg.scale)


class LatentMethod(Choice):
    pca = "pca"
    tsne = "tsne"


@dataclass
class LatentFigure(Section):
    method: LatentMethod = key(LatentMethod.pca, "latent.png for z_dim > 2: PCA | t-SNE")
    layer: int | None = key(
        None,
        "whose codes: null = the top layer (z, or z2 of two), 1 = z1 of a two-layer model",
        Rule(lambda v: v in (1, 2), "1 or 2"),
    )


def _layer(scene: Scene, opts: LatentFigure) -> int:
    """latent.layer, checked against the run's stochastic layers (the top one by default)."""
    layers = scene.vae.layers
    if opts.layer is not None and opts.layer > layers:
        raise VaePyroError(
            f"latent.layer={opts.layer}: this run has {layers} stochastic layer"
            f"{'s' if layers > 1 else ''} (model.latent_layers={layers}); give 1 or leave it out"
        )
    return layers if opts.layer is None else opts.layer


def _embedding(z: torch.Tensor, method: LatentMethod, seed: int) -> tuple[Any, ...]:
    """(N, 2) points of (N, D) codes, their axis names and the method's name."""
    if method == LatentMethod.tsne:
        return tsne_2d(z, seed), ("t-SNE 1", "t-SNE 2"), "t-SNE"
    points, explained = pca_2d(z)
    axes = tuple(f"PC{i + 1} ({100 * e:.0f}% of variance)" for i, e in enumerate(explained))
    return points, axes, "PCA"


def class_names(scene: Scene) -> list[str] | None:
    """The legend's name of each label: the class folders of an image_folder run, else None
    (the label is the name: a digit, a CIFAR index)."""
    return scene.test.classes


@figure("latent", LatentFigure, check=_layer)
def draw_latent(scene: Scene, opts: LatentFigure) -> Path:
    """The codes of every test image coloured by label: the plane itself for 2 dims (with
    manifold.png's square), against the label for 1, else their PCA or t-SNE. With two
    stochastic layers, of the top one or of latent.layer."""
    from vae_pyro import plots

    vae, test, path, layer = scene.vae, scene.test, scene.path("latent"), _layer(scene, opts)
    names = class_names(scene)
    z = posterior_means(vae, test.x, layer=layer)
    title = f"posterior means of {len(test)} test images"
    if vae.layers == 2:
        title = f"{title} (z{layer})"
    dims = z.shape[1]
    if dims == 2 and layer == vae.layers:
        grid = scene.cfg.manifold
        box = float(grid_values(grid.steps, grid.quantile)[-1])
        return plots.latent_scatter(z, test.y, path, title=title, box=box, names=names)
    if dims == 1:
        points = torch.cat([z, test.y.unsqueeze(1).float()], 1)
        return plots.latent_scatter(points, test.y, path, ("z1", "label"), title, names=names)
    points, axes, method = _embedding(z, opts.method, scene.cfg.seed)
    title = f"{title}, {method} of {dims} dims"
    return plots.latent_scatter(points, test.y, path, axes, title, names=names)


@dataclass
class ManifoldFigure(Section):
    steps: int = key(15, "z_dim = 2: steps x steps decoded grid", int_at_least(2))
    quantile: float = key(
        0.02,
        "the grid spans the N(0, 1) quantiles q ... 1 - q",
        # below 1e-6 float32 rounds q to 0 (a grid from -inf to inf); above 0.49 the grid
        # shrinks to a point (a title "from -0.00 to 0.00")
        Rule(lambda v: 1e-6 <= v <= 0.49, "a number from 0.000001 to 0.49"),
    )


@figure("manifold", ManifoldFigure, when=lambda scene: standard(scene) and scene.vae.z_dim == 2)
def draw_manifold(scene: Scene, opts: ManifoldFigure) -> Path:
    """z_dim = 2: decoder means over a grid of the latent plane."""
    from vae_pyro import plots

    images, z_max = manifold(scene.vae, opts.steps, opts.quantile)
    return plots.manifold(images, z_max, scene.path("manifold"), scene.cfg.scale)
