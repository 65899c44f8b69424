"""model=conv and every dataset end to end: shapes both ways, one short epoch lowers the test
loss, sampling draws colour figures, and a checkpoint meets images with another channel count
as one clear error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from test_datasets import CIFAR_NPZ, FASHION_RAW, SHARED

from vae_pyro import checkpoint
from vae_pyro.cli import CONF_DIR
from vae_pyro.data import load_data
from vae_pyro.errors import VaePyroError
from vae_pyro.estimators import negative_elbo
from vae_pyro.evaluate import evaluate
from vae_pyro.model import build_vae
from vae_pyro.networks import ConvDecoder, ConvEncoder, conv_feature_sizes
from vae_pyro.report import write_report
from vae_pyro.sample import sample
from vae_pyro.train import train

CONV = {"arch": "conv", "z_dim": 6, "hidden_dim": 32, "channels": [8, 16, 16]}


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(name, overrides=overrides)


# --- networks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "sizes"),
    [
        ((1, 28, 28), [(28, 28), (14, 14), (7, 7), (3, 3)]),
        ((3, 32, 32), [(32, 32), (16, 16), (8, 8), (4, 4)]),
        ((3, 17, 23), [(17, 23), (8, 11), (4, 5), (2, 2)]),  # odd, non-square
    ],
)
def test_conv_maps_shapes_both_ways(shape, sizes):
    assert conv_feature_sizes(*shape[1:], 3) == sizes
    enc = ConvEncoder(shape, z_dim=5, hidden_dim=32, channels=(8, 16, 32))
    dec = ConvDecoder(shape, z_dim=5, hidden_dim=32, channels=(8, 16, 32))
    loc, scale = enc(torch.rand(4, *shape))
    assert loc.shape == scale.shape == (4, 5) and (scale > 0).all()
    assert enc.fc1.in_features == 32 * math.prod(sizes[-1])
    assert dec.feature_shape == (32, *sizes[-1])
    probs = dec(loc)
    assert probs.shape == (4, math.prod(shape)) and ((probs >= 0) & (probs <= 1)).all()
    # particles: (k, batch, z) -> (k, batch, C*H*W), each particle decoded alone
    z = torch.randn(3, 4, 5)
    torch.testing.assert_close(dec.logits(z)[1], dec.logits(z[1]))
    # every output pixel depends on z (the odd rows/columns that output_padding adds too)
    assert (dec.logits(torch.randn(2, 5)) != dec.logits(torch.randn(2, 5))).all()


def test_conv_vae_trace_and_gaussian_scale():
    vae = build_vae((3, 32, 32), {**CONV, "likelihood": "gaussian"})
    assert isinstance(vae.encoder, ConvEncoder) and isinstance(vae.decoder, ConvDecoder)
    assert vae.decoder.log_scale.shape == ()
    x = torch.rand(5, 3, 32, 32)
    guide = pyro.poutine.trace(vae.guide).get_trace(x)
    model = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=guide)).get_trace(x)
    assert model.nodes["latent"]["fn"].event_shape == (6,)
    assert model.nodes["obs"]["fn"].event_shape == (3 * 32 * 32,)
    assert model.nodes["obs"]["fn"].batch_shape == (5,)
    assert vae.reconstruct(x).shape == x.shape and vae.sample_prior(2).shape == (2, 3, 32, 32)


def test_old_configs_build_the_mlp_and_bad_sizes_are_clear():
    vae = build_vae((1, 28, 28), {"z_dim": 4, "hidden_dim": 8})  # a checkpoint without `arch`
    assert {n for n, _ in vae.encoder.named_children()} >= {"fc1", "fc21", "fc22"}
    assert vae.decoder.fc21.out_features == 784
    with pytest.raises(VaePyroError, match="images of 6x6 pixels are too small for 3 stride-2"):
        build_vae((1, 6, 6), CONV)
    with pytest.raises(VaePyroError, match=r"arch: Invalid value 'resnet', expected one of \[mlp"):
        build_vae((1, 8, 8), {**CONV, "arch": "resnet"})


# --- one short epoch on each dataset -----------------------------------------------------------


def patterns(n: int, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """uint8 N x H x W x C images: random mixtures of 3 smooth colour templates plus noise
    (structure a VAE picks up in a few steps, unlike pixel noise)."""
    c, h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    base = np.stack([xx, yy, (xx - 0.5) ** 2 + (yy - 0.5) ** 2 * 2])  # (3, H, W)
    templates = np.stack([np.roll(base, k, axis=0)[:c] for k in range(3)])  # (3, C, H, W)
    weights = rng.dirichlet(np.ones(3), n)
    images = np.einsum("nk,kchw->nhwc", weights, templates) + rng.normal(0, 0.05, (n, h, w, c))
    return np.clip(images * 255, 0, 255).astype(np.uint8)


def save_npz(path: Path, shape: tuple[int, int, int], n_train: int = 512, n_test: int = 64):
    squeeze = (lambda a: a[..., 0]) if shape[0] == 1 else (lambda a: a)
    np.savez(
        path,
        x_train=squeeze(patterns(n_train, shape, 0)),
        y_train=np.arange(n_train) % 3,
        x_test=squeeze(patterns(n_test, shape, 1)),
        y_test=np.arange(n_test) % 3,
    )
    return path


FAST = ["trainer.device=cpu", "trainer.epochs=1", "data.batch_size=32", "optim.lr=3e-3"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, object]]:
    """One-epoch runs through train(): grey npz (MLP), colour npz (conv), colour image folder
    (conv). Each with the test loss of its untrained model, for the comparison."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "pics"
    for split, seed, n in (("train", 0, 256), ("test", 1, 32)):
        (folder / split / "a").mkdir(parents=True)
        for i, pixels in enumerate(patterns(n, (3, 16, 16), seed)):
            Image.fromarray(pixels).save(folder / split / "a" / f"{i}.png")
    conv = ["model=conv", "model.z_dim=6", "model.hidden_dim=32", "model.channels=[8,16]"]
    setups = {
        "grey": [
            "data=npz",
            f"data.path={save_npz(root / 'grey.npz', (1, 28, 28))}",
            "model.z_dim=4",
            "model.hidden_dim=64",
        ],
        "colour": ["data=npz", f"data.path={save_npz(root / 'colour.npz', (3, 16, 16))}", *conv],
        "folder": ["data=image_folder", f"data.path={folder}", *conv],
    }
    out = {}
    for name, overrides in setups.items():
        cfg = _compose("train", [*FAST, *overrides])
        run_dir = tmp_path_factory.mktemp(name)
        data = load_data("npz" if name != "folder" else "image_folder", path=cfg.data.path)
        pyro.set_rng_seed(cfg.seed)
        untrained = negative_elbo(build_vae(data.image_shape, cfg.model), data.test.x)
        out[name] = (run_dir, cfg, untrained, train(cfg, run_dir))
    return out


