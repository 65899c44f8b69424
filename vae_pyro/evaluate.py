"""`python -m vae_pyro.evaluate run_dir=outputs/<run> num_particles=5000`: the importance-weighted
-log p(x) of a run's test set (the estimators are vae_pyro/estimators.py), printed and written
to `<run>/eval.json`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyro
from omegaconf import DictConfig

from vae_pyro import cli
from vae_pyro.checkpoint import check_data, check_images, load_vae
from vae_pyro.config import EvaluateConfig, resolve_device, to_object
from vae_pyro.data import load_data_config
from vae_pyro.errors import VaePyroError
from vae_pyro.estimators import importance_sample, summarize
from vae_pyro.files import check_output, write_failed, write_json


def _write_json(path: Path, record: dict[str, Any]) -> None:
    """Temp file + rename (files.write_json): an interrupted write never leaves half a file;
    null for NaN (the spread of one image), the user's umask."""
    try:
        write_json(path, record)
    except OSError as err:
        raise write_failed(path, err, "the numbers are printed above") from None


def _report(record: dict[str, Any], out: Path) -> str:
    k = record["num_particles"]
    mc = "" if record["nll_mc_se"] is None else f" +- {record['nll_mc_se']:.3f} (Monte Carlo)"
    epoch, step = record["checkpoint_epoch"], record["checkpoint_step"]
    inside = "" if step is None else f" and {step} steps of epoch {epoch + 1}"
    return (
        f"{record['run_dir']}: checkpoint after epoch {epoch}{inside}, "
        f"{record['num_images']} test images, protocol: {record['protocol']}\n"
        f"  -log p(x) (IW, K={k}): {record['nll']:.2f} +- {record['nll_se']:.2f} (images){mc}\n"
        f"  -ELBO: {record['negative_elbo']:.2f} +- {record['negative_elbo_se']:.2f}   "
        f"mean ESS {record['ess_mean']:.1f} of {k}   {record['seconds']:.1f} s\n"
        f"  written to {out}"
    )


def _check_count(asked: int | None, n: int) -> None:
    if (asked or 0) > n:
        raise VaePyroError(f"num_images={asked} but the test set has {n} images: give {n} or less")


def evaluate(cfg: DictConfig | EvaluateConfig) -> dict[str, Any]:
    """Evaluate a run's checkpoint on its test set; print, write and return the record. An
    output that exists (without overwrite=true), is not a record evaluate wrote, or cannot be
    written is refused before the work (files.check_output)."""
    cfg = to_object(cfg, EvaluateConfig)
    device = resolve_device(cfg.device, key="device")
    run_dir = Path(cfg.run_dir).expanduser()
    if not run_dir.is_dir():
        raise VaePyroError(f"run directory not found: {run_dir} (run_dir= names a training run)")
    out = run_dir / cfg.output
    check_output(out, cfg.overwrite, ", or choose another output=")
    vae, ckpt = load_vae(run_dir / "checkpoint.pt", device)
    # Only the test split is used: subset=1 keeps the unused training split small.
    data = load_data_config(ckpt.data_config, device, subset=1)
    check_images(data, ckpt)
    other_data = check_data(data, ckpt, cfg.allow_other_data, "allow_other_data")
    _check_count(cfg.num_images, len(data.test))
    x = data.test.x if cfg.num_images is None else data.test.x[: cfg.num_images]

    pyro.set_rng_seed(cfg.seed)
    start = time.perf_counter()
    stats = importance_sample(vae, x, cfg.num_particles, cfg.max_batch_elements, progress=True)
    record: dict[str, Any] = {
        "run_dir": str(run_dir.resolve()),
        "checkpoint_epoch": ckpt.epoch,
        # a checkpoint written inside an epoch (an interruption): the steps of the next one taken
        "checkpoint_step": None if ckpt.position is None else ckpt.position.step,
        "binarize": data.binarize,
        "protocol": data.protocol,
        "likelihood": vae.likelihood_name,
        "num_images": x.shape[0],
        # the data scored (data.Fingerprint), and whether it differs from the run's own
        "data_fingerprint": None if data.fingerprint is None else data.fingerprint.as_dict(),
        "data_mismatch_allowed": other_data,
        "num_particles": cfg.num_particles,
        "units": "nats per image; nll = -(IW estimate of log p(x)), K = num_particles",
        **summarize(stats, cfg.num_particles),
        "seed": cfg.seed,
        "device": str(device),
        "max_batch_elements": cfg.max_batch_elements,
        "seconds": round(time.perf_counter() - start, 1),
    }
    numbers, written = _report(record, out).rsplit("\n", 1)
    print(numbers, flush=True)  # first: a write that fails cannot lose them
    _write_json(out, record)
    print(written)
    return record


def main() -> None:
    cli.run("evaluate", evaluate)


if __name__ == "__main__":
    main()
