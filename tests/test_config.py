"""The typed configs, the one CLI shell and the help: every bad value is refused before any work
with one line naming the key, the value and what is allowed."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vae_pyro import checkpoint, cli, config, data, model, networks
from vae_pyro.errors import VaePyroError
from vae_pyro.evaluate import evaluate
from vae_pyro.sample import sample
from vae_pyro.train import train

REPO = Path(__file__).resolve().parent.parent
SHARED_MNIST = REPO.parent / "shared" / "data" / "MNIST" / "raw"  # the IDX files, if beside
FIXTURE = REPO / "tests" / "fixtures" / "checkpoint_v1.pt"
TASKS = {"train": train, "sample": sample, "evaluate": evaluate}


def refusal(command: str, *overrides: str, run_dir: Path) -> str:
    """What the CLI says of these overrides, in-process: the composition error Hydra raises (as
    cli.compose_message words it) or the task's VaePyroError. Fails if the command would run."""
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(cli.CONF_DIR)):
            cfg = compose(command, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        return cli.compose_message(command, err)
    args = (run_dir,) if command == "train" else ()
    with pytest.raises(VaePyroError) as err:
        TASKS[command](cfg, *args)
    return str(err.value)


TRAIN_BAD = [
    # (override, words the one line must hold): key, value and what is allowed
    ("model.z_dim=0", "model.z_dim=0 is not allowed: use an integer >= 1"),
    ("model.z_dim=abc", "model.z_dim: Value 'abc' of type 'str' could not be converted to Int"),
    ("model.z_dim=2.5", "model.z_dim: Value '2.5' of type 'float' could not be converted to Int"),
    ("model.hidden_dim=-3", "model.hidden_dim=-3 is not allowed: use an integer >= 1"),
    ("data.batch_size=0", "data.batch_size=0 is not allowed: use an integer >= 1"),
    ("data.subset=0", "data.subset=0 is not allowed: use an integer >= 1"),
    ("data.name=svhn", "data.name: Invalid value 'svhn', expected one of [mnist, fashion_mnist"),
    ("data=svhn", "Could not find 'data/svhn' Available options in 'data': cifar10"),
    ("data.binarize=threshold", "data.binarize: Invalid value 'threshold', expected one of [none"),
    ("data.image_size=-3", "data.image_size=-3 is not allowed: use an integer >= 1"),
    ("model.arch=resnet", "model.arch: Invalid value 'resnet', expected one of [mlp, conv]"),
    ("model.likelihood=poisson", "model.likelihood: Invalid value 'poisson', expected one of"),
    ("model.scale_param=relu", "model.scale_param: Invalid value 'relu', expected one of [exp"),
    ("model.channels=[]", "model.channels=[] is not allowed: use a non-empty list of integers"),
    ("model.channels=[8,0]", "model.channels=[8, 0] is not allowed: use a non-empty list"),
    ("model.kl_weight=-0.1", "model.kl_weight=-0.1 is not allowed: use a finite number >= 0"),
    ("model.kl_weight=inf", "model.kl_weight=inf is not allowed: use a finite number >= 0"),
    ("model.kl_warmup_epochs=-1", "model.kl_warmup_epochs=-1 is not allowed: use an integer >= 0"),
    ("model.kl_warmup_epochs=1.5", "model.kl_warmup_epochs: Value '1.5' of type 'float' could"),
    ("elbo.num_particles=0", "elbo.num_particles=0 is not allowed: use an integer >= 1"),
    ("elbo.name=renyi", "elbo.name: Invalid value 'renyi', expected one of [trace, meanfield"),
    ("elbo=renyi", "Could not find 'elbo/renyi' Available options in 'elbo':"),
    ("model/prior=gauss", "Could not find 'model/prior/gauss' Available options in 'model/prior"),
    ("model.prior.name=gauss", "model.prior.name: Invalid value 'gauss', expected one of [stan"),
    ("model.prior.components=0", "model.prior.components=0 is not allowed: use an integer >= 1"),
    ("model.posterior.depth=0", "model.posterior.depth=0 is not allowed: use an integer >= 1"),
    ("model.posterior.hidden=-1", "model.posterior.hidden=-1 is not allowed: use an integer"),
    ("model.hidden_layers=0", "model.hidden_layers=0 is not allowed: use an integer >= 1"),
    ("optim.lr=0", "optim.lr=0.0 is not allowed: use a finite number > 0"),
    ("optim.lr=-0.001", "optim.lr=-0.001 is not allowed: use a finite number > 0"),
    ("optim.lr=inf", "optim.lr=inf is not allowed: use a finite number > 0"),
    ("optim.lr=nan", "optim.lr=nan is not allowed: use a finite number > 0"),
    ("optim.betas=[1.5,0.999]", "optim.betas=[1.5, 0.999] is not allowed: use two numbers in [0"),
    ("optim.betas=[0.9]", "optim.betas=[0.9] is not allowed: use two numbers in [0, 1)"),
    ("trainer.epochs=0", "trainer.epochs=0 is not allowed: use an integer >= 1"),
    ("trainer.checkpoint_every=0", "trainer.checkpoint_every=0 is not allowed: use an integer"),
    ("trainer.eval_every=0", "trainer.eval_every=0 is not allowed: use an integer >= 1"),
    ("trainer.resume=maybe", "trainer.resume: Value 'maybe' is not a valid bool"),
    ("trainer.device=tpu", "trainer.device=tpu is not allowed: use auto, cpu, cuda or cuda:N"),
    ("seed=-1", "seed=-1 is not allowed: use an integer from 0 to 4294967295"),
    ("seed=4294967296", "seed=4294967296 is not allowed: use an integer from 0 to 4294967295"),
    ("+model.zdim=5", "unknown key model.zdim: did you mean model.z_dim?"),
    ("model.zdim=5", "unknown key model.zdim: did you mean model.z_dim?"),
    ("+epochs=5", "unknown key epochs"),
    ("data.subset=60001", "data.subset=60001 is larger than the 60000 training images"),
]
if not torch.cuda.is_available():
    TRAIN_BAD += [
        (
            "trainer.device=cuda",
            "trainer.device=cuda but CUDA is not available on this machine; "
            "use trainer.device=cpu or trainer.device=auto",
        ),
        ("trainer.device=cuda:1", "use trainer.device=cpu or trainer.device=auto"),
    ]


@pytest.mark.parametrize(("override", "message"), TRAIN_BAD, ids=[b[0] for b in TRAIN_BAD])
def test_every_bad_train_value_is_one_line_before_any_work(override, message, tmp_path):
    said = refusal("train", "+experiment=z50", override, run_dir=tmp_path / "run")
    assert message in said
    assert "\n" not in said
    assert not (tmp_path / "run").exists()  # no work: not even the run dir


READER_BAD = [
    ("seed=-1", "seed=-1 is not allowed"),
    ("num_samples=0", "num_samples=0 is not allowed: use an integer >= 1"),
    ("prior.num=0", "prior.num=0 is not allowed: use an integer >= 1"),
    ("prior.bernoulli=maybe", "prior.bernoulli: Value 'maybe' is not a valid bool"),
    ("interpolation.steps=1", "interpolation.steps=1 is not allowed: use an integer >= 2"),
    ("interpolation.pairs=[[1,2,3]]", "interpolation.pairs=[[1, 2, 3]] is not allowed: use a"),
    ("manifold.quantile=0.5", "manifold.quantile=0.5 is not allowed: use a number from 0.000001"),
    ("manifold.quantile=1e-9", "manifold.quantile=1e-09 is not allowed: use a number from"),
    ("scale=0", "scale=0 is not allowed: use an integer >= 1"),
    ("indices=[-1]", "indices=[-1] is not allowed: use a non-empty list of indices >= 0"),
    ("device=gpu", "device=gpu is not allowed: use auto, cpu, cuda or cuda:N"),
    ("+experiment=z2", "unknown key model (set by conf/experiment/z2.yaml)"),
    ("model.z_dim=3", "unknown key model.z_dim"),
    ("+model.z_dim=3", "unknown key model:"),
    ("+data=mnist", "unknown key data (set by conf/data/mnist.yaml)"),
    ("num_sample=3", "unknown key num_sample: did you mean num_samples?"),
    ("z=[1,2]", "z=[1, 2] is not allowed: use a non-empty list of lists of numbers"),
    ("latent.method=umap", "latent.method: Invalid value 'umap', expected one of [pca, tsne]"),
]
READER_BAD = [("sample", *row) for row in READER_BAD] + [
    ("evaluate", "num_particles=0", "num_particles=0 is not allowed: use an integer >= 1"),
    (
        "evaluate",
        "max_batch_elements=0",
        "max_batch_elements=0 is not allowed: use an integer >= 1",
    ),
    ("evaluate", "num_images=0", "num_images=0 is not allowed: use an integer >= 1"),
    ("evaluate", "seed=4294967296", "seed=4294967296 is not allowed"),
    ("evaluate", "device=tpu", "device=tpu is not allowed"),
    ("evaluate", "+experiment=z50", "unknown key model (set by conf/experiment/z50.yaml)"),
    ("evaluate", "+trainer.epochs=3", "unknown key trainer:"),
]


@pytest.mark.parametrize(
    ("command", "override", "message"), READER_BAD, ids=[f"{c} {o}" for c, o, _ in READER_BAD]
)
def test_every_bad_sample_or_evaluate_value_is_one_line(command, override, message, tmp_path):
    """Also: nothing written into the run dir (it holds a checkpoint of the first release)."""
    shutil.copy(FIXTURE, tmp_path / "checkpoint.pt")
    said = refusal(command, f"run_dir={tmp_path}", override, run_dir=tmp_path)
    assert message in said and "\n" not in said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_run_dir_is_required(tmp_path):
    for command in ("sample", "evaluate"):
        assert refusal(command, run_dir=tmp_path) == "run_dir is required: give run_dir=..."


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


CLI_BAD = [
    (["vae_pyro.train", "+model.zdim=5"], "vae_pyro.train: error: unknown key model.zdim"),
    (["vae_pyro.train", "seed=-1"], "vae_pyro.train: error: seed=-1 is not allowed"),
    (["vae_pyro.train", "model.z_dim=abc"], "could not be converted to Integer"),
    (["vae_pyro.sample", "+experiment=z2", "run_dir=x"], "vae_pyro.sample: error: unknown key"),
    (["vae_pyro.evaluate", "num_particles=0", "run_dir=x"], "num_particles=0 is not allowed"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("args", "message"), CLI_BAD, ids=[" ".join(a) for a, _ in CLI_BAD])
def test_bad_values_through_the_real_cli_are_one_line_and_exit_2(args, message, tmp_path):
    proc = _cli(*args, "hydra.run.dir=run" if "train" in args[0] else "seed=0", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written anywhere


@pytest.mark.slow
def test_help_of_each_command_shows_its_own_keys_and_examples(tmp_path):
    helps = {c: _cli(f"vae_pyro.{c}", "--help", cwd=tmp_path) for c in TASKS}
    for command, proc in helps.items():
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count(f"  python -m vae_pyro.{command} ") == 3  # three examples
        for key in config.keys(config.SCHEMAS[command]):
            assert f"  {key}" in proc.stdout, (command, key)
    train_help, sample_help = helps["train"].stdout, helps["sample"].stdout
    assert "model.likelihood=bernoulli" in train_help
    assert "pixel model p(x|z) [bernoulli | continuous_bernoulli | gaussian]" in " ".join(
        train_help.split()
    )
    presets = sorted(p.stem for p in (cli.CONF_DIR / "experiment").glob("*.yaml"))
    assert f"experiment: {', '.join(presets)}" in train_help
    for other in (sample_help, helps["evaluate"].stdout):
        assert "model.z_dim" not in other and "experiment" not in other and "data:" not in other
    assert "num_particles=5000" in helps["evaluate"].stdout
    assert list(tmp_path.iterdir()) == []


def test_every_choice_has_its_implementation():
    """The schema's Enums and the registries name the same variants."""
    pairs = [
        (config.Arch, networks.ARCHS),
        (config.Likelihood, model.LIKELIHOODS),
        (config.ScaleParam, networks.SCALE_PARAMS),
        (config.Objective, model.OBJECTIVES),
        (config.DataName, data.SOURCES),
    ]
    for choice, registry in pairs:
        assert {m.name for m in choice} == set(registry), choice


def test_a_registered_architecture_needs_no_change_elsewhere(monkeypatch):
    """Adding an arch is one builder in networks.ARCHS (and the Enum member naming it)."""
    built, mlp = [], networks.ARCHS["mlp"]

    def tiny(shape, cfg, learn_scale):
        built.append(cfg.z_dim)
        return mlp(shape, cfg, learn_scale)

    monkeypatch.setitem(networks.ARCHS, "mlp", tiny)
    vae = model.build_vae((1, 28, 28), {"z_dim": 3, "hidden_dim": 8})
    assert built == [3] and vae.encoder.fc21.out_features == 3


def test_schema_defaults_match_the_yaml_defaults(make_cfg):
    """The YAML files set values the schema allows; the composed default config converts."""
    cfg = config.to_object(make_cfg(), config.TrainConfig)
    assert (cfg.model.z_dim, cfg.model.hidden_dim, cfg.data.name) == (50, 400, "mnist")
    assert cfg.optim.optimizer["optim_args"]["lr"] == cfg.optim.lr  # interpolations resolved
    for name in ("trace", "meanfield", "jit"):
        assert config.to_object(make_cfg(f"elbo={name}"), config.TrainConfig).elbo.name == name


def _function_lengths() -> dict[str, int]:
    lengths = {}
    for path in sorted((REPO / "vae_pyro").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lengths[f"{path.name}:{node.name}"] = node.end_lineno - node.lineno + 1
    return lengths


def test_no_function_is_longer_than_50_lines():
    long = {name: n for name, n in _function_lengths().items() if n > 50}
    assert not long, long


# --- checkpoints of the first release (format vae-pyro-checkpoint/1, z_dim 2, hidden 16) -------


def test_released_checkpoint_loads_and_its_config_reads_today(mnist):
    vae, ckpt = checkpoint.load_vae(FIXTURE)
    assert ckpt.epoch == 1 and ckpt.config["elbo"] == {
        "name": "trace",
        "num_particles": 1,
        "vectorize_particles": True,
    }
    assert (ckpt.model_config.z_dim, ckpt.model_config.hidden_dim) == (2, 16)
    assert ckpt.data_config.subset == 256
    from vae_pyro.estimators import negative_elbo

    torch.manual_seed(0)
    saved = ckpt.metrics[0]["test_loss"]  # the release's own test loss on these weights
    assert abs(negative_elbo(vae, mnist.test.x) - saved) < 1.0


def test_released_checkpoint_samples_and_evaluates(tmp_path):
    shutil.copy(FIXTURE, tmp_path / "checkpoint.pt")
    written = sample(_compose_cmd("sample", f"run_dir={tmp_path}", "device=cpu"))
    assert sorted(written) == ["interpolation", "latent", "manifold", "posterior", "prior"]
    record = evaluate(
        _compose_cmd("evaluate", f"run_dir={tmp_path}", "num_particles=5", "num_images=50")
    )
    assert record["checkpoint_epoch"] == 1 and record["nll"] <= record["negative_elbo"] + 1e-6


def test_released_checkpoint_resumes(make_cfg, tmp_path):
    ckpt = checkpoint.read(FIXTURE)
    same = [
        f"{k}={v}"
        for k, v in (
            ("model.z_dim", 2),
            ("model.hidden_dim", 16),
            ("data.subset", 256),
            ("data.batch_size", 64),
        )
    ]
    cfg = make_cfg(
        *same, "trainer.device=cpu", "trainer.epochs=2", f"trainer.resume_from={FIXTURE}"
    )
    final = train(cfg, tmp_path)
    resumed = checkpoint.read(tmp_path / "checkpoint.pt")
    assert resumed.epoch == 2 and resumed.metrics[0] == ckpt.metrics[0]
    assert resumed.metrics[1]["test_loss"] == final < ckpt.metrics[0]["test_loss"]


def _compose_cmd(command: str, *overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(cli.CONF_DIR)):
        return compose(command, overrides=list(overrides))


# --- the defects found by trying the tool as a new user would ---------------------------------


def test_resume_into_other_networks_names_the_differing_settings(make_cfg, tmp_path):
    shutil.copy(FIXTURE, tmp_path / "checkpoint.pt")
    cfg = make_cfg(
        "model.z_dim=5",
        "model.hidden_dim=16",
        "data.subset=256",
        "trainer.device=cpu",
        "trainer.epochs=3",
        "trainer.resume=true",
    )
    with pytest.raises(VaePyroError) as err:
        train(cfg, tmp_path)
    assert "checkpoint model.z_dim=2, this command model.z_dim=5" in str(err.value)
    assert "hidden_dim" not in str(err.value)  # only what differs


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is not a vae-pyro checkpoint: it is empty"),
        (b"epoch: 3\nloss: 101.5\n", "is not a vae-pyro checkpoint: it is a text file"),
        (bytes(range(256)) * 16, "is not a vae-pyro checkpoint: it is not a PyTorch file"),
    ],
    ids=["empty", "text", "random-bytes"],
)
def test_a_file_that_is_no_checkpoint_says_what_it_is(tmp_path, content, message):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(VaePyroError) as err:
        checkpoint.read(path)
    assert message in str(err.value) and str(path) in str(err.value)
    assert "weights_only" not in str(err.value) and "(101)" not in str(err.value)


def test_a_foreign_pytorch_file_is_named_as_such(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises(VaePyroError, match="is a PyTorch file of another program"):
        checkpoint.read(path)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="the shared MNIST IDX files are absent")
def test_a_truncated_mnist_file_is_named_as_damaged(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(SHARED_MNIST, raw, ignore=shutil.ignore_patterns("*ubyte", "*.md"))
    damaged = raw / "t10k-images-idx3-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:5000])
    with pytest.raises(VaePyroError) as err:
        data.load_data("mnist", root=tmp_path)
    assert f"{damaged} is damaged" in str(err.value) and "not found" not in str(err.value)


# --- one source of every default: the schema's dataclasses --------------------------------------

# conf/ folder -> the schema section its files fill (experiments, sweeps and launchers are deltas
# that pin a protocol on purpose, whatever the defaults become, so they may restate a value).
SECTIONS = {
    "train.yaml": ("train", ""),
    "sample.yaml": ("sample", ""),
    "evaluate.yaml": ("evaluate", ""),
    "data": ("train", "data."),
    "model": ("train", "model."),
    "model/prior": ("train", "model.prior."),
    "model/posterior": ("train", "model.posterior."),
    "optim": ("train", "optim."),
    "elbo": ("train", "elbo."),
    "trainer": ("train", "trainer."),
    "logger": ("train", "logger."),
}


def _schema_defaults(command: str) -> dict:
    schema = OmegaConf.structured(config.SCHEMAS[command])
    return config.flatten(OmegaConf.to_container(schema, resolve=False, enum_to_str=True))


def _yaml_values(path: Path) -> dict:
    node = OmegaConf.load(path)
    plain = OmegaConf.to_container(node, resolve=False) or {}
    plain = {k: v for k, v in plain.items() if k not in ("defaults", "hydra")}
    return config.flatten(plain)


def _conf_files():
    for path in sorted(CONF.rglob("*.yaml")):
        where = path.relative_to(CONF)
        section = str(where) if where.parent == Path(".") else str(where.parent)
        if section in SECTIONS:
            yield path, section


CONF = REPO / "conf"


@pytest.mark.parametrize(
    "path,section", list(_conf_files()), ids=lambda v: str(v).replace(str(REPO), "")[-30:]
)
def test_no_default_is_written_twice(path, section):
    """Each key's default lives in the schema (vae_pyro/config.py) alone: a YAML file holds only
    what its option changes, and a group option's `name` is its file's name."""
    command, prefix = SECTIONS[section]
    defaults = _schema_defaults(command)
    for key, value in _yaml_values(path).items():
        dotted = prefix + key
        if key == "name":
            assert value == path.stem, f"{path}: name {value} is not the file's name"
            continue
        assert dotted in defaults, f"{path}: {dotted} is not a schema key"
        assert value != defaults[dotted], f"{path}: {dotted}={value} repeats the schema default"
