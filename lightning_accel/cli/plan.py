"""``lightning-accel plan``: before anything runs, the memory per rank, FLOPs, bytes
communicated and predicted speed of a run's model under each layout and world size on a
device, ranked among those that fit, and the overrides that run the best."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from lightning_accel.cli.compose import compose_job, config_dir_override, job_overrides
from lightning_accel.cli.config_sources import set_in_job_file
from lightning_accel.cli.console import console, fail, print_table, quiet_upstream, say
from lightning_accel.cli.preflight import validated_run
from lightning_accel.cli.schema import RunConfig
from lightning_accel.cli.verb_options import VerbOptions
from lightning_accel.errors import ConfigError

USAGE = """usage: lightning-accel plan [--world N,M,...] [--device NAME] [--json]
                            [--config-dir DIR] [OVERRIDES]

  --world N,M,...  world sizes (ranks) to plan (default: 1,2 on this CPU, 1,8 on a device)
  --device NAME    a device of the datasheet table (H100, H200, A100, L4, B200, TPU v5p,
                   ...), or cpu (this machine, measured; the default)
  --json           print one JSON object on stdout instead of tables
  --config-dir DIR your project's own config groups (DIR/recipe/NAME.yaml, ...), as for train
  OVERRIDES        the run, as for train (recipe=, model.*, data.*, optimization.*)
"""


def _worlds(text: str) -> list[int]:
    try:
        worlds = [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError("--world", text, "is not a list of counts such as 1,2,8") from None
    if any(world < 1 for world in worlds):
        raise ConfigError("--world", text, "must list world sizes of 1 or more")
    repeated = sorted({world for world in worlds if worlds.count(world) > 1})
    if repeated:
        raise ConfigError("--world", text, f"lists {repeated[0]} twice; give each size once")
    return worlds


def parse_arguments(args: list[str]) -> argparse.Namespace:
    parser = VerbOptions("plan")
    parser.add_argument("--world", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--config-dir", "-cd", default=None)
    parser.add_argument("overrides", nargs="*")
    options = parser.parse_options(args)
    if options.config_dir is not None:
        options.overrides.append(config_dir_override(options.config_dir))
    return options


def checked_run(overrides: list[str], precisions: tuple[str, ...]) -> tuple[RunConfig, Any]:
    """The run the overrides describe, composed and checked as ``train`` checks it, and its
    model's footprint."""
    cfg = compose_job(job_overrides(overrides, multirun=False)[0])
    try:
        run = validated_run(cfg, Path("."))
        return run, model_footprint(run, precisions)
    except ConfigError as error:
        raise set_in_job_file(error, cfg) from error


def model_footprint(run: RunConfig, precisions: tuple[str, ...]) -> Any:
    """The run's model measured without memory (see :mod:`lightning_accel.plan`)."""
    from hydra.utils import instantiate

    from lightning_accel.plan import (
        attach_trainer,
        example_batch,
        measure_footprint,
        meta_model,
        read_example_batch,
    )

    model = meta_model(run.model)
    datamodule = instantiate(run.data, _convert_="all") if run.data else None
    found = example_batch(datamodule, model)
    if found is None:
        found = read_example_batch(datamodule, run.data), False
        say(
            f"{run.data.get('_target_')} describes no batch without reading data: the model "
            "is measured on its first training batch"
        )
    batch, through_forward = found
    attach_trainer(model, run.trainer.max_steps)
    configured = run.hardware.strategy_options.get("tensor_parallel_plan")
    return measure_footprint(
        model, batch, precisions, through_forward, tensor_parallel_plan=configured
    )


def _row(number: int, planned: Any) -> list[str]:
    from lightning_accel.plan.planner import gib

    row, memory = planned.estimate, planned.estimate.memory
    states = memory.parameters + memory.gradients + memory.optimizer
    return [
        str(number),
        row.label or row.layout,
        str(row.world),
        row.precision,
        "yes" if row.activation_checkpointing else "no",
        gib(states),
        gib(memory.activations),
        gib(memory.device_bytes),
        "[green]yes[/]" if row.fits else "[red]no[/]",
        f"{row.step_seconds * 1e3:,.1f} ms",
        f"{row.samples_per_second:,.1f}",
        f"{row.mfu:.0%}",
        gib(row.comm_bytes_per_step) if row.comm_bytes_per_step else "–",
    ]


