"""Typed schemas of a run: hardware profile, optimization profile and trainer settings.

These dataclasses are plain Python (no Hydra needed): the library accepts them directly, and
the CLI registers them in Hydra's ConfigStore so every composed run is type-checked against
them. ``__post_init__`` checks values that a type alone cannot (sizes, choices); it runs when
a dataclass is built, including by ``OmegaConf.to_object`` on a composed config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
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
XLA_CHECKPOINTS = ("gathered", "sharded")  # how the xla_spmd strategy writes checkpoints
MICRO_BATCHES = (None, "auto")
FLOAT8_RECIPES = ("tensorwise", "rowwise")  # torchao's float8 scaling recipes


def require_positive(key: str, value: Any) -> None:
    """Raise a ConfigError unless ``value`` is a positive number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(key, value, "must be a positive number")


def require_not_negative(key: str, value: Any) -> None:
    """Raise a ConfigError unless ``value`` is a number of 0 or more."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(key, value, "must be a number of 0 or more")


def batch_count(value: Any) -> int | None:
    """``value`` as a count of batches where Lightning reads it as one (an int, or a whole
    float above 1.0); None for a fraction or anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value > 1 and value.is_integer():
        return int(value)
    return None


def require_fraction_or_count(key: str, value: Any) -> None:
    """Raise a ConfigError unless ``value`` is what Lightning takes for a number of batches:
    a fraction in [0.0, 1.0] or a whole count."""
    require_not_negative(key, value)
    if batch_count(value) is None and value > 1:
        raise ConfigError(key, value, "must be a fraction in [0.0, 1.0] or a whole count")


def require_held_out_fraction(key: str, value: Any) -> None:
    """Raise a ConfigError unless ``value`` is a fraction above 0 and below 1: the share of
    the data held out for validation, the rest trained on."""
    if not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError(
            key,
            value,
            "must be above 0 and below 1, the share held out for validation; "
            "trainer.limit_val_batches=0 turns validation off",
        )


def duration_seconds(value: Any) -> float:
    """A duration as Lightning's ``max_time`` takes one (a ``DD:HH:MM:SS`` string or a dict
    of ``datetime.timedelta`` arguments) in seconds; 0 where ``value`` is none."""
    fields = ("days", "hours", "minutes", "seconds")
    arguments = value
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) == len(fields) and all(part.isdigit() for part in parts):
            arguments = dict(zip(fields, map(int, parts), strict=True))
    try:
        return timedelta(**arguments).total_seconds() if isinstance(arguments, dict) else 0
    except TypeError:  # an argument timedelta does not take, or a value of the wrong type
        return 0


def require_duration(key: str, value: Any) -> None:
    """Raise a ConfigError unless ``value`` is a positive duration as Lightning takes one: a
    ``DD:HH:MM:SS`` string or a dict of ``datetime.timedelta`` arguments."""
    if duration_seconds(value) <= 0:  # named as given, not as the dict it was read into
        raise ConfigError(
            key, value, "must be a duration above 0: DD:HH:MM:SS, or a dict such as {hours: 2}"
        )


