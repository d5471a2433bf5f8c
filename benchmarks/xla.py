"""Steady-state step time of the default recipe on the CPU, on XLA's CPU backend, and on
XLA SPMD over 4 virtual CPU devices, with XLA's compile time apart.

Run it with the torch-xla environment's Python (scripts/setup_xla.sh prints its path) and
the checkout on PYTHONPATH; REPEATS interleaved runs of STEPS steps each, medians:

    PYTHONPATH=. "$(bash scripts/setup_xla.sh)/bin/python" benchmarks/xla.py \\
        --repeats 3 --json docs/results/xla.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import medians, run_cli, speed_cells
from rich.console import Console
from rich.table import Table

PROFILES = ("cpu", "xla_cpu", "xla_cpu_spmd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    loop = [
        f"trainer.max_steps={args.steps}",
        f"trainer.val_check_interval={args.steps}",
        "trainer.limit_val_batches=2",
        "logger=none",
    ]
    results: dict[str, list[dict]] = {profile: [] for profile in PROFILES}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for profile in PROFILES:
                run_dir = Path(tmp) / f"{repeat}-{profile}"
                results[profile].append(run_cli([*loop, f"hardware={profile}"], run_dir))

    table = Table(title=f"Default recipe on CPU and XLA, medians of {args.repeats}")
    for column in ("hardware", "step ms", "tokens/s", "vs cpu", "peak MiB", "XLA compile s"):
        table.add_column(column, justify="right")
    report = []
    baseline = None
    for profile in PROFILES:
        runs = results[profile]
        figures = medians(runs)
        baseline = baseline or figures["samples_per_second"]
        compile_seconds = [r.get("xla_compile_seconds") for r in runs]
        compiled = statistics.median(compile_seconds) if compile_seconds[0] is not None else None
        report.append(
            {"hardware": profile, **figures, "xla_compile_seconds": compiled, "runs": runs}
        )
        table.add_row(
            profile,
            *speed_cells(figures, baseline),
            "-" if compiled is None else f"{compiled:.1f} ({runs[0]['xla_compilations']} graphs)",
        )
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
