"""What this machine has, and how a hardware profile maps onto it."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Protocol

import torch

from lightning_accel.config import HardwareConfig
from lightning_accel.errors import ConfigError
from lightning_accel.xla import runtime as xla_runtime


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


def cuda_device_count() -> int:
    """Number of CUDA devices torch can use (0 on a CPU-only build)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def torch_xla_installed() -> bool:
    """Whether torch_xla can be imported (checked without importing it)."""
    return importlib.util.find_spec("torch_xla") is not None


# CPU "devices" are processes (the CPU twins of multi-GPU runs); a few per core still run.
CPU_PROCESSES_PER_CORE = 4


def available_devices(accelerator: str) -> int:
    """How many devices of ``accelerator`` this machine offers (``devices=auto`` takes all)."""
    if accelerator in ("cuda", "gpu"):
        return cuda_device_count()
    if accelerator == "cpu":
        return os.cpu_count() or 1
    if accelerator == "tpu":
        from lightning.pytorch.accelerators import XLAAccelerator

        return XLAAccelerator.auto_device_count() if XLAAccelerator.is_available() else 0
    if accelerator == "mps":
        return 1 if torch.backends.mps.is_available() else 0
    if accelerator == "pjrt":
        return xla_runtime.device_count()
    return 0


def configure_pjrt(profile: HardwareConfig) -> None:
    """Point torch_xla at the profile's PJRT device type (before torch_xla starts): ``CPU``
    gets as many virtual devices as the profile asks for."""
    xla_runtime.require("hardware.accelerator", profile.accelerator)
    os.environ["PJRT_DEVICE"] = profile.pjrt_device
    if profile.pjrt_device == "CPU" and profile.devices != "auto":
        os.environ["CPU_NUM_DEVICES"] = str(profile.devices)


class Machine(Protocol):
    """What the hardware rules ask of a machine. :data:`THIS_MACHINE` asks this one, lazily
    and only what a profile needs; ``lightning-accel doctor`` answers from facts it gathered
    once (or that a test made up)."""

    def cuda_devices(self) -> int:
        """CUDA devices torch can use."""
        ...

    def tpu_available(self) -> bool:
        """Whether ``auto`` may pick a TPU: torch_xla, a TPU, and ``PJRT_DEVICE`` unset or TPU."""
        ...

    def devices_for(self, accelerator: str, profile: HardwareConfig) -> int:
        """Devices of ``accelerator`` that ``profile`` can use (``pjrt``: of its PJRT device).

        Raises:
            ConfigError: ``pjrt`` without torch_xla.
        """
        ...


class ThisMachine:
    """The machine this process runs on (see :class:`Machine`); ``devices_for`` points
    torch_xla at a ``pjrt`` profile's device type first."""

    def cuda_devices(self) -> int:
        return cuda_device_count()

    def tpu_available(self) -> bool:
        if not torch_xla_installed() or os.environ.get("PJRT_DEVICE", "TPU").upper() != "TPU":
            return False
        from lightning.pytorch.accelerators import XLAAccelerator

        return XLAAccelerator.is_available()

    def devices_for(self, accelerator: str, profile: HardwareConfig) -> int:
        if accelerator == "pjrt":
            configure_pjrt(profile)
        return available_devices(accelerator)


THIS_MACHINE = ThisMachine()


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
