"""Every figure. Uses matplotlib's object API (no pyplot state, no GUI backend) and image_grid.

Every PNG is saved by `_save`: atomically (files.atomic_write), and tagged as vae-pyro's
(files.SOFTWARE), which is what lets a later command replace it and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from vae_pyro.files import SOFTWARE, atomic_write


def _save(fig: Figure, path: Path, **savefig: Any) -> Path:
    """fig as a PNG at path, through a temp file beside it: an interrupted or failed save
    leaves the previous figure as it was and no temp file (OSError propagates)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"dpi": 100, **savefig, "format": "png", "metadata": {"Software": SOFTWARE}}
    atomic_write(path, lambda f: fig.savefig(f, **options))
    return path


def image_grid(images: torch.Tensor, nrow: int, pad: int = 2) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> (H', W', 3) tensor for imshow: torchvision's make_grid(nrow,
    padding=2, pad_value=1) pixel for pixel (grey made RGB; one image alone has no frame),
    without importing torchvision, which is slow to import."""
    x = images.detach().float().cpu().clamp(0, 1)
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    n, c, h, w = x.shape
    if n == 1:
        return x[0].permute(1, 2, 0)
    cols = min(nrow, n)
    rows = -(-n // cols)
    grid = x.new_ones(c, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for k in range(n):
        top, left = pad + (k // cols) * (h + pad), pad + (k % cols) * (w + pad)
        grid[:, top : top + h, left : left + w] = x[k]
    return grid.permute(1, 2, 0)


def loss_curves(metrics: Sequence[dict], path: Path) -> Path:
    """loss.png: loss_figure, saved."""
    return _save(loss_figure(metrics), path, bbox_inches="tight")


def loss_figure(metrics: Sequence[dict]) -> Figure:
    """Train and test negative ELBO (nats per image) against epoch, at whole epochs only (one
    tick for a one-epoch run, where matplotlib would otherwise mark 0.96, 0.98, ...)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    epochs = [m["epoch"] for m in metrics]
    ax.plot(epochs, [m["train_loss"] for m in metrics], label="train", marker=".")
    tested = [m for m in metrics if m["test_loss"] is not None]
    ax.plot(
        [m["epoch"] for m in tested], [m["test_loss"] for m in tested], label="test", marker="."
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("epoch")
    ax.set_ylabel("-ELBO (nats per image)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def reconstructions(inputs: torch.Tensor, recons: torch.Tensor, path: Path) -> Path:
    """Test inputs (top row) over their reconstructions (bottom row)."""
    n = inputs.shape[0]
    grid = image_grid(torch.cat([inputs, recons]), nrow=n)
    fig = Figure(figsize=(max(4, n * 0.6), 1.6))
    ax = fig.add_subplot()
    ax.imshow(grid)
    ax.set_axis_off()
    ax.set_title("inputs (top) / reconstructions (bottom)", fontsize=9)
    return _save(fig, path, bbox_inches="tight")


# Image-grid figures for `python -m vae_pyro.sample`. Each is drawn pixel-exact: one image pixel is
# scale x scale figure pixels, so small digits are never resampled (no blur, no moire) and the PNG
# size follows from the grid alone. Any channel count and image size (C, H, W) works.
DPI = 100
TITLE_PX = 22  # band above the panels for their titles
TITLE_PT = 9  # their font size
GAP_PX = 12  # white space between side-by-side panels

# model.likelihood -> what the figures call one draw of it ("a Bernoulli sample of each").
LIKELIHOOD_WORDS = {
    "bernoulli": "Bernoulli",
    "continuous_bernoulli": "continuous Bernoulli",
    "gaussian": "Gaussian",
}


def rows_grid(rows: torch.Tensor) -> torch.Tensor:
    """(n, m, C, H, W) -> an (H', W', 3) grid with n rows of m images."""
    return image_grid(rows.flatten(0, 1), nrow=rows.shape[1])


def _panels(panels: Sequence[tuple[torch.Tensor, str]], path: Path, scale: int = 1) -> Path:
    """(H', W', 3) grids side by side, titled, each pixel upscaled scale x scale. Each panel is
    at least as wide as its title, the grid centred under it, so titles never overlap."""
    grids = [g.repeat_interleave(scale, 0).repeat_interleave(scale, 1) for g, _ in panels]
    slots = [max(g.shape[1], _title_px(title)) for g, (_, title) in zip(grids, panels, strict=True)]
    width = sum(slots) + GAP_PX * (len(grids) - 1)
    height = max(g.shape[0] for g in grids) + TITLE_PX
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    left = 0
    for grid, slot, (_, title) in zip(grids, slots, panels, strict=True):
        h, w = grid.shape[:2]
        x0 = left + (slot - w) / 2
        ax = fig.add_axes((x0 / width, (height - TITLE_PX - h) / height, w / width, h / height))
        ax.imshow(grid.numpy(), interpolation="nearest", aspect="auto")
        ax.set_axis_off()
        x_mid, y_mid = (left + slot / 2) / width, 1 - TITLE_PX / 2 / height
        fig.text(x_mid, y_mid, title, ha="center", va="center", fontsize=TITLE_PT)
        left += slot + GAP_PX
    return _save(fig, path, dpi=DPI)


def _title_px(title: str) -> int:
    """The width in pixels of a title at TITLE_PT points (its glyphs' outline), plus a margin."""
    from matplotlib.textpath import TextPath

    return math.ceil(TextPath((0, 0), title, size=TITLE_PT).get_extents().width * DPI / 72) + 6


def posterior_samples(
    inputs: torch.Tensor,
    means: torch.Tensor,
    samples: torch.Tensor,
    path: Path,
    scale: int = 1,
    noun: str = "Bernoulli",
) -> Path:
    """Per row, an input beside decoder means of draws z ~ q(z|x) (left) and a sample of p(x|z)
    of each (right; `noun` names the likelihood): how much the posterior's uncertainty shows in
    pixel space.

    inputs (n, C, H, W); means and samples (n, k, C, H, W).
    """
    k = means.shape[1]
    first = inputs.unsqueeze(1)
    return _panels(
        [
            (rows_grid(torch.cat([first, means], 1)), f"input | decoder means, {k} z ~ q(z|x)"),
            (rows_grid(torch.cat([first, samples], 1)), f"input | a {noun} sample of each"),
        ],
        path,
        scale,
    )


def prior_samples(
    means: torch.Tensor,
    path: Path,
    samples: torch.Tensor | None = None,
    nrow: int = 8,
    scale: int = 1,
    noun: str = "Bernoulli",
    source: str = "z ~ N(0, I)",
) -> Path:
    """Decoder means of latent vectors (`source` says which: prior draws, given vectors), and
    optionally a sample of p(x|z) of each beside them."""
    panels = [(image_grid(means, nrow), f"decoder means, {source}")]
    if samples is not None:
        panels.append((image_grid(samples, nrow), f"a {noun} sample of each"))
    return _panels(panels, path, scale)


def interpolation(rows: torch.Tensor, path: Path, scale: int = 1) -> Path:
    """Rows of: start image | decoder means along the line between posterior means | end image."""
    title = "input | decoder means from z_a to z_b | input"
    return _panels([(rows_grid(rows), title)], path, scale)


def manifold(images: torch.Tensor, z_max: float, path: Path, scale: int = 1) -> Path:
    """Decoder means over a square grid of the 2-D latent plane (rows: z2 from high to low)."""
    title = f"decoder means, z1 and z2 from {-z_max:.2f} to {z_max:.2f}"
    return _panels([(rows_grid(images), title)], path, scale)


def latent_scatter(
    points: torch.Tensor,
    labels: torch.Tensor,
    path: Path,
    axis_labels: tuple[str, str] = ("z1", "z2"),
    title: str = "",
    box: float | None = None,
    figsize: tuple[float, float] = (6.4, 5.6),
    names: Sequence[str] | None = None,
) -> Path:
    """(N, 2) points coloured by class label: does the code separate the classes unsupervised?

    `names[label]` names each class in the legend (an image folder's class folders), else the
    label itself. `box` draws the square [-box, box]^2 (the region a manifold figure shows).
    The PNG is figsize * DPI pixels exactly.
    """
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    points, labels = points.detach().float().cpu(), labels.detach().cpu()
    classes = labels.unique().tolist()
    many = len(classes) > 10
    cmap = matplotlib.colormaps["turbo" if many else "tab10"]
    colors = [cmap(i / (len(classes) - 1) if many else i) for i in range(len(classes))]
    # One scatter in a fixed shuffled order, so no class is painted over all the others; hard-edged
    # (not antialiased) points keep the PNG about 3x smaller.
    order = torch.randperm(len(points), generator=torch.Generator().manual_seed(0))
    color_of = torch.as_tensor(colors)[torch.searchsorted(torch.as_tensor(classes), labels)]
    point_colors = color_of[order].numpy()
    ax.scatter(*points[order].T, s=3, lw=0, c=point_colors, antialiased=False, rasterized=True)
    for c, color in zip(classes, colors, strict=True):
        name = names[c] if names is not None and 0 <= c < len(names) else str(c)
        ax.scatter([], [], s=20, color=color, label=name)
    if box is not None:
        ax.add_patch(Rectangle((-box, -box), 2 * box, 2 * box, fill=False, ls="--", lw=0.8))
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title, fontsize=10)
    ax.legend(
        title="class" if names is not None else "label",
        fontsize=8,
        loc="center left",
        bbox_to_anchor=(1, 0.5),
    )
    return _save(fig, path, dpi=DPI)


class SweepPoint(NamedTuple):
    """One run of summary.png: the value of the key the runs vary, the line it belongs to (the
    other varying keys' values, "" for one line) and its final test loss (None: failed or
    unfinished)."""

    x: float | str
    line: str
    loss: float | None


def sweep_figure(points: Sequence[SweepPoint], x_label: str, title: str = "") -> Figure:
    """Final test loss against the key the runs vary (`x_label`), one line per setting of the
    others: a numeric axis for numbers (log-scaled when they span a decade), else one tick per
    value in job order.

    Jobs that did not finish are red crosses on the top edge at their value, so a hole in the
    grid shows instead of silently missing. A line's points are joined only when each value
    occurs once on it (a grid); repeats (seeds, Optuna trials) stay unjoined markers.
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    numeric = all(isinstance(p.x, int | float) for p in points)
    categories = list(dict.fromkeys(str(p.x) for p in points))

    def at(x: float | str) -> float:
        return float(x) if numeric else categories.index(str(x))

    ok = [p for p in points if p.loss is not None and math.isfinite(p.loss)]
    lines = list(dict.fromkeys(p.line for p in ok))
    many = len(lines) > 10  # e.g. Optuna trials: markers without a legend of every setting
    for line in [""] if many else lines:
        xy = sorted((at(p.x), p.loss) for p in ok if many or p.line == line)
        xs = [x for x, _ in xy]
        style = "-" if len(set(xs)) == len(xs) else "none"
        label = f"{len(lines)} settings" if many else line or None
        ax.plot(xs, [loss for _, loss in xy], marker="o", ls=style, label=label)
    failed = [p for p in points if p not in ok]
    if failed:
        ax.plot(
            [at(p.x) for p in failed],
            [1.0] * len(failed),
            transform=ax.get_xaxis_transform(),
            ls="none",
            marker="x",
            ms=9,
            mew=2,
            color="tab:red",
            clip_on=False,
            label=f"failed / unfinished ({len(failed)})",
        )
    _value_axis(ax, sorted({at(p.x) for p in points}), None if numeric else categories)
    ax.set_xlabel(x_label)
    ax.set_ylabel("final test -ELBO (nats per image)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return fig


def _value_axis(ax: Any, values: list[float], categories: list[str] | None) -> None:
    """Ticks at the values the runs took: the categories' names, or the numbers themselves
    (on a log scale when they are positive and span a decade)."""
    if categories is not None:
        long = max((len(c) for c in categories), default=0) > 8
        ax.set_xticks(range(len(categories)), categories, rotation=30 if long else 0)
        ax.set_xlim(-0.5, len(categories) - 0.5)
        return
    if values and values[0] > 0 and values[-1] >= 10 * values[0]:
        ax.set_xscale("log")
    if len(values) <= 12:
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.minorticks_off()


def sweep_summary(points: Sequence[SweepPoint], path: Path, x_label: str, title: str = "") -> Path:
    """summary.png of vae_pyro.report (sweep_figure)."""
    return _save(sweep_figure(points, x_label, title), path, bbox_inches="tight")
