"""python -m vae_pyro.sample on checkpoints trained for one short epoch."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from vae_pyro import checkpoint, config, figures, model, plots
from vae_pyro.cli import CONF_DIR
from vae_pyro.data import load_data
from vae_pyro.errors import VaePyroError
from vae_pyro.figures import interpolate, manifold, pca_2d, posterior_draws, prior_draws
from vae_pyro.model import VAE
from vae_pyro.sample import sample
from vae_pyro.train import train

# One epoch on 5,000 images (~2 s each). Small networks learn enough in that time for posterior
# draws to sit near their reconstruction; z50 x 400 would not be past the prior yet.
TRAIN = ["trainer.device=cpu", "trainer.epochs=1", "data.subset=5000", "model.hidden_dim=200"]
RUNS = {"z8": ["model.z_dim=8"], "z2": ["model.z_dim=2"]}


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(name, overrides=overrides)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    dirs = {}
    for name, overrides in RUNS.items():
        dirs[name] = tmp_path_factory.mktemp(name)
        train(_compose("train", TRAIN + overrides), dirs[name])
    return dirs


@pytest.fixture(scope="module")
def test_x() -> torch.Tensor:
    return load_data("mnist", subset=1).test.x


def sample_cfg(run_dir: Path, *overrides: str):
    return _compose("sample", [f"run_dir={run_dir}", "device=cpu", *overrides])


def png_pixels(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def grid_px(rows: int, cols: int, h: int = 28, w: int = 28, scale: int = 1) -> tuple[int, int]:
    """(width, height) of a make_grid of rows x cols images (padding 2) at `scale`."""
    return scale * (cols * (w + 2) + 2), scale * (rows * (h + 2) + 2)


def panels_px(*grids: tuple[int, int], titles: tuple[str, ...] = ()) -> tuple[int, int]:
    """(width, height) of side-by-side grids; a panel is widened to its title when given."""
    named = zip(grids[: len(titles)], titles, strict=True)
    widths = [max(w, plots._title_px(t)) for (w, _), t in named]
    widths += [w for w, _ in grids[len(titles) :]]
    width = sum(widths) + plots.GAP_PX * (len(grids) - 1)
    return width, max(h for _, h in grids) + plots.TITLE_PX


def test_every_figure_has_the_expected_size(runs, tmp_path):
    written = sample(sample_cfg(runs["z8"], f"out_dir={tmp_path}"))
    assert set(written) == {"posterior", "prior", "interpolation", "latent"}  # no manifold: z 8
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.png" for n in written)
    expected = {
        # 10 digits x (input + 15 draws), means beside Bernoulli samples
        "posterior": panels_px(grid_px(10, 16), grid_px(10, 16)),
        "prior": panels_px(grid_px(8, 8), grid_px(8, 8)),
        # 9 consecutive pairs x (input, 10 points, input)
        "interpolation": panels_px(grid_px(9, 12)),
        "latent": (640, 560),
    }
    for name, path in written.items():
        assert path == tmp_path / f"{name}.png"
        height, width, _ = png_pixels(path).shape
        assert (width, height) == expected[name], name


def test_z2_options_scale_and_manifold(runs, tmp_path):
    cfg = sample_cfg(
        runs["z2"],
        f"out_dir={tmp_path}",
        "indices=[3,2,1]",
        "num_samples=4",
        "prior.num=6",
        "prior.nrow=3",
        "prior.bernoulli=false",
        "interpolation.pairs=[[5,6]]",
        "interpolation.steps=3",
        "manifold.steps=4",
        "scale=2",
    )
    written = sample(cfg)
    expected = {
        "posterior": panels_px(grid_px(3, 5, scale=2), grid_px(3, 5, scale=2)),
        "prior": panels_px(grid_px(2, 3, scale=2)),
        "interpolation": panels_px(grid_px(1, 5, scale=2)),
        # 4 x 4 images at scale 2 are narrower than their title: the panel takes its width
        "manifold": panels_px(
            grid_px(4, 4, scale=2), titles=("decoder means, z1 and z2 from -2.05 to 2.05",)
        ),
        "latent": (640, 560),
    }
    assert {n: png_pixels(p).shape[1::-1] for n, p in written.items()} == expected
    # Pixel-exact: every image pixel is a 2 x 2 block of equal figure pixels.
    grid = png_pixels(written["manifold"])[plots.TITLE_PX :]
    assert (grid[::2, ::2] == grid[1::2, 1::2]).all()


def test_posterior_draws_differ_but_stay_near_the_reconstruction(runs, test_x):
    vae, _ = checkpoint.load_vae(runs["z8"] / "checkpoint.pt")
    x = test_x[:10]
    means, samples = posterior_draws(vae, x, 15)
    assert means.shape == samples.shape == (10, 15, 1, 28, 28)
    flat = means.flatten(2)
    gaps = torch.cdist(flat, flat)  # (10, 15, 15) distances between draws of one image
    assert (gaps + torch.eye(15) > 1e-3).all()  # no two draws alike
    with torch.no_grad():
        recon = vae.decoder(vae.encoder(x)[0]).reshape(10, 1, -1)
        prior, _ = prior_draws(vae, 150)
    own = (flat - recon).norm(dim=2).mean(1)
    other = (prior.reshape(10, 15, -1) - recon).norm(dim=2).mean(1)
    # Measured: own / other is 0.33 to 0.51 over the 10 images; prior draws would give ~1.
    assert (own < 0.75 * other).all(), (own, other)


def test_bernoulli_samples_are_binary_and_means_probabilities(runs, test_x):
    vae, _ = checkpoint.load_vae(runs["z8"] / "checkpoint.pt")
    for means, samples in (posterior_draws(vae, test_x[:10], 15), prior_draws(vae, 150)):
        assert means.min() >= 0 and means.max() <= 1
        assert set(samples.unique().tolist()) == {0.0, 1.0}
        # Drawn from those means: the fraction of ones matches their average (1e5+ pixels).
        assert abs(samples.mean() - means.mean()) < 0.01


def test_same_seed_same_figures(runs, tmp_path):
    run = runs["z2"]
    fast = ["indices=[0,1,2]", "num_samples=3", "prior.num=8", "manifold.steps=3"]
    a = sample(sample_cfg(run, f"out_dir={tmp_path / 'a'}", *fast))
    b = sample(sample_cfg(run, f"out_dir={tmp_path / 'b'}", *fast))
    c = sample(sample_cfg(run, f"out_dir={tmp_path / 'c'}", "seed=1", *fast))
    assert list(a) == list(b) == list(c)
    for name in a:
        assert np.array_equal(png_pixels(a[name]), png_pixels(b[name])), name
    for name in ("posterior", "prior"):  # random draws
        assert not np.array_equal(png_pixels(a[name]), png_pixels(c[name])), name
    for name in ("interpolation", "manifold"):  # posterior means only: no randomness
        assert np.array_equal(png_pixels(a[name]), png_pixels(c[name])), name


def test_interpolation_runs_straight_between_posterior_means(runs, test_x):
    vae, _ = checkpoint.load_vae(runs["z8"] / "checkpoint.pt")
    a, b = test_x[:3], test_x[3:6]
    path = interpolate(vae, a, b, 5)
    with torch.no_grad():
        z_a, z_b = vae.encoder(a)[0], vae.encoder(b)[0]
        ends = [vae.decoder(z).reshape(a.shape) for z in (z_a, (z_a + z_b) / 2, z_b)]
    for got, want in zip((path[:, 0], path[:, 2], path[:, 4]), ends, strict=True):
        torch.testing.assert_close(got, want)


def test_pca_finds_the_widest_directions():
    torch.manual_seed(0)
    scales = torch.tensor([1.0, 5.0, 0.5, 3.0, 1.0])  # widest: dim 1, then dim 3
    z = torch.randn(20000, 5) * scales + 7.0
    points, explained = pca_2d(z)
    want = scales**2 / (scales**2).sum()
    torch.testing.assert_close(explained, want[[1, 3]], atol=0.01, rtol=0)
    # The projection is the centred coordinate along those axes, up to sign.
    for k, dim in enumerate((1, 3)):
        corr = torch.corrcoef(torch.stack([points[:, k], z[:, dim]]))[0, 1]
        assert abs(corr) > 0.99


def test_colour_images_of_any_size(tmp_path):
    """3-channel, non-square images go through draws and figures (no 1 x 28 x 28 assumed)."""
    vae = VAE((3, 8, 12), z_dim=2, hidden_dim=16).eval()
    x = torch.rand(4, 3, 8, 12)
    means, samples = posterior_draws(vae, x, 5)
    assert means.shape == (4, 5, 3, 8, 12)
    assert interpolate(vae, x[:2], x[2:], 6).shape == (2, 6, 3, 8, 12)
    images, z_max = manifold(vae, 3)
    assert images.shape == (3, 3, 3, 8, 12) and z_max > 0
    pixels = png_pixels(plots.posterior_samples(x, means, samples, tmp_path / "colour.png"))
    titles = ("input | decoder means, 5 z ~ q(z|x)", "input | a Bernoulli sample of each")
    expected = panels_px(grid_px(4, 6, 8, 12), grid_px(4, 6, 8, 12), titles=titles)
    assert pixels.shape[1::-1] == expected  # 8 x 12 images: each panel as wide as its title
    assert (pixels[..., 0] != pixels[..., 1]).any()  # colour survives


@dataclass
class TinyFigure(config.Section):
    side: int = config.key(2, "prior draws per side", config.POSITIVE)


def _draw_tiny(scene: figures.Scene, opts: TinyFigure) -> Path:
    means = scene.vae.sample_prior(opts.side**2)
    return plots.prior_samples(means, scene.path("tiny"), nrow=opts.side, source="tiny")


def test_one_registry_entry_adds_a_figure_its_keys_and_their_checks(runs, tmp_path, monkeypatch):
    """A draw function and its section, registered: sample draws it, the schema types and checks
    its keys, --help lists them; nothing else changes."""
    monkeypatch.setitem(figures.FIGURES, "tiny", figures.Figure("tiny", _draw_tiny, TinyFigure))
    rows = dict(config.help_rows(config.sample_schema()))
    assert rows["tiny.side=2"] == "prior draws per side [an integer >= 1]"
    composed = sample_cfg(runs["z8"], f"out_dir={tmp_path}", "prior.num=4", "num_samples=2")
    cfg = {**OmegaConf.to_container(composed), "tiny": {"side": 3}}
    written = sample(cfg)
    assert list(written) == ["posterior", "prior", "interpolation", "latent", "tiny"]
    assert png_pixels(written["tiny"]).shape[1::-1] == panels_px(
        grid_px(3, 3), titles=("decoder means, tiny",)
    )
    for bad, message in [
        (0, "tiny.side=0 is not allowed: use an integer >= 1"),
        ("x", "tiny.side"),
    ]:
        with pytest.raises(VaePyroError, match=message):
            sample({**cfg, "tiny": {"side": bad}, "out_dir": str(tmp_path / "refused")})
    assert not (tmp_path / "refused").exists()


def test_a_bad_option_of_a_later_figure_writes_no_figure(runs, tmp_path):
    """Every figure's checks run before the first figure is drawn."""
    cfg = sample_cfg(runs["z8"], f"out_dir={tmp_path / 'out'}", "interpolation.pairs=[[0,10000]]")
    with pytest.raises(
        VaePyroError, match="interpolation.pairs=.0, 10000. has 10000, which is not"
    ):
        sample(cfg)
    assert not (tmp_path / "out").exists()


