"""Training time blocked per checkpoint save, synchronous against asynchronous, on FSDP2's
CPU twin (2 ranks): the default recipe's GPT and a medium GPT, a sharded checkpoint every
5 steps, REPEATS times interleaved, medians.

    python benchmarks/checkpoint_saves.py --repeats 3 --steps 20 \\
        --json docs/results/checkpoint_saves.json
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from common import benchmark_parser, results_table, run_cli
from rich.console import Console

SIZES = {
    "default GPT": [],
    "medium GPT": ["model.n_layer=6", "model.d_model=384", "model.n_head=6"],
}
MODES = {"synchronous": "false", "asynchronous": "true"}


def main() -> None:
    args = benchmark_parser(__doc__, repeats=3, steps=20).parse_args()
    loop = [f"trainer.max_steps={args.steps}", "trainer.val_check_interval=5"]
    loop += [
        "trainer.limit_val_batches=1",
        "logger=none",
        "callbacks=minimal",
        "hardware=fsdp2_cpu",
    ]
    loop += ["data.batch_size=8"]
    cells = [(size, mode) for size in SIZES for mode in MODES]
    results: dict[tuple[str, str], list[dict]] = {cell: [] for cell in cells}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for index, (size, mode) in enumerate(cells):
                overrides = [
                    *loop,
                    *SIZES[size],
                    f"hardware.strategy_options.async_save={MODES[mode]}",
                ]
                results[(size, mode)].append(run_cli(overrides, Path(tmp) / f"{repeat}-{index}"))

    table = results_table(
        f"Training time blocked per checkpoint save, medians of {args.repeats}",
        ("model", "save", "saves", "blocked per save (ms)", "vs synchronous", "fit (s)"),
    )
    report = []
    for size in SIZES:
        synchronous = None
        for mode in MODES:
            runs = results[(size, mode)]
            per_save = statistics.median(
                r["checkpoint_blocked_seconds"] / r["checkpoint_saves"] for r in runs
            )
            fit = statistics.median(r["wall_seconds"] for r in runs)
            synchronous = synchronous or per_save
            row = {"model": size, "save": mode, "saves": runs[0]["checkpoint_saves"]}
            row |= {"blocked_ms_per_save": per_save * 1000, "fit_seconds": fit}
            report.append(row)
            table.add_row(
                size, mode, str(row["saves"]), f"{per_save * 1000:,.0f}",
                f"{per_save / synchronous:.2f}x", f"{fit:.1f}",
            )  # fmt: skip
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
