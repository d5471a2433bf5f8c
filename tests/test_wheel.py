"""The built wheel carries conf/ and recipes/: its CLI works from outside the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import REPO, TINY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding the wheel; its dependencies are borrowed from the
    test environment through a path file, so nothing is downloaded."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            root / "dist",
            REPO,
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = (root / "dist").glob("lightning_accel-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            venv / "bin" / "python",
            "install",
            "--no-deps",
            "-q",
            wheel,
        ],
        check=True,
        timeout=300,
    )
    return venv


def _run(venv: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def test_wheel_holds_the_configs_and_recipes(wheel_env: Path, tmp_path: Path) -> None:
    probe = (
        "import lightning_accel, lightning_accel.profiles as p, importlib.metadata as m;"
        "print(lightning_accel.__file__, p.config_dir(), lightning_accel.__version__,"
        " m.version('lightning-accel'))"
    )
    result = _run(wheel_env, [str(wheel_env / "bin" / "python"), "-c", probe], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    module_file, conf, version, metadata_version = result.stdout.split()
    assert module_file.startswith(str(wheel_env)), "imported from the wheel, not the checkout"
    assert conf.startswith(str(wheel_env))
    assert (Path(conf) / "recipe" / "gpt.yaml").is_file()
    assert (Path(conf) / "hardware" / "cpu.yaml").is_file()
    assert (Path(conf) / "search" / "lr.yaml").is_file()
    assert (Path(module_file).parent / "py.typed").is_file(), "type checkers read its hints"
    assert version == metadata_version, "the version is written once"


def test_installed_cli_trains_outside_the_checkout(
    wheel_env: Path, tmp_path: Path, small_corpus: Path
) -> None:
    cli = str(wheel_env / "bin" / "lightning-accel")
    help_text = _run(wheel_env, [cli, "train", "--help"], cwd=tmp_path)
    assert help_text.returncode == 0 and "recipe: custom, gpt" in help_text.stdout
    result = _run(
        wheel_env,
        [
            cli,
            "train",
            *TINY,
            f"data.source={small_corpus}",
            "callbacks=minimal",
            "hydra.run.dir=out",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["recipe"] == "gpt"
