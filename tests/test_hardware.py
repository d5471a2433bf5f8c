"""Hardware profiles resolve against what the machine has (faked where hardware is absent)."""

from __future__ import annotations

import os

import pytest

from lightning_accel import hardware, machine
from lightning_accel.config import HardwareConfig
from lightning_accel.errors import ConfigError


def test_auto_picks_the_cpu_without_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "cuda_device_count", lambda: 0)
    monkeypatch.setattr(machine, "torch_xla_installed", lambda: False)
    resolved = hardware.resolve_hardware(HardwareConfig())
    assert (resolved.accelerator, resolved.devices) == ("cpu", 1)


def test_auto_prefers_cuda_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "cuda_device_count", lambda: 2)
    resolved = hardware.resolve_hardware(HardwareConfig(devices="auto"))
    assert (resolved.accelerator, resolved.devices) == ("cuda", 2)


def test_devices_auto_counts_cpu_processes() -> None:
    resolved = hardware.resolve_hardware(HardwareConfig(accelerator="cpu", devices="auto"))
    assert resolved.devices == os.cpu_count()


def test_absent_accelerator_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "cuda_device_count", lambda: 0)
    with pytest.raises(ConfigError, match="hardware.accelerator='cuda' is not available"):
        hardware.resolve_hardware(HardwareConfig(accelerator="gpu"))


def test_more_devices_than_present_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "cuda_device_count", lambda: 1)
    with pytest.raises(ConfigError, match="hardware.devices=4 exceeds the 1 cuda device"):
        hardware.resolve_hardware(HardwareConfig(accelerator="cuda", devices=4))


@pytest.mark.parametrize("devices", [0, -1, "two", True])
def test_bad_device_counts_are_rejected(devices: object) -> None:
    with pytest.raises(ConfigError, match="hardware.devices"):
        HardwareConfig(devices=devices)


def test_cpu_processes_may_oversubscribe_cores_up_to_a_limit() -> None:
    cores = os.cpu_count() or 1
    limit = cores * hardware.CPU_PROCESSES_PER_CORE
    assert (
        hardware.resolve_hardware(HardwareConfig(accelerator="cpu", devices=limit)).devices == limit
    )
    with pytest.raises(ConfigError, match=f"exceeds the {limit} CPU processes"):
        hardware.resolve_hardware(HardwareConfig(accelerator="cpu", devices=limit + 1))
