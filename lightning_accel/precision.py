"""Choosing the precision a run computes in: ``auto`` per hardware, and refusing
precisions the hardware or strategy cannot run."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_accel.errors import ConfigError
from lightning_accel.machine import THIS_MACHINE, Machine

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


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses and why it was chosen."""

    precision: str
    reason: str


def bf16_gpu(capability: tuple[int, int] | None) -> bool:
    """Whether a GPU of compute ``capability`` computes in bf16 (Ampere, sm_80, and newer);
    the one bf16 rule for GPUs, used to choose and to refuse."""
    return (capability or (0, 0)) >= (8, 0)


def auto_precision(accelerator: str, machine: Machine = THIS_MACHINE) -> PrecisionChoice:
    """What ``precision=auto`` means on ``accelerator`` of ``machine`` (this one unless given)."""
    if accelerator == "cpu":
        units = machine.cpu_bf16_units()
        if units:
            return PrecisionChoice("bf16-mixed", f"the CPU has bf16 matrix units: {units}")
        return PrecisionChoice("32-true", "the CPU has no bf16 matrix units")
    if accelerator == "cuda":
        capability = machine.cuda_capability() or (0, 0)
        if bf16_gpu(capability):
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
    requested: str,
    accelerator: str,
    strategy: str = "auto",
    reason: str | None = None,
    machine: Machine = THIS_MACHINE,
) -> PrecisionChoice:
    """The precision to run on ``machine`` (this one unless given): ``auto`` (and
    ``fastest``, when nothing measured it) resolved by the hardware, anything else checked
    against the hardware; ``reason`` says why a concrete precision was chosen, if something
    else chose it.

    Raises:
        ConfigError: the accelerator or the strategy cannot run the precision.
    """
    if requested in ("auto", "fastest"):
        choice = auto_precision(accelerator, machine)
    else:
        choice = PrecisionChoice(requested, reason or "as configured")
    runnable = RUNNABLE.get(accelerator, RUNNABLE["cpu"])
    if choice.precision not in runnable:
        raise ConfigError(
            KEY, choice.precision, f"cannot run on {accelerator}", ("auto", *runnable)
        )
    gpu_without_bf16 = accelerator == "cuda" and not bf16_gpu(machine.cuda_capability() or (8, 0))
    if choice.precision.startswith("bf16") and gpu_without_bf16:
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
