"""Model transforms applied in place before training: activation checkpointing, compile,
channels_last."""

from lightning_accel.optimize.blocks import find_repeated_blocks
from lightning_accel.optimize.transforms import (
    ModelOptimizations,
    apply_model_optimizations,
    check_model_optimizations,
    model_transforms,
)

__all__ = [
    "ModelOptimizations",
    "apply_model_optimizations",
    "check_model_optimizations",
    "find_repeated_blocks",
    "model_transforms",
]
