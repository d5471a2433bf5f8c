"""Reading whether early stopping ended a fit: from the callback where a fit ends (the run
summary's ``stopped_early``) and from a checkpoint's callback state (a repeated run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TinyRegression, quiet_trainer
from lightning.pytorch.callbacks import EarlyStopping

from lightning_accel.checkpoints import saved_progress
from lightning_accel.cli.runner import unused_callback_states
from lightning_accel.early_stopping import early_stop_reason, fit_stopped_early, saved_early_stop

THRESHOLD_MESSAGE = "Stopping threshold reached: val/loss = 0.1 < 0.2. Signaling Trainer to stop."


class FlatValidation(TinyRegression):
    """The regression with a validation loss that never improves."""

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", 1.0)


def _fit(**limits: int) -> tuple[EarlyStopping, str | None, int]:
    """Fit with validation every 2 steps and early stopping of patience 1: the stopper,
    what ``fit_stopped_early`` says and the steps trained."""
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)))
    stopper = EarlyStopping("val/loss", patience=1)
    trainer = quiet_trainer(
        callbacks=[stopper], val_check_interval=2, limit_val_batches=1, **limits
    )
    trainer.fit(FlatValidation(), loader, loader)
    return stopper, fit_stopped_early(trainer), trainer.global_step


def test_a_fit_that_early_stopping_ended_says_why() -> None:
    stopper, reason, steps = _fit(max_steps=20)
    assert steps == 4, "the second validation did not improve"
    assert (
        reason
        == "monitored metric val/loss did not improve in the last 1 records. Best score: 1.000"
    )
    assert saved_early_stop({stopper.state_key: stopper.state_dict()}, [stopper]) == reason
    other = EarlyStopping(
        "val/loss", mode="max"
    )  # another state key: Lightning would not restore it
    assert saved_early_stop({stopper.state_key: stopper.state_dict()}, [other]) is None


def test_a_stop_held_back_by_min_steps_until_max_steps_is_not_early() -> None:
    stopper, reason, steps = _fit(max_steps=8, min_steps=8)
    assert steps == 8 and early_stop_reason(stopper.state_dict()) is not None
    assert reason is None


@pytest.mark.parametrize(
    ("state", "stopped"),
    [
        ({"wait_count": 2, "patience": 2}, True),  # Lightning 2.5 keeps no reason
        ({"wait_count": 1, "patience": 2}, False),
        (
            {
                "wait_count": 0,
                "patience": 2,
                "stopping_reason": 1,
                "stopping_reason_message": THRESHOLD_MESSAGE,
            },
            True,
        ),
        (
            {"wait_count": 0, "patience": 2, "stopping_reason": 0, "stopping_reason_message": None},
            False,
        ),
    ],
)
def test_a_saved_state_tells_whether_it_stopped(state: dict, stopped: bool) -> None:
    reason = early_stop_reason(state)
    assert (reason is not None) == stopped
    assert reason is None or not reason.endswith("Signaling Trainer to stop.")


def test_a_resume_without_the_early_stopping_names_its_state_left_unused(tmp_path: Path) -> None:
    stopper, _, _ = _fit(max_steps=20)
    checkpoint = tmp_path / "stopped.ckpt"
    trainer = quiet_trainer(callbacks=[stopper])
    trainer.strategy.connect(FlatValidation())
    trainer.save_checkpoint(checkpoint)
    saved = saved_progress(checkpoint)
    assert unused_callback_states(saved, trainer) == []
    without = quiet_trainer(callbacks=[EarlyStopping("val/loss", patience=5)])
    assert unused_callback_states(saved, without) == [], "the same key: restored"
    assert unused_callback_states(saved, quiet_trainer()) == [stopper.state_key]
