"""Before/after of the CPU speed changes in train.py, at batch 256 on the z50 model.

    OMP_NUM_THREADS=1 taskset -c 1 python experiments/bench_speed_paths.py
    python experiments/bench_speed_paths.py            # both cores

"first version": pyro.optim.Adam (one torch Adam per parameter tensor) unfused, a particle
plate around the single particle, `svi.step` with Pyro's checks on; "fused Adam": the same with
the fused kernel and `svi_step` (checks off); "now": what train.py runs (train.build_svi: one
fused Adam over all parameters, vae_pyro/optim.py, and no particle plate for one particle).
Interleaved repeats, median milliseconds per step. The variants train one set of parameters in
turn (Pyro's global parameter store): only their timings are compared.
"""

from __future__ import annotations

import statistics
import time

import pyro
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from pyro.infer import SVI, Trace_ELBO

from vae_pyro.cli import CONF_DIR
from vae_pyro.data import load_data
from vae_pyro.model import build_vae
from vae_pyro.train import build_svi, svi_step


def config(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("train", overrides=["+experiment=z50", *overrides])


def _pyro_svi(cfg, x) -> SVI:
    """SVI as the first version of train.build_svi built it: the configured optimizer and a
    Trace_ELBO with a particle plate around its single particle."""
    vae = build_vae(tuple(x.shape[1:]), cfg.model)
    elbo = Trace_ELBO(num_particles=1, vectorize_particles=True, max_plate_nesting=1)
    return SVI(vae.model, vae.guide, instantiate(cfg.optim.optimizer), elbo)


def main(repeats: int = 9, steps: int = 30, batch: int = 256) -> None:
    x = load_data().train.x
    per_tensor = "optim.optimizer._target_=pyro.optim.Adam"
    first = config(per_tensor, "optim.optimizer.optim_args.fused=false")
    steppers = {
        "first version: per-tensor Adam, checks on": (_pyro_svi(first, x), SVI.step),
        "fused per-tensor Adam, checks off": (_pyro_svi(config(per_tensor), x), svi_step),
        "now: one fused Adam, no particle plate": (
            build_svi(config(), build_vae(tuple(x.shape[1:]), config().model))[1],
            svi_step,
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in steppers}
    for _ in range(repeats):
        for name, (svi, step) in steppers.items():
            with pyro.validation_enabled(True):  # Pyro's default
                step(svi, x[:batch])
                start = time.perf_counter()
                for i in range(1, steps + 1):
                    step(svi, x[i * batch : (i + 1) * batch])
            times[name].append((time.perf_counter() - start) / steps * 1e3)
    for name, ms in times.items():
        print(f"{name:42s} {statistics.median(ms):6.2f} ms/step")
    first_ms, _, now_ms = (statistics.median(ms) for ms in times.values())
    print(f"summary: now/first-version step time = {now_ms / first_ms:.2f}")


if __name__ == "__main__":
    main()