@pytest.mark.parametrize("name", ["grey", "colour", "folder"])
def test_one_epoch_through_train_lowers_the_test_loss(runs, name):
    run_dir, cfg, untrained, final = runs[name]
    assert final < untrained
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["test_loss"] == final
    shape = {"grey": [1, 28, 28], "colour": [3, 16, 16], "folder": [3, 16, 16]}[name]
    assert checkpoint.load(run_dir / "checkpoint.pt")["image_shape"] == shape
    assert (run_dir / "figures" / "reconstructions.png").is_file()


def _short_epoch(data, model_cfg: dict, n_test: int = 500) -> tuple[float, float]:
    """Test loss on the first n_test test images before and after one pass over data.train."""
    pyro.set_rng_seed(0)
    vae = build_vae(data.image_shape, model_cfg)
    x_test = data.test.x[:n_test]
    before = negative_elbo(vae, x_test)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 2e-3}), Trace_ELBO())
    for batch in data.train.x.split(64):
        svi.step(batch)
    return before, negative_elbo(vae, x_test)


@pytest.mark.parametrize(
    ("name", "root", "model_cfg"),
    [
        ("mnist", None, {"z_dim": 8, "hidden_dim": 100}),
        ("fashion_mnist", SHARED, {"z_dim": 8, "hidden_dim": 100}),
        ("cifar10", SHARED, {**CONV, "likelihood": "gaussian"}),
    ],
)
def test_one_short_epoch_on_the_real_datasets_lowers_the_test_loss(name, root, model_cfg):
    needed = {"fashion_mnist": FASHION_RAW, "cifar10": CIFAR_NPZ}.get(name)
    if needed is not None and not needed.exists():
        pytest.skip(f"{name} not found at {needed}")
    data = load_data(name, root, subset=1024)
    before, after = _short_epoch(data, model_cfg)
    assert after < before - 0.01 * abs(before), (before, after)