def test_every_likelihood_has_its_figure_word():
    assert set(plots.LIKELIHOOD_WORDS) == set(model.LIKELIHOODS)


def test_the_schema_imports_no_matplotlib():
    """config.py assembles SampleConfig from the figures' registry; plots load when drawn."""
    code = "import sys, vae_pyro.config; assert 'matplotlib' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def _damaged(runs, tmp_path, kind: str) -> Path:
    run = tmp_path / kind
    run.mkdir()
    if kind == "truncated":
        data = (runs["z8"] / "checkpoint.pt").read_bytes()
        (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    elif kind == "mismatched":
        ckpt = checkpoint.load(runs["z8"] / "checkpoint.pt")
        ckpt["config"]["model"]["hidden_dim"] = 300  # weights are 200 wide
        checkpoint.save(run / "checkpoint.pt", ckpt)
    return run


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "run directory not found: {run}"),
        ("empty", "no checkpoint in {run}: expected {run}/checkpoint.pt"),
        ("truncated", "cannot read checkpoint {run}/checkpoint.pt: the file is truncated"),
        ("mismatched", "checkpoint {run}/checkpoint.pt: its weights do not fit the networks"),
    ],
)
def test_bad_run_dir_is_one_clear_error(runs, tmp_path, kind, message):
    run = tmp_path / kind if kind == "missing" else _damaged(runs, tmp_path, kind)
    with pytest.raises(VaePyroError) as err:
        sample(sample_cfg(run))
    assert message.format(run=run) in str(err.value)
    assert not (run / "samples").exists()
    assert not run.exists() or kind != "missing"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "run_dir is required"),
        (["num_samples=0"], "num_samples=0 is not allowed: use an integer >= 1"),
        (["indices=[0,10000]"], "has 10000, which is not a test-image index"),
        (["interpolation.pairs=[[1]]"], "interpolation.pairs=[[1]] is not allowed: use a list"),
        (["manifold.quantile=0.5"], "manifold.quantile=0.5 is not allowed: use a number from"),
        (["device=tpu"], "device=tpu is not allowed: use auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_option_is_one_clear_error(runs, tmp_path, overrides, message):
    cfg = _compose("sample", ["device=cpu", *overrides])
    if overrides:
        cfg.run_dir = str(runs["z8"])
    cfg.out_dir = str(tmp_path / "out")
    with pytest.raises(VaePyroError) as err:
        sample(cfg)
    assert message in str(err.value)
    assert not (tmp_path / "out").exists()


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vae_pyro.sample", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_cli_writes_figures_and_prints_their_paths(runs, tmp_path):
    """From a foreign working directory, which must stay empty (no Hydra output folders)."""
    proc = _cli([f"run_dir={runs['z2']}", "device=cpu"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = runs["z2"] / "samples"
    names = ["posterior", "prior", "interpolation", "latent", "manifold"]
    assert proc.stdout.split() == [str(out / f"{n}.png") for n in names]
    assert all(png_pixels(out / f"{n}.png").size for n in names)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "run directory not found: {run}"),
        ("truncated", "cannot read checkpoint {run}/checkpoint.pt"),
    ],
)
def test_cli_bad_run_dir_is_one_line(runs, tmp_path, kind, message):
    run = tmp_path / kind if kind == "missing" else _damaged(runs, tmp_path, kind)
    proc = _cli([f"run_dir={run}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("vae_pyro.sample: error: " + message.format(run=run))
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert kind != "missing" or not run.exists()


@pytest.mark.slow
def test_cli_z_file_reads_one_array_of_a_npz_and_errors_name_the_file(runs, tmp_path):
    """z_file=codes.npz decodes as the same codes in a .npy do; a .npz of several arrays, or
    codes of the wrong length, is one line naming the file."""
    codes = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    np.save(tmp_path / "codes.npy", codes)
    np.savez(tmp_path / "codes.npz", codes=codes)
    np.savez(tmp_path / "two.npz", mu=codes, sigma=codes)
    np.save(tmp_path / "short.npy", codes[:, :5])
    run = f"run_dir={runs['z8']}"
    by_npy = sample(
        sample_cfg(runs["z8"], f"out_dir={tmp_path / 'npy'}", f"z_file={tmp_path}/codes.npy")
    )
    proc = _cli(
        [run, "device=cpu", f"z_file={tmp_path}/codes.npz", f"out_dir={tmp_path}/npz"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(tmp_path / "npz" / "decoded.png")]
    assert (tmp_path / "npz" / "decoded.png").read_bytes() == by_npy["decoded"].read_bytes()
    for name, message in [
        ("two.npz", "holds 2 arrays (keys: mu, sigma); save one array of shape (N, z_dim)"),
        ("short.npy", f"z_file: {tmp_path}/short.npy: vector 0 has 5 numbers; this run's latent"),
    ]:
        proc = _cli([run, f"z_file={tmp_path}/{name}", f"out_dir={tmp_path}/no"], cwd=tmp_path)
        assert proc.returncode == 2
        assert proc.stderr.startswith("vae_pyro.sample: error: z_file: "), proc.stderr
        assert message in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not (tmp_path / "no").exists()
