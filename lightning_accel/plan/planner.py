"""Ranking the layouts a model can train in on a device: which fit, which is fastest, and
the command-line overrides that run each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lightning_accel.devices import DeviceSpec, device_spec, known_devices, measured_cpu_peak
from lightning_accel.errors import ConfigError
from lightning_accel.machine import THIS_MACHINE
from lightning_accel.plan.footprint import ModelFootprint
from lightning_accel.plan.layouts import LayoutEstimate, Placement, Target, estimate
from lightning_accel.strategies.mesh import MeshShape

THIS_CPU = "cpu"
# Collectives on this CPU (gloo between processes that share its cores): a 2-rank
# all-reduce moves about 0.5 GB/s, and each of FSDP2's per-unit collectives costs about
# 12 ms of the step with its copies and bookkeeping (fitted to the default recipe's
# measured FSDP2 step, benchmarks/plan_accuracy.py).
CPU_COLLECTIVE_SECONDS = 12e-3
CPU_LINK_BYTES_PER_SECOND = 0.5e9
# gloo reduce-scatters as it all-reduces: each rank sends twice a ring reduce-scatter's
# bytes (measured on the loopback interface: benchmarks/parallel.py).
GLOO_REDUCE_SCATTER_COST = 2.0
# One collective between accelerators of a node (NCCL over NVLink, XLA over ICI).
DEVICE_COLLECTIVE_SECONDS = 20e-6
# Devices of a node: tensor parallelism stays within one, HSDP shards within one.
NODE_DEVICES = 8
# World sizes searched for the smallest one that fits.
SEARCHED_WORLDS = tuple(2**k for k in range(13))


@dataclass(frozen=True)
class PlannedLayout:
    """A ranked row of the plan: the estimate and the overrides that run it."""

    estimate: LayoutEstimate
    overrides: tuple[str, ...]


def device_choices() -> list[str]:
    """What ``--device`` accepts: this machine's CPU and the datasheet table's devices."""
    return [THIS_CPU, *known_devices()]


def resolve_device(name: str) -> DeviceSpec | None:
    """The table entry for ``name`` (None: this CPU, measured).

    Raises:
        ConfigError: a name the table does not know.
    """
    if name.lower() == THIS_CPU:
        return None
    spec = device_spec(name)
    if spec is None:
        raise ConfigError("--device", name, "is not a known device", device_choices())
    return spec


def precisions_for(spec: DeviceSpec | None) -> tuple[str, ...]:
    """The precisions planned on a device: fp32, and bf16 mixed where it computes bf16."""
    if spec is None and THIS_MACHINE.cpu_bf16_units() is None:
        return ("32-true",)
    return ("32-true", "bf16-mixed")


def target(spec: DeviceSpec | None, precision: str) -> Target:
    """The step-time and memory model's view of a device in ``precision``."""
    if spec is None:
        dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float32
        return Target(
            name=f"{THIS_CPU} ({measured_cpu_peak(dtype).source})",
            peak_flops=measured_cpu_peak(dtype).flops_per_second,
            memory_bytes=THIS_MACHINE.memory_bytes("cpu") or 0,
            link_bytes_per_second=CPU_LINK_BYTES_PER_SECOND,
            collective_seconds=CPU_COLLECTIVE_SECONDS,
            shared_host=True,
            reduce_scatter_cost=GLOO_REDUCE_SCATTER_COST,
        )
    return Target(
        name=spec.name,
        peak_flops=spec.peak(precision),
        memory_bytes=spec.memory_bytes,
        link_bytes_per_second=spec.link_bytes_per_second,
        collective_seconds=DEVICE_COLLECTIVE_SECONDS,
    )


