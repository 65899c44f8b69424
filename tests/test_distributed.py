"""Data-parallel training on 2 gloo processes (CPU): the same updates as one process on the
global batch, rank 0's files, SIGTERM and resume, another number of processes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyro
import pyro.distributions as pdist
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vae_pyro import checkpoint, distributed, loggers
from vae_pyro.distributed import AllReduce
from vae_pyro.errors import VaePyroError
from vae_pyro.model import build_vae
from vae_pyro.train import build_svi, svi_step

TINY = ["model.z_dim=8", "model.hidden_dim=64", "data.subset=2000", "trainer.device=cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
B = 24


class _FixedNoise(pdist.Normal):
    """q(z|x) whose draw uses a given noise tensor (as in test_speed_paths): each rank takes
    its slice of the global batch's noise."""

    noise: torch.Tensor

    def rsample(self, sample_shape=()):
        return self.loc + self.scale * self.noise


def _step(cfg, x, noise, group):
    """Two SVI steps of the tiny VAE on x with the given noise (Adam's first step does not see
    the gradients' scale; the second does); the second loss and the weights after it."""
    pyro.clear_param_store()
    pyro.set_rng_seed(7)
    vae = build_vae((1, 28, 28), cfg.model)
    _FixedNoise.noise = noise
    vae.posterior_net.forward = lambda loc, scale, _: _FixedNoise(loc, scale).to_event(1)
    svi = build_svi(cfg, vae, group)[1]
    svi_step(svi, x)
    loss = svi_step(svi, x)
    return loss, [p.detach().clone() for p in vae.parameters()]


def _leave() -> None:
    """A worker's end once its result file is written: both ranks leave the group together,
    then the process exits without the interpreter's teardown, where gloo's threads can
    rarely abort a finished worker (SIGABRT, "terminate called without an active
    exception": once in CI, once in 100 runs here), failing a test whose work was done."""
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