# --- sampling, evaluation, report --------------------------------------------------------------


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).astype(int)


def test_sampling_draws_colour_figures(runs, tmp_path):
    run_dir, *_ = runs["colour"]
    written = sample(
        _compose(
            "sample", [f"run_dir={run_dir}", "device=cpu", f"out_dir={tmp_path}", "prior.num=16"]
        )
    )
    assert set(written) == {"posterior", "prior", "interpolation", "latent"}
    for key in ("posterior", "prior", "interpolation"):
        pixels = _rgb(written[key])
        assert (np.abs(pixels[..., 0] - pixels[..., 1]) > 30).mean() > 0.01, key  # not grey
    grey_run, *_ = runs["grey"]
    pixels = _rgb(
        sample(
            _compose("sample", [f"run_dir={grey_run}", "device=cpu", f"out_dir={tmp_path / 'g'}"])
        )["prior"]
    )
    assert (pixels[..., 0] == pixels[..., 1]).all()  # grey data stays grey


def test_evaluate_and_report_handle_conv_runs(runs, tmp_path):
    run_dir, cfg, *_ = runs["colour"]
    record = evaluate(
        _compose(
            "evaluate",
            [
                f"run_dir={run_dir}",
                "device=cpu",
                "num_particles=8",
                "num_images=16",
                "output=conv_eval.json",  # a file name inside run_dir (issue 18, rule 2)
            ],
        )
    )
    assert math.isfinite(record["nll"]) and record["nll"] <= record["negative_elbo"] + 1e-3
    sweep = tmp_path / "sweep"
    job = sweep / "0"
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, job / ".hydra" / "config.yaml")
    (job / "metrics.jsonl").write_text((run_dir / "metrics.jsonl").read_text())
    rows, _ = write_report(sweep)
    assert (rows[0]["data"], rows[0]["arch"], rows[0]["status"]) == ("npz", "conv", "ok")


# --- a checkpoint and images with another channel count ---------------------------------------


def test_wrong_channel_count_for_a_checkpoint_is_one_clear_error(runs, tmp_path):
    run_dir, cfg, *_ = runs["colour"]
    ckpt = checkpoint.load(run_dir / "checkpoint.pt")
    moved = tmp_path / "run"
    moved.mkdir()
    grey = save_npz(tmp_path / "grey.npz", (1, 16, 16), 64, 16)
    ckpt["config"]["data"]["path"] = str(grey)  # the run's data now has one channel
    checkpoint.save(moved / "checkpoint.pt", ckpt)
    with pytest.raises(VaePyroError) as err:
        sample(_compose("sample", [f"run_dir={moved}", "device=cpu"]))
    assert "was trained on images of shape (3, 16, 16) (C, H, W)" in str(err.value)
    assert "3 channel(s) vs 1" in str(err.value)
    # continuing the colour run on grey images
    overrides = [
        *FAST,
        "data=npz",
        f"data.path={grey}",
        "model=conv",
        "model.z_dim=6",
        "model.hidden_dim=32",
        "model.channels=[8,16]",
        f"trainer.resume_from={run_dir}",
    ]
    with pytest.raises(VaePyroError, match=r"3 channel\(s\) vs 1"):
        train(_compose("train", overrides), tmp_path / "resumed")
