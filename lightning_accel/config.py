"""Typed schemas of a run: hardware profile, optimization profile and trainer settings.

These dataclasses are plain Python (no Hydra needed): the library accepts them directly, and
the CLI registers them in Hydra's ConfigStore so every composed run is type-checked against
them. ``__post_init__`` checks values that a type alone cannot (sizes, choices); it runs when
a dataclass is built, including by ``OmegaConf.to_object`` on a composed config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lightning_accel.errors import ConfigError

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "pjrt")
PJRT_DEVICES = ("TPU", "CUDA", "CPU")
PRECISIONS = (
    "auto",
    "fastest",
    "32-true",
    "bf16-mixed",
    "bf16-true",
    "16-mixed",
    "16-true",
    "64-true",
)
MATMUL_PRECISIONS = ("highest", "high", "medium")
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager", "cudagraphs")
XLA_CHECKPOINTS = ("gathered", "sharded")
MICRO_BATCHES = (None, "auto")  # how the xla_spmd strategy writes checkpoints


def require_positive(key: str, value: Any) -> None:
    """Raise a ConfigError unless ``value`` is a positive number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(key, value, "must be a positive number")


def require_not_negative(key: str, value: Any) -> None:
    """Raise a ConfigError unless ``value`` is a number of 0 or more."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(key, value, "must be a number of 0 or more")


def require_choice(key: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise a ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(key, value, "is not supported", choices)


@dataclass
class HardwareConfig:
    """Where a run executes: accelerator, strategy, devices and nodes.

    Key options: ``accelerator`` (``auto`` picks CUDA, then TPU, then CPU), ``strategy`` (a
    name from Lightning's StrategyRegistry, or ``auto``), ``devices`` (a count, or ``auto``
    for every device of the accelerator), ``num_nodes``, and ``strategy_options`` (keyword
    arguments for the strategy, so a new profile is a YAML file, not new code; ``auto`` on
    several CUDA or CPU devices becomes the layout ``lightning-accel plan`` ranks first,
    when the runner starts the run, with its reason in ``strategy_reason``). With
    ``accelerator: pjrt`` (XLA on any PJRT device), ``pjrt_device`` names the device type
    (``TPU``, ``CUDA``, ``CPU``; ``CPU`` gets ``devices`` virtual devices).
    """

    name: str = "auto"
    accelerator: str = "auto"
    strategy: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    pjrt_device: str = "TPU"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    # Why the strategy was chosen, written by the runner when `auto` ran on several devices.
    strategy_reason: str | None = None

    def __post_init__(self) -> None:
        require_choice("hardware.accelerator", self.accelerator, ACCELERATORS)
        require_choice("hardware.pjrt_device", self.pjrt_device, PJRT_DEVICES)
        if self.devices != "auto":
            if isinstance(self.devices, bool) or not isinstance(self.devices, int):
                raise ConfigError(
                    "hardware.devices", self.devices, "is not a count", ["auto", "1, 2, ..."]
                )
            require_positive("hardware.devices", self.devices)
        require_positive("hardware.num_nodes", self.num_nodes)
        if self.strategy == "xla_spmd" and "checkpoint" in self.strategy_options:
            require_choice(
                "hardware.strategy_options.checkpoint",
                self.strategy_options["checkpoint"],
                XLA_CHECKPOINTS,
            )


@dataclass
class CompileConfig:
    """torch.compile settings: ``enabled`` (true, false, or ``auto``: the runner times eager
    against compiled steps of the run's model before it starts and compiles only where the
    saving over the run's steps exceeds the compile time, saying why in ``reason``; a
    Trainer built without the runner compiles ``auto`` on GPUs only), ``mode`` (None,
    default, reduce-overhead, max-autotune), ``backend`` (inductor, aot_eager, eager) and
    ``per_block`` (compile each repeated block rather than the whole model: smaller graphs,
    and the order FSDP2 wants)."""

    enabled: Any = False
    mode: str | None = None
    backend: str = "inductor"
    per_block: bool = False
    # Why compile is on or off, written by the runner when it measured `auto`.
    reason: str | None = None

    def __post_init__(self) -> None:
        require_choice("optimization.compile.enabled", self.enabled, (True, False, "auto"))
        require_choice("optimization.compile.mode", self.mode, COMPILE_MODES)
        require_choice("optimization.compile.backend", self.backend, COMPILE_BACKENDS)

    def active_on(self, accelerator: str) -> bool:
        """Whether to compile on ``accelerator`` (``auto``: only on CUDA)."""
        return accelerator == "cuda" if self.enabled == "auto" else bool(self.enabled)


@dataclass
class ActivationCheckpointingConfig:
    """Recompute activations of the model's repeated blocks in the backward pass.

    ``every_k_blocks=k`` checkpoints one block in every k (1 = all of them).
    """

    enabled: bool = False
    every_k_blocks: int = 1

    def __post_init__(self) -> None:
        require_positive(
            "optimization.activation_checkpointing.every_k_blocks", self.every_k_blocks
        )


@dataclass
class OptimizationConfig:
    """How fast and how lean a run computes: precision, compile, memory and step knobs.

    Key options: ``precision`` (``auto`` picks per hardware; ``fastest`` also measures the
    hardware's pick against fp32 on the real model and keeps the faster, when the runner
    starts the run; or Lightning's names, e.g. ``32-true``, ``bf16-mixed``),
    ``compile``, ``activation_checkpointing``, ``channels_last`` (conv nets), ``cpu_offload``
    (FSDP2 keeps shards in CPU memory), ``micro_batch`` (``auto``: the runner splits each
    batch into the largest micro-batches the plan predicts to fit, with gradient
    accumulation keeping the batch and the update the same; ``null``: as configured),
    ``accumulate_grad_batches``, ``gradient_clip_val`` and ``float32_matmul_precision``.
    """

    name: str = "default"
    precision: str = "32-true"
    # Why the precision was chosen, written by the runner when it measured `fastest`.
    precision_reason: str | None = None
    compile: CompileConfig = field(default_factory=CompileConfig)
    activation_checkpointing: ActivationCheckpointingConfig = field(
        default_factory=ActivationCheckpointingConfig
    )
    channels_last: bool = False
    cpu_offload: bool = False
    micro_batch: str | None = None
    # What the runner chose for `micro_batch: auto`, and why.
    micro_batch_reason: str | None = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    float32_matmul_precision: str | None = None

    def __post_init__(self) -> None:
        require_choice("optimization.precision", self.precision, PRECISIONS)
        require_choice("optimization.micro_batch", self.micro_batch, MICRO_BATCHES)
        require_positive("optimization.accumulate_grad_batches", self.accumulate_grad_batches)
        if self.gradient_clip_val is not None:
            require_positive("optimization.gradient_clip_val", self.gradient_clip_val)
        if self.float32_matmul_precision is not None:
            require_choice(
                "optimization.float32_matmul_precision",
                self.float32_matmul_precision,
                MATMUL_PRECISIONS,
            )


@dataclass
class TrainerConfig:
    """Loop settings passed to ``lightning.Trainer``: steps, epochs, batches per epoch,
    validation cadence, logging interval and determinism."""

    max_steps: int = 500
    max_epochs: int | None = None
    val_check_interval: Any = 100
    limit_train_batches: Any = 1.0
    limit_val_batches: Any = 1.0
    log_every_n_steps: int = 50
    num_sanity_val_steps: int = 0
    deterministic: bool = False

    def __post_init__(self) -> None:
        require_positive("trainer.max_steps", self.max_steps)
        if self.max_epochs is not None:
            require_positive("trainer.max_epochs", self.max_epochs)
        require_positive("trainer.val_check_interval", self.val_check_interval)
        require_positive("trainer.limit_train_batches", self.limit_train_batches)
        # 0 turns validation off, as in Lightning
        require_not_negative("trainer.limit_val_batches", self.limit_val_batches)
        require_positive("trainer.log_every_n_steps", self.log_every_n_steps)
        if self.num_sanity_val_steps < 0:
            raise ConfigError(
                "trainer.num_sanity_val_steps", self.num_sanity_val_steps, "must be 0 or more"
            )
