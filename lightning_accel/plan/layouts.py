"""Per-rank memory, communication and step time of a model under each layout.

A layout is how the world of ranks holds the model: ``single`` (one device), ``ddp`` (a
replica per rank, gradients all-reduced), ``fsdp2`` (parameters, gradients and optimizer
state sharded, units gathered as they compute), ``fsdp2_offload`` (the shards in host
memory), ``tp`` (each layer split between the ranks, which see the same batch),
``fsdp2_tp`` (FSDP2 shards of tensor-parallel groups) and ``hsdp`` (replicas of FSDP2
shard groups). The figures come from a
:class:`~lightning_accel.plan.footprint.ModelFootprint` and a :class:`Target` (the
device's peak, memory and links).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lightning_accel.plan.footprint import (
    HALF_PRECISIONS,
    ActivationFootprint,
    ModelFootprint,
    TensorParallelFootprint,
)
from lightning_accel.strategies.mesh import MeshShape

LAYOUTS = ("single", "ddp", "fsdp2", "fsdp2_offload", "tp", "fsdp2_tp", "hsdp")
SHARDED = ("fsdp2", "fsdp2_offload", "fsdp2_tp", "hsdp")
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
    the ranks of a world share one machine's compute and memory (the CPU twins);
    ``reduce_scatter_cost`` is the bytes a reduce-scatter sends relative to a ring's (2 on
    gloo, which reduces the whole tensor as an all-reduce does; measured)."""

    name: str
    peak_flops: float
    memory_bytes: int
    link_bytes_per_second: float
    collective_seconds: float
    shared_host: bool = False
    reduce_scatter_cost: float = 1.0


