"""How a hardware profile maps onto a machine: the accelerator ``auto`` picks, the devices
it takes, and the refusal of what the machine cannot run."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_accel.config import HardwareConfig
from lightning_accel.errors import ConfigError
from lightning_accel.machine import THIS_MACHINE, Machine


@dataclass(frozen=True)
class ResolvedHardware:
    """The concrete Lightning arguments a hardware profile resolved to on this machine."""

    accelerator: str
    devices: int
    strategy: str
    num_nodes: int

    @property
    def processes(self) -> int:
        """Processes the runner starts on this node: one per device, except on XLA, which
        starts its own (one per TPU chip) or drives every device from one (SPMD)."""
        return 1 if self.accelerator == "pjrt" else self.devices


# CPU "devices" are processes (the CPU twins of multi-GPU runs); a few per core still run.
CPU_PROCESSES_PER_CORE = 4


def auto_accelerator(machine: Machine = THIS_MACHINE) -> str:
    """The accelerator ``auto`` picks: CUDA if present, then a TPU, else the CPU."""
    if machine.cuda_devices() > 0:
        return "cuda"
    if machine.tpu_available():
        return "tpu"
    return "cpu"


def resolve_hardware(profile: HardwareConfig, machine: Machine = THIS_MACHINE) -> ResolvedHardware:
    """Turn a profile into Trainer arguments, checking ``machine`` (this one unless given)
    can run it.

    Raises:
        ConfigError: the accelerator is absent or fewer devices exist than requested.
    """
    accelerator = (
        auto_accelerator(machine) if profile.accelerator == "auto" else profile.accelerator
    )
    if accelerator == "gpu":
        accelerator = "cuda"
    present = machine.devices_for(accelerator, profile)
    if present == 0:
        raise ConfigError(
            "hardware.accelerator",
            accelerator,
            "is not available on this machine",
            ["auto", "cpu"] + (["cuda"] if machine.cuda_devices() else []),
        )
    devices = present if profile.devices == "auto" else int(profile.devices)
    limit = present * CPU_PROCESSES_PER_CORE if accelerator == "cpu" else present
    if devices > limit:
        what = (
            f"{limit} CPU processes ({CPU_PROCESSES_PER_CORE} per core)"
            if accelerator == "cpu"
            else f"{present} {accelerator} device(s)"
        )
        raise ConfigError("hardware.devices", devices, f"exceeds the {what} this machine can run")
    return ResolvedHardware(
        accelerator=accelerator,
        devices=devices,
        strategy=profile.strategy,
        num_nodes=profile.num_nodes,
    )
