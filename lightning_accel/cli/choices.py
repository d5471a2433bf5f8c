"""The choices an optimization profile leaves to measurement, made once on the run's own
model and data before any rank starts, so that every rank runs the same choices:
``strategy: auto`` on several devices (the layout the plan ranks first),
``micro_batch: auto`` (from the plan's memory prediction, confirmed by a trial step),
``precision: fastest``, ``compile.enabled: auto`` and ``fp8.enabled: auto`` (timed). Each
is written into the run's config with its reason."""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import move_data_to_device

from lightning_accel.cli.console import say
from lightning_accel.cli.preflight import measure_run, planned_precision, run_placement
from lightning_accel.cli.rank_server import in_a_fresh_process
from lightning_accel.cli.runner import build_object
from lightning_accel.cli.schema import RunConfig
from lightning_accel.config import Float8Config, OptimizationConfig
from lightning_accel.devices import device_spec
from lightning_accel.errors import ConfigError
from lightning_accel.optimize.blocks import find_repeated_blocks
from lightning_accel.optimize.float8 import too_narrow_for_float8
from lightning_accel.optimize.measured_choices import (
    Candidate,
    CompileChoice,
    Float8Choice,
    compile_pays,
    fastest_precision,
    float8_pays,
    step_times,
)
from lightning_accel.optimize.memory_format import WHOLE_WEIGHT_LAYOUTS, has_convolution_weights
from lightning_accel.optimize.transforms import FSDP2, apply_model_optimizations
from lightning_accel.plan import meta_model
from lightning_accel.plan.fit import available_per_rank, largest_micro_batch
from lightning_accel.plan.footprint import ModelFootprint
from lightning_accel.plan.layouts import LayoutEstimate
from lightning_accel.plan.planner import gib, plan_layouts
from lightning_accel.plan.run import RunPlan, plan_run
from lightning_accel.precision import float8_unavailable
from lightning_accel.strategies.mesh import MESH_KEYS


def _with_micro_batches(run: RunConfig, micro: int, reason: str) -> RunConfig:
    """The run with each batch split into micro-batches of ``micro`` samples, gradient
    accumulation and the loop's batch counts scaled so that every optimizer step sees the
    same samples and validation the same data."""
    splits = run.data["batch_size"] // micro
    trainer = run.trainer
    counts = {
        key: getattr(trainer, key) * splits
        for key in ("val_check_interval", "limit_train_batches", "limit_val_batches")
        if isinstance(getattr(trainer, key), int) and not isinstance(getattr(trainer, key), bool)
    }
    optimization = replace(
        run.optimization,
        accumulate_grad_batches=run.optimization.accumulate_grad_batches * splits,
        micro_batch_reason=reason,
    )
    return replace(
        run,
        data={**run.data, "batch_size": micro},
        trainer=replace(trainer, **counts),
        optimization=optimization,
    )


def choose_micro_batch(run: RunConfig, footprint: ModelFootprint | None) -> RunConfig:
    """For ``micro_batch: auto``: the largest micro-batch the plan predicts to fit
    (``footprint``: the run's model measured, None where it cannot be)."""
    optimization = run.optimization
    plan = plan_run(run.hardware, optimization)
    available = available_per_rank(plan)
    batch_size = run.data.get("batch_size")
    if plan.layout is None or available is None or footprint is None or not batch_size:
        reason = "kept the configured batch: the plan has no memory model of this run"
        return replace(run, optimization=replace(optimization, micro_batch_reason=reason))
    placement = run_placement(run, plan, planned_precision(run, plan))
    found = largest_micro_batch(footprint, placement, available[0])
    if found is None:
        raise ConfigError(
            "data.batch_size",
            batch_size,
            f"does not fit even one sample per micro-batch in the {gib(available[0])} "
            f"{available[1]}; lightning-accel plan compares the layouts",
        )
    micro, memory = found
    predicted = f"predicted {gib(memory.device_bytes)} of {gib(available[0])} per rank"
    if micro == batch_size:
        reason = f"the batch of {batch_size} fits ({predicted})"
        return replace(run, optimization=replace(optimization, micro_batch_reason=reason))
    splits = batch_size // micro
    reason = (
        f"the batch of {batch_size} does not fit; {splits} micro-batches of {micro} with "
        f"gradient accumulation keep the batch and the update ({predicted})"
    )
    return _with_micro_batches(run, micro, reason)


