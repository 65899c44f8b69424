"""Encoder and decoder networks: plain torch modules, no Pyro.

Every encoder is a `GaussianEncoder` (x -> hidden state -> (loc, scale) heads) and every decoder
a `PixelDecoder` (z -> one logit per pixel): what the model, the priors and the evaluator may
rely on. The layer names (fc1, fc21, fc22) follow Pyro's VAE tutorial so checkpoints and docs
line up with it. Image shape comes from the data as (C, H, W).
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# model.scale_param -> how the encoder's second head (fc22) becomes the positive scale of q(z|x).
SCALE_PARAMS = {
    "exp": torch.exp,  # fc22 = log scale (Pyro's tutorial)
    "logvar": lambda h: torch.exp(0.5 * h),  # fc22 = log variance (pytorch/examples, Kingma)
    "softplus": F.softplus,  # grows linearly, not exponentially, for large fc22
}


def _clipped(transform: Callable, low: float, high: float, h: torch.Tensor) -> torch.Tensor:
    return transform(F.hardtanh(h, low, high))


def to_scale(scale_param: str, bounds: Sequence[float] | None = None) -> Callable:
    """fc22 -> scale: SCALE_PARAMS[scale_param], after clipping fc22 to bounds (model.scale_bounds,
    hardtanh: no gradient outside) when given."""
    transform = SCALE_PARAMS[scale_param]
    return transform if bounds is None else functools.partial(_clipped, transform, *bounds)


# model.activation -> a hidden layer (in_dim, width) -> (its Linear, the nonlinearity after it).
# Always one Linear, so the parameter names (fc1, deeper.N) are the same whichever it is.
Layer = Callable[[int, int], tuple[nn.Linear, nn.Module]]
ACTIVATIONS: dict[str, Layer] = {
    "softplus": lambda i, o: (nn.Linear(i, o), nn.Softplus()),  # Pyro's tutorial
    # gated dense (Dauphin et al. 2017; Tomczak & Welling 2018): (W1 x + b1) * sigmoid(W2 x + b2),
    # W1 and W2 stacked in one Linear of 2 * width outputs, split by GLU
    "gated": lambda i, o: (nn.Linear(i, 2 * o), nn.GLU(dim=-1)),
}


def _relu(i: int, o: int) -> tuple[nn.Linear, nn.Module]:
    return nn.Linear(i, o), nn.ReLU()


def _deeper(width: int, layers: int, layer: Layer, first: int | None = None) -> nn.Sequential:
    """The hidden layers after the first: (Linear, nonlinearity) x (layers - 1), the first of
    them reading `first` features (default: width). Empty for one hidden layer, so such
    networks keep the seed's parameter names."""
    sizes = [first or width] + [width] * (layers - 2)
    return nn.Sequential(*(m for size in sizes[: layers - 1] for m in layer(size, width)))


class Paths(nn.Module):
    """The first hidden layer of a network that reads two inputs, as Tomczak & Welling's (the
    two-layer model's p(x | z1, z2) and q(z1 | x, z2), model.merge=paths): each input through a
    dense layer of its own, the two outputs side by side (2 x width). It is called on the inputs
    concatenated (sizes `sizes`), as a network that reads them side by side is."""

    def __init__(self, sizes: Sequence[int], width: int, layer: Layer) -> None:
        super().__init__()
        self.sizes = list(sizes)
        self.a, self.a_act = layer(self.sizes[0], width)
        self.b, self.b_act = layer(self.sizes[1], width)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        a, b = v.split(self.sizes, -1)
        return torch.cat([self.a_act(self.a(a)), self.b_act(self.b(b))], -1)


