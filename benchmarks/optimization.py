"""Step time, throughput and peak memory of the optimization profiles on this machine.

Runs the image recipe, the GPT recipe at its default size and at a medium size (6 layers, width 384,
16 x 256 bytes, the size where bf16 pays on CPUs with AMX) under ``optimization=default``,
``fast`` and ``memory``, REPEATS times each, interleaved, and reports medians with the
speedup over ``default``, as a table and as JSON. Compile time is not in the step time.

    python benchmarks/optimization.py --repeats 2 --json docs/results/optimization.json
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from common import benchmark_parser, medians, run_cli, speed_cells
from rich.console import Console
from rich.table import Table

SIZES = {
    "gpt (default size)": ["trainer.val_check_interval=STEPS"],
    "image (digits ResNet)": ["recipe=image"],
    "gpt medium": [
        "trainer.val_check_interval=STEPS",
        "model.n_layer=6",
        "model.d_model=384",
        "model.n_head=6",
        "data.seq_len=256",
        "data.batch_size=16",
    ],
}
PROFILES = ("default", "fast", "memory")


def main() -> None:
    parser = benchmark_parser(__doc__, repeats=2, steps=40)
    args = parser.parse_args()
    loop = [f"trainer.max_steps={args.steps}", "trainer.limit_val_batches=2", "logger=none"]

    cells = [(size, profile) for size in SIZES for profile in PROFILES]
    results: dict[tuple[str, str], list[dict]] = {cell: [] for cell in cells}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for index, (size, profile) in enumerate(cells):
                shape = [o.replace("STEPS", str(args.steps)) for o in SIZES[size]]
                overrides = [*loop, *shape, f"optimization={profile}"]
                results[(size, profile)].append(run_cli(overrides, Path(tmp) / f"{repeat}-{index}"))

    table = Table(title=f"Optimization profiles, medians of {args.repeats}")
    for column in (
        "recipe",
        "optimization",
        "precision",
        "step ms",
        "throughput",
        "vs default",
        "peak MiB",
    ):
        table.add_column(column, justify="right")
    report = []
    for size in SIZES:
        baseline = None
        for profile in PROFILES:
            runs = results[(size, profile)]
            figures = medians(runs)
            baseline = baseline or figures["samples_per_second"]
            precision = runs[0]["precision"]
            report.append(
                {
                    "recipe": size,
                    "optimization": profile,
                    "precision": precision,
                    **figures,
                    "runs": runs,
                }
            )
            table.add_row(size, profile, precision, *speed_cells(figures, baseline))
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