def require_choice(key: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise a ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(key, value, "is not supported", choices)


# Lightning's profilers by the names its Trainer takes
PROFILERS = ("simple", "advanced", "pytorch", "xla")


@dataclass
class HardwareConfig:
    """Where a run executes: accelerator, strategy, devices and nodes.

    A new profile is a YAML file, not new code: ``strategy_options`` carries the strategy's
    keyword arguments.

    Attributes:
        name: The profile's name (the ``hardware`` config group's option).
        accelerator: The device type: ``auto`` picks CUDA, then TPU, then CPU; ``pjrt`` is
            XLA on any PJRT device.
        strategy: A name from Lightning's StrategyRegistry, or ``auto``: on several CUDA or
            CPU devices, the layout ``lightning-accel plan`` ranks first, chosen when the
            runner starts the run.
        devices: Devices per node: a count, or ``auto`` for every device of the accelerator
            (Lightning's ``-1`` is refused with that advice).
        num_nodes: Nodes the run spans; one number with ``launcher.nnodes`` (setting either
            sets both).
        pjrt_device: The PJRT device type with ``accelerator: pjrt``; ``CPU`` gets
            ``devices`` virtual devices.
        strategy_options: Keyword arguments for the strategy.
        strategy_reason: Why the strategy was chosen, written by the runner when ``auto``
            ran on several devices.
    """

    name: str = "auto"
    accelerator: str = "auto"
    strategy: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    pjrt_device: str = "TPU"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    strategy_reason: str | None = None

    def __post_init__(self) -> None:
        require_choice("hardware.accelerator", self.accelerator, ACCELERATORS)
        require_choice("hardware.pjrt_device", self.pjrt_device, PJRT_DEVICES)
        if self.devices != "auto":
            if isinstance(self.devices, bool) or not isinstance(self.devices, int):
                raise ConfigError(
                    "hardware.devices", self.devices, "is not a count", ["auto", "1, 2, ..."]
                )
            if self.devices == -1:
                raise ConfigError(
                    "hardware.devices",
                    -1,
                    "is Lightning's 'every device'; write hardware.devices=auto for that",
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
    """torch.compile settings.

    Attributes:
        enabled: Whether to compile: true, false, or ``auto``: the runner times eager against
            compiled steps of the run's model before it starts and compiles only where the
            saving over the run's steps exceeds the compile time; a Trainer built without
            the runner compiles ``auto`` on GPUs only.
        mode: torch.compile's ``mode`` (null: torch's default).
        backend: torch.compile's ``backend``.
        per_block: Compile each repeated block rather than the whole model: smaller graphs,
            and the order FSDP2 wants.
        reason: Why compile is on or off, written by the runner when it measured ``auto``.
    """

    enabled: Any = False
    mode: str | None = None
    backend: str = "inductor"
    per_block: bool = False
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

    Attributes:
        enabled: Whether to checkpoint (recompute) the blocks' activations.
        every_k_blocks: Checkpoint one block in every k (1 = all of them).
    """

    enabled: bool = False
    every_k_blocks: int = 1

    def __post_init__(self) -> None:
        require_positive(
            "optimization.activation_checkpointing.every_k_blocks", self.every_k_blocks
        )


@dataclass
class Float8Config:
    """Float8 training: torchao's float8 Linear layers, their matmuls on float8 tensor cores.

    Attributes:
        enabled: Convert the Linear layers whose in and out features are both divisible by
            16 (and whose weight is not tied to another module) to float8 training, before
            every other transform; needs a GPU with float8 tensor cores (compute capability
            8.9 or newer) unless ``emulate``, and torchao (the ``fp8`` extra). ``auto``: the
            runner keeps float8 only where a timed trial of the run's model shows it faster
            than the run's precision alone (it stays off without a trial on hardware without
            float8 tensor cores, without torchao, and where every layer is narrower than
            float8's measured break-even); a Trainer built without the runner leaves it off.
        recipe: torchao's scaling: ``tensorwise`` (one scale per tensor; the fastest) or
            ``rowwise`` (one scale per row: more accurate, a little slower).
        emulate: Run float8 in torchao's emulation (casts to float8, matmuls in fp32) on
            any hardware: for testing the numerics, not for speed (so not with ``auto``).
        fsdp_float8_all_gather: Under FSDP2, all-gather the converted layers' weights in
            float8 (half of bf16's traffic); with the ``tensorwise`` recipe only (ignored
            with ``rowwise``, and by the other strategies).
        reason: Why float8 is on or off, written by the runner when it decided ``auto``.
    """

    enabled: Any = False
    recipe: str = "tensorwise"
    emulate: bool = False
    fsdp_float8_all_gather: bool = False
    reason: str | None = None

    def __post_init__(self) -> None:
        require_choice("optimization.fp8.enabled", self.enabled, (True, False, "auto"))
        require_choice("optimization.fp8.recipe", self.recipe, FLOAT8_RECIPES)
        if self.enabled == "auto" and self.emulate:
            raise ConfigError(
                "optimization.fp8.emulate",
                True,
                "cannot be chosen by optimization.fp8.enabled=auto, which keeps float8 only "
                "where it is faster and emulation never is; set optimization.fp8.enabled=true "
                "to test float8's numerics",
            )

    @property
    def converts(self) -> bool:
        """Whether the Linear layers are converted (``auto`` not decided by the runner: no)."""
        return self.enabled is True


@dataclass
class OptimizationConfig:
    """How fast and how lean a run computes: precision, compile, memory and step knobs.

    Attributes:
        name: The profile's name (the ``optimization`` config group's option).
        precision: Lightning's precision names (e.g. ``32-true``, ``bf16-mixed``), ``auto``
            (picked per hardware) or ``fastest`` (the hardware's pick, measured against fp32
            on the real model when the runner starts the run; the faster is kept).
        precision_reason: Why the precision was chosen, written by the runner when it
            measured ``fastest``.
        compile: torch.compile settings.
        activation_checkpointing: Recomputing block activations in the backward pass.
        fp8: Float8 training of the Linear layers (torchao).
        channels_last: Put the model (and the image recipe's batches) in channels-last
            memory format (conv nets). ``auto``: the runner turns it on where the model has
            convolution weights and the strategy keeps them whole (one device, DDP) on a CPU
            or GPU, and off under FSDP2 and XLA; a Trainer built without the runner leaves
            it off.
        channels_last_reason: Why the runner chose channels-last on or off for ``auto``.
        cpu_offload: FSDP2 keeps parameters, gradients and optimizer state in CPU memory.
        micro_batch: ``auto``: the runner splits each batch into the largest micro-batches
            the plan predicts to fit, with gradient accumulation keeping the batch and the
            update the same; null: as configured.
        micro_batch_reason: What the runner chose for ``micro_batch: auto``, and why.
        accumulate_grad_batches: Batches whose gradients are accumulated per optimizer step.
        gradient_clip_val: Clip the gradients' norm to this value (null: no clipping).
        float32_matmul_precision: ``torch.set_float32_matmul_precision`` for the run
            (``high``: TF32 matmuls on GPUs that have them); null leaves torch's setting.
        keep_freed_host_memory: On the CPU, glibc's allocator keeps freed memory for the
            next step instead of returning it and faulting it back in; false leaves its
            defaults.
    """

    name: str = "default"
    precision: str = "32-true"
    precision_reason: str | None = None
    compile: CompileConfig = field(default_factory=CompileConfig)
    activation_checkpointing: ActivationCheckpointingConfig = field(
        default_factory=ActivationCheckpointingConfig
    )
    fp8: Float8Config = field(default_factory=Float8Config)
    channels_last: Any = False
    channels_last_reason: str | None = None
    cpu_offload: bool = False
    micro_batch: str | None = None
    micro_batch_reason: str | None = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    float32_matmul_precision: str | None = None
    keep_freed_host_memory: bool = True

    def __post_init__(self) -> None:
        require_choice("optimization.precision", self.precision, PRECISIONS)
        require_choice("optimization.micro_batch", self.micro_batch, MICRO_BATCHES)
        require_choice("optimization.channels_last", self.channels_last, (True, False, "auto"))
        require_positive("optimization.accumulate_grad_batches", self.accumulate_grad_batches)
        if self.gradient_clip_val is not None:
            require_positive("optimization.gradient_clip_val", self.gradient_clip_val)
        if self.float32_matmul_precision is not None:
            require_choice(
                "optimization.float32_matmul_precision",
                self.float32_matmul_precision,
                MATMUL_PRECISIONS,
            )


# lightning.Trainer arguments the profiles and config groups set: the key to use instead
TRAINER_ARGUMENTS_SET_ELSEWHERE = {
    "accelerator": "hardware.accelerator",
    "strategy": "hardware.strategy",
    "devices": "hardware.devices",
    "num_nodes": "hardware.num_nodes (launcher.nnodes with a launcher)",
    "plugins": "the hardware profile",
    "precision": "optimization.precision",
    "accumulate_grad_batches": "optimization.accumulate_grad_batches",
    "gradient_clip_val": "optimization.gradient_clip_val",
    "gradient_clip_algorithm": "optimization.gradient_clip_val (clipping by norm)",
    "logger": "logger=NAME",
    "callbacks": "callbacks.NAME, or callbacks.extra=[{_target_: ...}]",
    "enable_checkpointing": "callbacks.checkpoint (null turns it off)",
    "enable_progress_bar": "callbacks.progress_bar (null turns it off)",
    "enable_model_summary": "callbacks.model_summary (null turns it off)",
    "default_root_dir": "hydra.run.dir",
    # Lightning uploads only through the checkpoint callback it adds when none is given;
    # the runner always gives its own, so the argument alone would be ignored
    "model_registry": "callbacks.checkpoint with litmodels' LightningModelCheckpoint",
}


@dataclass
class TrainerConfig:
    """Every ``lightning.Trainer`` argument the profiles do not set (those are listed in
    ``TRAINER_ARGUMENTS_SET_ELSEWHERE``), with Lightning's defaults except where noted.
    A test holds these fields to Trainer's own signature.

    Attributes:
        max_steps: Stop after this many optimizer steps (500 here); -1: no limit, with
            ``max_epochs`` or ``max_time``.
        max_epochs: Stop after this many epochs; -1: no limit.
        min_steps: Train at least this many steps (early stopping waits); at most
            ``max_steps``, which ends a fit whatever the minimum.
        min_epochs: Train at least this many epochs; at most ``max_epochs``.
        max_time: Stop after this much time: ``DD:HH:MM:SS``, or a dict of
            ``datetime.timedelta`` arguments.
        val_check_interval: Validate every this many training batches (an int; 100 here),
            after this fraction of an epoch (a float), or after this much time.
        check_val_every_n_epoch: Validate every N epochs; null: by ``val_check_interval``
            batches alone.
        limit_train_batches: Training batches per epoch and device: a fraction or a count.
        limit_val_batches: Validation batches per device: a fraction or a count (0 turns
            validation off).
        limit_test_batches: Test batches per device: a fraction or a count.
        limit_predict_batches: Prediction batches per device: a fraction or a count.
        overfit_batches: Train and validate on this fraction (or count) of the training
            batches.
        log_every_n_steps: Log every this many steps (50 here).
        num_sanity_val_steps: Validation batches run before training (0 here; -1: all).
        deterministic: Use deterministic algorithms (false here); ``warn``: where possible,
            warning about the operations that have none.
        benchmark: The value of ``torch.backends.cudnn.benchmark`` (null: the session's).
        inference_mode: Evaluate under ``torch.inference_mode`` rather than
            ``torch.no_grad``.
        use_distributed_sampler: Give the DataLoaders a ``DistributedSampler`` where the
            strategy needs one.
        profiler: A Lightning profiler by name (``simple``, ``advanced``, ``pytorch``;
            ``xla`` on an XLA device); its report goes to ``<run_dir>/<stage>-profile.txt``.
        detect_anomaly: Turn on autograd's anomaly detection.
        fast_dev_run: Run 1 (true) or n batches of each loop, to find bugs.
        barebones: Turn off every feature that costs speed (logging, checkpoints, progress
            bar, model summary, ...) to measure the Trainer's own overhead.
        sync_batchnorm: Synchronize batch-norm statistics between processes.
        reload_dataloaders_every_n_epochs: Rebuild the DataLoaders every n epochs (0: never).
        enable_autolog_hparams: Log the hyper-parameters when the run starts.
    """

    max_steps: int = 500
    max_epochs: int | None = None
    min_steps: int | None = None
    min_epochs: int | None = None
    max_time: Any = None
    val_check_interval: Any = 100
    check_val_every_n_epoch: int | None = 1
    limit_train_batches: Any = 1.0
    limit_val_batches: Any = 1.0
    limit_test_batches: Any = None
    limit_predict_batches: Any = None
    overfit_batches: Any = 0.0
    log_every_n_steps: int = 50
    num_sanity_val_steps: int = 0
    deterministic: Any = False
    benchmark: bool | None = None
    inference_mode: bool = True
    use_distributed_sampler: bool = True
    profiler: str | None = None
    detect_anomaly: bool = False
    fast_dev_run: Any = False
    barebones: bool = False
    sync_batchnorm: bool = False
    reload_dataloaders_every_n_epochs: int = 0
    enable_autolog_hparams: bool = True

    def __post_init__(self) -> None:
        # -1 means "no limit" for the loop's length, and "every batch" for sanity checks
        unlimited = {"max_steps": self.max_steps, "max_epochs": self.max_epochs}
        for key, value in unlimited.items():
            if value is not None and value != -1:
                require_positive(f"trainer.{key}", value)
        for key in ("min_steps", "min_epochs", "check_val_every_n_epoch"):
            if getattr(self, key) is not None:
                require_positive(f"trainer.{key}", getattr(self, key))
        for unit in ("steps", "epochs"):  # Lightning stops at the maximum whatever the minimum
            least, most = getattr(self, f"min_{unit}"), getattr(self, f"max_{unit}")
            if least is not None and most not in (None, -1) and least > most:
                raise ConfigError(
                    f"trainer.min_{unit}",
                    least,
                    f"is more than trainer.max_{unit}={most}, which ends the run first; raise "
                    f"trainer.max_{unit} too",
                )
        if self.max_time is not None:
            require_duration("trainer.max_time", self.max_time)
        self._check_validation_interval()
        require_positive("trainer.limit_train_batches", self.limit_train_batches)
        # 0 turns validation (test, prediction) off, as in Lightning
        for key in (
            "limit_train_batches",
            "limit_val_batches",
            "limit_test_batches",
            "limit_predict_batches",
            "overfit_batches",
        ):
            if getattr(self, key) is not None:
                require_fraction_or_count(f"trainer.{key}", getattr(self, key))
        self._check_validation_fits_the_epoch()
        require_positive("trainer.log_every_n_steps", self.log_every_n_steps)
        if self.num_sanity_val_steps < -1:
            raise ConfigError(
                "trainer.num_sanity_val_steps",
                self.num_sanity_val_steps,
                "must be -1 (all) or more",
            )
        require_not_negative(
            "trainer.reload_dataloaders_every_n_epochs", self.reload_dataloaders_every_n_epochs
        )
        require_choice("trainer.deterministic", self.deterministic, (True, False, "warn"))
        if self.profiler is not None:
            require_choice("trainer.profiler", self.profiler, PROFILERS)

    def _check_validation_interval(self) -> None:
        """A count of batches, a fraction of an epoch (which needs epochs to count in:
        ``check_val_every_n_epoch``), or a duration, as Lightning takes it."""
        interval = self.val_check_interval
        if isinstance(interval, (str, dict)):
            require_duration("trainer.val_check_interval", interval)
            return
        require_positive("trainer.val_check_interval", interval)
        require_fraction_or_count("trainer.val_check_interval", interval)
        if batch_count(interval) is None and self.check_val_every_n_epoch is None:
            raise ConfigError(
                "trainer.val_check_interval",
                interval,
                "is a fraction of an epoch, which needs trainer.check_val_every_n_epoch set; "
                "give a count of batches or a duration instead",
            )

    def _check_validation_fits_the_epoch(self) -> None:
        """Lightning's own check, made before launch where both counts are given: a
        validation interval in batches must fit in an epoch capped at
        ``limit_train_batches`` batches (unless it counts across epochs or validation is
        off); an epoch's length otherwise is known only once the data is loaded."""
        batches = batch_count(self.limit_train_batches)
        interval = batch_count(self.val_check_interval)
        validates = self.check_val_every_n_epoch is not None and self.limit_val_batches != 0
        if batches is not None and interval is not None and validates and interval > batches:
            raise ConfigError(
                "trainer.val_check_interval",
                interval,
                f"is more than the trainer.limit_train_batches={batches} training batches of an "
                "epoch; give at most that many, or trainer.limit_val_batches=0 for no validation",
            )
        if not isinstance(self.fast_dev_run, bool):
            require_positive("trainer.fast_dev_run", self.fast_dev_run)
