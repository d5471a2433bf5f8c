"""Killing one rank at a chosen point of training, as an out-of-memory kill or a lost node
would: for proving that a run under ``launcher=torchrun`` with restarts loses no step."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from typing_extensions import override

from lightning_accel.errors import ConfigError

FAULT_POINTS = ("training_step", "validation", "checkpoint_write", "data_loading", "after_save")
# the rank that writes a checkpoint's loop state (the whole file under DDP)
WRITER_RANK = 0


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _KillWhenPickled:
    """Kills its process while the checkpoint holding it is serialized: mid-write."""

    def __reduce__(self) -> tuple:
        _kill()
        return (int, ())


class _KillingCollate:
    """A DataLoader's collate function that kills the process once ``armed()`` says so."""

    def __init__(self, collate: Callable[[list[Any]], Any], armed: Callable[[], bool]) -> None:
        self.collate, self.armed = collate, armed

    def __call__(self, samples: list[Any]) -> Any:
        if self.armed():
            _kill()
        return self.collate(samples)


class KillRank(pl.Callback):
    """SIGKILLs global rank ``rank`` once, at ``point``, at or after optimizer step ``step``,
    in a run's first attempt only (torch elastic counts restarts in
    ``TORCHELASTIC_RESTART_COUNT``); the restarted run must then resume from its last
    complete checkpoint and end with the weights of an uninterrupted run.

    Args:
        point: ``training_step`` (between forward and backward), ``validation`` (in a
            validation batch), ``checkpoint_write`` (while a checkpoint is being written;
            always rank 0, which writes the loop state), ``data_loading`` (while a training
            batch is collated; needs ``num_workers=0``) or ``after_save`` (as the first
            batch after a complete checkpoint starts).
        step: the optimizer step from which the point is armed.
        rank: the global rank killed.
    """

    def __init__(self, point: str, step: int, rank: int = 1) -> None:
        if point not in FAULT_POINTS:
            raise ConfigError("point", point, "is not a fault point", FAULT_POINTS)
        self.point, self.step = point, step
        self.rank = WRITER_RANK if point == "checkpoint_write" else rank
        self._saved = False

    def _armed(self, trainer: pl.Trainer, point: str) -> bool:
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        return (
            first_attempt
            and point == self.point
            and trainer.global_rank == self.rank
            and trainer.global_step >= self.step
            and not trainer.sanity_checking
        )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        if self.point == "data_loading" and loader is not None:
            armed = lambda: self._armed(trainer, "data_loading")  # noqa: E731
            loader.collate_fn = _KillingCollate(loader.collate_fn, armed)

    @override
    def on_before_backward(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._armed(trainer, "training_step"):
            _kill()

    @override
    def on_validation_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._armed(trainer, "validation"):
            _kill()

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._armed(trainer, "checkpoint_write"):
            checkpoint["kill"] = _KillWhenPickled()
        self._saved = self._armed(trainer, "after_save")

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._saved:
            _kill()


def fault_schedule(seed: int, count: int, max_steps: int, ranks: int) -> list[KillRank]:
    """``count`` faults chosen by ``seed``: the points in turn, shuffled, each at a step in
    ``[1, max_steps - 2]`` and on a random rank (``checkpoint_write``: rank 0)."""
    chooser = random.Random(seed)
    points = [FAULT_POINTS[i % len(FAULT_POINTS)] for i in range(count)]
    chooser.shuffle(points)
    return [
        KillRank(point, chooser.randint(1, max_steps - 2), chooser.randrange(ranks))
        for point in points
    ]