def _first(
    in_dim: int, width: int, layers: int, layer: Layer, paths: Sequence[int] | None
) -> tuple[nn.Module, nn.Module, nn.Sequential, int]:
    """(fc1, its nonlinearity, the deeper layers, the width the last of them gives): fc1 one
    dense layer of the input, or with `paths` (the sizes of two inputs) one per input."""
    if paths is None:
        fc1, act = layer(in_dim, width)
        return fc1, act, _deeper(width, layers, layer), width
    return (
        Paths(paths, width, layer),
        nn.Identity(),
        _deeper(width, layers, layer, 2 * width),
        (width if layers > 1 else 2 * width),
    )


def he_init(module: nn.Module) -> None:
    """Every Linear weight of `module` from N(0, 2 / fan_in) (He et al. 2015), biases kept:
    the initialisation of Tomczak & Welling's code (a gated layer's two halves alike)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.in_features))


# model.init -> what is done to the networks' fresh weights (PyTorch's own init, or He's).
INITS: dict[str, Callable[[nn.Module], None]] = {"default": lambda module: None, "he": he_init}


class GaussianEncoder(nn.Module, ABC):
    """x -> (loc, scale) of the diagonal Normal q(z | x) through a hidden state h(x): the heads
    fc21 (loc) and fc22 (scale, via scale_param) on `features`, written once for every encoder.
    A flow posterior is conditioned on h(x) too."""

    def _add_heads(
        self, hidden_dim: int, z_dim: int, scale_param: str, bounds: Sequence[float] | None
    ) -> None:
        """Called where the subclass's layers end, so the parameter names and order stay."""
        self._to_scale = to_scale(scale_param, bounds)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)

    @abstractmethod
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden state h(x), (batch, hidden_dim), of images (batch, C, H, W)."""

    def heads(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The transform keeps the scale positive without a constraint on fc22.
        return self.fc21(hidden), self._to_scale(self.fc22(hidden))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.features(x))


class PixelDecoder(nn.Module, ABC):
    """z -> one logit per pixel, flattened to (..., C*H*W); z may carry leading particle dims.

    The logits are what every likelihood is built from (model.LIKELIHOODS): exact where the
    sigmoid saturates to 0 or 1 in float32. ``log_scale`` (one learned scalar, made only when
    asked for) is the pixel noise of a Gaussian likelihood.
    """

    def _add_log_scale(self, learn_scale: bool) -> None:
        if learn_scale:
            self.log_scale = nn.Parameter(torch.zeros(()))

    @abstractmethod
    def logits(self, z: torch.Tensor) -> torch.Tensor: ...

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The pixels' Bernoulli probabilities (the Gaussian's means)."""
        return torch.sigmoid(self.logits(z))

    def log_bernoulli(self, z: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        """sum_j log Bernoulli(x_j | logit_j) = sum_j x_j l_j - softplus(l_j), (k, b), for
        particles z (k, b, z_dim) and flattened images (b, D): the Bernoulli log-likelihood
        (of gray targets too), which a decoder may compute faster than from its logits."""
        logits = self.logits(z)
        return (flat * logits - F.softplus(logits)).sum(-1)


class ConditionalGaussian(GaussianEncoder):
    """A diagonal Normal over z_dim dims given a vector: fc1 and `hidden_layers - 1` more dense
    layers (ACTIVATIONS[activation]), then the heads. The conditionals of a two-layer hierarchy:
    p(z1 | z2) reads z2; q(z1 | x, z2) reads the image encoder's hidden state h(x) beside z2, or
    with `paths` (model.merge=paths) x itself and z2, each through a layer of its own."""

    def __init__(
        self,
        in_dim: int,
        z_dim: int,
        hidden_dim: int,
        scale_param: str = "exp",
        hidden_layers: int = 1,
        activation: str = "softplus",
        scale_bounds: Sequence[float] | None = None,
        paths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        layer = ACTIVATIONS[activation]
        self.fc1, self.act, self.deeper, out = _first(
            in_dim, hidden_dim, hidden_layers, layer, paths
        )
        self._add_heads(out, z_dim, scale_param, scale_bounds)

    def features(self, v: torch.Tensor) -> torch.Tensor:
        return self.deeper(self.act(self.fc1(v)))


class Encoder(ConditionalGaussian):
    """The MLP encoder: the conditional Gaussian of the flattened image (fc1 and
    `hidden_layers - 1` more dense layers, softplus or gated, then the heads)."""

    def __init__(
        self,
        image_shape: tuple[int, ...],
        z_dim: int,
        hidden_dim: int,
        scale_param: str = "exp",
        hidden_layers: int = 1,
        activation: str = "softplus",
        scale_bounds: Sequence[float] | None = None,
    ) -> None:
        in_dim = math.prod(image_shape)
        super().__init__(
            in_dim, z_dim, hidden_dim, scale_param, hidden_layers, activation, scale_bounds
        )
        self.image_shape = tuple(image_shape)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return super().features(x.flatten(start_dim=1))


class Decoder(PixelDecoder):
    """The MLP decoder (Pyro's tutorial network): fc1 and `hidden_layers - 1` more dense layers
    (softplus, or gated), then fc21 to one logit per pixel. Which distribution the logits
    parametrize (Bernoulli, continuous Bernoulli, Gaussian) is the likelihood's business, not
    the decoder's. z_dim is its input's size (z1 and z2 together where it reads both; `paths`,
    their sizes, gives each a first layer of its own: model.merge=paths)."""

    def __init__(
        self,
        image_shape: tuple[int, ...],
        z_dim: int,
        hidden_dim: int,
        learn_scale: bool = False,
        hidden_layers: int = 1,
        activation: str = "softplus",
        paths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        out_dim = math.prod(self.image_shape)
        layer = ACTIVATIONS[activation]
        self.fc1, self.act, self.deeper, out = _first(
            z_dim, hidden_dim, hidden_layers, layer, paths
        )
        self.fc21 = nn.Linear(out, out_dim)
        self._add_log_scale(learn_scale)

    def hidden(self, z: torch.Tensor) -> torch.Tensor:
        return self.deeper(self.act(self.fc1(z)))

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc21(self.hidden(z))

    def log_bernoulli(self, z: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        """As PixelDecoder's, without the (k, b, D) tensor of x * logits: sum_j x_j l_j =
        h . (W^T x) + b . x, ~30% faster than the distribution's log_prob (the output matmul
        is the rest)."""
        hidden = self.hidden(z)
        x_dot_logits = torch.einsum("kbh,bh->kb", hidden, flat @ self.fc21.weight)
        return x_dot_logits + flat @ self.fc21.bias - F.softplus(self.fc21(hidden)).sum(-1)


def conv_feature_sizes(height: int, width: int, n: int) -> list[tuple[int, int]]:
    """(H, W) of the input and after each of n stride-2 convolutions (kernel 4, padding 1),
    each floor(size / 2); odd sizes lose nothing (the padded kernel still covers every pixel)
    and the decoder's output_padding (size mod 2) restores them exactly."""
    sizes = [(height, width)]
    for _ in range(n):
        h, w = sizes[-1]
        sizes.append((h // 2, w // 2))
    if min(sizes[-1]) < 1:
        raise ValueError(
            f"images of {height}x{width} pixels are too small for {n} stride-2 convolutions "
            f"(one per entry of model.channels): each side needs at least {2**n} pixels; "
            "give fewer channels or use model=mlp"
        )
    return sizes


class ConvEncoder(GaussianEncoder):
    """x -> (loc, scale) of q(z | x), for images: stride-2 convolutions (kernel 4, padding 1,
    ReLU) halve H and W per entry of `channels`, then a dense layer `fc1` (hidden_dim) and the
    heads `fc21` (loc) and `fc22` (scale, via scale_param) as in the MLP Encoder."""

    def __init__(
        self,
        image_shape: tuple[int, ...],
        z_dim: int,
        hidden_dim: int,
        channels: Sequence[int] = (32, 64, 128),
        scale_param: str = "exp",
        hidden_layers: int = 1,
        scale_bounds: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        channels = tuple(channels)
        c, h, w = self.image_shape
        sizes = conv_feature_sizes(h, w, len(channels))
        layers: list[nn.Module] = []
        for c_in, c_out in zip((c, *channels[:-1]), channels, strict=True):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        self.conv = nn.Sequential(*layers)
        self.fc1 = nn.Linear(channels[-1] * math.prod(sizes[-1]), hidden_dim)
        self.deeper = _deeper(hidden_dim, hidden_layers, _relu)
        self._add_heads(hidden_dim, z_dim, scale_param, scale_bounds)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.conv(x.reshape(-1, *self.image_shape)).flatten(start_dim=1)
        return self.deeper(F.relu(self.fc1(maps)))


class ConvDecoder(PixelDecoder):
    """z -> per-pixel logits, flattened to (..., C*H*W), mirroring ConvEncoder: dense layers
    fc1 (hidden_dim) and fc2 (the smallest feature map), then stride-2 transposed convolutions
    back to exactly (C, H, W)."""

    def __init__(
        self,
        image_shape: tuple[int, ...],
        z_dim: int,
        hidden_dim: int,
        channels: Sequence[int] = (32, 64, 128),
        learn_scale: bool = False,
        hidden_layers: int = 1,
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.z_dim = z_dim
        channels = tuple(channels)
        c, h, w = self.image_shape
        sizes = conv_feature_sizes(h, w, len(channels))
        self.feature_shape = (channels[-1], *sizes[-1])
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.deeper = _deeper(hidden_dim, hidden_layers, _relu)
        self.fc2 = nn.Linear(hidden_dim, math.prod(self.feature_shape))
        layers: list[nn.Module] = []
        outs = (*channels[-2::-1], c)  # channels reversed, then the image's
        targets = sizes[-2::-1]  # the sizes to restore, largest last
        for c_in, c_out, (th, tw) in zip(channels[::-1], outs, targets, strict=True):
            ih, iw = th // 2, tw // 2
            pad = (th - 2 * ih, tw - 2 * iw)  # 0 or 1: back to odd sizes
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, output_padding=pad), nn.ReLU()]
        self.deconv = nn.Sequential(*layers[:-1])  # no ReLU on the logits
        self._add_log_scale(learn_scale)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]  # batch, or (particles, batch)
        hidden = self.deeper(F.relu(self.fc1(z.reshape(-1, self.z_dim))))
        hidden = F.relu(self.fc2(hidden))
        out = self.deconv(hidden.view(-1, *self.feature_shape))
        return out.reshape(*lead, math.prod(self.image_shape))


# model.arch -> the function that builds its (encoder, decoder) pair for images of a shape.
# Adding an architecture: its two modules, one entry here (model.Arch is made from it) and
# conf/model/<name>.yaml. Each builder reads the model section (model.ModelConfig) it is given.
Networks = tuple[GaussianEncoder, PixelDecoder]
ARCHS: dict[str, Callable[[tuple[int, ...], Any, bool], Networks]] = {
    "mlp": lambda shape, cfg, learn_scale: (
        Encoder(
            shape,
            cfg.z_dim,
            cfg.hidden_dim,
            cfg.scale_param,
            cfg.hidden_layers,
            cfg.activation,
            cfg.scale_bounds,
        ),
        Decoder(
            shape,
            cfg.decoder_input_dim,
            cfg.hidden_dim,
            learn_scale,
            cfg.hidden_layers,
            cfg.activation,
            cfg.decoder_paths,
        ),
    ),
    "conv": lambda shape, cfg, learn_scale: (
        ConvEncoder(
            shape,
            cfg.z_dim,
            cfg.hidden_dim,
            cfg.channels,
            cfg.scale_param,
            cfg.hidden_layers,
            cfg.scale_bounds,
        ),
        ConvDecoder(
            shape,
            cfg.decoder_input_dim,
            cfg.hidden_dim,
            cfg.channels,
            learn_scale,
            cfg.hidden_layers,
        ),
    ),
}
