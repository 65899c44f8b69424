"""Training throughput of vae-pyro against the FLOP floor and a plain-PyTorch VAE.

    python experiments/bench_throughput.py                 # current device (CUDA if present)
    python experiments/bench_throughput.py --device cpu --batch-sizes 256 --no-epoch

Measures, in one run: (a) the float32 matmul rate and from it the FLOP floor of a z50 epoch;
(b) images/s of our training step (train.py's own build_svi + svi_step) and of a plain-PyTorch
step of the same networks, loss and batch size; (c) a full z50 epoch through train(), the same
epoch as a hand-written PyTorch loop, and the epoch's matrix products alone; (d) ratios.
Timings interleave the contenders and report medians. The last line is a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch import nn

from vae_pyro.cli import CONF_DIR
from vae_pyro.config import resolve_device
from vae_pyro.data import load_data
from vae_pyro.model import VAE, build_vae
from vae_pyro.train import build_svi, svi_step, train


def z50_config(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("train", overrides=["+experiment=z50", *overrides])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    """Best-of-reps float32 GEMM rate: the arithmetic ceiling a training step could reach."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    best = math.inf
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def forward_flops(vae: VAE) -> int:
    """Multiply-adds of the Linear layers (everything else is O(width), negligible)."""
    return sum(2 * m * k * n for m, k, n in gemm_shapes(vae, 1, train=False))


def gemm_shapes(vae: VAE, batch: int, train: bool) -> list[tuple[int, int, int]]:
    """(m, k, n) of the matrix products of one batch: each Linear's forward and, for training,
    its weight gradient and (all but the first layer, whose input is data) input gradient."""
    linears = [m for m in vae.modules() if isinstance(m, nn.Linear)]
    shapes = []
    for m in linears:
        i, o = m.in_features, m.out_features
        shapes.append((batch, i, o))
        if train:
            shapes += [(o, batch, i)] + ([(batch, o, i)] if m is not linears[0] else [])
    return shapes


