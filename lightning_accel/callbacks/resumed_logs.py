"""Brings a run's ``metrics.csv`` back to the step its fit starts at."""

from __future__ import annotations

import lightning.pytorch as pl
from typing_extensions import override

from lightning_accel.loggers import RunCSVLogger


class ResumedLogs(pl.Callback):
    """Calls :meth:`RunCSVLogger.continue_from` with the step a fit starts at, for each
    :class:`RunCSVLogger` of the trainer: the rows an attempt killed after its checkpoint
    logged past it go (the resumed run logs those steps again), and a fresh start in the
    directory of an earlier run begins an empty history. No options; it does nothing for
    other loggers. The runner adds one to every run."""

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the loops are restored by now, and nothing has been logged since the fit began
        for logger in trainer.loggers:
            if isinstance(logger, RunCSVLogger):
                logger.continue_from(trainer.global_step)
