"""``lightning-accel bench``: train every cell of a matrix of settings, each in its own
process, and compare their speed in a table, CSV, JSON and a bar chart."""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lightning_accel.cli.compose import config_dir_override, job_overrides, path_override
from lightning_accel.cli.console import (
    console,
    end_stopped,
    fail,
    print_table,
    quiet_upstream,
    say,
)
from lightning_accel.cli.preflight import preflight
from lightning_accel.cli.schema import RunConfig
from lightning_accel.cli.verb_options import VerbOptions, directory_path, require_seconds
from lightning_accel.errors import SIGINT_EXIT_CODE, ConfigError, RunStopped
from lightning_accel.files import check_writable
from lightning_accel.profiles import config_dir, profile_names

USAGE = """usage: lightning-accel bench [--out DIR] [--repeats N] [--cell-timeout S]
                             [--config-dir DIR] OVERRIDES...

Trains one run per cell of the matrix the overrides span (comma lists, range(...) and
choice(...), as with --multirun), each in its own process, and compares them. Warm-up and
compile steps are left out of the figures. A cell that runs longer than --cell-timeout
seconds is stopped and reported as timed out; the others go on. Writes results.json,
results.csv and chart.png to DIR. --config-dir adds your project's own config groups
(DIR/recipe/NAME.yaml, ...), as for train.

  lightning-accel bench hardware=cpu,ddp_cpu optimization=default,fast trainer.max_steps=60
"""

# What the table and files report from each run's summary.json.
FIGURES = (
    "step_seconds",
    "optimizer_step_seconds",
    "samples_per_second",
    "tokens_per_second",
    "mfu",
    "peak_memory_mb",
    "compilations",
    "compile_seconds",
)
_EMPTY_VALUES = ("", "[]", "choice()")
# each cell's callbacks, before the command line's overrides: no progress bar or tables
CELL_CALLBACKS = "callbacks=minimal"
_SET_BY_BENCH = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir")


@dataclass
class Cell:
    """One run of the matrix: the overrides that differ between cells (its label), all its
    overrides, and what its runs measured or the error that stopped it."""

    label: str
    overrides: list[str]
    run_dirs: list[Path] = field(default_factory=list)
    figures: dict[str, float | None] = field(default_factory=dict)
    error: str | None = None
    end: Literal["failed", "timed out", "stopped"] = "failed"  # how a cell with an error ended

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def status(self) -> str:
        """``ok``, ``failed``, ``timed out`` or ``stopped`` (by Ctrl+C)."""
        return "ok" if self.ok else self.end


