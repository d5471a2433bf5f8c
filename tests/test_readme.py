"""Every command the README shows is run here: the runner's commands through all their
checks with ``--cfg job`` (config, model, data, checkpoint, memory; the training they
would start is what the other tests train), the informational ones as they are.

``bash scripts/test.sh`` is the command that runs this suite (``.ci/run``).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from helpers import USERS_PACKAGE, run_cli

from lightning_accel.cli.main import main

README = Path(__file__).resolve().parents[1] / "README.md"
RUNS_ITSELF = "bash scripts/test.sh"


def readme_commands() -> list[str]:
    """The commands of the README's ``bash`` blocks, comments left out."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)
    lines = (line.split("  #")[0].strip() for block in blocks for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _arguments(command: str, run: str) -> list[str]:
    """The CLI arguments of a README command, its placeholders filled in."""
    command = command.replace("<run>", run).replace(" ...", "")
    if command.startswith('eval "$('):
        command = command[len('eval "$(') : -len(')"')]
    words = shlex.split(command)
    prefixes = (["lightning-accel"], ["python", "-m", "lightning_accel"])
    for prefix in prefixes:
        if words[: len(prefix)] == prefix:
            return words[len(prefix) :]
    raise AssertionError(f"the README command {command!r} is not one this test knows")


def test_the_readme_shows_the_two_commands_first_and_every_verb() -> None:
    commands = readme_commands()
    assert commands[:2] == ["bash scripts/train.sh", RUNS_ITSELF]
    verbs = {_arguments(c, "run")[0] for c in commands[2:]}
    assert {"train", "test", "--version", "--completion"} <= verbs


@pytest.fixture(scope="module")
def readme_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the user's package of the quick start and a run of the default
    recipe (``runs/gpt/smoke``) whose checkpoint the README's ``ckpt_path`` commands use."""
    directory = tmp_path_factory.mktemp("readme")
    (directory / "my_pkg").mkdir()
    (directory / "my_pkg" / "__init__.py").write_text(USERS_PACKAGE)
    result = run_cli(
        [
            "train",
            "trainer=smoke",
            "logger=none",
            "callbacks=minimal",
            "hydra.run.dir=runs/gpt/smoke",
        ],
        cwd=directory,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return directory


def test_the_default_recipe_script_checks_its_run(readme_directory: Path) -> None:
    script = README.parent / "scripts" / "train.sh"
    result = subprocess.run(
        ["bash", str(script), "trainer.max_steps=400", "--cfg", "job"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=readme_directory,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "recipe: gpt" in result.stdout and "max_steps: 400" in result.stdout


@pytest.mark.parametrize("command", readme_commands()[2:])
def test_each_readme_command_passes_every_check(
    command: str,
    readme_directory: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.chdir(readme_directory)
    monkeypatch.syspath_prepend(str(readme_directory))
    arguments = _arguments(command, "smoke")
    informational = {"--help", "--version", "--completion", "help"} & set(arguments)
    if not informational:
        arguments.extend(["--cfg", "job"])
    try:
        code = main(arguments)
    except SystemExit as exit_:  # Hydra's help exits
        code = exit_.code
    assert code == 0
    out = capsys.readouterr().out
    if informational:
        assert out.strip(), f"{command} printed nothing"
    else:
        assert "recipe:" in out and "hardware:" in out, out[-2000:]
