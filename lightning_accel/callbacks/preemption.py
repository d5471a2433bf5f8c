"""A checkpoint saved where a run stops on SIGTERM, so that it resumes from that step."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from typing_extensions import override

from lightning_accel.strategies.agreed_stop import stopped_together


class PreemptionCheckpoint(pl.Callback):
    """Saves the ``last`` checkpoint of the trainer's :class:`ModelCheckpoint` when training
    stops on SIGTERM (a preempted or cancelled job, a launcher stopping its ranks), so that
    resuming from it (``ckpt_path``, or the runner's own resume from its run directory) goes
    on from the step where the run stopped rather than from the last periodic checkpoint.

    Saving is a collective for several ranks, so it happens only where every rank stops at
    the same step: one process, or a strategy with :class:`AgreedStopMixin` (``accel_ddp``,
    ``fsdp2``). Elsewhere (Lightning's own DDP stops only the signalled rank) it saves nothing
    and says so. Needs a ``ModelCheckpoint`` with a ``dirpath``; its ``save_last`` naming is
    used (``last.ckpt``).
    """

    saved: Path | None = None

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        saver = trainer.checkpoint_callback
        if not isinstance(exception, SIGTERMException) or not isinstance(saver, ModelCheckpoint):
            return
        if not stopped_together(trainer, exception):
            rank_zero_info(
                f"stopped on SIGTERM at step {trainer.global_step}; no checkpoint saved:"
                f" {type(trainer.strategy).__name__} stops only the signalled rank"
            )
            return
        if saver.dirpath is None:
            return
        path = Path(saver.dirpath) / f"{saver.CHECKPOINT_NAME_LAST}{saver.FILE_EXTENSION}"
        trainer.save_checkpoint(path)
        self.saved = path
