"""Encoder and decoder networks: plain torch modules, no Pyro.

The layer names (fc1, fc21, fc22) follow Pyro's VAE tutorial so checkpoints and
docs line up with it. Image shape comes from the data as (C, H, W).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Encoder(nn.Module):
    """x -> (loc, scale) of the diagonal Normal q(z | x)."""

    def __init__(self, image_shape: tuple[int, ...], z_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        in_dim = math.prod(self.image_shape)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.softplus(self.fc1(x.flatten(start_dim=1)))
        # fc22 is the log of the scale: exp keeps it positive without a constraint.
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class Decoder(nn.Module):
    """z -> per-pixel Bernoulli probabilities, flattened to (batch, C*H*W)."""

    def __init__(self, image_shape: tuple[int, ...], z_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        out_dim = math.prod(self.image_shape)
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, out_dim)
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.sigmoid(self.fc21(self.softplus(self.fc1(z))))
