"""Posterior collapse is visible while training: each latent layer's KL and active units on the
epoch line, in metrics.jsonl and TensorBoard, and one warning when a layer stays unused."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vae_pyro.data import load_data
from vae_pyro.estimators import latent_usage
from vae_pyro.model import build_vae
from vae_pyro.train import train

SMALL = ["trainer.device=cpu", "model.z_dim=4", "model.hidden_dim=64", "data.subset=2048"]


def _lines(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_an_active_model_reports_its_units_and_gives_no_warning(make_cfg, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        train(make_cfg(*SMALL, "trainer.epochs=3"), tmp_path)
    lines = _lines(tmp_path)
    assert all(0 <= m["active_latent"] <= 4 and m["kl_latent"] > 0 for m in lines)
    assert lines[-1]["active_latent"] == 4 and lines[-1]["kl_latent"] > 5
    said = [r.getMessage() for r in caplog.records]
    assert any("KL latent " in m and "(active 4/4)" in m for m in said if "epoch 3/3" in m)
    assert not any("posterior collapse" in m for m in said)
    board = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert {"kl_latent", "active_latent"} <= set(board.Tags()["scalars"])


@pytest.mark.slow
def test_a_collapsed_model_gets_one_warning_naming_the_layer(make_cfg, tmp_path, caplog):
    """A KL weight of 10,000 makes q(z|x) the prior: the decoder gets nothing from z."""
    with caplog.at_level(logging.WARNING):
        train(make_cfg(*SMALL, "trainer.epochs=4", "model.kl_weight=10000"), tmp_path)
    assert [m["active_latent"] for m in _lines(tmp_path)] == [0, 0, 0, 0]
    warned = [r.getMessage() for r in caplog.records if "posterior collapse" in r.getMessage()]
    assert len(warned) == 1, warned  # once, not every epoch after the third
    assert warned[0].startswith("latent layer 'latent' (4 dims) has had no active unit for 3")


def test_latent_usage_is_pyros_kl_per_site_and_counts_units_by_their_posterior_means():
    x = load_data("mnist", subset=1).test.x[:200]
    vae = build_vae((1, 28, 28), {"z_dim": 3, "hidden_dim": 8, "latent_layers": 2})
    usage = latent_usage(vae, x)
    assert set(usage) == {"latent", "lower"} and usage["lower"]["dims"] == 6
    with torch.no_grad():
        vae.encoder.fc21.weight.zero_()  # the top layer's mean no longer depends on x
        vae.encoder.fc21.bias.zero_()
    assert latent_usage(vae, x)["latent"]["active"] == 0