def _worker(rank, cfg, x, noise, init, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    group = distributed.Group(rank, 2, rank)
    part = slice(*[(0, B // 2), (B // 2, B)][rank])
    loss, weights = _step(cfg, x[part], noise[part], group)
    torch.save((loss, weights), f"{out}.{rank}")
    _leave()


@pytest.mark.parametrize("normalize", ["false", "true"])
def test_data_parallel_steps_equal_one_process_on_the_global_batch(normalize, make_cfg, tmp_path):
    """With optim.normalize_grads the ranks normalize the summed gradient, as one process does."""
    cfg = make_cfg(
        "model.z_dim=6",
        "model.hidden_dim=32",
        "optim.lr=0.01",
        f"optim.normalize_grads={normalize}",
    )
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(B, 1, 28, 28, generator=gen).bernoulli(generator=gen)
    noise = torch.randn(B, 6, generator=gen)
    out = tmp_path / "weights"
    init = f"file://{tmp_path / 'store'}"
    mp.spawn(_worker, args=(cfg, x, noise, init, str(out)), nprocs=2, join=True)
    loss, single = _step(cfg, x, noise, distributed.SINGLE)
    ranks = [torch.load(f"{out}.{r}") for r in (0, 1)]
    assert ranks[0][0] + ranks[1][0] == pytest.approx(loss, rel=1e-5)
    for a, b, c in zip(single, ranks[0][1], ranks[1][1], strict=True):
        torch.testing.assert_close(b, c, rtol=0, atol=0)  # the ranks agree exactly
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert len(single) > 4


def test_all_reduce_keeps_the_inner_optimizers_state_format():
    inner = pyro.optim.Adam({"lr": 1e-3})
    wrapped = AllReduce(inner)
    assert wrapped.get_state() == inner.get_state()


def _torchrun(run_dir: Path, *overrides: str, procs: int = 2, **kw) -> subprocess.Popen:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    cmd = [
        sys.executable,
        *(launcher if procs else []),
        "-m",
        "vae_pyro.train",
        *TINY,
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    return subprocess.Popen(
        cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw
    )


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("variant", [[], ["model.latent_layers=2"]], ids=["one layer", "two"])
def test_torchrun_run_writes_one_set_of_files_and_matches_one_process(variant, tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    code, out = _finish(_torchrun(two, "trainer.epochs=2", *variant))
    assert code == 0, out
    assert len(_metrics(two)) == 2
    assert sorted(p.name for p in two.iterdir()) == [
        ".hydra",
        "checkpoint.pt",
        "figures",
        "metrics.jsonl",
        "tensorboard",
        "train.log",
    ]
    assert len(list((two / "tensorboard").iterdir())) == 1
    assert (two / "train.log").read_text().count("epoch 2/2") == 1  # rank 0 alone logs
    assert checkpoint.read(two / "checkpoint.pt").epoch == 2
    code, out = _finish(_torchrun(one, "trainer.epochs=2", *variant, procs=0))
    assert code == 0, out
    # Same seed, so the same initial weights and image order: the runs differ only in the
    # latent noise (rank 1 draws its own), which moved the final test loss by ~0.01 nat when
    # measured. Other seeds of this short run end up to ~4 nats apart (initialization, order).
    assert abs(_metrics(two)[-1]["test_loss"] - _metrics(one)[-1]["test_loss"]) < 1.0


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and text in path.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended or hung"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_with_the_same_and_other_world_sizes(tmp_path):
    run_dir = tmp_path / "run"
    big = ["data.subset=30000", "data.batch_size=16", "trainer.epochs=2", "trainer.eval_every=2"]
    proc = _torchrun(run_dir, *big)
    _wait_for(run_dir / "train.log", "training on", proc)
    time.sleep(1.0)  # an epoch of 1,875 steps takes well over a second here
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both workers
    code, out = _finish(proc)
    assert code != 0, out
    assert "interrupted by SIGTERM at epoch 1" in out, out
    saved = checkpoint.read(run_dir / "checkpoint.pt")
    assert saved.epoch == 0 and saved.position is not None and saved.position.world == 2
    code, out = _finish(_torchrun(run_dir, *big, "trainer.resume=true", procs=0))
    assert code == 2, out
    assert "2 process(es); this run has 1" in out, out
    code, out = _finish(_torchrun(run_dir, *big, "trainer.resume=true", "trainer.epochs=1"))
    assert code == 0, out
    assert [m["epoch"] for m in _metrics(run_dir)] == [1]
    code, out = _finish(_torchrun(run_dir, *big, "trainer.resume=true", procs=0))
    assert code == 0, out  # one process continues at the epoch boundary that two reached
    assert [m["epoch"] for m in _metrics(run_dir)] == [1, 2]
    assert _metrics(run_dir)[-1]["test_loss"] < 200


def test_batch_smaller_than_the_world_is_refused(make_cfg, tmp_path, monkeypatch):
    from vae_pyro.errors import VaePyroError
    from vae_pyro.train import train

    monkeypatch.setattr(distributed, "_joined", distributed.Group(0, 4, 0))
    with pytest.raises(VaePyroError, match="data.batch_size=2 is the global batch"):
        train(make_cfg(*TINY, "data.batch_size=2"), tmp_path / "run")


# --- the process group's operations and the rank-0 writer -------------------------------------


def _stop_worker(rank, init, out):
    """Rank 1 alone sees a signal before step 2; the wish travels in the gradient bucket."""
    from vae_pyro.optim import Adam

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    group = distributed.Group(rank, 2, rank)
    pyro.clear_param_store()
    param = pyro.param("w", torch.zeros(3)).unconstrained()
    wish = {"signum": None}
    optimizer = group.wrap(Adam({"lr": 0.1}))
    now = group.agree_to_stop(optimizer, lambda: wish["signum"])
    agreed = []
    for step in range(4):
        if rank == 1 and step == 2:
            wish["signum"] = signal.SIGINT
        param.grad = torch.full((3,), float(rank + 1))
        optimizer([param])
        agreed.append(None if now() is None else int(now()))
    torch.save((agreed, param.detach().clone()), f"{out}.{rank}")
    _leave()


def test_the_ranks_agree_to_stop_after_the_same_step(tmp_path):
    out, init = tmp_path / "agreed", f"file://{tmp_path / 'store'}"
    mp.spawn(_stop_worker, args=(init, str(out)), nprocs=2, join=True)
    (first, w0), (second, w1) = (torch.load(f"{out}.{r}") for r in (0, 1))
    assert first == [None, None, signal.SIGTERM, signal.SIGTERM]  # rank 0 saw no signal itself
    assert second == [None, None, signal.SIGINT, signal.SIGINT]
    torch.testing.assert_close(w0, w1, rtol=0, atol=0)


def test_one_process_stops_on_its_own_signal_and_keeps_its_optimizer():
    inner = pyro.optim.Adam({"lr": 1e-3})
    assert distributed.SINGLE.wrap(inner) is inner
    wish = {"signum": None}
    now = distributed.SINGLE.agree_to_stop(inner, lambda: wish["signum"])
    assert now() is None
    wish["signum"] = signal.SIGTERM
    assert now() == signal.SIGTERM


def test_group_operations_are_no_ops_in_one_process_and_slices_off_rank_0():
    single, second = distributed.SINGLE, distributed.Group(1, 2, 1)
    batch = torch.arange(5)
    assert single.shard(batch) is batch
    assert second.shard(batch).tolist() == [3, 4]
    assert single.sum([1.5, 2.0], torch.device("cpu")) == [1.5, 2.0]
    assert single.part(7.0) == 7.0 and second.part(7.0) == 0.0  # summed once over the ranks
    assert single.share({"a": 1}) == {"a": 1}
    assert single.decide(lambda: 3) == 3
    assert single.launcher == "python" and second.launcher == "torchrun --nproc_per_node=2"
    with pytest.raises(VaePyroError, match="run by 4 process"):
        second.check_resumable(4, Path("ckpt.pt"))


def _record(epoch: int) -> dict:
    return {"epoch": epoch, "train_loss": 100.0 - epoch, "test_loss": None, "seconds": 1.0}


@contextlib.contextmanager
def _writing(run_dir, group: distributed.Group, caplog) -> Iterator[loggers.RankZero]:
    """What a rank writes in one epoch: a recorder open on run_dir after epoch 1 records
    epoch 2, with a rank-0 logger (returned) that caplog hears."""
    log = loggers.RankZero(logging.getLogger("vae_pyro.test_writer"))
    recorder = loggers.Recorder(run_dir, group.main)
    with (
        caplog.at_level(logging.INFO, logger="vae_pyro.test_writer"),
        recorder.open([_record(1)], 2),
    ):
        recorder.record(_record(2), ("train_loss", "test_loss"), 2)
        yield log


def test_rank_1_writes_and_says_nothing_but_waits_for_rank_0(tmp_path, monkeypatch, caplog):
    barriers = []
    monkeypatch.setattr(dist, "barrier", lambda: barriers.append(True))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    group, run_dir = distributed.Group(1, 2, 1), tmp_path / "run"
    with _writing(run_dir, group, caplog) as log:
        group.save(lambda: run_dir.mkdir())
        log.info("said")
        log.warning("warned")
        assert group.only(lambda: "ran") is None
    assert barriers == [True]  # it still waits for rank 0's checkpoint
    assert not run_dir.exists() and caplog.records == []


def test_rank_0_writes_and_says_everything(tmp_path, caplog):
    run_dir, group = tmp_path / "run", distributed.SINGLE
    with _writing(run_dir, group, caplog) as log:
        group.save(lambda: (run_dir / "checkpoint.pt").write_text("saved"))
        log.info("said")
        assert group.only(lambda: "ran") == "ran"
    assert [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [
        _record(1),
        _record(2),
    ]
    assert len(list((run_dir / "tensorboard").iterdir())) == 1
    assert (run_dir / "checkpoint.pt").read_text() == "saved"
    assert [r.getMessage() for r in caplog.records] == ["said"]
