"""One decision of what a run will do: :func:`plan_run` turns a hardware and an
optimization profile into a :class:`RunPlan` on a machine, once. ``build_trainer``, the
preflight, the runner, ``doctor`` and the precision measurement read the plan; none of
them applies the hardware or precision rules again."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lightning_accel.config import HardwareConfig, OptimizationConfig
from lightning_accel.data.loading import LoaderPlan, plan_loader
from lightning_accel.errors import ConfigError
from lightning_accel.hardware import resolve_hardware
from lightning_accel.machine import THIS_MACHINE, Machine
from lightning_accel.optimize.transforms import FSDP2, model_transforms
from lightning_accel.precision import PrecisionChoice, resolve_float8, resolve_precision
from lightning_accel.profiles import as_hardware, as_optimization
from lightning_accel.strategies.mesh import MESH_KEYS, MeshShape, resolve_mesh

# The pack's strategies and the plan's layout for each (XLA's are not modelled).
STRATEGY_LAYOUTS = {"auto": "single", "accel_ddp": "ddp", "ddp": "ddp", FSDP2: "fsdp2"}


@dataclass(frozen=True)
class RunPlan:
    """What a run will do on a machine, decided once by :func:`plan_run`.

    Args:
        hardware, optimization: the profiles it was planned from.
        accelerator, devices, num_nodes: Lightning's arguments.
        processes: processes the runner starts on each node (one per device; XLA starts
            its own, or drives every device from one under SPMD).
        strategy, strategy_options: the registered strategy and its keyword arguments
            (FSDP2's CPU offload from the optimization profile included).
        precision: the precision and why it was chosen.
        float8: why the Linear layers train in float8 (on float8 tensor cores or
            emulated); None without float8 training.
        transforms: the model transforms, in the order they are applied (``tensor_parallel``
            and ``fsdp2`` are applied by the strategy, after the others).
        loader: what ``auto`` DataLoader settings mean for this run's ranks on a node.
        mesh: FSDP2's device mesh (replicas x shards x tensor parallel), None for other
            strategies.
    """

    hardware: HardwareConfig
    optimization: OptimizationConfig
    accelerator: str
    devices: int
    num_nodes: int
    processes: int
    strategy: str
    precision: PrecisionChoice
    strategy_options: dict[str, Any] = field(default_factory=dict)
    transforms: tuple[str, ...] = ()
    loader: LoaderPlan = LoaderPlan(workers=0, decoding_workers=0, pin_memory=False)
    mesh: MeshShape | None = None
    float8: str | None = None

    @property
    def world_size(self) -> int:
        """Devices over every node."""
        return self.devices * self.num_nodes

    @property
    def layout(self) -> str | None:
        """The memory planner's layout for this run (None where it has no model of it)."""
        if self.accelerator not in ("cpu", "cuda"):
            return None
        layout = STRATEGY_LAYOUTS.get(self.strategy)
        if layout == "single" and self.devices > 1:
            return "ddp"  # Lightning's choice for several devices
        if layout == "fsdp2" and self.mesh is not None and self.mesh.layout != "fsdp2":
            return self.mesh.layout
        if layout == "fsdp2" and self.strategy_options.get("cpu_offload"):
            return "fsdp2_offload"
        return layout


def plan_run(
    hardware: HardwareConfig | str = "auto",
    optimization: OptimizationConfig | str = "default",
    machine: Machine = THIS_MACHINE,
) -> RunPlan:
    """Decide what a run of these profiles does on ``machine`` (this one unless given).

    Raises:
        ConfigError: the machine cannot run the hardware profile, the precision or float8
            training.
    """
    profile, opt = as_hardware(hardware), as_optimization(optimization)
    hw = resolve_hardware(profile, machine)
    precision = resolve_precision(
        opt.precision, hw.accelerator, hw.strategy, opt.precision_reason, machine
    )
    options = dict(profile.strategy_options)
    if opt.cpu_offload and profile.strategy == FSDP2:
        options["cpu_offload"] = True
    mesh = None
    if hw.strategy == FSDP2:
        sizes = {key: options[key] for key in MESH_KEYS if key in options}
        mesh = resolve_mesh(hw.devices * hw.num_nodes, **sizes)
    else:
        for key in (*MESH_KEYS, "tensor_parallel_plan"):
            if key in options:
                raise ConfigError(
                    f"hardware.strategy_options.{key}",
                    options[key],
                    f"is a device-mesh option that strategy {hw.strategy} cannot run; "
                    "the fsdp2 strategy can (hardware=tp_cpu, fsdp2_tp_cpu, hsdp_cpu and "
                    "their GPU profiles)",
                )
    # the ranks on a node that load their own batches (SPMD feeds every device from one)
    loading_ranks = 1 if hw.strategy == "xla_spmd" else hw.devices
    return RunPlan(
        hardware=profile,
        optimization=opt,
        accelerator=hw.accelerator,
        devices=hw.devices,
        num_nodes=hw.num_nodes,
        processes=hw.processes,
        strategy=hw.strategy,
        precision=precision,
        strategy_options=options,
        transforms=model_transforms(opt, hw.accelerator, mesh.parallel_steps if mesh else ()),
        loader=plan_loader(hw.accelerator, loading_ranks, machine.cpu_cores()),
        mesh=mesh,
        float8=resolve_float8(opt.fp8, hw.accelerator, mesh.tensor if mesh else 1, machine),
    )
