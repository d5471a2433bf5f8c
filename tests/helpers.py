"""Helpers shared by the tests: tiny-run overrides and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

REPO = Path(__file__).resolve().parent.parent
# A tiny model and a few steps: end-to-end runs in seconds.
TINY = [
    "trainer=smoke",
    "model.n_layer=1",
    "model.d_model=32",
    "model.n_head=2",
    "data.seq_len=32",
    "data.batch_size=8",
]


def cli_command() -> list[str]:
    """The installed console script of the environment running the tests."""
    script = Path(sys.executable).parent / "lightning-accel"
    return [str(script)] if script.exists() else [sys.executable, "-m", "lightning_accel"]


def run_cli(
    args: list[str], cwd: Path, timeout: float = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``lightning-accel ARGS`` in a subprocess, capturing its output."""
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [*cli_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


class MissingPackageLogger:
    """A logger whose backing package is absent, as TensorBoard's is without the extra."""

    def __init__(self, save_dir: str, name: str, version: str) -> None:
        raise ModuleNotFoundError("No module named 'fancy_tracker'", name="fancy_tracker")


class BlocklessModule(torch.nn.Module):
    """A model with no repeated blocks, for activation checkpointing to refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 4)


class StopAtStep(pl.Callback):
    """Ends training after ``step`` optimizer steps, as a preempted job would stop."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


TESTS = Path(__file__).resolve().parent
# Lets CLI subprocesses (and their ranks) import test-only classes such as StopAtStep.
TEST_IMPORTS = {
    "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
}
