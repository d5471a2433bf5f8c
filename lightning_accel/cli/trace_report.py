"""``lightning-accel doctor --trace RUN_DIR``: what the ranks of a failed distributed run
were doing, read from the traces they wrote (:mod:`lightning_accel.collectives`)."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lightning_accel.cli.console import say
from lightning_accel.collectives import TRACE_DIRECTORY, RankTrace, diagnose, load_traces
from lightning_accel.errors import ConfigError

RECENT_PRINTED = 5
# the C++ source location torch's errors start with: "[/path/to/pair.cc:78] "
_SOURCE_LOCATION = re.compile(r"\[[^\]]*\.(?:cc|cpp|h):\d+\] ")


def run_traces(run_dir: Path) -> list[RankTrace]:
    """The latest attempt's traces of ``run_dir``.

    Raises:
        ConfigError: it is not a directory, or holds no traces.
    """
    if not run_dir.is_dir():
        raise ConfigError("doctor --trace", str(run_dir), "is not a run directory")
    traces, damaged = load_traces(run_dir)
    unreadable = ", ".join(path.name for path in damaged)
    if not traces and damaged:
        raise ConfigError(
            "doctor --trace",
            str(run_dir),
            f"holds no readable trace: {unreadable} in {TRACE_DIRECTORY}/ are not traces a "
            "rank wrote",
        )
    if not traces:
        raise ConfigError(
            "doctor --trace",
            str(run_dir),
            f"holds no traces ({TRACE_DIRECTORY}/rank-N.json): its ranks wrote none, so no "
            "collective of it failed or hung (or it ran in one process)",
        )
    if damaged:
        say(f"left out {unreadable} in {run_dir / TRACE_DIRECTORY}: not traces a rank wrote")
    return traces


def report_traces(run_dir: Path, as_json: bool) -> None:
    """Print the traces of ``run_dir`` and the diagnosis: tables, or JSON with ``as_json``."""
    traces = run_traces(run_dir)
    world = max(t.world for t in traces)
    diagnosis = diagnose(traces, world)
    if as_json:
        print(json.dumps({"diagnosis": diagnosis, "traces": [asdict(t) for t in traces]}, indent=2))
        return
    console = Console(file=sys.stdout, highlight=False)
    title = f"Ranks of {run_dir} (attempt {traces[0].attempt})"
    table = Table(title=escape(title), title_justify="left")
    for column in ("rank", "step", "hook (where)", "collective", "error"):
        table.add_column(column, overflow="fold")
    for t in traces:
        collective = t.collective.describe() if t.collective else "-"
        hook = f"{t.hook or '-'}\n({t.where})" if t.where else t.hook or "-"
        error = _SOURCE_LOCATION.sub("", t.error or "still waiting").splitlines()[0][:120]
        row = (t.rank, t.step, hook, collective, error)
        table.add_row(*(escape(str(value)) for value in row))
    console.print(table)
    console.print(escape(f"{diagnosis[0].upper()}{diagnosis[1:]}."), soft_wrap=True)
    for t in traces:
        recent = ", ".join(c.describe() for c in t.recent[-RECENT_PRINTED:])
        console.print(escape(f"rank {t.rank}'s last collectives: {recent or 'none recorded'}"))
