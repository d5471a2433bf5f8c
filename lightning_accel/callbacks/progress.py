"""A rich progress bar that reads well for step-bounded runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar
from typing_extensions import override

from lightning_accel.callbacks.logged_steps import unread_logged_step


class RunProgressBar(RichProgressBar):
    """Lightning's rich progress bar, labelled with the step budget instead of an epoch
    count when the run is bounded by ``max_steps`` (Lightning shows ``Epoch 0/-2`` there),
    and reading the logged metrics only every ``log_every_n_steps`` training steps:
    Lightning's bar reads them every step, which waits for the accelerator each time.

    Under gradient accumulation its count of training batches ends where the run ends:
    Lightning counts a step-bounded epoch's remaining optimizer steps as batches, so a run
    of 6 steps of 4 batches each showed ``24/6`` (Lightning PR #21802, open). A run
    resumed inside an epoch counts on from the batches it had trained (it showed ``50/20``
    for steps 30 to 50).

    It also shows ``training_metrics``, logged training metrics read at those steps only.
    The pack's models log their training loss without ``prog_bar=True``: Lightning turns
    every ``prog_bar`` metric into a number after every batch, which, like the bar's own
    reading, waits for the accelerator each step.

    Args:
        *args, **kwargs: the options of :class:`~lightning.pytorch.callbacks.RichProgressBar`.
        training_metrics: names of logged training metrics to show.
    """

    _shown: dict[str, Any] | None = None  # the metrics on the bar
    _read_at_step: int | None = None  # the optimizer step they were read at in training

    def __init__(
        self, *args: Any, training_metrics: Sequence[str] = ("train/loss",), **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.training_metrics = tuple(training_metrics)
        self._training: dict[str, float] = {}  # their values at the last reading

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        step, interval = trainer.global_step, trainer.log_every_n_steps
        # an interval of 0 logs, and shows, no training metric
        due = unread_logged_step(step, interval, self._read_at_step)
        if self._shown is None or not trainer.training or due:
            if trainer.training and interval:
                self._read_at_step = step
                logged = trainer.callback_metrics
                self._training = {
                    name: float(logged[name]) for name in self.training_metrics if name in logged
                }
            self._shown = {**self._training, **super().get_metrics(trainer, pl_module)}
        return self._shown

    @property
    @override
    def total_train_batches(self) -> int | float:
        trainer = self.trainer
        if trainer.max_epochs == -1 and trainer.max_steps is not None and trainer.max_steps > 0:
            # batches of this epoch a resumed run had trained: the count goes on from there
            done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
            steps_left = trainer.max_steps - trainer.global_step
            batches_left = steps_left * trainer.accumulate_grad_batches
            return done + min(trainer.num_training_batches - done, batches_left)
        return super().total_train_batches

    @override  # no public hook sets the label; tests/test_upstream_pins.py pins it
    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch} · max {trainer.max_steps} steps"
        width = len(self.validation_description)
        return description.ljust(width) if len(description) < width else description
