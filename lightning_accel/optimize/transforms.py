"""Apply an optimization profile's model transforms, in place, in torchtitan's order:
activation checkpointing, then compile, then memory format."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    checkpoint_wrapper,
)
from torchmetrics import Metric

from lightning_accel.config import OptimizationConfig
from lightning_accel.errors import ConfigError
from lightning_accel.optimize.blocks import find_repeated_blocks
from lightning_accel.precision import PrecisionChoice


def check_model_optimizations(model: nn.Module, optimization: OptimizationConfig) -> None:
    """Fail unless ``model`` has what the profile's transforms need (repeated blocks)."""
    compile_config = optimization.compile
    needs_blocks = {
        "optimization.activation_checkpointing.enabled": (
            optimization.activation_checkpointing.enabled
        ),
        "optimization.compile.per_block": compile_config.enabled is not False
        and compile_config.per_block,
    }
    for key, needed in needs_blocks.items():
        if needed and not find_repeated_blocks(model):
            raise ConfigError(
                key,
                True,
                f"needs repeated blocks, but {type(model).__name__} has no ModuleList or "
                "Sequential of same-class modules",
            )


def _checkpoint_blocks(model: nn.Module, every_k: int, device_type: str = "cpu") -> int:
    blocks = find_repeated_blocks(model)
    options = {"checkpoint_impl": CheckpointImpl.NO_REENTRANT}
    if device_type == "xla":
        from lightning_accel.xla import runtime

        options = {"checkpoint_fn": runtime.checkpoint_function()}
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
        # The wrapper strips its own prefix from state_dict keys, so checkpoints stay portable.
        setattr(parent, name, checkpoint_wrapper(block, **options))
        wrapped += 1
    return wrapped


def _compile(model: nn.Module, mode: str | None, backend: str, per_block: bool) -> None:
    # nn.Module.compile works in place, so state_dict keys carry no `_orig_mod.` prefix.
    if per_block:
        targets = find_repeated_blocks(model)
    else:
        targets = [
            child
            for child in model.children()
            if not isinstance(child, Metric) and any(True for _ in child.parameters())
        ]
    for target in targets:
        target.compile(mode=mode, backend=backend)


def apply_model_optimizations(
    model: nn.Module, optimization: OptimizationConfig, accelerator: str = "cpu"
) -> None:
    """Transform ``model`` in place as ``optimization`` asks (and set the process-wide
    float32 matmul precision when the profile names one)."""
    check_model_optimizations(model, optimization)
    if optimization.float32_matmul_precision is not None:
        torch.set_float32_matmul_precision(optimization.float32_matmul_precision)
    if optimization.activation_checkpointing.enabled:
        every_k = optimization.activation_checkpointing.every_k_blocks
        _checkpoint_blocks(model, every_k, accelerator)
    if optimization.compile.active_on(accelerator):
        compile_config = optimization.compile
        _compile(model, compile_config.mode, compile_config.backend, compile_config.per_block)
    if optimization.channels_last:
        model.to(memory_format=torch.channels_last)


class ModelOptimizations(pl.Callback):
    """Applies an optimization profile's model transforms when training is set up, so they
    work on any LightningModule passed to ``Trainer.fit``.

    Args:
        optimization: the profile; only its model transforms are read here (precision and
            step knobs go to the Trainer).
        precision: the precision the Trainer was given and why, for the run's records.
    """

    def __init__(
        self, optimization: OptimizationConfig, precision: PrecisionChoice | None = None
    ) -> None:
        self.optimization = optimization
        self.precision = precision

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if getattr(pl_module, "_lightning_accel_optimized", False):
            return
        # the model may still be on the CPU here; the strategy knows where it will run
        apply_model_optimizations(pl_module, self.optimization, trainer.strategy.root_device.type)
        pl_module._lightning_accel_optimized = True
