"""vae-pyro: a variational autoencoder in Pyro."""

from vae_pyro.model import VAE
from vae_pyro.networks import Decoder, Encoder

__version__ = "0.1.0"
__all__ = ["VAE", "Encoder", "Decoder", "__version__"]
