"""Encoder and decoder networks: plain torch modules, no Pyro.

The layer names (fc1, fc21, fc22) follow Pyro's VAE tutorial so checkpoints and
docs line up with it. Image shape comes from the data as (C, H, W).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# How the encoder's second head (fc22) becomes the positive scale of q(z | x).
SCALE_PARAMS = {
    "exp": torch.exp,  # fc22 = log scale (Pyro's tutorial)
    "logvar": lambda h: torch.exp(0.5 * h),  # fc22 = log variance (pytorch/examples, Kingma)
    "softplus": F.softplus,  # grows linearly, not exponentially, for large fc22
}


class Encoder(nn.Module):
    """x -> (loc, scale) of the diagonal Normal q(z | x)."""

    def __init__(
        self, image_shape: tuple[int, ...], z_dim: int, hidden_dim: int, scale_param: str = "exp"
    ) -> None:
        super().__init__()
        if scale_param not in SCALE_PARAMS:
            raise ValueError(f"scale_param must be one of {sorted(SCALE_PARAMS)}")
        self.image_shape = tuple(image_shape)
        self.scale_param = scale_param
        in_dim = math.prod(self.image_shape)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.softplus(self.fc1(x.flatten(start_dim=1)))
        # The transform keeps the scale positive without a constraint on fc22.
        return self.fc21(hidden), SCALE_PARAMS[self.scale_param](self.fc22(hidden))


class Decoder(nn.Module):
    """z -> per-pixel Bernoulli probabilities, flattened to (batch, C*H*W).

    ``logits`` gives the pre-sigmoid values: likelihoods built from them stay exact where the
    sigmoid saturates to 0 or 1 in float32. ``log_scale`` (one learned scalar, made only when
    asked for) is the pixel noise of a Gaussian likelihood.
    """

    def __init__(
        self, image_shape: tuple[int, ...], z_dim: int, hidden_dim: int, learn_scale: bool = False
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        out_dim = math.prod(self.image_shape)
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, out_dim)
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()
        if learn_scale:
            self.log_scale = nn.Parameter(torch.zeros(()))

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc21(self.softplus(self.fc1(z)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.sigmoid(self.logits(z))
