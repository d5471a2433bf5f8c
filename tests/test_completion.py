"""Shell completion: bash's completion function, run for real, completes verbs, config
groups' options and config keys."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_accel.cli.main import main
from lightning_accel.profiles import profile_names

BIN = str(Path(sys.executable).parent)


def _complete_in_bash(line: str, shell: str = "bash") -> list[str]:
    """COMPREPLY of the installed completion function for the command ``line``."""
    script = f"""
eval "$(lightning-accel --completion {shell})"
COMP_LINE='{line}'
COMP_POINT=${{#COMP_LINE}}
_lightning_accel
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [word for word in result.stdout.splitlines() if word]


def test_bash_completes_a_groups_options_keys_and_verbs() -> None:
    assert _complete_in_bash("lightning-accel train hardware=") == profile_names("hardware")
    assert _complete_in_bash("lightning-accel train hardware=fsdp2_") == [
        "fsdp2_cpu",
        "fsdp2_tp",
        "fsdp2_tp_cpu",
    ]
    assert _complete_in_bash("lightning-accel train trainer.max_st") == ["trainer.max_steps="]
    assert _complete_in_bash("lightning-accel tr") == ["train"]
    assert _complete_in_bash("lightning-accel verify --d") == ["--dry-run"]


def test_keys_follow_the_overrides_already_typed(capsys: pytest.CaptureFixture) -> None:
    assert main(["--complete", "lightning-accel train recipe=image model.num_c"]) == 0
    assert capsys.readouterr().out.split() == ["model.num_classes="]
    assert main(["--complete", "lightning-accel train model.num_c"]) == 0
    assert capsys.readouterr().out.split() == [], "the GPT recipe has no num_classes"


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["--complete", "lightning-accel trian hardware="], "verb='trian' is not a"),
        (["--completion", "fish"], "--completion='fish' is not a supported shell"),
        (["--completion"], "--completion takes one argument: bash or zsh"),
    ],
)
def test_completion_bad_input_exits_2(
    arguments: list[str], fragment: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err
