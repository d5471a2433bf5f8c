"""Every rank evaluates and saves with the first rank's buffers, as under DDP."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from typing_extensions import override


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers of ``module`` (DTensors, which their mesh keeps
    consistent, aside)."""
    for buffer in module.buffers():
        if not isinstance(buffer, DTensor):
            dist.broadcast(buffer, src=0)


class RankZeroBuffers:
    """Strategy mixin: validation, test, predict and every checkpoint use rank 0's buffers
    (BatchNorm's running statistics) on every rank, as under DDP, which broadcasts rank 0's
    buffers before each forward. FSDP2 neither shards nor synchronizes buffers: each rank's
    running statistics followed its own batches, so the ranks validated different models
    (a run's logged validation mixed them, and differed from validating its checkpoint) and
    a checkpoint held the statistics of whichever rank its planner picked. Broadcast where
    they are used, the statistics are rank 0's as DDP's are. Put it before the Lightning
    strategy among the bases.
    """

    def _share_buffers(self) -> None:
        module = self.lightning_module  # type: ignore[attr-defined]
        if module is not None and dist.is_available() and dist.is_initialized():
            broadcast_buffers(module)

    @override
    def on_validation_start(self) -> None:
        self._share_buffers()
        super().on_validation_start()  # type: ignore[misc]

    @override
    def on_test_start(self) -> None:
        self._share_buffers()
        super().on_test_start()  # type: ignore[misc]

    @override
    def on_predict_start(self) -> None:
        self._share_buffers()
        super().on_predict_start()  # type: ignore[misc]

    @override
    def lightning_module_state_dict(self) -> dict[str, Any]:
        self._share_buffers()
        return super().lightning_module_state_dict()  # type: ignore[misc]