def parse_arguments(args: list[str]) -> argparse.Namespace:
    parser = VerbOptions("bench")
    parser.add_argument("--out", type=directory_path, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cell-timeout", type=float, default=None)
    parser.add_argument("--config-dir", "-cd", default=None)
    parser.add_argument("overrides", nargs="*")
    options = parser.parse_options(args)
    if options.config_dir is not None:
        options.overrides.append(config_dir_override(options.config_dir))
    if options.repeats < 1:
        raise ConfigError("--repeats", options.repeats, "must be at least 1")
    require_seconds("--cell-timeout", options.cell_timeout)
    return options


def swept_keys(jobs: list[list[str]]) -> list[str]:
    """The keys whose value differs between the expanded jobs: the dimensions of the
    matrix (a list value such as ``[1,2]`` is one value, ``range(3)`` three)."""
    values = [dict(o.partition("=")[::2] for o in job) for job in jobs]
    keys = dict.fromkeys(key for job in values for key in job)
    return [key for key in keys if len({job.get(key) for job in values}) > 1]


def matrix(overrides: list[str], out: Path) -> list[Cell]:
    """The cells the overrides span, each labelled by its values of the swept keys and
    checked as ``train`` checks a run in ``out``, where its directory will be (unknown
    profiles and keys, hardware this machine lacks, a model, data or checkpoint that would
    not run: all fail here, before anything runs)."""
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") in _SET_BY_BENCH:
            raise ConfigError(
                key, value, "is set by bench: each cell runs in a directory of its own under --out"
            )
        if value.strip() in _EMPTY_VALUES:
            group = key.lstrip("+~")
            choices = profile_names(group) if (config_dir() / group).is_dir() else None
            raise ConfigError(
                key, value, "lists no values, so the matrix is empty; give one or more", choices
            )
        refuse_repeated_values(override)
    jobs = job_overrides(overrides, multirun=True)
    swept = swept_keys(jobs)
    cells = []
    for job in jobs:
        (run,) = preflight(
            [CELL_CALLBACKS, *job, path_override("hydra.run.dir", out)], multirun=False
        )
        if run.stage != "fit":
            raise ConfigError("stage", run.stage, "is not fit: bench compares training speeds")
        check_timed_steps(run)
        values = dict(o.partition("=")[::2] for o in job)
        label = " · ".join(values[key] for key in swept) or "default"
        cells.append(Cell(label=label, overrides=job))
    return cells


def refuse_repeated_values(override: str) -> None:
    """Fail where one override's sweep lists a value twice: its cells would be the same run
    under the same label (``--repeats`` is how a cell runs more than once)."""
    values = [job[0].partition("=")[2] for job in job_overrides([override], multirun=True)]
    repeated = next((value for value in values if values.count(value) > 1), None)
    if repeated is not None:
        key, _, given = override.partition("=")
        raise ConfigError(
            key,
            given,
            f"lists {repeated} more than once; give each value once "
            "(--repeats N runs each cell N times)",
        )


def check_timed_steps(run: RunConfig) -> None:
    """Fail where a cell's ``trainer.max_steps`` leaves no step after the speed monitor's
    warm-up: its figures would then time the warm-up (compilation included), not the
    steady steps that the cells are compared by."""
    warmup = (run.callback_nodes().get("callbacks.speed") or {}).get("warmup_steps", 0)
    if 0 < run.trainer.max_steps <= warmup:
        raise ConfigError(
            "trainer.max_steps",
            run.trainer.max_steps,
            f"leaves no step to time after the speed monitor's {warmup} warm-up steps "
            f"(callbacks.speed.warmup_steps); give more than {warmup}",
        )


def _directory_name(number: int, label: str) -> str:
    return f"{number}-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")


ERROR_PREFIX = "lightning-accel: error:"


def _error_of(log: str, returncode: int) -> str:
    """The sentence a failed run ended with: the CLI's error message, else the last line
    it printed (an exception's type and message)."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(ERROR_PREFIX):
            return line.removeprefix(ERROR_PREFIX).strip()
    return lines[-1] if lines else f"exit code {returncode}"


def _merge_output(stdout: Path, stderr: Path, log: Path) -> list[str]:
    """Write a cell's stdout then stderr into ``log``, removing both; their texts."""
    output = [path.read_text() if path.is_file() else "" for path in (stdout, stderr)]
    log.write_text("".join(output))
    stdout.unlink(missing_ok=True)
    stderr.unlink(missing_ok=True)
    return output


def run_cell(cell: Cell, run_dir: Path, timeout: float | None = None) -> dict[str, Any] | None:
    """Train one cell in a process of its own (forked from this process's
    :class:`~lightning_accel.cli.command_server.CommandServer`); its summary, or None with
    ``cell.error`` set. A run past ``timeout`` seconds is killed with every process it
    started."""
    from lightning_accel.cli.command_server import CommandServer

    run_dir.mkdir(parents=True, exist_ok=True)
    args = ["train", CELL_CALLBACKS, *cell.overrides, path_override("hydra.run.dir", run_dir)]
    stdout, stderr = run_dir / "bench.stdout", run_dir / "bench.stderr"
    try:
        returncode = CommandServer.shared().run(
            args, Path.cwd(), dict(os.environ), stdout, stderr, timeout
        )
    except subprocess.TimeoutExpired:
        cell.error, cell.end = f"timed out after {timeout:g} s and was stopped", "timed out"
        returncode = None
    finally:  # a bench stopped by Ctrl+C leaves the cell's output merged, too
        output = _merge_output(stdout, stderr, run_dir / "bench.log")
    summary_path = run_dir / "summary.json"
    if returncode is None:
        return None
    if returncode != 0 or not summary_path.is_file():
        cell.error = _error_of(output[1], returncode)
        return None
    return json.loads(summary_path.read_text())


