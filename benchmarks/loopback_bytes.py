"""A callback the layout benchmark adds to its runs: bytes the CPU twins' collectives move
per training step, read from the loopback interface's counter. gloo connects the ranks of
one machine over TCP on ``lo``, so the counter sees every byte every rank sends; nothing
else on the machine should use ``lo`` while the benchmark runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


def loopback_bytes_sent() -> int:
    """Bytes sent over ``lo`` since boot (``/proc/net/dev``)."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            return int(counters.split()[8])
    raise RuntimeError("no loopback interface in /proc/net/dev")


class LoopbackBytes(pl.Callback):
    """Counts loopback bytes from the start of step ``start`` to the end of the last step
    and writes bytes per step and per rank to ``path`` (JSON), on rank 0.

    Args:
        path: where the figures go.
        start: the first counted step (the ones before it set up buffers and caches).
    """

    def __init__(self, path: str, start: int = 2) -> None:
        self.path = Path(path)
        self.start = start
        self.first: int | None = None
        self.last: tuple[int, int] | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.is_global_zero and self.first is None and trainer.global_step == self.start:
            self.first = loopback_bytes_sent()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.is_global_zero and self.first is not None:
            self.last = (trainer.global_step, loopback_bytes_sent())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or self.first is None or self.last is None:
            return
        steps, sent = self.last[0] - self.start, self.last[1] - self.first
        figures = {"steps": steps, "world": trainer.world_size}
        figures["bytes_per_rank_step"] = sent / steps / trainer.world_size
        self.path.write_text(json.dumps(figures) + "\n")
