"""Per-rank memory, communication and step time of a model under each layout.

A layout is how the world of ranks holds the model: ``single`` (one device), ``ddp`` (a
replica per rank, gradients all-reduced), ``fsdp2`` (parameters, gradients and optimizer
state sharded, units gathered as they compute) and ``fsdp2_offload`` (the shards in host
memory). The figures come from a :class:`~lightning_accel.plan.footprint.ModelFootprint`
and a :class:`Target` (the device's peak, memory and links).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lightning_accel.plan.footprint import HALF_PRECISIONS, ModelFootprint

LAYOUTS = ("single", "ddp", "fsdp2", "fsdp2_offload")
# Share of the peak a dense training step reaches (its MFU): the step-time model's one
# efficiency figure (this CPU measured 44-51% in fp32 on the GPT recipe).
STEP_EFFICIENCY = 0.5
DDP_BUCKET_BYTES = 25 * 2**20  # the DDP strategy's bucket_cap_mb default
# FSDP2 with CPU offload copies each rank's shards over PCIe (Gen5 x16, one direction) and
# steps the optimizer on the host, reading and writing parameters, gradients and optimizer
# state at host memory bandwidth (a conservative figure for one socket).
PCIE_BYTES_PER_SECOND = 64e9
HOST_MEMORY_BYTES_PER_SECOND = 20e9


@dataclass(frozen=True)
class Target:
    """Where the layouts run: one device's peak FLOP/s in the run's precision, its memory,
    its link bandwidth to peers and the latency of one collective. ``shared_host`` means
    the ranks of a world share one machine's compute and memory (the CPU twins)."""

    name: str
    peak_flops: float
    memory_bytes: int
    link_bytes_per_second: float
    collective_seconds: float
    shared_host: bool = False


@dataclass(frozen=True)
class Placement:
    """How a run sits on its ranks, as the memory and step-time models see it.

    Args:
        layout: one of :data:`LAYOUTS`.
        world: ranks.
        precision: Lightning's precision name.
        checkpoint_every: activation checkpointing on every k-th block (None: off).
        accumulate: micro-batches per optimizer step.
    """

    layout: str
    world: int
    precision: str
    checkpoint_every: int | None = None
    accumulate: int = 1


@dataclass(frozen=True)
class RankMemory:
    """Bytes one rank holds at its peak, by kind; ``host`` is offloaded to CPU memory."""

    parameters: int
    gradients: int
    optimizer: int
    activations: int
    gathered: int = 0
    host: int = 0

    @property
    def device_bytes(self) -> int:
        """What the device itself holds at the peak."""
        return self.parameters + self.gradients + self.optimizer + self.activations + self.gathered


@dataclass(frozen=True)
class LayoutEstimate:
    """One row of a plan: a layout at a world size, precision and activation-checkpointing
    choice, with its per-rank memory, FLOPs, bytes communicated, predicted step time and
    MFU, and whether it fits in the target's memory."""

    layout: str
    world: int
    precision: str
    activation_checkpointing: bool
    memory: RankMemory
    flops_per_rank_step: float
    comm_bytes_per_step: float
    collectives_per_step: int
    step_seconds: float
    mfu: float
    samples_per_second: float
    fits: bool


def _itemsizes(precision: str) -> tuple[int, int]:
    """(bytes per stored parameter element, bytes per element computed with)."""
    stored = 2 if precision in HALF_PRECISIONS else 4
    computed = 2 if precision != "32-true" and precision != "64-true" else stored
    return stored, computed


