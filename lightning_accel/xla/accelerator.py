"""An XLA accelerator for any PJRT device: TPUs, GPUs through PJRT, and the CPU."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.accelerators import AcceleratorRegistry, XLAAccelerator
from typing_extensions import override

from lightning_accel.errors import ConfigError
from lightning_accel.xla import runtime


class PJRTAccelerator(XLAAccelerator):
    """Lightning's XLA accelerator, counting the devices of the PJRT device type in use
    (``PJRT_DEVICE``: ``TPU``, ``CUDA`` or ``CPU`` with ``CPU_NUM_DEVICES`` virtual
    devices) instead of TPU chips only, so XLA code paths run and are tested on a CPU.
    Registered as ``"pjrt"``."""

    @staticmethod
    @override
    def auto_device_count() -> int:
        return runtime.device_count()

    @staticmethod
    @override
    def is_available() -> bool:
        return runtime.installed() and runtime.device_count() > 0

    @staticmethod
    @override
    def parse_devices(devices: int | str | list[int]) -> int:
        available = runtime.device_count()
        if devices == "auto":
            return available
        count = len(devices) if isinstance(devices, list) else int(devices)
        if count < 1 or count > available:
            raise ConfigError(
                "hardware.devices",
                devices,
                f"exceeds the {available} {runtime.pjrt_device() or 'XLA'} device(s) here",
            )
        return count

    @staticmethod
    @override
    def get_parallel_devices(devices: int | list[int]) -> list[torch.device]:
        count = len(devices) if isinstance(devices, list) else devices
        return [torch.device("xla", index) for index in range(count)]

    @classmethod
    @override
    def register_accelerators(cls, accelerator_registry: Any) -> None:
        accelerator_registry.register("pjrt", cls, description=cls.__name__)


if "pjrt" not in AcceleratorRegistry:
    PJRTAccelerator.register_accelerators(AcceleratorRegistry)
