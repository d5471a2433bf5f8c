"""Step time, per-rank peak memory, per-rank model state and bytes communicated per step of
each parallel layout on this machine, against what ``lightning-accel plan`` predicts.

Runs the GPT recipe (shortened) in one process and in the chosen layouts on the CPU
twins, all with the same global batch, REPEATS times each, interleaved, and reports
medians: step time, tokens/s, per-rank peak memory, per-rank model state (parameters,
gradients and AdamW state) with its share of one process's, and the bytes each rank sends
per step (counted on the loopback interface gloo uses), each beside the plan's
prediction, as a table and as JSON.

    # one process, DDP and FSDP2 on the default recipe
    python benchmarks/parallel.py --repeats 3 --json docs/results/parallel.json
    # every layout (TP, 2D, HSDP too) on a medium GPT
    python benchmarks/parallel.py --size medium --layouts all --repeats 3 --steps 8 \\
        --json docs/results/layouts.json
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path

from common import benchmark_parser, medians, results_table, run_cli, speed_cells
from loopback_bytes import LoopbackBytes
from rich.console import Console

from lightning_accel.cli.plan import model_footprint, run_config
from lightning_accel.plan.layouts import LayoutEstimate
from lightning_accel.plan.planner import plan_layouts

HERE = Path(__file__).resolve().parent

# name: (hardware profile, ranks, data-parallel ranks, the plan's label)
LAYOUTS = {
    "1 process": ("cpu", 1, 1, "single"),
    "DDP x2": ("ddp_cpu", 2, 2, "ddp"),
    "FSDP2 x2": ("fsdp2_cpu", 2, 2, "fsdp2"),
    "TP x2": ("tp_cpu", 2, 1, "tp 2"),
    "FSDP2 x4": ("fsdp2_cpu", 4, 4, "fsdp2"),
    "2D 2x2 (FSDP2 x TP)": ("fsdp2_tp_cpu", 4, 2, "fsdp2_tp 2x2"),
    "HSDP 2x2": ("hsdp_cpu", 4, 4, "hsdp 2x2"),
}
DATA_PARALLEL = ("1 process", "DDP x2", "FSDP2 x2")
# size: (model overrides, global batch)
SIZES = {
    "default": ([], 32),
    "medium": (["model.n_layer=6", "model.d_model=384", "model.n_head=6"], 16),
}


def predicted(shape: list[str], ranks: int, batch: int, label: str) -> LayoutEstimate:
    """The plan's row for a layout (fp32, no activation checkpointing, ``batch`` samples per
    rank), computed in this process so that every row uses one measurement of the CPU's
    peak."""
    run = run_config([*shape, f"data.batch_size={batch}"])
    footprint = model_footprint(run, ("32-true",))
    return next(
        row.estimate
        for row in plan_layouts(footprint, None, [ranks])
        if row.estimate.label == label
        and row.estimate.precision == "32-true"
        and not row.estimate.activation_checkpointing
    )


def main() -> None:
    parser = benchmark_parser(__doc__, repeats=3, steps=150)
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--layouts", choices=("data_parallel", "all"), default="data_parallel")
    args = parser.parse_args()
    shape, global_batch = SIZES[args.size]
    layouts = LAYOUTS if args.layouts == "all" else {n: LAYOUTS[n] for n in DATA_PARALLEL}
    loop = [f"trainer.max_steps={args.steps}", "trainer.limit_val_batches=0", "logger=none"]
    loop += ["callbacks=minimal", f"callbacks.speed.warmup_steps={min(5, args.steps // 4)}"]
    loop += [f"+callbacks.loopback._target_={LoopbackBytes.__module__}.LoopbackBytes"]
    # the runs import the loopback counter from here
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])

    results: dict[str, list[dict]] = {name: [] for name in layouts}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for index, (name, (hardware, ranks, data_parallel, _)) in enumerate(layouts.items()):
                run_dir = Path(tmp) / f"{repeat}-{index}"
                overrides = [*loop, *shape, f"hardware={hardware}", f"hardware.devices={ranks}"]
                overrides.append(f"data.batch_size={global_batch // data_parallel}")
                overrides.append(f"+callbacks.loopback.path={run_dir / 'loopback.json'}")
                summary = run_cli(overrides, run_dir)
                loopback = json.loads((run_dir / "loopback.json").read_text())
                results[name].append({**summary, **loopback})

    table = results_table(
        f"GPT ({args.size}), global batch {global_batch} x 128 tokens, medians of {args.repeats}",
        (
            "layout",
            "step ms",
            "tokens/s",
            "vs 1 process",
            "peak MiB / rank",
            "model state MiB / rank (plan)",
            "share of 1 process",
            "MiB sent / rank / step (plan)",
            "samples/s (plan)",
        ),
    )
    baseline_speed = baseline_state = None
    report = {}
    for name, runs in results.items():
        hardware, ranks, data_parallel, label = layouts[name]
        plan = predicted(shape, ranks, global_batch // data_parallel, label)
        # what the run summary counts: weights, gradients and AdamW's two moments
        plan_state = (2 * plan.memory.parameters + plan.memory.optimizer) / 2**20
        plan_sent = plan.comm_bytes_per_step / 2**20
        figures = medians(runs)
        state = max(runs[0]["model_state_bytes_per_rank"]) / 2**20
        sent = statistics.median(run["bytes_per_rank_step"] for run in runs) / 2**20
        baseline_speed = baseline_speed or figures["samples_per_second"]
        baseline_state = baseline_state or state
        share = state / baseline_state
        report[name] = {
            **figures,
            "model_state_mib_per_rank": state,
            "state_share": share,
            "planned_model_state_mib_per_rank": plan_state,
            "sent_mib_per_rank_step": sent,
            "planned_sent_mib_per_rank_step": plan_sent,
            "planned_samples_per_second": plan.samples_per_second,
        }
        table.add_row(
            name,
            *speed_cells(figures, baseline_speed),
            f"{state:,.1f} ({plan_state:,.1f})",
            f"{share:.2f}",
            f"{sent:,.2f} ({plan_sent:,.2f})",
            f"{figures['samples_per_second']:,.1f} ({plan.samples_per_second:,.1f})",
        )
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
