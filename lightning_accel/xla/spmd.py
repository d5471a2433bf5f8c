"""SPMD on XLA: one process drives every device of a mesh; batches split on the batch
dimension, parameters split FSDP-style, and the compiler inserts the collectives."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.pytorch.strategies import SingleDeviceXLAStrategy, StrategyRegistry

from lightning_accel.errors import ConfigError
from lightning_accel.xla import runtime

MESH_AXES = ("data", "fsdp")


def mesh_shape(data: int, fsdp: int, devices: int) -> tuple[int, int]:
    """The (data, fsdp) mesh over ``devices``; one axis may be -1 (all that remain)."""
    if data == -1 and fsdp == -1:
        raise ConfigError("hardware.strategy_options.mesh", [data, fsdp], "has two -1 axes")
    data = devices // fsdp if data == -1 else data
    fsdp = devices // data if fsdp == -1 else fsdp
    if data < 1 or fsdp < 1 or data * fsdp != devices:
        raise ConfigError(
            "hardware.strategy_options.mesh",
            [data, fsdp],
            f"must multiply to the {devices} devices here (data x fsdp)",
        )
    return data, fsdp


def parameter_spec(shape: Sequence[int], fsdp: int) -> tuple[Any, ...]:
    """How a parameter is split FSDP-style: its first dimension over the ``fsdp`` axis when
    that axis divides it, else kept whole on every device."""
    if not shape or fsdp == 1 or shape[0] % fsdp:
        return (None,) * len(shape)
    return ("fsdp",) + (None,) * (len(shape) - 1)


class XLASPMDStrategy(SingleDeviceXLAStrategy):
    """Lightning strategy for XLA SPMD: one process, every device of a ``data`` x ``fsdp``
    mesh. Each batch is split on its first dimension over both axes as it reaches the device;
    each parameter is split on its first dimension over ``fsdp`` (kept whole where the axis
    does not divide it). Registered as ``"xla_spmd"``.

    Args:
        data: devices along the data-parallel axis (-1: all that ``fsdp`` leaves).
        fsdp: devices along the parameter-sharding axis (-1: all that ``data`` leaves).
    """

    strategy_name = "xla_spmd"

    def __init__(self, data: int = -1, fsdp: int = 1, **kwargs: Any) -> None:
        runtime.use_spmd()  # before any tensor reaches an XLA device
        super().__init__(device=0, **kwargs)
        self.mesh_sizes = mesh_shape(data, fsdp, runtime.global_device_count())
        self.mesh = runtime.mesh(self.mesh_sizes, MESH_AXES)

    @property
    def data_parallel_size(self) -> int:
        return math.prod(self.mesh_sizes)

    def setup(self, trainer: pl.Trainer) -> None:
        self._check_batch_size(trainer)
        super().setup(trainer)
        assert self.model is not None
        self.shard_parameters(self.model)

    def shard_parameters(self, module: torch.nn.Module) -> None:
        """Split each parameter of ``module`` (on the XLA device) FSDP-style over the mesh."""
        for parameter in module.parameters():
            spec = parameter_spec(parameter.shape, self.mesh_sizes[1])
            runtime.mark_sharding(parameter, self.mesh, spec)

    def _check_batch_size(self, trainer: pl.Trainer) -> None:
        batch_size = getattr(trainer.datamodule, "batch_size", None)
        if batch_size is not None and batch_size % self.data_parallel_size:
            raise ConfigError(
                "data.batch_size",
                batch_size,
                f"is not divisible by the {self.data_parallel_size} devices it is split over",
            )

    def batch_to_device(
        self, batch: Any, device: torch.device | None = None, dataloader_idx: int = 0
    ) -> Any:
        def split(tensor: torch.Tensor) -> torch.Tensor:
            if tensor.device.type == "xla" or not tensor.ndim:
                return tensor
            spec = (MESH_AXES,) + (None,) * (tensor.ndim - 1)
            return runtime.send_sharded(tensor, self.mesh, spec)

        # split on the way to the devices; then the module's own transfer hooks run
        batch = apply_to_collection(batch, torch.Tensor, split)
        return super().batch_to_device(batch, device, dataloader_idx)

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        strategy_registry.register(cls.strategy_name, cls, description=cls.__doc__)


if XLASPMDStrategy.strategy_name not in StrategyRegistry:
    XLASPMDStrategy.register_strategies(StrategyRegistry)
