"""Lightning's EMA weight averaging whose checkpoint saved where training ends can be
trained on from."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from typing_extensions import override


class ResumableEMA(EMAWeightAveraging):
    """:class:`EMAWeightAveraging` (same arguments: ``decay``, ``update_every_n_steps``,
    ``update_starting_at_step``, ``update_starting_at_epoch``, ``device``) whose checkpoints
    all hold the weights training goes on from.

    Lightning copies the average into the model when training ends, and the checkpoint
    callbacks save there after it (they run last), so the ``current_model_state`` of that
    checkpoint held the average too. A run continued from it (a raised ``max_steps``)
    trained on from the averaged weights with the optimizer state of the trained ones,
    and ended elsewhere than a run trained to the same step without a stop. Here the
    trained weights are kept at that moment (in host memory) and saved as
    ``current_model_state``; the ``state_dict`` is the average, as before.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trained_weights: dict[str, torch.Tensor] | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._trained_weights = None

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # in host memory: a run whose model, average and optimizer state fill the device
        # must not fail at its end for a third copy of the weights
        self._trained_weights = {
            name: value.detach().to("cpu", copy=True)
            for name, value in pl_module.state_dict().items()
        }
        super().on_train_end(trainer, pl_module)

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._trained_weights is not None and "current_model_state" in checkpoint:
            checkpoint["current_model_state"] = self._trained_weights
