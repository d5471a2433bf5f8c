"""Running ``lightning-accel train`` as a user does and reading back its run summary."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def run_cli(overrides: list[str], run_dir: Path) -> dict:
    """One run of the CLI in a fresh process; its ``summary.json`` plus the command's wall
    time (imports, checks and process start-up included) as ``command_seconds``."""
    command = [sys.executable, "-m", "lightning_accel", "train", "callbacks=minimal"]
    command += [f"hydra.run.dir={run_dir}", *overrides]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=run_dir.parent)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(overrides)} failed:\n{result.stderr[-2000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"command_seconds": round(wall, 2), **summary}
