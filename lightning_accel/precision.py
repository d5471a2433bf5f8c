"""Choosing the precision a run computes in: ``auto`` per hardware, and refusing
precisions (float8 training included) the hardware or strategy cannot run."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec

from lightning_accel.config import Float8Config
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
FLOAT8_KEY = "optimization.fp8.enabled"
FLOAT8_INSTALL_HINT = "pip install 'lightning-accel[fp8]'"
EMULATE_HINT = (
    "optimization.fp8.emulate=true runs torchao's emulation instead (for numerics, not speed)"
)


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses and why it was chosen."""

    precision: str
    reason: str


def bf16_gpu(capability: tuple[int, int] | None) -> bool:
    """Whether a GPU of compute ``capability`` computes in bf16 (Ampere, sm_80, and newer);
    the one bf16 rule for GPUs, used to choose and to refuse."""
    return (capability or (0, 0)) >= (8, 0)


def float8_gpu(capability: tuple[int, int] | None) -> bool:
    """Whether a GPU of compute ``capability`` has float8 tensor cores (Ada and Hopper,
    sm_89, and newer)."""
    return (capability or (0, 0)) >= (8, 9)


def float8_unsupported(tensor_parallel: int = 1) -> str | None:
    """Why float8 training cannot run at all in this environment or layout (torchao missing,
    layers split by tensor parallelism); None where it can."""
    if find_spec("torchao") is None:
        return f"needs torchao: {FLOAT8_INSTALL_HINT}"
    if tensor_parallel > 1:
        return (
            f"does not run with tensor parallelism (tensor_parallel={tensor_parallel}) yet: "
            "torchao's float8 parallel styles are not wired into the split"
        )
    return None


def float8_cores_missing(accelerator: str, machine: Machine = THIS_MACHINE) -> str | None:
    """Why ``accelerator`` of ``machine`` has no float8 tensor cores; None where it has them
    (or where the GPU is not known because the run is planned away from it)."""
    capability = machine.cuda_capability() if accelerator == "cuda" else None
    if (accelerator == "cuda" and capability is None) or float8_gpu(capability):
        return None
    has = (
        f"this GPU is sm_{capability[0]}{capability[1]}"
        if capability
        else f"this run's device ({accelerator}) has none"
    )
    return f"needs a GPU with float8 tensor cores (compute capability 8.9 or newer) and {has}"


def float8_unavailable(
    accelerator: str, tensor_parallel: int = 1, machine: Machine = THIS_MACHINE
) -> str | None:
    """Why float8 training cannot run on float8 tensor cores here: :func:`float8_unsupported`
    or :func:`float8_cores_missing`; None where it can."""
    return float8_unsupported(tensor_parallel) or float8_cores_missing(accelerator, machine)


def resolve_float8(
    config: Float8Config,
    accelerator: str,
    tensor_parallel: int = 1,
    machine: Machine = THIS_MACHINE,
) -> str | None:
    """Why float8 training runs on ``accelerator`` of ``machine`` (this one unless given):
    the runner's measured reason when it chose float8, else the hardware's; None when the
    profile does not convert layers (``enabled`` false, or ``auto`` not yet decided).

    Raises:
        ConfigError: torchao is not installed; the run splits layers over
            ``tensor_parallel`` > 1 ranks; or the device has no float8 tensor cores and
            emulation was not asked for.
    """
    if config.enabled is not True:
        return None
    unsupported = float8_unsupported(tensor_parallel)
    if unsupported:
        raise ConfigError(FLOAT8_KEY, True, unsupported)
    if config.emulate:
        return f"emulated on {accelerator}: float8 casts, fp32 matmuls; numerics, not speed"
    missing = float8_cores_missing(accelerator, machine)
    if missing:
        raise ConfigError(FLOAT8_KEY, True, f"{missing}; {EMULATE_HINT}")
    if config.reason:
        return config.reason
    capability = machine.cuda_capability()
    if capability is None:
        return "assumed: the GPU's compute capability is not known where the run is planned"
    return f"the GPU (sm_{capability[0]}{capability[1]}) has float8 tensor cores"


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
