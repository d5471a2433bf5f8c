"""Running ``lightning-accel train`` as a user does and reading back its run summary,
through the same cell runner and medians as ``lightning-accel bench``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.table import Table

from lightning_accel.cli.bench import Cell, cell_figures, median_figures, run_cell


def benchmark_parser(doc: str, repeats: int, steps: int) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--repeats``, ``--steps`` and ``--json``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser


def results_table(title: str, columns: tuple[str, ...]) -> Table:
    """A rich table of ``columns``, numbers right-aligned."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    return table


def run_cli(overrides: list[str], run_dir: Path) -> dict:
    """One run of the CLI in a fresh process; its ``summary.json`` plus the command's wall
    time (imports, checks and process start-up included) as ``command_seconds``."""
    cell = Cell(label=" ".join(overrides), overrides=overrides)
    started = time.perf_counter()
    summary = run_cell(cell, run_dir)
    wall = time.perf_counter() - started
    if summary is None:
        raise RuntimeError(f"{cell.label} failed: {cell.error} (log: {run_dir / 'bench.log'})")
    return {"command_seconds": round(wall, 2), **summary}


def medians(runs: list[dict]) -> dict[str, float]:
    """Median step time (ms), samples and tokens per second and largest per-rank peak memory
    (MiB) of repeated runs of one setup."""
    figures = median_figures([cell_figures(run) for run in runs])
    return {
        "step_ms": figures["step_seconds"] * 1000,
        "samples_per_second": figures["samples_per_second"],
        "tokens_per_second": figures["tokens_per_second"] or 0,
        "peak_mb": figures["peak_memory_mb"],
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
