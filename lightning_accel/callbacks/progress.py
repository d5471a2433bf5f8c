"""A rich progress bar that reads well for step-bounded runs."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar
from typing_extensions import override


class RunProgressBar(RichProgressBar):
    """Lightning's rich progress bar, labelled with the step budget instead of an epoch
    count when the run is bounded by ``max_steps`` (Lightning shows ``Epoch 0/-2`` there),
    and reading the logged metrics only every ``log_every_n_steps`` training steps:
    Lightning's bar reads them every step, which waits for the accelerator each time.

    Takes the same options as :class:`~lightning.pytorch.callbacks.RichProgressBar`.
    """

    _shown: dict[str, Any] | None = None  # the metrics on the bar

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        if (
            self._shown is None
            or not trainer.training
            or not trainer.global_step % trainer.log_every_n_steps
        ):
            self._shown = super().get_metrics(trainer, pl_module)
        return self._shown

    @override  # no public hook sets the label; tests/test_upstream_pins.py pins it
    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch} · max {trainer.max_steps} steps"
        width = len(self.validation_description)
        return description.ljust(width) if len(description) < width else description