def layout_strategy(row: LayoutEstimate) -> tuple[str, dict[str, Any]]:
    """The strategy and options that run a planned layout."""
    if row.layout == "ddp":
        return "accel_ddp", {}
    if row.layout == "fsdp2_offload":
        return FSDP2, {"cpu_offload": True}
    if row.layout in ("tp", "fsdp2_tp", "hsdp"):
        sizes = (row.mesh.replicate, row.mesh.shard, row.mesh.tensor)
        return FSDP2, dict(zip(MESH_KEYS, sizes, strict=True))
    return FSDP2, {}


def choose_layout(
    run: RunConfig, footprint: ModelFootprint | None, whole_weights: bool = False
) -> RunConfig:
    """For ``strategy: auto`` on several devices: the layout the plan ranks first (with
    ``whole_weights``, for channels-last convolution weights, of those that keep every
    parameter whole)."""
    plan = plan_run(run.hardware, run.optimization)
    if run.hardware.strategy != "auto" or plan.devices < 2 or footprint is None:
        return run
    precision = planned_precision(run, plan)
    spec = device_spec(torch.cuda.get_device_name(0)) if plan.accelerator == "cuda" else None
    ranked = [
        row
        for row in plan_layouts(
            footprint, spec, [plan.world_size], run.optimization.accumulate_grad_batches
        )
        if row.estimate.precision == precision
        and row.estimate.activation_checkpointing
        == run.optimization.activation_checkpointing.enabled
        and (not whole_weights or row.estimate.layout in WHOLE_WEIGHT_LAYOUTS)
    ]
    if not ranked or not ranked[0].estimate.fits:
        return run
    best = ranked[0].estimate
    strategy, options = layout_strategy(best)
    reason = (
        f"{best.label} ranks first of {', '.join(r.estimate.label for r in ranked)} at "
        f"{best.world} devices in the plan (predicted {best.samples_per_second:,.1f} samples/s, "
        f"{gib(best.memory.device_bytes)} per rank)"
    )
    if whole_weights:
        reason += "; of the layouts that keep channels-last weights whole"
    hardware = replace(
        run.hardware,
        strategy=strategy,
        strategy_options={**run.hardware.strategy_options, **options},
        strategy_reason=reason,
    )
    return replace(run, hardware=hardware)


def first_batch(run: RunConfig, device: torch.device) -> tuple[Any, pl.LightningModule]:
    """The run's model on ``device`` and its first training batch (seeded as the run is),
    through the DataModule's transfer hooks as Lightning passes it (the image recipe
    normalizes its batches and lays them out there)."""
    pl.seed_everything(run.seed, workers=True, verbose=False)
    datamodule = build_object(run.data, "data")
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = datamodule.on_before_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    batch = datamodule.on_after_batch_transfer(move_data_to_device(batch, device), 0)
    return batch, build_object(run.model, "model").to(device)


def _timed(optimization: OptimizationConfig) -> bool:
    """Whether the profile leaves a choice to a timed trial."""
    return (
        optimization.precision == "fastest"
        or optimization.compile.enabled == "auto"
        or optimization.fp8.enabled == "auto"
    )


def _float8_decided(fp8: Float8Config, enabled: bool, reason: str) -> Float8Config:
    say(f"fp8 {'on' if enabled else 'off'}: {reason}")
    return replace(fp8, enabled=enabled, reason=reason)


def float8_without_trial(run: RunConfig, plan: RunPlan) -> RunConfig:
    """For ``fp8.enabled: auto``: float8 off, with the reason, where the hardware or the
    environment cannot run it, so that no trial is started for it."""
    fp8 = run.optimization.fp8
    if fp8.enabled != "auto":
        return run
    tensor_parallel = plan.mesh.tensor if plan.mesh else 1
    missing = float8_unavailable(plan.accelerator, tensor_parallel)
    if missing is None:
        return run
    fp8 = _float8_decided(fp8, False, f"float8 {missing}")
    return replace(run, optimization=replace(run.optimization, fp8=fp8))


def measure_choices(run: RunConfig) -> RunConfig:
    """Make every choice the optimization profile leaves to measurement; the run with the
    choices made and their reasons in its config. The measurements run in a fresh process:
    what they leave behind (fake tensors, compiled code and compile workers, allocator
    caches) never slows the run that follows in this one."""
    plan = plan_run(run.hardware, run.optimization)
    run = float8_without_trial(run, plan)
    optimization = run.optimization
    measured = (
        optimization.micro_batch == "auto"
        or _timed(optimization)
        or (run.hardware.strategy == "auto" and plan.devices > 1)
    )
    if not measured:
        return run
    try:
        return in_a_fresh_process(measured_run, run)
    except BrokenProcessPool as error:
        raise ConfigError(
            "optimization",
            run.optimization.name,
            "could not be measured: the trial process died (out of memory?); set precision, "
            "compile, fp8 and micro_batch by hand",
        ) from error


