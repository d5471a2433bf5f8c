"""The base the pack's reference models share: data checked at setup, testing as
validation, evaluation metrics logged per epoch, and the AdamW set-up of
:mod:`lightning_accel.models.optimizers`."""

from __future__ import annotations

from typing import ClassVar

import lightning.pytorch as pl
import torch
from torchmetrics import Metric
from typing_extensions import override

from lightning_accel.models.optimizers import adamw_with_warmup_cosine


class ReferenceModule(pl.LightningModule):
    """A LightningModule that trains ``self.model`` and evaluates it with torchmetrics.

    A subclass defines ``validation_step`` (updating its metrics), ``evaluation_results``
    (what each evaluation epoch logs) and, where its data can disagree with its shape,
    ``check_data``. Its hyperparameters must hold ``learning_rate``, ``weight_decay`` and
    ``warmup_steps``.

    Args (class attributes):
        adamw_betas: AdamW's betas for this model.
    """

    adamw_betas: ClassVar[tuple[float, float]] = (0.9, 0.999)
    model: torch.nn.Module

    @override
    def setup(self, stage: str) -> None:
        self.check_data(self.trainer.datamodule)

    def check_data(self, data: object) -> None:
        """Fail with a ConfigError naming the key to change where ``data`` does not fit the
        model. The runner calls it before launch, and fitting calls it again from ``setup``;
        this base judges nothing."""

    def evaluation_results(self) -> dict[str, tuple[torch.Tensor, bool]]:
        """Each logged name (without its ``val/``/``test/`` prefix) with its value over the
        epoch and whether the progress bar shows it."""
        raise NotImplementedError

    @override
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def _log_evaluation(self, prefix: str) -> None:
        for name, (value, on_progress_bar) in self.evaluation_results().items():
            # the metrics are already reduced over ranks; sync_dist only states it
            self.log(f"{prefix}/{name}", value, prog_bar=on_progress_bar, sync_dist=True)
        for metric in self.children():
            if isinstance(metric, Metric):
                metric.reset()

    @override
    def configure_optimizers(self):  # noqa: ANN201 - Lightning's own return convention
        return adamw_with_warmup_cosine(
            self,
            self.model.named_parameters(),
            self.hparams.learning_rate,
            self.hparams.weight_decay,
            self.hparams.warmup_steps,
            betas=self.adamw_betas,
        )
