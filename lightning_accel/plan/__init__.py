"""Choosing before launch: what a model's training step needs (measured on fake tensors,
nothing allocated), and its memory, communication and speed under each layout."""

from lightning_accel.plan.footprint import ActivationFootprint, ModelFootprint, measure_footprint
from lightning_accel.plan.layouts import LAYOUTS, LayoutEstimate, RankMemory, Target, estimate
from lightning_accel.plan.model import (
    BatchExample,
    attach_trainer,
    example_batch,
    meta_model,
    read_example_batch,
)

__all__ = [
    "LAYOUTS",
    "ActivationFootprint",
    "attach_trainer",
    "BatchExample",
    "LayoutEstimate",
    "ModelFootprint",
    "RankMemory",
    "Target",
    "estimate",
    "example_batch",
    "measure_footprint",
    "meta_model",
    "read_example_batch",
]