def rank_memory(footprint: ModelFootprint, placement: Placement) -> RankMemory:
    """Peak bytes one rank holds: parameters, gradients and optimizer state (exact, from the
    shapes; FSDP2 shards padded as it pads them), activations (measured) and, under FSDP2,
    the full parameters of the root and of the two units being computed and prefetched."""
    layout, precision = placement.layout, placement.precision
    stored, computed = _itemsizes(precision)
    activation = footprint.activations.get(precision) or footprint.activations["32-true"]
    activations = activation.peak_bytes(placement.checkpoint_every)
    if layout in ("fsdp2", "fsdp2_offload"):
        parameters = footprint.sharded_parameter_bytes(placement.world, stored)
    else:
        parameters = footprint.parameter_bytes(stored)
    optimizer = round(parameters * footprint.optimizer_state_per_parameter_byte)
    # gradients outlive the step only in DDP's buckets or while micro-batches accumulate
    gradients = parameters if layout == "ddp" or placement.accumulate > 1 else 0
    if layout == "single" or layout == "ddp":
        return RankMemory(parameters, gradients, optimizer, activations)
    scale = computed / footprint.parameter_itemsize
    largest_unit = max(footprint.unit_parameter_bytes, default=0)
    gathered = round((footprint.root_parameter_bytes() + 2 * largest_unit) * scale)
    if layout == "fsdp2":
        return RankMemory(parameters, gradients, optimizer, activations, gathered)
    return RankMemory(0, 0, 0, activations, gathered, host=parameters * 2 + optimizer)


def communication(footprint: ModelFootprint, placement: Placement) -> tuple[float, int]:
    """Bytes one rank sends per training batch over ring collectives, and how many
    collectives it starts: DDP all-reduces gradients once per optimizer step (in buckets);
    FSDP2 all-gathers each unit in forward and again in backward, and reduce-scatters
    gradients once per optimizer step."""
    layout, world, accumulate = placement.layout, placement.world, placement.accumulate
    if layout == "single" or world == 1:
        return 0.0, 0
    stored, computed = _itemsizes(placement.precision)
    share = (world - 1) / world
    elements = footprint.parameters
    if layout == "ddp":
        gradient_bytes = elements * stored
        buckets = max(1, math.ceil(gradient_bytes / DDP_BUCKET_BYTES))
        return 2 * share * gradient_bytes / accumulate, math.ceil(buckets / accumulate)
    units = len(footprint.unit_parameter_bytes) + 1
    gathers = 2 * share * elements * computed
    reduce = share * elements * 4 / accumulate  # gradients reduce in fp32
    return gathers + reduce, 2 * units + math.ceil(units / accumulate)


def estimate(footprint: ModelFootprint, target: Target, placement: Placement) -> LayoutEstimate:
    """One layout's figures on ``target``. The step time is compute at
    :data:`STEP_EFFICIENCY` of the peak (recomputed blocks included) plus the part of the
    communication that does not overlap it, plus each collective's latency; with CPU
    offload, plus the host copies and the host optimizer step."""
    memory = rank_memory(footprint, placement)
    layout, world, accumulate = placement.layout, placement.world, placement.accumulate
    checkpoint_every = placement.checkpoint_every
    forward = footprint.forward_flops
    recomputed = 0.0
    if checkpoint_every and footprint.unit_parameter_bytes:
        blocks = len(footprint.unit_parameter_bytes)
        share = sum(footprint.unit_parameter_bytes) / max(1, footprint.parameter_bytes())
        recomputed = forward * share * len(range(0, blocks, checkpoint_every)) / blocks
    flops = 3 * forward + recomputed
    model_flops = 3 * forward
    peak = target.peak_flops / (world if target.shared_host else 1)
    compute = flops / (peak * STEP_EFFICIENCY)
    comm_bytes, collectives = communication(footprint, placement)
    transfer = comm_bytes / target.link_bytes_per_second
    # the CPU twins' collectives run on the same cores as the model: nothing overlaps
    exposed = transfer if target.shared_host else max(0.0, transfer - compute)
    step = compute + exposed + collectives * target.collective_seconds
    if layout == "fsdp2_offload":
        step += 2 * memory.host / PCIE_BYTES_PER_SECOND / accumulate
        step += 2 * memory.host / HOST_MEMORY_BYTES_PER_SECOND / accumulate
    limit = target.memory_bytes // (world if target.shared_host else 1)
    return LayoutEstimate(
        layout=layout,
        world=world,
        precision=placement.precision,
        activation_checkpointing=bool(checkpoint_every),
        memory=memory,
        flops_per_rank_step=flops,
        comm_bytes_per_step=comm_bytes,
        collectives_per_step=collectives,
        step_seconds=step,
        mfu=model_flops / (step * peak),
        samples_per_second=world * footprint.samples / step,
        fits=memory.device_bytes <= limit,
    )