@dataclass(frozen=True)
class Placement:
    """How a run sits on its ranks, as the memory and step-time models see it.

    Args:
        layout: one of :data:`LAYOUTS`.
        world: ranks.
        precision: Lightning's precision name.
        checkpoint_every: activation checkpointing on every k-th block (None: off).
        accumulate: micro-batches per optimizer step.
        mesh: the device mesh of ``tp``, ``fsdp2_tp`` and ``hsdp`` (replicas x shards x
            tensor parallel); the others leave it at its default.
    """

    layout: str
    world: int
    precision: str
    checkpoint_every: int | None = None
    accumulate: int = 1
    mesh: MeshShape = MeshShape()

    @property
    def data_parallel(self) -> int:
        """Ranks that train on different samples."""
        return self.world // self.mesh.tensor

    @property
    def shards(self) -> int:
        """Ranks each parameter is sharded over (FSDP2's group)."""
        if self.layout in ("fsdp2_tp", "hsdp"):
            return self.mesh.shard
        return self.world if self.layout in SHARDED else 1

    def describe(self) -> str:
        """The layout, with its mesh where it has one: ``fsdp2_tp 2x2``."""
        if self.layout == "tp":
            return f"tp {self.mesh.tensor}"
        if self.layout == "fsdp2_tp":
            return f"fsdp2_tp {self.mesh.shard}x{self.mesh.tensor}"
        if self.layout == "hsdp":
            return f"hsdp {self.mesh.replicate}x{self.mesh.shard}"
        return self.layout


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
    MFU, and whether it fits in the target's memory. ``label`` names the layout with its
    mesh (``fsdp2_tp 2x2``)."""

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
    label: str = ""
    mesh: MeshShape = MeshShape()


def _itemsizes(precision: str) -> tuple[int, int]:
    """(bytes per stored parameter element, bytes per element computed with)."""
    stored = 2 if precision in HALF_PRECISIONS else 4
    computed = 2 if precision != "32-true" and precision != "64-true" else stored
    return stored, computed


def _split(footprint: ModelFootprint) -> TensorParallelFootprint:
    if footprint.tensor_parallel is None:
        raise ValueError("tensor parallel layouts need a footprint with a tensor parallel plan")
    return footprint.tensor_parallel


def local_fraction(footprint: ModelFootprint, tensor: int) -> float:
    """The share of the trainable parameters one of ``tensor`` tensor-parallel ranks holds
    (its slice of the split ones, every other one whole); 1 without tensor parallelism."""
    if tensor == 1 or not footprint.parameters:
        return 1.0
    split = _split(footprint).split_elements / footprint.parameters
    return 1 - split + split / tensor


def _hidden_bytes(activation: ActivationFootprint) -> float:
    """One block input: the hidden state tensor parallelism moves between its ranks."""
    inputs = activation.block_input_bytes
    return sum(inputs) / len(inputs) if inputs else 0.0


def _tensor_parallel_activations(
    activation: ActivationFootprint, split: TensorParallelFootprint, tensor: int
) -> ActivationFootprint:
    """What one tensor-parallel rank saves: the blocks' tensors divided between the ranks
    but, in each region, the gathered full hidden state its first layer reads; block inputs
    split along the sequence under sequence parallelism. Outside the blocks (embeddings,
    head, loss) every rank saves everything."""
    blocks = len(activation.block_saved_bytes)
    if not blocks:
        return activation
    gathered = _hidden_bytes(activation) * split.regions / blocks * (1 - 1 / tensor)
    inputs = activation.block_input_bytes
    if split.sequence_parallel:
        inputs = tuple(math.ceil(b / tensor) for b in inputs)
    saved = tuple(math.ceil(b / tensor + gathered) for b in activation.block_saved_bytes)
    largest = tuple(math.ceil(b / tensor) for b in activation.block_largest_bytes)
    outside = activation.saved_bytes - sum(activation.block_saved_bytes)
    return ActivationFootprint(
        saved_bytes=outside + sum(saved),
        largest_bytes=max(activation.outside_largest_bytes, *largest),
        outside_largest_bytes=activation.outside_largest_bytes,
        leading_bytes=activation.leading_bytes,
        block_saved_bytes=saved,
        block_largest_bytes=largest,
        block_input_bytes=inputs,
    )


def rank_memory(footprint: ModelFootprint, placement: Placement) -> RankMemory:
    """Peak bytes one rank holds: parameters, gradients and optimizer state (exact, from the
    shapes; FSDP2 shards padded as it pads them; tensor-parallel slices of the split
    layers), activations (measured; divided between tensor-parallel ranks as their plan
    splits them) and, under FSDP2, the full parameters of the root and of the two units
    being computed and prefetched."""
    layout, precision, tensor = placement.layout, placement.precision, placement.mesh.tensor
    stored, computed = _itemsizes(precision)
    activation = footprint.activations.get(precision) or footprint.activations["32-true"]
    if tensor > 1:
        activation = _tensor_parallel_activations(activation, _split(footprint), tensor)
    activations = activation.peak_bytes(placement.checkpoint_every)
    local = local_fraction(footprint, tensor)
    if layout in SHARDED:
        sharded = footprint.sharded_parameter_bytes(placement.shards, stored)
        parameters = math.ceil(sharded * local)
    elif tensor > 1:
        split = _split(footprint).split_elements
        parameters = (footprint.parameters - split + math.ceil(split / tensor)) * stored
    else:
        parameters = footprint.parameter_bytes(stored)
    optimizer = round(parameters * footprint.optimizer_state_per_parameter_byte)
    # gradients outlive the step only in DDP's buckets or while micro-batches accumulate
    gradients = parameters if layout == "ddp" or placement.accumulate > 1 else 0
    if layout not in SHARDED:
        return RankMemory(parameters, gradients, optimizer, activations)
    scale = computed / footprint.parameter_itemsize
    largest_unit = max(footprint.unit_parameter_bytes, default=0) * local
    gathered = round((footprint.root_parameter_bytes() + 2 * largest_unit) * scale)
    if layout != "fsdp2_offload":
        return RankMemory(parameters, gradients, optimizer, activations, gathered)
    return RankMemory(0, 0, 0, activations, gathered, host=parameters * 2 + optimizer)


@dataclass(frozen=True)
class Communication:
    """What one rank sends per training batch over ring collectives and how many it starts:
    ``overlappable`` (data-parallel gathers and reductions, which can run beside compute)
    and ``exposed`` (tensor parallel's, which the next layer waits for)."""

    overlappable: float = 0.0
    exposed: float = 0.0
    collectives: int = 0

    @property
    def total(self) -> float:
        """Every byte sent."""
        return self.overlappable + self.exposed

    def __add__(self, other: Communication) -> Communication:
        return Communication(
            self.overlappable + other.overlappable,
            self.exposed + other.exposed,
            self.collectives + other.collectives,
        )


def _ring_share(ranks: int) -> float:
    """The share of a tensor each rank sends in a ring all-gather or reduce-scatter."""
    return (ranks - 1) / ranks


def communication(
    footprint: ModelFootprint, placement: Placement, reduce_scatter_cost: float = 1.0
) -> Communication:
    """Bytes one rank sends per training batch, and collectives it starts: DDP all-reduces
    gradients once per optimizer step (in buckets); FSDP2 all-gathers each unit in forward
    and again in backward, and reduce-scatters gradients once per optimizer step, within
    its shard group; HSDP then all-reduces the gradient shards between replicas; tensor
    parallelism moves the hidden state twice each way per region (an all-gather and a
    reduce-scatter with sequence parallelism, else one all-reduce). A reduce-scatter
    sends ``reduce_scatter_cost`` times a ring's bytes (see :class:`Target`)."""
    layout, accumulate, mesh = placement.layout, placement.accumulate, placement.mesh
    if layout == "single" or placement.world == 1:
        return Communication()
    stored, computed = _itemsizes(placement.precision)
    elements = footprint.parameters * local_fraction(footprint, mesh.tensor)
    sent = Communication()
    if layout == "ddp":
        gradient_bytes = elements * stored
        buckets = max(1, math.ceil(gradient_bytes / DDP_BUCKET_BYTES))
        reduce = 2 * _ring_share(placement.world) * gradient_bytes / accumulate
        return Communication(reduce, 0, math.ceil(buckets / accumulate))
    if placement.shards > 1:
        units = len(footprint.unit_parameter_bytes) + 1
        share = _ring_share(placement.shards)
        gathers = 2 * share * elements * computed
        # gradients reduce in fp32
        reduce = reduce_scatter_cost * share * elements * 4 / accumulate
        sent += Communication(gathers + reduce, 0, 2 * units + math.ceil(units / accumulate))
        if mesh.replicate > 1:
            shard = elements / placement.shards * 4
            reduce = 2 * _ring_share(mesh.replicate) * shard / accumulate
            sent += Communication(reduce, 0, math.ceil(units / accumulate))
    if mesh.tensor > 1:
        split = _split(footprint)
        activation = footprint.activations.get(placement.precision)
        hidden = _hidden_bytes(activation or footprint.activations["32-true"])
        each_way = 1 + (reduce_scatter_cost if split.sequence_parallel else 1)
        moved = 2 * each_way * _ring_share(mesh.tensor) * hidden * split.regions
        sent += Communication(0, moved, split.regions * (4 if split.sequence_parallel else 2))
    return sent


def estimate(footprint: ModelFootprint, target: Target, placement: Placement) -> LayoutEstimate:
    """One layout's figures on ``target``. The step time is compute at
    :data:`STEP_EFFICIENCY` of the peak (recomputed blocks included; tensor-parallel ranks
    share the split layers' FLOPs) plus the communication that does not overlap it (all
    of it on the CPU twins, whose collectives run on the model's cores; tensor parallel's
    always), plus each collective's latency; with CPU offload, plus the host copies and
    the host optimizer step."""
    memory = rank_memory(footprint, placement)
    layout, world, accumulate = placement.layout, placement.world, placement.accumulate
    checkpoint_every = placement.checkpoint_every
    forward = footprint.forward_flops * local_fraction(footprint, placement.mesh.tensor)
    recomputed = 0.0
    if checkpoint_every and footprint.unit_parameter_bytes:
        blocks = len(footprint.unit_parameter_bytes)
        share = sum(footprint.unit_parameter_bytes) / max(1, footprint.parameter_bytes())
        recomputed = forward * share * len(range(0, blocks, checkpoint_every)) / blocks
    flops = 3 * forward + recomputed
    model_flops = 3 * forward
    peak = target.peak_flops / (world if target.shared_host else 1)
    compute = flops / (peak * STEP_EFFICIENCY)
    sent = communication(footprint, placement, target.reduce_scatter_cost)
    overlappable = sent.overlappable / target.link_bytes_per_second
    exposed = sent.exposed / target.link_bytes_per_second
    exposed += overlappable if target.shared_host else max(0.0, overlappable - compute)
    step = compute + exposed + sent.collectives * target.collective_seconds
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
        comm_bytes_per_step=sent.total,
        collectives_per_step=sent.collectives,
        step_seconds=step,
        mfu=model_flops / (step * peak),
        samples_per_second=placement.data_parallel * footprint.samples / step,
        fits=memory.device_bytes <= limit,
        label=placement.describe(),
        mesh=placement.mesh,
    )
