"""Measuring the tensor memory of one real training step, per rank: the reference that
``lightning-accel plan``'s predictions are checked against (on any device, the CPU too)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.distributed._tools.mem_tracker import MemTracker
from torch.distributed.tensor import DTensor
from typing_extensions import override


def storage_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a DTensor's local shard, with the
    padding its storage holds)."""
    sizes = {}
    for tensor in tensors:
        if not isinstance(tensor, torch.Tensor) or tensor.dim() == 0:
            continue
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        storage = local.untyped_storage()
        sizes[storage.data_ptr()] = storage.nbytes()
    return sum(sizes.values())


class MemoryProbe(pl.Callback):
    """Tracks every tensor of one training step (forward, backward and optimizer step) with
    torch's ``MemTracker`` and records the peak (``Total``, in bytes, with MemTracker's
    split by kind, which under Lightning's optimizer closure counts the step's activations
    as optimizer state), and, exactly, the bytes of this rank's parameters
    (``parameter_bytes``) and optimizer state (``optimizer_state_bytes``) after the step.

    Args:
        step: the optimizer step measured (later than the first, so that the optimizer
            state exists, as it does for the rest of training).
        output_dir: where ``memory_probe_rank<N>.json`` is written (``None``: kept in
            :attr:`peak` only).
    """

    def __init__(self, step: int = 2, output_dir: str | None = None) -> None:
        self.step = step
        self.output_dir = output_dir
        self.peak: dict[str, int] = {}
        self._tracker: MemTracker | None = None

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step != self.step or self._tracker is not None or self.peak:
            return
        self._tracker = MemTracker()
        self._tracker.track_external(pl_module, *trainer.optimizers)
        self._tracker.__enter__()

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._tracker is None:
            return
        self._tracker.__exit__(None, None, None)
        snapshot = self._tracker.get_tracker_snapshot("peak")
        self._tracker = None
        totals: dict[str, int] = {}
        for by_kind in snapshot.values():
            for kind, size in by_kind.items():
                name = str(getattr(kind, "name", kind))
                totals[name] = totals.get(name, 0) + int(size)
        totals["parameter_bytes"] = storage_bytes(pl_module.parameters())
        totals["optimizer_state_bytes"] = storage_bytes(
            value
            for optimizer in trainer.optimizers
            for state in optimizer.state.values()
            for value in state.values()
        )
        self.peak = totals
        if self.output_dir is not None:
            path = Path(self.output_dir) / f"memory_probe_rank{trainer.global_rank}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(totals, indent=2))
