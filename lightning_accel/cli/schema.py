"""The structured config of a whole run, registered in Hydra's ConfigStore as ``run_schema``.

``conf/config.yaml`` lists ``run_schema`` first in its defaults, so every key and type a run
uses is checked against these dataclasses while Hydra composes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from lightning_accel.config import HardwareConfig, OptimizationConfig, TrainerConfig


@dataclass
class RunConfig:
    """One run: three profiles (hardware, optimization, trainer), what to train (``model``
    and ``data``, each a ``_target_`` node), logging, callbacks and where outputs go.

    Key options: ``recipe`` (name of the preset that filled model and data), ``seed``,
    ``ckpt_path`` (a Lightning checkpoint to resume from), ``run_dir`` (Hydra's output
    directory unless overridden).
    """

    recipe: str = "custom"
    seed: int = 0
    run_dir: str = "${hydra:runtime.output_dir}"
    ckpt_path: str | None = None
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] | None = None
    callbacks: dict[str, Any] = field(default_factory=dict)


def register_schemas() -> None:
    """Register :class:`RunConfig` with Hydra (idempotent)."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
