"""Start-up times a user waits for: launch -> first training step, `train --help`, and `sample`
on a finished run. Median of N rounds (after one warm-up), each command a fresh process with
OMP_NUM_THREADS=1; the first step is timed by running vae_pyro.train's main with svi_step
replaced by a stub that exits at its first call.

    python experiments/bench_startup.py [--rounds 5] [--tree DIR]   # DIR: a checkout to time
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIRST_STEP = (
    "import sys, vae_pyro.train as t\n"
    "def stop(*a, **k):\n    raise SystemExit(0)\n"
    "t.svi_step = stop\n"
    "run = sys.argv[1]\n"
    "sys.argv = ['train', '+experiment=z50', 'trainer.device=cpu', f'hydra.run.dir={run}']\n"
    "t.main()\n"
)


def timed(args: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(args, cwd=cwd, env=env, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    opts = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(opts.tree)}
    work = Path(tempfile.mkdtemp())
    run = work / "run"
    py = sys.executable
    subprocess.run(
        [
            py,
            "-m",
            "vae_pyro.train",
            "+experiment=z50",
            "trainer.epochs=1",
            "data.subset=2000",
            "trainer.device=cpu",
            f"hydra.run.dir={run}",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        check=True,
    )
    cases = {
        "launch -> first step": lambda i: [py, "-c", FIRST_STEP, str(work / f"s{i}")],
        "train --help": lambda i: [py, "-m", "vae_pyro.train", "--help"],
        "sample on a finished run": lambda i: [
            py,
            "-m",
            "vae_pyro.sample",
            f"run_dir={run}",
            f"out_dir={work / f'f{i}'}",
            "device=cpu",
        ],
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(opts.rounds + 1):
        for name, args in cases.items():
            t = timed(args(i), work, env)
            if i:  # round 0 warms the page cache
                times[name].append(t)
    load = os.getloadavg()[0]
    for name, ts in times.items():
        print(
            f"{name}: median {statistics.median(ts):.2f} s (min {min(ts):.2f}, max {max(ts):.2f})"
        )
    print(f"tree {opts.tree}, load average {load:.1f}")


if __name__ == "__main__":
    main()
