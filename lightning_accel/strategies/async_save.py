"""Sharded checkpoints written in the background while training goes on, published whole."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from lightning_accel.checkpoints import SHARDED_META, publish_directory, stage_directory


@dataclass
class PendingSave:
    """A checkpoint being written: the write's future, where it goes and where it will be."""

    future: Future
    staging: Path
    target: Path


class AsyncShardWriter:
    """Writes sharded checkpoints with torch.distributed.checkpoint's ``async_save``: the
    call returns once the state is copied to host memory, and the files are written by a
    background thread that talks over a process group of its own (gloo), so its
    collectives never interleave with training's. A checkpoint is published (renamed into
    place) only when every rank's write has finished, at the next save or when training
    ends (:meth:`finish`); until then the previous one stays where it was, whole.

    ``blocked_seconds`` adds up the time training waited in :meth:`save` and
    :meth:`finish`.
    """

    def __init__(self) -> None:
        self.group: dist.ProcessGroup | None = None
        self.pending: PendingSave | None = None
        self.blocked_seconds = 0.0

    def save(
        self,
        state: dict[str, Any],
        metadata: dict[str, Any],
        target: Path,
        is_writer: bool,
        barrier: Any,
    ) -> None:
        """Start writing ``state`` (sharded) and ``metadata`` (by the writer) for ``target``."""
        started = time.perf_counter()
        self._publish(is_writer, barrier)
        if self.group is None:
            self.group = dist.new_group(backend="gloo")
        staging = stage_directory(target, is_writer, barrier)
        if is_writer:
            torch.save(metadata, staging / SHARDED_META)
        future = dcp.async_save(state, checkpoint_id=staging, process_group=self.group)
        self.pending = PendingSave(future, staging, target)  # type: ignore[arg-type]
        self.blocked_seconds += time.perf_counter() - started

    def finish(self, is_writer: bool, barrier: Any) -> None:
        """Wait for the checkpoint being written, if any, and publish it."""
        started = time.perf_counter()
        self._publish(is_writer, barrier)
        self.blocked_seconds += time.perf_counter() - started

    def _publish(self, is_writer: bool, barrier: Any) -> None:
        if self.pending is None:
            return
        pending, self.pending = self.pending, None
        pending.future.result()
        publish_directory(pending.target, pending.staging, is_writer, barrier)
