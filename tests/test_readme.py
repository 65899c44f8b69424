"""The README cannot drift: its set-up lines run the quick start, every command of the quick
start runs, in order, in a fresh folder, its Python API example runs on the quick start's run, and
every relative link of the README and docs/ names a file (and heading) that exists.

Training is shortened (512 images, one epoch; evaluate on 50 test images) unless
VAE_PYRO_README_FULL=1, which runs the blocks exactly as written (about two minutes)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
FULL = os.environ.get("VAE_PYRO_README_FULL") == "1"


def blocks(section: str, language: str) -> list[str]:
    """The fenced `language` blocks of the README section titled `section` (## level)."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end > 0 else None]
    return re.findall(rf"```{language}\n(.*?)```", body, flags=re.S)


def test_set_up_is_two_lines_install_and_quick_start_then_tests():
    """The first block a new user copies: install + the quick start's training + the figure to
    open, then install + tests; the tests never run before the quick start."""
    install, tests = blocks("Set up", "")[0].splitlines()
    (train,) = [c for c in blocks("Quick start", "bash")[0].splitlines() if "vae_pyro.train" in c]
    steps = install.split(" && ")
    assert steps[0] == "pip install -e ." and steps[1] == train, steps
    assert "pytest" not in install and steps[-1].startswith("echo open ")
    figure = steps[-1].removeprefix("echo open ")
    assert figure == "outputs/quickstart/figures/reconstructions.png"
    assert tests == 'pip install -e ".[dev]" && python -m pytest'


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_relative_links_of_the_readme_and_docs_resolve():
    pages = [README, *sorted((REPO / "docs").glob("*.md"))]
    assert len(pages) > 5, "docs/ is where the reference lives"
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.*)$", file.read_text(), flags=re.M)
                if anchor not in {_slug(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def shortened(command: str) -> str:
    if FULL:
        return command
    if " vae_pyro.train " in command:
        command = re.sub(r"trainer\.epochs=\d+", "trainer.epochs=1", command)
        return command + " data.subset=512"
    if " vae_pyro.evaluate " in command:
        return command + " num_images=50"
    return command


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory):
    """Run the quick start's commands in order in an empty folder; their results."""
    work = tmp_path_factory.mktemp("readme")
    commands = [line for block in blocks("Quick start", "bash") for line in block.splitlines()]
    assert len(commands) == 3, commands  # train, sample, evaluate
    results = []
    for line in commands:
        argv = shlex.split(shortened(line))
        assert argv[0] == "python"
        proc = subprocess.run(
            [sys.executable, *argv[1:]], cwd=work, capture_output=True, text=True, timeout=900
        )
        results.append(proc)
    return work, commands, results


@pytest.mark.slow
def test_the_quick_start_runs_as_written(quick_start):
    work, commands, results = quick_start
    for line, proc in zip(commands, results, strict=True):
        assert proc.returncode == 0, (line, proc.stderr[-2000:])
    run = work / "outputs" / "quickstart"
    assert (run / "checkpoint.pt").is_file() and (run / "figures" / "reconstructions.png").is_file()
    samples = {p.name for p in (run / "samples").iterdir()}
    assert {"posterior.png", "prior.png", "interpolation.png", "latent.png"} <= samples
    assert "-log p(x)" in results[2].stdout and (run / "eval.json").is_file()


@pytest.mark.slow
def test_the_python_api_example_runs(quick_start, monkeypatch, capsys):
    work, _, results = quick_start
    assert results[0].returncode == 0, results[0].stderr[-2000:]
    (code,) = blocks("Python API", "python")
    if not FULL:
        code = code.replace('"trainer.epochs=1"', '"trainer.epochs=1", "data.subset=512"')
    monkeypatch.chdir(work)
    exec(compile(code, "README.md (Python API)", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and (work / "outputs" / "from_python" / "checkpoint.pt").is_file()
