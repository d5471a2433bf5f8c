"""Running ``lightning-accel train`` as a user does and reading back its run summary."""

from __future__ import annotations

import json
import statistics
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


def medians(runs: list[dict]) -> dict[str, float]:
    """Median step time (ms), samples and tokens per second and largest per-rank peak memory
    (MiB) of repeated runs of one setup."""
    return {
        "step_ms": statistics.median(r["step_seconds"] * 1000 for r in runs),
        "samples_per_second": statistics.median(r["samples_per_second"] for r in runs),
        "tokens_per_second": statistics.median(r["tokens_per_second"] or 0 for r in runs),
        "peak_mb": statistics.median(max(r["peak_memory_mb_per_rank"]) for r in runs),
    }


def speed_cells(figures: dict[str, float], baseline_samples: float) -> list[str]:
    """Table cells for :func:`medians`: step ms, tokens/s (or samples/s where no tokens are
    counted), speed-up in samples/s over the baseline, peak MiB."""
    rate = figures["tokens_per_second"] or figures["samples_per_second"]
    unit = "" if figures["tokens_per_second"] else " samples"
    return [
        f"{figures['step_ms']:.0f}",
        f"{rate:,.0f}{unit}",
        f"{figures['samples_per_second'] / baseline_samples:.2f}x",
        f"{figures['peak_mb']:,.0f}",
    ]
