"""Apply a run's model transforms, in place, in one ordered function: float8 training's
Linear layers, then activation checkpointing, then compile, then memory format, then the
tensor parallel split, then FSDP2 sharding (torchtitan's order). Under FSDP2 the strategy
calls it from its ``setup`` with its own parallelizing steps; else the
:class:`ModelOptimizations` callback does."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.utils.checkpoint import checkpoint as torch_checkpoint
from torchmetrics import Metric
from typing_extensions import override

from lightning_accel.config import CompileConfig, OptimizationConfig
from lightning_accel.errors import ConfigError
from lightning_accel.host_allocator import keep_freed_host_memory
from lightning_accel.optimize.blocks import find_repeated_blocks
from lightning_accel.optimize.float8 import (
    check_float8_layers,
    convert_to_float8,
    float8_all_gathers,
    float8_summary,
    precompute_float8_scales,
)
from lightning_accel.optimize.memory_format import (
    lazy_module_name,
    strategy_channels_last_choice,
)
from lightning_accel.optimize.recompute import statistics_once, tracking_layers
from lightning_accel.precision import PrecisionChoice

FSDP2 = "fsdp2"
TENSOR_PARALLEL = "tensor_parallel"
FLOAT8 = "float8"
# Model transforms in the order they are applied: float8 Linear layers, then activation
# checkpointing, then compile, then the tensor parallel split, then sharding (torchtitan's
# order); the memory format is independent of the others.
TRANSFORM_ORDER = (
    FLOAT8,
    "activation_checkpointing",
    "compile",
    "channels_last",
    TENSOR_PARALLEL,
    FSDP2,
)
# a parallelizing step of the strategy: changes the model in place
ParallelStep = Callable[[nn.Module], None]


def model_transforms(
    optimization: OptimizationConfig, accelerator: str, parallel: Sequence[str] = ()
) -> tuple[str, ...]:
    """The transforms a run applies to its model on ``accelerator``, in
    :data:`TRANSFORM_ORDER`: the profile's, then the strategy's ``parallel`` steps
    (``tensor_parallel``, ``fsdp2``)."""
    wanted = {
        FLOAT8: optimization.fp8.converts,
        "activation_checkpointing": optimization.activation_checkpointing.enabled,
        "compile": optimization.compile.active_on(accelerator),
        # auto: decided by the runner, or by ModelOptimizations at setup
        "channels_last": optimization.channels_last is True,
        TENSOR_PARALLEL: TENSOR_PARALLEL in parallel,
        FSDP2: FSDP2 in parallel,
    }
    return tuple(name for name in TRANSFORM_ORDER if wanted[name])


def check_model_optimizations(model: nn.Module, optimization: OptimizationConfig) -> None:
    """Fail unless ``model`` has what the profile's transforms need: repeated blocks, and
    Linear layers float8 training can convert."""
    compile_config = optimization.compile
    needs_blocks = {
        "optimization.activation_checkpointing.enabled": (
            optimization.activation_checkpointing.enabled
        ),
        # auto compiles the whole model where there are no blocks (compile_model)
        "optimization.compile.per_block": compile_config.enabled is True
        and compile_config.per_block,
    }
    for key, needed in needs_blocks.items():
        if needed and not find_repeated_blocks(model):
            raise ConfigError(
                key,
                True,
                f"needs repeated blocks, but {type(model).__name__} has no ModuleList of "
                "layers or Sequential of same-class modules",
            )
    if optimization.channels_last is True and (lazy := lazy_module_name(model)):
        raise ConfigError(
            "optimization.channels_last",
            True,
            f"needs initialized weights, but {type(model).__name__}'s {lazy} has none until "
            "its first batch (give it its input size, or use optimization.channels_last=auto)",
        )
    if optimization.fp8.converts:
        check_float8_layers(model)


def _checkpoint_blocks(model: nn.Module, every_k: int, device_type: str = "cpu") -> int:
    blocks = find_repeated_blocks(model)
    checkpoint_fn: Callable[..., Any] = partial(torch_checkpoint, use_reentrant=False)
    if device_type == "xla":
        from lightning_accel.xla import runtime

        checkpoint_fn = runtime.checkpoint_function()
    parents = {
        id(child): (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
    }
    wrapped = 0
    for index, block in enumerate(blocks):
        if index % every_k:
            continue
        parent, name = parents[id(block)]
        options: dict[str, Any] = {"checkpoint_fn": checkpoint_fn}
        if tracking_layers(block):
            options["checkpoint_fn"] = statistics_once(checkpoint_fn, block)
        # The wrapper strips its own prefix from state_dict keys, so checkpoints stay portable.
        setattr(parent, name, checkpoint_wrapper(block, **options))
        wrapped += 1
    return wrapped


def compile_model(model: nn.Module, config: CompileConfig) -> None:
    """Compile ``model`` in place as ``config`` says: each repeated block (``per_block``,
    where the model has them), else each child module that holds parameters
    (``nn.Module.compile`` keeps ``state_dict`` keys free of ``_orig_mod.``)."""
    blocks = find_repeated_blocks(model) if config.per_block else []
    targets = blocks or [
        child
        for child in model.children()
        if not isinstance(child, Metric) and any(True for _ in child.parameters())
    ]
    # The blocks share one forward: blocks of several widths (a ResNet's stages) made dynamo
    # recompile it for dynamic sizes, which Inductor failed to lower under FSDP2 ("Cannot
    # convert expression to float"); each width gets a static graph of its own instead.
    dynamic = False if blocks else None
    for target in targets:
        target.compile(mode=config.mode, backend=config.backend, dynamic=dynamic)


@runtime_checkable
class ShardsAfterTransforms(Protocol):
    """A strategy that applies the run's model transforms itself, in their order, ending
    with its own parallelizing steps (tensor parallel, FSDP2): :class:`ModelOptimizations`
    hands them over (the profile and the transforms' names) instead of applying them."""

    model_transforms: tuple[OptimizationConfig, Sequence[str] | None] | None


def apply_model_optimizations(
    model: nn.Module,
    optimization: OptimizationConfig,
    device_type: str = "cpu",
    transforms: Sequence[str] | None = None,
    parallelize: Mapping[str, ParallelStep] | None = None,
) -> None:
    """Transform ``model`` in place: each of ``transforms`` in :data:`TRANSFORM_ORDER`
    (default: those the profile asks for on ``device_type``, then every step of
    ``parallelize``), ``tensor_parallel`` and ``fsdp2`` by calling the strategy's step in
    ``parallelize``; and set the process-wide float32 matmul precision when the profile
    names one, and on the CPU the host allocator's reuse of freed memory. The one function
    every model transform of a run goes through."""
    parallelize = parallelize or {}
    if transforms is None:
        accelerator = "cuda" if device_type == "cuda" else "cpu"
        transforms = model_transforms(optimization, accelerator, tuple(parallelize))
    check_model_optimizations(model, optimization)
    if optimization.float32_matmul_precision is not None:
        torch.set_float32_matmul_precision(optimization.float32_matmul_precision)
    if optimization.keep_freed_host_memory and device_type == "cpu":
        keep_freed_host_memory()
    for name in transforms:
        if name == FLOAT8:
            convert_to_float8(model, optimization.fp8, sharded=FSDP2 in transforms)
        elif name == "activation_checkpointing":
            every_k = optimization.activation_checkpointing.every_k_blocks
            _checkpoint_blocks(model, every_k, device_type)
        elif name == "compile":
            compile_model(model, optimization.compile)
        elif name == "channels_last":
            model.to(memory_format=torch.channels_last)
        elif name in parallelize:
            parallelize[name](model)


class ModelOptimizations(pl.Callback):
    """Applies a run's model transforms when training is set up, so they work on any
    LightningModule passed to ``Trainer.fit``; under FSDP2 with float8 all-gathers, computes
    the next all-gathers' float8 scales together after each training batch.

    Args:
        optimization: the profile; only its model transforms are read here (precision and
            step knobs go to the Trainer).
        precision: the precision the Trainer was given and why, for the run's records.
        transforms: the transforms the run plan chose, in order (default: those the profile
            asks for on the device the strategy runs on).
        strategy_reason: why the run plan chose the strategy, when it did.
        float8_reason: why the run plan lets the Linear layers train in float8, when they do.
    """

    def __init__(
        self,
        optimization: OptimizationConfig,
        precision: PrecisionChoice | None = None,
        transforms: Sequence[str] | None = None,
        strategy_reason: str | None = None,
        float8_reason: str | None = None,
    ) -> None:
        self.optimization = optimization
        self.precision = precision
        self.transforms = transforms
        self.strategy_reason = strategy_reason
        self.float8_reason = float8_reason
        self._model: nn.Module | None = None
        self._float8_all_gathers = False

    def summary_figures(self) -> dict[str, Any]:
        """The run's choices and their reasons, for the run summary."""
        return {
            "strategy_reason": self.strategy_reason,
            "precision_reason": self.precision.reason if self.precision else None,
            "compile": "compile" in (self.transforms or ()),
            "compile_reason": self.optimization.compile.reason,
            "micro_batch_reason": self.optimization.micro_batch_reason,
            "accumulate_grad_batches": self.optimization.accumulate_grad_batches,
            "transforms": list(self.transforms or ()),
            "fp8": self._float8_figures(),
            "fp8_reason": self.optimization.fp8.reason,
            "channels_last_reason": self.optimization.channels_last_reason,
        }

    def _float8_figures(self) -> dict[str, Any] | None:
        """The recipe, why float8 runs, and the converted (and kept) Linear layers, under
        float8 training."""
        figures = float8_summary(self._model) if self._model is not None else None
        if figures is None:
            return None
        return {"recipe": self.optimization.fp8.recipe, "reason": self.float8_reason, **figures}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._model = pl_module
        if getattr(pl_module, "_lightning_accel_optimized", False):
            return
        strategy = trainer.strategy
        if self.optimization.channels_last == "auto":
            self._decide_channels_last(pl_module, strategy)
        if isinstance(strategy, ShardsAfterTransforms):
            # applied by the strategy's setup, in order, with its sharding last
            strategy.model_transforms = (self.optimization, self.transforms)
        else:
            # the model may still be on the CPU here; the strategy knows where it will run
            device_type = strategy.root_device.type
            apply_model_optimizations(pl_module, self.optimization, device_type, self.transforms)
        pl_module._lightning_accel_optimized = True

    def _decide_channels_last(self, model: nn.Module, strategy: pl.strategies.Strategy) -> None:
        """``channels_last: auto`` in a Trainer built without the runner (which decides it
        before launch): on where ``model`` has convolution weights and ``strategy`` keeps them
        whole. The batches stay as the DataModule makes them; convolutions take either."""
        choice = strategy_channels_last_choice(model, strategy)
        self.optimization = replace(
            self.optimization, channels_last=choice.enabled, channels_last_reason=choice.reason
        )
        if choice.enabled and self.transforms is not None:
            chosen = {*self.transforms, "channels_last"}
            self.transforms = tuple(name for name in TRANSFORM_ORDER if name in chosen)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._float8_all_gathers = float8_all_gathers(pl_module)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._float8_all_gathers:
            precompute_float8_scales(pl_module)