def cell_figures(summary: dict[str, Any]) -> dict[str, float | None]:
    """The compared figures of one run summary."""
    peaks = summary.get("peak_memory_mb_per_rank") or []
    compilations = summary.get("xla_compilations", summary.get("compiled_graphs"))
    return {
        "step_seconds": summary.get("step_seconds"),
        "optimizer_step_seconds": summary.get("optimizer_step_seconds"),
        "samples_per_second": summary.get("samples_per_second"),
        "tokens_per_second": summary.get("tokens_per_second"),
        "mfu": summary.get("mfu"),
        "peak_memory_mb": max(peaks) if peaks else None,
        "compilations": compilations,
        "compile_seconds": summary.get("xla_compile_seconds", summary.get("compile_seconds")),
    }


# the figures a run's step time decides (with its fixed batch and FLOPs per step)
SPEED_FIGURES = FIGURES[:5]


def median_figures(runs: list[dict[str, float | None]]) -> dict[str, float | None]:
    """A cell's figures over its repeated runs (None where a run lacks one): the speed
    figures of its run of median step time (of an even count, the slower middle one), so
    that its step time, throughput and MFU describe one run and agree; each other figure's
    median. Figure by figure, two runs gave the mean step time beside the mean throughput,
    which is not the throughput of that step time."""
    timed = sorted(
        (run for run in runs if run["step_seconds"] is not None),
        key=lambda run: run["step_seconds"] or 0.0,
    )
    middle = timed[len(timed) // 2] if timed and len(timed) == len(runs) else None
    medians: dict[str, float | None] = {}
    for name in FIGURES:
        values = [run[name] for run in runs]
        measured = [v for v in values if v is not None]
        if name in SPEED_FIGURES:
            medians[name] = middle[name] if middle is not None else None
        else:
            whole = len(measured) == len(values)
            medians[name] = statistics.median(measured) if whole else None
    return medians


def run_matrix(
    cells: list[Cell], out: Path, repeats: int, cell_timeout: float | None = None
) -> None:
    """Run every cell ``repeats`` times, interleaved, so that drifts of the machine's speed
    touch every cell alike, each run stopped after ``cell_timeout`` seconds; a failed or
    timed-out cell is not run again."""
    measured: dict[int, list[dict[str, float | None]]] = {i: [] for i in range(len(cells))}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("bench", total=len(cells) * repeats)
            for repeat in range(repeats):
                for number, cell in enumerate(cells):
                    if cell.ok:
                        progress.update(task, description=f"{cell.label} (run {repeat + 1})")
                        run_dir = out / _directory_name(number, cell.label)
                        if repeats > 1:
                            run_dir = run_dir / f"run{repeat}"
                        cell.run_dirs.append(run_dir)
                        summary = run_cell(cell, run_dir, cell_timeout)
                        if summary is not None:
                            measured[number].append(cell_figures(summary))
                    progress.advance(task)
    except KeyboardInterrupt:  # the cells whose runs were all done keep their figures
        for number, cell in enumerate(cells):
            if cell.ok and len(measured[number]) < repeats:
                done = f"{len(measured[number])} of its {repeats} runs done" * (repeats > 1)
                cell.error, cell.end = f"stopped by Ctrl+C{', ' * bool(done)}{done}", "stopped"
        raise
    finally:
        for number, cell in enumerate(cells):
            if cell.ok:
                cell.figures = median_figures(measured[number])


def _throughput(figures: dict[str, float | None]) -> tuple[float | None, str]:
    if figures.get("tokens_per_second"):
        return figures["tokens_per_second"], "tokens/s"
    return figures.get("samples_per_second"), "samples/s"


def speedups(cells: list[Cell]) -> list[float | None]:
    """Each cell's throughput (samples/s) over the first cell's."""
    first = cells[0].figures.get("samples_per_second") if cells and cells[0].ok else None
    return [
        c.figures["samples_per_second"] / first
        if first and c.ok and c.figures.get("samples_per_second")
        else None
        for c in cells
    ]


def _number(value: float | None, form: str) -> str:
    return "-" if value is None else format(value, form)


def results_table(cells: list[Cell], title: str, dimensions: str) -> Table:
    """The rich table people read; ``dimensions`` names the first column (the swept keys)."""
    table = Table(title=escape(title), title_justify="left")
    for name, justify in (
        (dimensions, "left"),
        ("step", "right"),
        ("throughput", "right"),
        ("speed-up", "right"),
        ("peak memory", "right"),
        ("MFU", "right"),
        ("compiles", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for cell, speedup in zip(cells, speedups(cells), strict=True):
        if not cell.ok:
            table.add_row(escape(cell.label), f"[red]{cell.status}[/]", "", "", "", "", "")
            continue
        f = cell.figures
        rate, unit = _throughput(f)
        step = f["step_seconds"] * 1000 if f["step_seconds"] is not None else None
        table.add_row(
            escape(cell.label),
            f"{_number(step, ',.1f')} ms",
            f"{_number(rate, ',.0f')} {unit}",
            _number(speedup, ".2f") + ("x" if speedup is not None else ""),
            f"{_number(f['peak_memory_mb'], ',.0f')} MiB",
            _number(f["mfu"], ".1%"),
            _number(f["compilations"], ".0f"),
        )
    return table


def result_rows(cells: list[Cell]) -> list[dict[str, Any]]:
    """One flat record per cell, for results.json and results.csv."""
    return [
        {
            "cell": cell.label,
            "status": cell.status,
            "error": cell.error,
            "speedup": speedup,
            **{name: cell.figures.get(name) for name in FIGURES},
            "overrides": " ".join(cell.overrides),
            "run_dirs": " ".join(str(d) for d in cell.run_dirs),
        }
        for cell, speedup in zip(cells, speedups(cells), strict=True)
    ]


def write_results(cells: list[Cell], out: Path, repeats: int) -> list[Path]:
    """Write results.json, results.csv and chart.png; return their paths."""
    import csv

    from lightning_accel.cli.chart import bar_chart

    rows = result_rows(cells)
    json_path, csv_path, chart_path = out / "results.json", out / "results.csv", out / "chart.png"
    json_path.write_text(json.dumps({"repeats": repeats, "cells": rows}, indent=2) + "\n")
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    rates = [_throughput(c.figures) if c.ok else (None, "") for c in cells]
    unit = next((u for r, u in rates if r), "samples/s")
    bar_chart(
        [c.label for c in cells],
        [r if u == unit else None for r, u in rates],
        unit,
        chart_path,
    )
    return [json_path, csv_path, chart_path]


def main(args: list[str]) -> int:
    """Run ``lightning-accel bench`` with the arguments after the verb."""
    quiet_upstream()
    try:
        options = parse_arguments(args)
        if options.help:
            print(USAGE, end="")
            return 0
        out = options.out or Path("runs/bench") / time.strftime("%Y-%m-%d_%H-%M-%S")
        check_writable(out, "--out")
        cells = matrix(options.overrides, out)
        jobs = [cell.overrides for cell in cells]
    except ConfigError as error:
        fail(error)
    out.mkdir(parents=True, exist_ok=True)
    say(f"benchmarking {len(cells)} cells x {options.repeats} runs; runs in {out}")
    try:
        run_matrix(cells, out, options.repeats, options.cell_timeout)
    except KeyboardInterrupt:
        written = report(cells, jobs, options, out)
        finished = sum(cell.ok for cell in cells)
        end_stopped(
            RunStopped(
                f"stopped on SIGINT (Ctrl+C) with {finished} of {len(cells)} cells measured; "
                f"results so far in {', '.join(str(p) for p in written)}",
                SIGINT_EXIT_CODE,
            )
        )
    written = report(cells, jobs, options, out)
    say(f"results in {', '.join(str(p) for p in written)}")
    return 1 if any(not c.ok for c in cells) else 0


def report(
    cells: list[Cell], jobs: list[list[str]], options: argparse.Namespace, out: Path
) -> list[Path]:
    """Print the cells' table and why each that did not finish ended; write the results
    files (their paths returned)."""
    dimensions = " · ".join(swept_keys(jobs)) or "cell"
    title = f"bench: {' '.join(options.overrides) or 'defaults'}"
    print_table(results_table(cells, title, dimensions))
    for cell in cells:
        if not cell.ok and cell.end != "stopped":
            log = cell.run_dirs[-1] / "bench.log"
            say(f"{cell.label} {cell.status}: {cell.error} (log: {log})")
    return write_results(cells, out, options.repeats)
