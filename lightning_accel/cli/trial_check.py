"""A search's trial that would end before its first validation fails as it starts.

A search reads each trial's objective from its validations. Where the validation interval
is a fraction of an epoch, or validation waits for a later epoch, whether a trial validates
at all depends on the epoch's length, which is known only once fitting starts: the
preflight checks what the config alone tells (:func:`~lightning_accel.cli.search.
check_trials_validate`), this callback the rest, before the first step rather than after
the last one.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_accel.cli.schema import RunConfig
from lightning_accel.errors import ConfigError

_CALLBACK_KEY = "trial_validates"


class TrialValidates(Callback):
    """Fails when fitting starts if the run ends before its first validation, so that a
    search's trial that would never log its objective stops at once.

    Args:
        objective: the metric the search optimizes (named in the error).
    """

    def __init__(self, objective: str) -> None:
        self.objective = objective

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step > 0:  # a resumed trial: it validated before, or does so now
            return
        first, last = first_validation_batch(trainer), last_training_batch(trainer)
        if first is None or last is None or first <= last:
            return
        by_steps = last == trainer.max_steps * trainer.accumulate_grad_batches
        bound = f"max_steps={trainer.max_steps}" if by_steps else f"max_epochs={trainer.max_epochs}"
        raise ConfigError(
            "trainer.val_check_interval",
            trainer.val_check_interval,
            f"first validates after training batch {first} (an epoch has "
            f"{trainer.num_training_batches}), but the trial ends after batch {last} "
            f"(trainer.{bound}), so objective={self.objective!r} is never logged; validate "
            "sooner or train longer",
        )


def first_validation_batch(trainer: pl.Trainer) -> int | None:
    """The count of training batches after which Lightning first validates; None where it
    cannot be told (validation by time, or an epoch without a length)."""
    interval, per_epoch = trainer.val_check_batch, trainer.num_training_batches
    if interval is None or math.isinf(interval) or math.isinf(per_epoch):
        return None
    every_epochs = trainer.check_val_every_n_epoch
    if every_epochs is None:  # counted across epochs
        return int(interval)
    return (every_epochs - 1) * int(per_epoch) + int(interval)


def last_training_batch(trainer: pl.Trainer) -> int | None:
    """The count of training batches the fit runs, the lower of ``max_steps`` (each step
    ``accumulate_grad_batches`` batches) and ``max_epochs``; None where neither bounds it."""
    bounds = []
    if trainer.max_steps > 0:
        bounds.append(trainer.max_steps * trainer.accumulate_grad_batches)
    if trainer.max_epochs is not None and trainer.max_epochs > 0:
        per_epoch = trainer.num_training_batches
        if not math.isinf(per_epoch):
            bounds.append(trainer.max_epochs * int(per_epoch))
    return min(bounds) if bounds else None


def with_trial_check(run: RunConfig) -> RunConfig:
    """``run`` with :class:`TrialValidates` among its callbacks (in the config file its
    ranks read)."""
    node: dict[str, Any] = {"_target_": f"{__name__}.TrialValidates", "objective": run.objective}
    return replace(run, callbacks={**run.callbacks, _CALLBACK_KEY: node})
