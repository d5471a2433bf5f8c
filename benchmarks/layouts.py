"""Per-rank model state, peak memory and step time of every parallel layout on this CPU.

Runs a medium GPT (6 layers, width 384, 6 heads, 128 tokens) for a few steps in one
process, DDP, FSDP2, tensor parallel (TP), 2D (FSDP2 x TP) and HSDP on 2 and 4 CPU
processes, all with the same global batch, REPEATS times interleaved, and reports medians:
model-state bytes per rank (parameters, gradients and AdamW state) and their share of one
process's, peak memory per rank, step time and tokens/s.

    python benchmarks/layouts.py --repeats 3 --json docs/results/layouts.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import medians, run_cli, speed_cells
from rich.console import Console
from rich.table import Table

GLOBAL_BATCH = 16
MEDIUM = ["model.n_layer=6", "model.d_model=384", "model.n_head=6"]
# name: (hardware profile, ranks, data-parallel ranks)
SETUPS = {
    "1 process": ("cpu", 1, 1),
    "DDP x2": ("ddp_cpu", 2, 2),
    "FSDP2 x2": ("fsdp2_cpu", 2, 2),
    "TP x2": ("tp_cpu", 2, 1),
    "FSDP2 x4": ("fsdp2_cpu", 4, 4),
    "2D 2x2 (FSDP2 x TP)": ("fsdp2_tp_cpu", 4, 2),
    "HSDP 2x2": ("hsdp_cpu", 4, 4),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    loop = [f"trainer.max_steps={args.steps}", "trainer.limit_val_batches=0", "logger=none"]
    loop += ["callbacks=minimal", "callbacks.speed.warmup_steps=2", *MEDIUM]

    results: dict[str, list[dict]] = {name: [] for name in SETUPS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for index, (name, (hardware, ranks, data_parallel)) in enumerate(SETUPS.items()):
                overrides = [*loop, f"hardware={hardware}", f"hardware.devices={ranks}"]
                overrides.append(f"data.batch_size={GLOBAL_BATCH // data_parallel}")
                results[name].append(run_cli(overrides, Path(tmp) / f"{repeat}-{index}"))

    table = Table(
        title=f"Medium GPT, global batch {GLOBAL_BATCH} x 128 tokens, medians of {args.repeats}"
    )
    for column in (
        "layout",
        "step ms",
        "tokens/s",
        "vs 1 process",
        "peak MiB / rank",
        "model state MiB / rank",
        "share of 1 process",
    ):
        table.add_column(column, justify="right")
    baseline_speed = baseline_state = None
    report = {}
    for name, runs in results.items():
        figures = medians(runs)
        state = max(runs[0]["model_state_bytes_per_rank"]) / 2**20
        baseline_speed = baseline_speed or figures["samples_per_second"]
        baseline_state = baseline_state or state
        share = state / baseline_state
        report[name] = {**figures, "model_state_mib_per_rank": state, "state_share": share}
        row = speed_cells(figures, baseline_speed)
        table.add_row(name, *row, f"{state:,.1f}", f"{share:.2f}")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
