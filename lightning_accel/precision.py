"""Choosing the precision a run computes in: ``auto`` per hardware, and refusing
precisions the hardware or strategy cannot run."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from lightning_accel.errors import ConfigError
from lightning_accel.xla.runtime import pjrt_device

KEY = "optimization.precision"
# What each accelerator can run (Lightning's names).
RUNNABLE = {
    "cpu": ("32-true", "bf16-mixed", "bf16-true", "64-true"),
    "cuda": ("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true"),
    "tpu": ("32-true", "bf16-mixed", "bf16-true"),
    "pjrt": ("32-true", "bf16-mixed", "bf16-true"),
    "mps": ("32-true", "16-mixed", "bf16-mixed"),
}
# FSDP2 (Lightning's ModelParallelStrategy) has no gradient scaler for fp16 mixed precision.
REFUSED_BY_STRATEGY = {"fsdp2": ("16-mixed",)}
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses and why it was chosen."""

    precision: str
    reason: str


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags, from the first ``flags`` (x86) or ``Features`` (Arm) line of
    ``cpuinfo``; empty where the file is absent."""
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def bf16_units(flags: Collection[str]) -> str | None:
    """The bf16 matrix instruction set (``amx_bf16``, ``avx512_bf16``) among ``flags``."""
    return next((flag for flag in BF16_CPU_FLAGS if flag in flags), None)


def cpu_bf16_units() -> str | None:
    """This CPU's bf16 matrix instruction set (``amx_bf16``, ``avx512_bf16``), if any."""
    return bf16_units(cpu_flags())


def cuda_capability() -> tuple[int, int] | None:
    """The first CUDA device's compute capability, if there is one."""
    return torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None


class PrecisionMachine(Protocol):
    """What ``precision=auto`` asks of a machine. :data:`THIS_MACHINE` asks this one, and
    only what the accelerator needs; ``lightning-accel doctor`` answers from gathered facts."""

    def cpu_bf16_units(self) -> str | None:
        """The CPU's bf16 matrix instruction set, if any."""
        ...

    def cuda_capability(self) -> tuple[int, int] | None:
        """The first CUDA device's compute capability, if there is one."""
        ...

    def pjrt_device(self) -> str:
        """The PJRT device type in use (``TPU``, ``CUDA``, ``CPU``, or empty)."""
        ...


class ThisMachine:
    """The machine this process runs on (see :class:`PrecisionMachine`)."""

    def cpu_bf16_units(self) -> str | None:
        return cpu_bf16_units()

    def cuda_capability(self) -> tuple[int, int] | None:
        return cuda_capability()

    def pjrt_device(self) -> str:
        return pjrt_device()


THIS_MACHINE = ThisMachine()


def auto_precision(accelerator: str, machine: PrecisionMachine = THIS_MACHINE) -> PrecisionChoice:
    """What ``precision=auto`` means on ``accelerator`` of ``machine`` (this one unless given)."""
    if accelerator == "cpu":
        units = machine.cpu_bf16_units()
        if units:
            return PrecisionChoice("bf16-mixed", f"the CPU has bf16 matrix units: {units}")
        return PrecisionChoice("32-true", "the CPU has no bf16 matrix units")
    if accelerator == "cuda":
        capability = machine.cuda_capability() or (0, 0)
        if capability >= (8, 0):
            return PrecisionChoice(
                "bf16-mixed", f"the GPU (sm_{capability[0]}{capability[1]}) computes in bf16"
            )
        return PrecisionChoice(
            "16-mixed",
            f"the GPU (sm_{capability[0]}{capability[1]}) predates bf16: fp16 with a loss scaler",
        )
    if accelerator == "tpu" or (accelerator == "pjrt" and machine.pjrt_device() == "TPU"):
        return PrecisionChoice("bf16-mixed", "TPUs compute in bf16")
    if accelerator == "pjrt" and machine.pjrt_device() == "CUDA":
        choice = auto_precision("cuda", machine)
        return (
            choice
            if choice.precision in RUNNABLE["pjrt"]
            else PrecisionChoice("32-true", "XLA has no fp16 loss scaler for this GPU")
        )
    return PrecisionChoice("32-true", f"no reduced precision is chosen for {accelerator}")


def resolve_precision(
    requested: str, accelerator: str, strategy: str = "auto", reason: str | None = None
) -> PrecisionChoice:
    """The precision to run: ``auto`` (and ``fastest``, when nothing measured it) resolved
    by the hardware, anything else checked against the hardware; ``reason`` says why a
    concrete precision was chosen, if something else chose it.

    Raises:
        ConfigError: the accelerator or the strategy cannot run the precision.
    """
    if requested in ("auto", "fastest"):
        choice = auto_precision(accelerator)
    else:
        choice = PrecisionChoice(requested, reason or "as configured")
    runnable = RUNNABLE.get(accelerator, RUNNABLE["cpu"])
    if choice.precision not in runnable:
        raise ConfigError(
            KEY, choice.precision, f"cannot run on {accelerator}", ("auto", *runnable)
        )
    if (
        accelerator == "cuda"
        and choice.precision.startswith("bf16")
        and (cuda_capability() or (8, 0)) < (8, 0)
    ):
        raise ConfigError(
            KEY,
            choice.precision,
            "needs a GPU of compute capability 8.0 or newer",
            ("auto", "16-mixed", "32-true"),
        )
    refused = REFUSED_BY_STRATEGY.get(strategy, ())
    if choice.precision in refused:
        allowed = [p for p in runnable if p not in refused]
        raise ConfigError(
            KEY,
            choice.precision,
            f"is not supported by the {strategy} strategy",
            ("auto", *allowed),
        )
    return choice
