"""Step time and per-rank peak memory of one process, DDP and FSDP2 on this machine.

Runs the default recipe (shortened) on ``hardware=cpu``, ``ddp_cpu`` and ``fsdp2_cpu``
with the same global batch, REPEATS times each, interleaved, and reports medians: step
time, tokens/s, per-rank peak memory and per-rank model state, as a table and as JSON.

    python benchmarks/parallel.py --repeats 3 --json docs/results/parallel.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import medians, run_cli, speed_cells
from rich.console import Console
from rich.table import Table

GLOBAL_BATCH = 32
SETUPS = {
    "1 process": ("cpu", 1),
    "DDP, 2 ranks": ("ddp_cpu", 2),
    "FSDP2, 2 ranks": ("fsdp2_cpu", 2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    loop = [f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}"]
    loop += ["trainer.limit_val_batches=2", "logger=none"]

    results: dict[str, list[dict]] = {name: [] for name in SETUPS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for index, (name, (hardware, ranks)) in enumerate(SETUPS.items()):
                overrides = [
                    *loop,
                    f"hardware={hardware}",
                    f"data.batch_size={GLOBAL_BATCH // ranks}",
                ]
                results[name].append(run_cli(overrides, Path(tmp) / f"{repeat}-{index}"))

    table = Table(
        title=f"Default recipe, global batch {GLOBAL_BATCH} x 128 bytes, medians of {args.repeats}"
    )
    for column in (
        "setup",
        "step ms",
        "tokens/s",
        "vs 1 process",
        "peak MiB / rank",
        "model state KiB / rank",
    ):
        table.add_column(column, justify="right")
    baseline = None
    report = {}
    for name, runs in results.items():
        figures = medians(runs)
        state = runs[0]["model_state_bytes_per_rank"][0] / 1024
        baseline = baseline or figures["samples_per_second"]
        report[name] = {**figures, "model_state_kib_per_rank": state, "runs": runs}
        table.add_row(name, *speed_cells(figures, baseline), f"{state:,.0f}")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
