"""Lightning's ModelCheckpoint whose ``last`` checkpoint holds the step where training
ended, and resumes from there inside the epoch."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override


class RunCheckpoint(ModelCheckpoint):
    """:class:`ModelCheckpoint` (same arguments) that saves ``last`` where training ends.

    Lightning saves ``last`` at the end of training only when the run saved none before:
    a run whose ``max_steps`` or ``max_time`` ended it between two saves (``max_steps=250``
    with validation, hence checkpoints, every 100 steps) kept ``last.ckpt`` at step 200.
    Its final steps were missing from the checkpoint: ``validate`` and ``test`` judged the
    step-200 weights, and raising ``max_steps`` to train on repeated steps 200 to 250. Here
    ``last`` is saved again at the end whenever the step moved on since the last save
    (``save_last=True``; with ``save_last="link"`` Lightning's own behaviour is kept, since
    its link would point at the earlier checkpoint).

    A checkpoint saved at the end of training, where the limit ended the epoch before its
    data ran out, records that epoch as unfinished: Lightning has counted it complete by
    then, and a run continued from it (a raised ``max_steps``) would skip the rest of the
    epoch's batches and so differ from one trained to the same step without a stop.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._training_ended = False

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._training_ended = True
        try:
            super().on_train_end(trainer, pl_module)
            # private Lightning API (pinned by tests/test_upstream_pins.py): the skip rule
            # (a step already saved, sanity checking, fast_dev_run) and its own hooks' save
            if self.save_last is True and not self._should_skip_saving_checkpoint(trainer):
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        finally:
            self._training_ended = False

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._training_ended and not _epoch_ran_out(trainer):
            _reopen_last_epoch(checkpoint)


def _epoch_ran_out(trainer: pl.Trainer) -> bool:
    """Whether the current epoch ended because its batches did (not a step or time limit)."""
    batches = trainer.fit_loop.epoch_loop.batch_progress
    return batches.is_last_batch or batches.current.ready >= trainer.num_training_batches


def _reopen_last_epoch(checkpoint: dict[str, Any]) -> None:
    """Mark the checkpoint's last epoch as started, not finished, as a checkpoint saved
    inside it is: resuming goes on with its next batch."""
    progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]
    for counts in (progress["current"], progress["total"]):
        counts["processed"] -= 1
        counts["completed"] -= 1
    checkpoint["epoch"] -= 1
