"""Time the default recipe end to end, as a user runs it, over repeated runs.

Runs ``lightning-accel train`` (any extra overrides are passed through) REPEATS times in
fresh processes, and reports the median whole-command wall time, the median training
throughput and the validation loss of each run, as a table and as JSON.

    python benchmarks/default_recipe.py --repeats 3 --json docs/default_recipe.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import run_cli
from rich.console import Console
from rich.table import Table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("overrides", nargs="*", help="extra `lightning-accel train` overrides")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_cli(args.overrides, Path(tmp) / f"run{i}") for i in range(args.repeats)]

    table = Table(title=f"Default recipe, {args.repeats} runs")
    columns = (
        "run",
        "command s",
        "fit s",
        "tokens/s",
        "data wait",
        "first val loss",
        "last val loss",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for i, run in enumerate(runs):
        first, last = run["validation"][0], run["validation"][-1]
        table.add_row(
            str(i),
            f"{run['command_seconds']:.1f}",
            f"{run['wall_seconds']:.1f}",
            f"{run['tokens_per_second']:,.0f}",
            f"{run['data_wait_share']:.1%}",
            f"{first['val/loss']:.3f} (step {first['step']})",
            f"{last['val/loss']:.3f} (step {last['step']})",
        )
    result = {
        "overrides": args.overrides,
        "median_command_seconds": statistics.median(r["command_seconds"] for r in runs),
        "median_fit_seconds": statistics.median(r["wall_seconds"] for r in runs),
        "median_tokens_per_second": statistics.median(r["tokens_per_second"] for r in runs),
        "median_data_wait_share": statistics.median(r["data_wait_share"] for r in runs),
        "runs": runs,
    }
    table.caption = (
        f"median: {result['median_command_seconds']:.1f} s per command, "
        f"{result['median_tokens_per_second']:,.0f} tokens/s"
    )
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