CAPTION = (
    "states: parameters, gradients and optimizer state on the device; mem/rank: its peak, "
    "with FSDP2's gathered units; AC: activation checkpointing; step and MFU predicted at "
    "50% of the peak FLOP/s"
)
# (header, right-aligned)
_COLUMNS = (
    ("#", True), ("layout", False), ("ranks", True), ("precision", False), ("AC", False),
    ("states", True), ("activations", True), ("mem/rank", True), ("fits", False),
    ("step", True), ("samples/s", True), ("MFU", True), ("comm/step", True),
)  # fmt: skip


def plan_table(rows: list[Any], title: str) -> Table:
    """The ranked layouts as a rich table."""
    table = Table(title=escape(title), title_justify="left", box=box.SIMPLE_HEAD, caption=CAPTION)
    for header, right in _COLUMNS:
        table.add_column(header, justify="right" if right else "left")
    for number, planned in enumerate(rows, start=1):
        table.add_row(*_row(number, planned))
    return table


def float8_note(run: RunConfig) -> str | None:
    """What the estimates leave out when the run asks for float8 (None when it does not)."""
    enabled = run.optimization.fp8.enabled
    if enabled is False:
        return None
    return (
        f"optimization.fp8.enabled={enabled}: the estimates are of the model without float8, "
        "which no cost model predicted well enough; float8 is measured by the runner's trial "
        "(auto) or by a run (docs/precision.md#float8-training)"
    )


def plan_json(run: RunConfig, device: str, footprint: Any, rows: list[Any]) -> dict[str, Any]:
    """What ``--json`` prints: the model's footprint and every ranked layout."""
    return {
        "model": run.model.get("_target_"),
        "device": device,
        "parameters": footprint.parameters,
        "forward_flops": footprint.forward_flops,
        "samples_per_rank": footprint.samples,
        "layouts": [
            {
                **asdict(r.estimate),
                "device_bytes": r.estimate.memory.device_bytes,
                "overrides": list(r.overrides),
            }
            for r in rows
        ],
        "best": list(rows[0].overrides) if rows and rows[0].estimate.fits else None,
        "float8": float8_note(run),
        "tensor_parallel_plan": dict(footprint.tensor_parallel.styles)
        if footprint.tensor_parallel
        else None,
    }


def main(args: list[str]) -> int:
    """Run ``lightning-accel plan`` with the arguments after the verb."""
    quiet_upstream()
    try:
        options = parse_arguments(args)
        if options.help:
            print(USAGE, end="")
            return 0
        from lightning_accel.plan.planner import (
            THIS_CPU,
            fits_nowhere,
            plan_layouts,
            precisions_for,
            resolve_device,
        )

        spec = resolve_device(options.device)
        default_worlds = "1,2" if spec is None else "1,8"
        worlds = _worlds(default_worlds if options.world is None else options.world)
        run, footprint = checked_run(options.overrides, precisions_for(spec))
        rows = plan_layouts(
            footprint,
            spec,
            worlds,
            run.optimization.accumulate_grad_batches,
            run.optimization.activation_checkpointing.every_k_blocks,
        )
    except ConfigError as error:
        fail(error)
    device = spec.name if spec else THIS_CPU
    if options.json:
        json.dump(plan_json(run, device, footprint, rows), sys.stdout, indent=2)
        print()
        return 0
    title = (
        f"plan: {run.model['_target_']} ({footprint.parameters:,} parameters, "
        f"{footprint.samples} samples per rank per step) on {device}"
    )
    print_table(plan_table(rows, title))
    if footprint.tensor_parallel:
        split = ", ".join(f"{path} {style}" for path, style in footprint.tensor_parallel.styles)
        console.print(f"tensor parallel plan (rows tp, fsdp2_tp): {escape(split)}")
    note = float8_note(run)
    if note:
        console.print(f"float8: {escape(note)}")
    if not rows[0].estimate.fits:
        console.print(
            f"[bold red]lightning-accel:[/] {escape(fits_nowhere(footprint, spec, worlds))}."
        )
        return 1
    best = " ".join(rows[0].overrides)
    console.print(f"[bold cyan]lightning-accel[/]: fastest that fits: {escape(best)}")
    return 0
