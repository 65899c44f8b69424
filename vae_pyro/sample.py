"""Hydra entry point: `python -m vae_pyro.sample run_dir=outputs/<run>`.

Shows what a trained VAE learned: posterior and prior draws, interpolations and the latent space,
as PNGs in `<run_dir>/samples/`. Everything about the model comes from the run's checkpoint.
Each figure is one entry of figures.FIGURES (its draw function and its keys); this module loads
the run and draws the entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyro
import torch
from omegaconf import DictConfig

from vae_pyro import cli
from vae_pyro.checkpoint import Checkpoint, check_data, check_images, load_vae
from vae_pyro.config import Section, resolve_device, sample_schema, to_object
from vae_pyro.data import Split, load_data_config
from vae_pyro.errors import VaePyroError
from vae_pyro.figures import FIGURES, Figure, Scene, options
from vae_pyro.files import check_output, check_writable, write_failed

CHECKPOINT = "checkpoint.pt"


def _test_split(ckpt: Checkpoint, device: torch.device, allow_other_data: bool = False) -> Split:
    """The test split of the data the run was trained on, checked against the checkpoint (its
    image shape; its data fingerprint, unless allow_other_data): the binarized draw if the run
    trained on binarized data. Only the test split is used: subset=1 keeps the unused training
    split small."""
    data = load_data_config(ckpt.data_config, device, subset=1)
    check_images(data, ckpt)
    check_data(data, ckpt, allow_other_data, "allow_other_data")
    return data.test


def draw_figures(scene: Scene) -> dict[str, Path]:
    """Every registered figure (figures.FIGURES) this command asks for, in registry order.

    All their checks run before the first figure is drawn, so a refused option writes nothing;
    so does each PNG's (files.check_output: never a run's own file, a folder or a device).
    Each figure re-seeds with `seed` before it
    draws, so it depends only on the seed and its own options (changing num_samples does not
    change prior.png). A write that fails (a full disk, a file-size limit) is one VaePyroError
    saying which figures were written and that the failed one's previous version is intact.
    """
    chosen = [fig for fig in FIGURES.values() if fig.when(scene)]
    for fig in chosen:
        if fig.check is not None:
            fig.check(scene, options(scene, fig))
    for fig in chosen:
        check_output(scene.path(fig.name), True, ", or choose another out_dir=")
    written: dict[str, Path] = {}
    for fig in chosen:
        pyro.set_rng_seed(scene.cfg.seed)
        try:
            written[fig.name] = fig.draw(scene, options(scene, fig))
        except OSError as err:
            where = None if err.filename is None else Path(err.filename)
            if where is not None and scene.out not in (where, *where.parents):
                raise  # not a write into out_dir (the figure's temp file)
            raise _write_failed(scene, fig, err, chosen, written) from None
    return written


def _write_failed(
    scene: Scene, fig: Figure, err: OSError, chosen: list[Figure], written: dict[str, Path]
) -> Exception:
    done = ", ".join(path.name for path in written.values()) or "none"
    left = ", ".join(f.name for f in chosen[chosen.index(fig) + 1 :]) or "none"
    return write_failed(scene.path(fig.name), err, f"written before it: {done}; not drawn: {left}")


def sample(cfg: DictConfig | Mapping[str, Any] | Section) -> dict[str, Path]:
    """Write the figures of one training run; returns {figure name: PNG path}.

    An out_dir (any folder) that cannot be written is refused before the work; figures of the
    same names in it are replaced (the same checkpoint, seed and options draw them again).
    """
    cfg = to_object(cfg, sample_schema())
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
    test = _test_split(ckpt, device, cfg.allow_other_data)
    return draw_figures(Scene(cfg, vae, test, out))


def _print_paths(cfg: DictConfig) -> None:
    for path in sample(cfg).values():
        print(path)


def main() -> None:
    cli.run("sample", _print_paths)


if __name__ == "__main__":
    main()
