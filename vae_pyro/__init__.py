"""vae-pyro: a variational autoencoder in Pyro.

`vae_pyro.load(run_dir)` gives a trained run's model (vae_pyro/api.py); `vae_pyro.fit(*overrides)`
trains one. Names are imported on first use, so that `import vae_pyro` (and `python -m
vae_pyro`'s command list) does not pay for torch and Pyro.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["VAE", "Encoder", "Decoder", "TrainedVAE", "load", "fit", "__version__"]

_WHERE = {
    "VAE": "vae_pyro.model",
    "Encoder": "vae_pyro.networks",
    "Decoder": "vae_pyro.networks",
    "TrainedVAE": "vae_pyro.api",
    "load": "vae_pyro.api",
    "fit": "vae_pyro.api",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'vae_pyro' has no attribute {name!r}")
