"""The optimizer set-up the pack's models share: AdamW without decay on biases, norms and
embeddings, a linear warm-up, then a cosine decay to 10% of the peak rate."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn


def adamw_with_warmup_cosine(
    module: pl.LightningModule,
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    learning_rate: float,
    weight_decay: float,
    warmup_steps: int,
    **adamw: Any,
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` result: AdamW (weight decay on matrices only,
    not on embeddings) stepped per optimizer step along warm-up + cosine over the steps the
    trainer will take (``max_steps``, or what ``max_epochs`` amounts to; no decay for a
    loop without end)."""
    decay, no_decay = [], []
    for name, param in named_parameters:
        (decay if param.ndim >= 2 and "embedding" not in name else no_decay).append(param)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=learning_rate,
        **adamw,
    )
    trainer = module.trainer
    # estimating loads the training data early; max_steps, when set, bounds the run anyway
    total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if math.isinf(total):
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
