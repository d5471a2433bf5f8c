"""Whether Lightning's early stopping ended a run, read from the callback or from the
state a checkpoint keeps of it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping

# Lightning's closing words of its reasons, an instruction to the trainer, not a reason
_SIGNAL = " Signaling Trainer to stop."


def early_stop_reason(state: Mapping[str, Any]) -> str | None:
    """Why an ``EarlyStopping`` state (its ``state_dict()``, as checkpoints keep it) stopped
    training, in Lightning's words (``monitored metric val/loss did not improve in the last
    5 records. Best score: 1.873``); None where it did not. Lightning 2.6 records the reason;
    2.5 only the wait against the patience, which also holds on a rank whose own check did
    not fire where another rank's did."""
    reason, waited, patience = (state.get(k) for k in ("stopping_reason", "wait_count", "patience"))
    exhausted = isinstance(waited, int) and isinstance(patience, int) and waited >= patience
    if reason in (None, 0) and not exhausted:
        return None
    message = state.get("stopping_reason_message")
    if isinstance(message, str) and message:
        message = message.removesuffix(_SIGNAL).rstrip(".")
        return message[:1].lower() + message[1:]
    return f"the monitored metric did not improve in the last {waited} records"


def saved_early_stop(
    callback_states: Mapping[str, Any], stoppers: Iterable[EarlyStopping]
) -> str | None:
    """Why the first of ``stoppers`` whose state a checkpoint keeps (``callback_states``,
    its ``callbacks`` entry) stopped the run that saved it; None where none did. Lightning
    restores each state by the callback's ``state_key`` (its class, monitor and mode), so
    an early stopping configured otherwise starts afresh and is not asked."""
    for stopper in stoppers:
        state = callback_states.get(stopper.state_key)
        if isinstance(state, Mapping) and (reason := early_stop_reason(state)):
            return reason
    return None


def fit_stopped_early(trainer: pl.Trainer) -> str | None:
    """Why an early stopping callback ended the trainer's fit before its step and epoch
    limits; None where it did not (a check that fired but was held back by ``min_steps``
    until a limit ended the fit counts as not)."""
    if 0 < trainer.max_steps <= trainer.global_step:
        return None
    if trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch:
        return None
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, EarlyStopping):
            if reason := early_stop_reason(callback.state_dict()):
                return reason
    return None
