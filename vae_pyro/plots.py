"""Every figure. Uses matplotlib's object API (no pyplot state, no GUI backend) and make_grid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torchvision.utils import make_grid


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def image_grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> (H', W', 3) tensor for imshow (make_grid makes grey RGB)."""
    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)
    return grid.permute(1, 2, 0)


def loss_curves(metrics: Sequence[dict], path: Path) -> Path:
    """Train and test negative ELBO (nats per image) against epoch."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    epochs = [m["epoch"] for m in metrics]
    ax.plot(epochs, [m["train_loss"] for m in metrics], label="train", marker=".")
    tested = [m for m in metrics if m["test_loss"] is not None]
    ax.plot(
        [m["epoch"] for m in tested], [m["test_loss"] for m in tested], label="test", marker="."
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("-ELBO (nats per image)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def reconstructions(inputs: torch.Tensor, recons: torch.Tensor, path: Path) -> Path:
    """Test inputs (top row) over their reconstructions (bottom row)."""
    n = inputs.shape[0]
    grid = image_grid(torch.cat([inputs, recons]), nrow=n)
    fig = Figure(figsize=(max(4, n * 0.6), 1.6))
    ax = fig.add_subplot()
    ax.imshow(grid)
    ax.set_axis_off()
    ax.set_title("inputs (top) / reconstructions (bottom)", fontsize=9)
    return _save(fig, path)
