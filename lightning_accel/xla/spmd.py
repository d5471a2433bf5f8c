"""SPMD on XLA: one process drives every device of a mesh; batches split on the batch
dimension, parameters split FSDP-style, and the compiler inserts the collectives."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.strategies import SingleDeviceXLAStrategy
from typing_extensions import override

from lightning_accel.checkpoints import (
    SHARDED_META,
    atomic_directory,
    local_bytes,
    optimizer_by_index,
    optimizer_by_name,
    sharded_entries,
    sharded_metadata,
    verify_checkpoint,
)
from lightning_accel.config import XLA_CHECKPOINTS, require_choice
from lightning_accel.data.loading import HasBatchSize
from lightning_accel.errors import ConfigError
from lightning_accel.files import check_room
from lightning_accel.safe_load import load_data_file
from lightning_accel.xla import runtime
from lightning_accel.xla.device_loader import DeviceLoading

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


class XLASPMDStrategy(DeviceLoading, SingleDeviceXLAStrategy):
    """Lightning strategy for XLA SPMD: one process, every device of a ``data`` x ``fsdp``
    mesh. Each batch is split on its first dimension over both axes by the parallel device
    loader on its way to the devices; each parameter is split on its first dimension over
    ``fsdp`` (kept whole where the axis does not divide it). Registered as ``"xla_spmd"``.

    Args:
        data: devices along the data-parallel axis (-1: all that ``fsdp`` leaves).
        fsdp: devices along the parameter-sharding axis (-1: all that ``data`` leaves).
        checkpoint: ``sharded`` (default: a directory of each device's pieces written by
            torch.distributed.checkpoint, the loop state in ``meta.pt``; the layout of the
            FSDP2 strategy's checkpoints, so ``lightning-accel consolidate`` turns it into
            one file) or ``gathered`` (one file of CPU tensors, Lightning's XLA layout;
            gathering compiles one graph per parameter and optimizer tensor, seconds each
            on a TPU). The compilations each save costs are counted for the run summary.
    """

    strategy_name = "xla_spmd"

    def __init__(
        self, data: int = -1, fsdp: int = 1, checkpoint: str = "sharded", **kwargs: Any
    ) -> None:
        require_choice("hardware.strategy_options.checkpoint", checkpoint, XLA_CHECKPOINTS)
        runtime.use_spmd()  # before any tensor reaches an XLA device
        super().__init__(device=0, **kwargs)
        self.mesh_sizes = mesh_shape(data, fsdp, runtime.global_device_count())
        self.mesh = runtime.mesh(self.mesh_sizes, MESH_AXES)
        self.checkpoint_format = checkpoint
        self.saves = 0
        self.save_compilations = 0

    @property
    def data_parallel_size(self) -> int:
        return math.prod(self.mesh_sizes)

    @property
    def devices_per_process(self) -> int:
        """Devices this one process drives; FLOPs counted on its global tensors are split
        between them (the speed monitor reads this)."""
        return math.prod(self.mesh_sizes)

    @property
    @override
    def restore_checkpoint_after_setup(self) -> bool:
        # a checkpoint is read once the parameters are on the devices and split, so a
        # sharded one is read piece by piece onto the devices that hold each piece
        return True

    @override
    def setup(self, trainer: pl.Trainer) -> None:
        self._check_batch_size(trainer)
        super().setup(trainer)
        assert self.model is not None
        self.shard_parameters(self.model)

    def shard_parameters(self, module: torch.nn.Module) -> None:
        """Split each parameter of ``module`` (on the XLA device) FSDP-style over the mesh."""
        for parameter in module.parameters():
            runtime.mark_sharding(parameter, self.mesh, self._spec(parameter.shape))

    def _spec(self, shape: Sequence[int]) -> tuple[Any, ...]:
        return parameter_spec(shape, self.mesh_sizes[1])

    def _check_batch_size(self, trainer: pl.Trainer) -> None:
        data = trainer.datamodule
        batch_size = data.batch_size if isinstance(data, HasBatchSize) else None
        if batch_size is not None and batch_size % self.data_parallel_size:
            raise ConfigError(
                "data.batch_size",
                batch_size,
                f"is not divisible by the {self.data_parallel_size} devices it is split over",
            )

    def batch_sharding(self) -> Any:
        return runtime.batch_sharding(self.mesh, MESH_AXES)

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None
    ) -> None:
        before = runtime.compilations()[0]
        self._save(checkpoint, filepath, storage_options)
        self.save_compilations += runtime.compilations()[0] - before
        self.saves += 1

    def summary_figures(self) -> dict[str, Any]:
        """Checkpoint saves and the XLA compilations they cost, for the run summary."""
        return {"checkpoint_saves": self.saves, "checkpoint_compilations": self.save_compilations}

    def _save(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any) -> None:
        if self.checkpoint_format == "gathered":
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        path = Path(filepath)
        names = self._parameter_names()
        pairs = zip(checkpoint.get("optimizer_states", []), self.optimizers, strict=False)
        checkpoint["optimizer_states"] = [optimizer_by_name(s, o, names) for s, o in pairs]
        check_room(path, local_bytes(checkpoint))
        # one process writes every shard: staged and renamed into place, as FSDP2's are
        with atomic_directory(path, True, lambda: None) as staging:
            runtime.save_sharded(sharded_entries(checkpoint), staging)
            torch.save(move_data_to_device(checkpoint, "cpu"), staging / SHARDED_META)

    @override
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> Any:
        path = Path(checkpoint_path)
        verify_checkpoint(path)
        if not path.is_dir():
            return super().load_checkpoint(checkpoint_path, weights_only)
        assert self.lightning_module is not None
        metadata = sharded_metadata(path)
        names = self._parameter_names()
        targets: dict[str, Any] = {
            "state_dict": {
                key: self._target(metadata[f"state_dict.{key}"])
                for key in self.lightning_module.state_dict()
            }
        }
        for index, optimizer in enumerate(self.optimizers):
            prefix = f"optimizer_{index}"
            targets[prefix] = optimizer_by_name(optimizer.state_dict(), optimizer, names)
            targets[prefix]["state"] = {
                name: {
                    key.rsplit(".", 1)[1]: self._target(entry)
                    for key, entry in metadata.items()
                    if key.rsplit(".", 1)[0] == f"{prefix}.state.{name}"
                }
                for name in names.values()
            }
        runtime.load_sharded(targets, path)
        checkpoint = load_data_file(path / SHARDED_META)
        checkpoint["state_dict"] = targets["state_dict"]
        checkpoint["optimizer_states"] = [
            optimizer_by_index(targets[f"optimizer_{index}"])
            for index in range(len(self.optimizers))
        ]
        return checkpoint

    def _target(self, entry: Any) -> torch.Tensor | None:
        """An empty tensor to read a saved tensor into: on the devices, split as a parameter
        of its shape is, when the ``fsdp`` axis splits it, else in host memory (``None``
        for a saved Python value)."""
        if not hasattr(entry, "size"):
            return None
        tensor = torch.empty(entry.size, dtype=entry.properties.dtype)
        spec = self._spec(entry.size)
        if "fsdp" not in spec:
            return tensor
        tensor = tensor.to(self.root_device)
        runtime.mark_sharding(tensor, self.mesh, spec)
        return tensor

    def _parameter_names(self) -> dict[int, str]:
        assert self.lightning_module is not None
        return {id(p): name for name, p in self.lightning_module.named_parameters()}
