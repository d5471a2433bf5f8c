"""Whether a run fits in its memory, decided before it starts: the plan's per-rank memory
of the run's own layout against what the machine has free, and what would fit instead."""

from __future__ import annotations

import math
from dataclasses import replace

from lightning_accel.errors import ConfigError
from lightning_accel.machine import THIS_MACHINE, Machine
from lightning_accel.plan.footprint import ModelFootprint
from lightning_accel.plan.layouts import Placement, RankMemory, rank_memory
from lightning_accel.plan.planner import gib
from lightning_accel.plan.run import RunPlan


def available_per_rank(plan: RunPlan, machine: Machine = THIS_MACHINE) -> tuple[int, str] | None:
    """Memory one rank of the plan can take, and where it is (for messages): on CPUs the
    host's free memory shared by the node's ranks, on a GPU its own; None where unknown."""
    memory = machine.memory_bytes(plan.accelerator)
    if memory is None:
        return None
    if plan.accelerator == "cpu":
        return (
            memory // plan.devices,
            f"this machine has free for each of its {plan.devices} rank(s)",
        )
    return memory, "each device holds"


def _breakdown(memory: RankMemory) -> str:
    states = memory.parameters + memory.gradients + memory.optimizer
    parts = [f"activations {gib(memory.activations)}", f"weights and optimizer {gib(states)}"]
    if memory.gathered:
        parts.append(f"gathered units {gib(memory.gathered)}")
    return ", ".join(parts)


def check_fits(
    footprint: ModelFootprint,
    placement: Placement,
    available_per_rank: int,
    where: str,
    batch_size: int | None,
    profile: str,
) -> RankMemory:
    """The run's predicted memory per rank; a :class:`ConfigError` when it exceeds
    ``available_per_rank``, saying what the run needs and which settings would fit."""
    needed = rank_memory(footprint, placement)
    if needed.device_bytes <= available_per_rank:
        return needed
    advice = []
    if not placement.checkpoint_every and footprint.unit_parameter_bytes:
        with_checkpointing = rank_memory(footprint, replace(placement, checkpoint_every=1))
        if with_checkpointing.device_bytes <= available_per_rank:
            advice.append("optimization.activation_checkpointing.enabled=true")
    states = needed.device_bytes - needed.activations
    if batch_size and needed.activations and states < available_per_rank:
        fitting = math.floor(batch_size * (available_per_rank - states) / needed.activations)
        if 0 < fitting < batch_size:
            advice.append(f"data.batch_size={fitting}")
    would_fit = f"{' or '.join(advice)} would fit; " if advice else ""
    raise ConfigError(
        "hardware",
        profile,
        f"({placement.layout}) is predicted to need {gib(needed.device_bytes)} per rank for "
        f"this run ({_breakdown(needed)}), more than the {gib(available_per_rank)} {where}; "
        f"{would_fit}lightning-accel plan compares the layouts; add force=true to run anyway",
    )


def largest_micro_batch(
    footprint: ModelFootprint, placement: Placement, available_per_rank: int
) -> tuple[int, RankMemory] | None:
    """The largest micro-batch that divides the measured batch evenly and that the plan
    predicts to fit (activations shrink with it; gradients then outlive each micro-batch),
    with its memory; None when even one sample does not fit."""
    batch = footprint.samples
    for micro in sorted((d for d in range(1, batch + 1) if batch % d == 0), reverse=True):
        steps = placement.accumulate * (batch // micro)
        memory = rank_memory(footprint.with_samples(micro), replace(placement, accumulate=steps))
        if memory.device_bytes <= available_per_rank:
            return micro, memory
    return None
