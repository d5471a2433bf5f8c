"""Lightning's ModelCheckpoint whose ``last`` checkpoint is the run's newest state, and
resumes inside an epoch that a step or time limit cut short."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override


class RunCheckpoint(ModelCheckpoint):
    """:class:`ModelCheckpoint` (same arguments) whose ``last`` checkpoint is the newest
    state of the run: saved at every validation (or epoch end, where it saves there) and
    where training ends.

    Lightning saves ``last`` only beside a top-k checkpoint of the same step, and at the end
    only when the run saved none before. With ``save_top_k=1`` on a monitored metric, a
    validation that did not improve it saved nothing, so a run restarted after a kill went
    back to its last improvement; and a run that ``max_steps`` or ``max_time`` ended between
    two validations (``max_steps=250``, validation every 100 steps) kept ``last.ckpt`` at
    step 200, so ``validate`` and ``test`` judged the step-200 weights and a raised
    ``max_steps`` trained steps 200 to 250 again. Here ``last`` follows every save point
    that moved the step on (``save_last=True``; with ``save_last="link"`` Lightning's own
    behaviour is kept, since its link points at a top-k file).

    A checkpoint saved at the end of training, where the limit ended the epoch before its
    data ran out, records that epoch as unfinished: Lightning has counted it complete by
    then, and a run continued from it (a raised ``max_steps``) would skip the rest of the
    epoch's batches and so differ from one trained to the same step without a stop.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._training_ended = False

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_where_behind(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_where_behind(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._training_ended = True
        try:
            super().on_train_end(trainer, pl_module)
            self._save_last_where_behind(trainer)
        finally:
            self._training_ended = False

    def _save_last_where_behind(self, trainer: pl.Trainer) -> None:
        # private Lightning API (pinned by tests/test_upstream_pins.py): the skip rule (a
        # step already saved, sanity checking, not fitting) and the save its hooks make
        if self.save_last is True and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

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