def layouts_for(
    spec: DeviceSpec | None, world: int, footprint: ModelFootprint
) -> list[tuple[str, MeshShape]]:
    """The layouts a device runs at ``world`` ranks, with their meshes: one device alone;
    DDP and FSDP2 at two or more (FSDP2 offload only where a device has its own memory;
    TPUs shard by SPMD); where the model has a tensor parallel plan, tensor parallel over
    the whole world and 2D (FSDP2 x TP) for each size it divides, up to a node's
    :data:`NODE_DEVICES`; and HSDP: a replica per node of shards within it (on the CPU
    twin, two replicas)."""
    if world == 1:
        return [("single", MeshShape())]
    if spec is not None and spec.name.startswith("TPU"):
        return [("fsdp2", MeshShape(shard=world))]
    layouts = [("ddp", MeshShape()), ("fsdp2", MeshShape(shard=world))]
    if spec is not None:
        layouts.append(("fsdp2_offload", MeshShape(shard=world)))
    split = footprint.tensor_parallel
    sizes = [t for t in (split.sizes if split else ()) if t <= NODE_DEVICES and world % t == 0]
    if world in sizes:
        layouts.append(("tp", MeshShape(tensor=world)))
    layouts += [("fsdp2_tp", MeshShape(shard=world // t, tensor=t)) for t in sizes if t < world]
    if spec is None and world >= 4 and world % 2 == 0:  # the CPU twin: two replicas
        layouts.append(("hsdp", MeshShape(replicate=2, shard=world // 2)))
    elif spec is not None and world > NODE_DEVICES and world % NODE_DEVICES == 0:
        layouts.append(("hsdp", MeshShape(replicate=world // NODE_DEVICES, shard=NODE_DEVICES)))
    return layouts


def overrides_for(spec: DeviceSpec | None, row: LayoutEstimate) -> tuple[str, ...]:
    """The ``lightning-accel train`` overrides that run ``row``."""
    tpu = spec is not None and spec.name.startswith("TPU")
    suffix = "_cpu" if spec is None else ""
    if spec is None:
        profiles = {"single": "cpu", "ddp": "ddp_cpu", "fsdp2": "fsdp2_cpu"}
    elif tpu:
        profiles = {"single": "tpu", "fsdp2": "tpu_spmd"}
    else:
        profiles = {"single": "auto", "ddp": "ddp", "fsdp2": "fsdp2", "fsdp2_offload": "fsdp2"}
    profiles.update({name: name + suffix for name in ("tp", "fsdp2_tp", "hsdp")})
    chosen = [f"hardware={profiles[row.layout]}"]
    if row.layout == "hsdp" and spec is not None:  # one replica per node
        chosen += [f"hardware.devices={row.mesh.shard}", f"hardware.num_nodes={row.mesh.replicate}"]
    elif row.world > 1 or tpu:
        chosen.append(f"hardware.devices={row.world}")
    if row.layout == "fsdp2_tp":
        chosen.append(f"hardware.strategy_options.tensor_parallel={row.mesh.tensor}")
    if row.layout == "hsdp" and spec is None:
        chosen.append(f"hardware.strategy_options.data_parallel_replicate={row.mesh.replicate}")
    if row.layout == "fsdp2_offload":
        chosen.append("optimization.cpu_offload=true")
    chosen.append(f"optimization.precision={row.precision}")
    if row.activation_checkpointing:
        chosen.append("optimization.activation_checkpointing.enabled=true")
    return tuple(chosen)


def plan_layouts(
    footprint: ModelFootprint,
    spec: DeviceSpec | None,
    worlds: Sequence[int],
    accumulate: int = 1,
    checkpoint_every: int = 1,
) -> list[PlannedLayout]:
    """Every layout, world size, precision and activation-checkpointing choice on a device,
    fitting ones first, each group fastest first (by samples per second)."""
    rows = []
    recomputable = bool(footprint.unit_parameter_bytes)
    for precision in precisions_for(spec):
        device = target(spec, precision)
        for world in worlds:
            for layout, mesh in layouts_for(spec, world, footprint):
                for checkpointing in (False, True) if recomputable else (False,):
                    every = checkpoint_every if checkpointing else None
                    placement = Placement(layout, world, precision, every, accumulate, mesh)
                    row = estimate(footprint, device, placement)
                    rows.append(PlannedLayout(row, overrides_for(spec, row)))
    return sorted(rows, key=lambda r: (not r.estimate.fits, -r.estimate.samples_per_second))


def smallest_fitting_world(
    footprint: ModelFootprint, spec: DeviceSpec | None, accumulate: int = 1
) -> int | None:
    """The smallest world size at which some layout fits (activation checkpointing on,
    FSDP2 sharding), or None up to :data:`SEARCHED_WORLDS`' largest."""
    for world in SEARCHED_WORLDS:
        rows = plan_layouts(footprint, spec, [world], accumulate)
        if any(r.estimate.fits for r in rows):
            return world
    return None


def gib(value: float) -> str:
    """Bytes as GiB (or MiB below one GiB), for people."""
    if value >= 2**30:
        return f"{value / 2**30:.2f} GiB"
    return f"{value / 2**20:.1f} MiB"


def fits_nowhere(footprint: ModelFootprint, spec: DeviceSpec | None, worlds: Sequence[int]) -> str:
    """The sentence for a model that fits at none of ``worlds``."""
    smallest = smallest_fitting_world(footprint, spec)
    name = spec.name if spec else THIS_CPU
    asked = ",".join(map(str, worlds))
    if smallest is None:
        return (
            f"the model fits on no world of {name} devices up to {SEARCHED_WORLDS[-1]}, even "
            "sharded with activation checkpointing"
        )
    why = ""
    if spec is None and smallest < min(worlds):
        why = "; this CPU's ranks share its memory, so each added rank leaves every rank less"
    return (
        f"the model fits on no layout at world sizes {asked} of {name}; the smallest world "
        f"that fits is {smallest} (--world {smallest}){why}"
    )