def measured_run(run: RunConfig) -> RunConfig:
    """The run with its layout, micro-batch and timed choices made (in the trial process)."""
    plan = plan_run(run.hardware, run.optimization)
    choose_strategy = run.hardware.strategy == "auto" and plan.devices > 1
    footprint, whole_weights = None, False
    if run.optimization.micro_batch == "auto" or choose_strategy:
        # one measurement of the model on fake tensors serves both choices
        model, datamodule = meta_model(run.model), build_object(run.data, "data")
        measured = measure_run(run, plan, model, datamodule, count_flops=True)
        footprint = measured[0] if measured else None
        whole_weights = run.optimization.channels_last is True and has_convolution_weights(model)
    run = choose_layout(run, footprint, whole_weights)
    if run.hardware.strategy_reason:
        say(f"strategy {run.hardware.strategy}: {run.hardware.strategy_reason}")
    if run.optimization.micro_batch == "auto":
        run = choose_micro_batch(run, footprint)
        say(f"micro-batch: {run.optimization.micro_batch_reason}")
    if not _timed(run.optimization) and run.optimization.micro_batch != "auto":
        return run
    return replace(run, optimization=timed_choices(run))


def timed_choices(run: RunConfig) -> OptimizationConfig:
    """The optimization profile with its timed choices made on the run's model and first
    batch, in this order: ``precision: fastest``, ``compile.enabled: auto`` and
    ``fp8.enabled: auto`` (timed in the precision and compile chosen); or, with none of
    them, the trial step of the chosen micro-batch."""
    optimization = run.optimization
    plan = plan_run(run.hardware, optimization)  # `fastest` plans as `auto`
    if optimization.float32_matmul_precision is not None:  # fp32 timed as the run computes it
        torch.set_float32_matmul_precision(optimization.float32_matmul_precision)
    device = torch.device("cuda", 0) if plan.accelerator == "cuda" else torch.device("cpu")
    batch, model = first_batch(run, device)
    if optimization.channels_last is True:  # timed as the run lays out its weights and batches
        apply_model_optimizations(model, optimization, device.type, transforms=("channels_last",))
    if not _timed(optimization):  # the trial step of the chosen micro-batch
        trial = {"trial": Candidate(plan.precision.precision)}
        step_times(model, batch, trial, min_seconds=0.0, min_rounds=1)["trial"].required()
        return optimization
    steps = run.trainer.max_steps if run.trainer.max_steps > 0 else None
    if optimization.precision == "fastest":
        choice = fastest_precision(plan.precision, model, batch)
        say(f"precision {choice.precision}: {choice.reason}")
        optimization = replace(
            optimization, precision=choice.precision, precision_reason=choice.reason
        )
    if optimization.compile.enabled == "auto":
        if plan.accelerator == "pjrt":
            compiled = CompileChoice(False, "XLA compiles every step's graph itself")
        else:
            # FSDP2 shards block by block, the order per-block compile keeps
            whole_model = run.hardware.strategy != "fsdp2"
            compile_config = optimization.compile
            if compile_config.per_block and not find_repeated_blocks(model):
                compile_config = replace(compile_config, per_block=False)
            compiled = compile_pays(
                model, batch, optimization.precision, compile_config, steps, whole_model
            )
        say(f"compile {'on' if compiled.enabled else 'off'}: {compiled.reason}")
        chosen = {"enabled": compiled.enabled, "reason": compiled.reason}
        if compiled.enabled:
            chosen["per_block"] = compiled.per_block
        optimization = replace(optimization, compile=replace(optimization.compile, **chosen))
    if optimization.fp8.enabled == "auto":
        narrow = too_narrow_for_float8(model)
        float8 = (
            Float8Choice(False, narrow)
            if narrow
            else float8_pays(
                model, batch, optimization.precision, optimization.compile, optimization.fp8, steps
            )
        )
        fp8 = _float8_decided(optimization.fp8, float8.enabled, float8.reason)
        optimization = replace(optimization, fp8=fp8)
    return optimization
