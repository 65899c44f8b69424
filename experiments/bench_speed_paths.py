"""Before/after of the CPU speed changes in train.py, at batch 256 on the z50 model.

    OMP_NUM_THREADS=1 taskset -c 1 python experiments/bench_speed_paths.py

"before": Pyro's Adam unfused and `svi.step` with Pyro's checks on (the first version);
"after": what train.py runs now (fused Adam from conf/optim/adam.yaml, `svi_step`).
Interleaved repeats, median milliseconds per step.
"""

from __future__ import annotations

import statistics
import time

import pyro
from hydra import compose, initialize_config_dir

from vae_pyro.data import load_data
from vae_pyro.model import build_vae
from vae_pyro.train import CONF_DIR, build_svi, svi_step


def config(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("train", overrides=["+experiment=z50", *overrides])


def main(repeats: int = 7, steps: int = 30, batch: int = 256) -> None:
    x = load_data().train.x
    variants = {
        "before: unfused Adam, Pyro checks on": (
            config("optim.optimizer.optim_args.fused=false"),
            lambda svi, b: svi.step(b),
        ),
        "after: fused Adam, checks off (svi_step)": (config(), svi_step),
    }
    steppers = {}
    for name, (cfg, step) in variants.items():
        _, svi = build_svi(cfg, build_vae(tuple(x.shape[1:]), cfg.model))
        steppers[name] = (svi, step)
    times: dict[str, list[float]] = {name: [] for name in variants}
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
    before, after = (statistics.median(ms) for ms in times.values())
    print(f"summary: after/before step time = {after / before:.2f}")


if __name__ == "__main__":
    main()