def gemm_seconds(shapes: list[tuple[int, int, int]], device: torch.device, reps: int = 20) -> float:
    """Best time of these matrix products alone, back to back: what the arithmetic of a batch
    costs at its real shapes (small GEMMs run below the 2048^3 rate), with nothing else."""
    mats = [
        (torch.randn(a, b, device=device), torch.randn(b, c, device=device)) for a, b, c in shapes
    ]
    best = math.inf
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        for a, b in mats:
            a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def plain_loss(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    """Single-sample negative ELBO summed over the batch, written out by hand."""
    loc, scale = vae.encoder(x)
    z = loc + scale * torch.randn_like(loc)
    logits = vae.decoder.logits(z)
    nll = F.binary_cross_entropy_with_logits(logits, x.reshape(len(x), -1), reduction="sum")
    log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum()
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
    return nll + log_q - log_p


def plain_pytorch_step(vae: VAE, lr: float):
    """The reference: same networks, same single-sample ELBO and Bernoulli likelihood (from the
    decoder's logits, as ours), plain autograd and one fused torch Adam, no Pyro."""
    opt = torch.optim.Adam(vae.parameters(), lr=lr, fused=True)

    def step(x: torch.Tensor) -> torch.Tensor:
        loss = plain_loss(vae, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()  # no host sync, as a careful plain loop would do

    return step


def plain_epochs(
    vae: VAE, data, batch: int, eval_batch: int, lr: float, epochs: int
) -> list[float]:
    """Seconds per epoch of a hand-written loop over the same data: per-epoch permutation,
    batches gathered from the device tensor, losses summed on the device, then the test ELBO
    in batches of eval_batch without gradients (as train.py's evaluation)."""
    step, x, device = plain_pytorch_step(vae, lr), data.train.x, data.train.x.device
    seconds = []
    for _ in range(epochs):
        sync(device)
        start = time.perf_counter()
        perm, total = torch.randperm(len(x), device=device), torch.zeros((), device=device)
        for i in range(0, len(x), batch):
            total += step(x[perm[i : i + batch]])
        with torch.no_grad():
            test = sum(plain_loss(vae, xb) for xb in data.test.x.split(eval_batch))
        float(total), float(test)  # noqa: B018 (the epoch ends when its numbers are on the host)
        seconds.append(time.perf_counter() - start)
    return seconds


def our_step(cfg, image_shape, device: torch.device):
    pyro.clear_param_store()
    vae = build_vae(image_shape, cfg.model).to(device)
    _, svi = build_svi(cfg, vae)
    return lambda x: svi_step(svi, x)


def images_per_second(step, x: torch.Tensor, batch: int, steps: int, device) -> float:
    idx = torch.randperm(len(x), device=device)[: batch * (steps + 3)].view(-1, batch)
    for i in range(3):
        step(x[idx[i]])
    sync(device)
    start = time.perf_counter()
    for i in range(3, steps + 3):
        step(x[idx[i]])
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256, 1024])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (median)")
    parser.add_argument("--no-epoch", action="store_true", help="skip the full-epoch run")
    args = parser.parse_args()

    device = resolve_device(args.device)
    pyro.set_rng_seed(0)
    cfg = z50_config(f"trainer.device={device}")
    data = load_data("mnist", device=device)
    x = data.train.x
    probe = build_vae(data.image_shape, cfg.model)
    fwd = forward_flops(probe)
    train_flops = 3 * fwd  # forward + backward (two GEMMs per layer)
    rate = matmul_gflops(device)
    floor = (len(x) * train_flops + len(data.test) * fwd) / (rate * 1e9)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {device} ({name}), torch {torch.__version__}, pyro {pyro.__version__}, "
        f"threads {torch.get_num_threads()}"
    )
    print(f"(a) float32 matmul 2048^3: {rate:.1f} GFLOP/s")
    print(
        f"    z50 per image: forward {fwd / 1e6:.2f} MFLOP, train step {train_flops / 1e6:.2f} "
        f"MFLOP; epoch (60,000 train + 10,000 test) {(len(x) * train_flops + len(data.test) * fwd) / 1e9:.0f} GFLOP "  # noqa: E501
        f"-> FLOP floor {floor:.2f} s"
    )

    print("(b) training images/s (median of interleaved repeats)")
    print(f"    {'batch':>6} {'vae-pyro':>10} {'plain torch':>12} {'ratio':>6}")
    ratios = {}
    for batch in args.batch_sizes:
        torch.manual_seed(0)
        plain = plain_pytorch_step(build_vae(data.image_shape, cfg.model).to(device), cfg.optim.lr)
        ours = our_step(cfg, data.image_shape, device)
        runs: dict[str, list[float]] = {"ours": [], "plain": []}
        for _ in range(args.repeats):
            runs["ours"].append(images_per_second(ours, x, batch, args.steps, device))
            runs["plain"].append(images_per_second(plain, x, batch, args.steps, device))
        o, p = statistics.median(runs["ours"]), statistics.median(runs["plain"])
        ratios[batch] = o / p
        print(f"    {batch:>6} {o:>10.0f} {p:>12.0f} {o / p:>6.2f}")

    epoch_s = None
    if not args.no_epoch:
        batch, eval_batch = cfg.data.batch_size, cfg.trainer.eval_batch_size
        with tempfile.TemporaryDirectory() as tmp:
            train(z50_config(f"trainer.device={device}", "trainer.epochs=3"), tmp)
            lines = (Path(tmp) / "metrics.jsonl").read_text().splitlines()
            ours_s = [json.loads(line)["seconds"] for line in lines]
        torch.manual_seed(0)
        plain_vae = build_vae(data.image_shape, cfg.model).to(device)
        plain_s = plain_epochs(plain_vae, data, batch, eval_batch, cfg.optim.lr, epochs=3)
        probe = probe.to(device)
        train_gemms = gemm_seconds(gemm_shapes(probe, batch, train=True), device)
        eval_gemms = gemm_seconds(gemm_shapes(probe, eval_batch, train=False), device)
        gemm_s = len(x) / batch * train_gemms + len(data.test) / eval_batch * eval_gemms
        epoch_s, plain_epoch_s = statistics.median(ours_s[1:]), statistics.median(plain_s[1:])
        print(
            f"(c) full z50 epoch (60,000 train images at batch {batch} + 10,000 test images), "
            "seconds of epochs 1, 2, 3"
        )
        print(f"    vae-pyro train():         {', '.join(f'{t:.2f}' for t in ours_s)}")
        print(f"    plain PyTorch loop:       {', '.join(f'{t:.2f}' for t in plain_s)}")
        print(f"    the epoch's matrix products alone, at their real shapes: {gemm_s:.2f}")
        print(
            f"(d) epoch (median of 2, 3) / FLOP floor: vae-pyro {epoch_s / floor:.2f}x, "
            f"plain PyTorch {plain_epoch_s / floor:.2f}x, matrix products alone "
            f"{gemm_s / floor:.2f}x; vae-pyro / plain epoch {epoch_s / plain_epoch_s:.2f}"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"    peak RSS of this benchmark process: {rss:.0f} MiB")
    summary = ", ".join(f"batch {b}: {r:.2f}x plain" for b, r in ratios.items())
    epoch_txt = (
        f"; z50 epoch {epoch_s:.2f} s = {epoch_s / floor:.2f}x FLOP floor "
        f"(plain PyTorch {plain_epoch_s / floor:.2f}x)"
        if epoch_s
        else ""
    )
    print(f"summary ({device}): {summary}{epoch_txt}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
