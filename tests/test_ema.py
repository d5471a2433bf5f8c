"""ResumableEMA in a user's own Trainer: a finished fit continued to more steps, and one
resumed from an epoch-end checkpoint, end with the average and the trained weights of the
fit that ran without a stop."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import InterruptAt, TinyRegression, quiet_trainer
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

from lightning_accel.callbacks import ExactResume, ResumableEMA, RunCheckpoint
from lightning_accel.data.loading import ResumableDataLoader, ResumableSampler

STEPS_PER_EPOCH = 4


def _fit(
    checkpoint: pl.Callback,
    average: EMAWeightAveraging,
    max_steps: int,
    stop_at: int | None = None,
    ckpt_path: Path | None = None,
) -> None:
    """Train the regression with ``average`` and ``checkpoint`` (no validation) on resumable
    batches, optionally interrupted before a step or resumed from a checkpoint."""
    pl.seed_everything(0, verbose=False)
    x = torch.randn(16 * STEPS_PER_EPOCH, 8, generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    callbacks = [checkpoint, average, ExactResume()]
    callbacks += [InterruptAt(stop_at)] if stop_at is not None else []
    trainer = quiet_trainer(
        max_steps=max_steps, limit_val_batches=0, callbacks=callbacks, enable_checkpointing=True
    )
    try:
        trainer.fit(
            TinyRegression(),
            ResumableDataLoader(data, ResumableSampler(data, "shuffled", seed=0), batch_size=16),
            ckpt_path=ckpt_path,
        )
    except SystemExit:  # Lightning's exit after an interrupted fit
        assert stop_at is not None


def _weights(checkpoint: Path) -> dict[str, dict[str, torch.Tensor]]:
    saved = torch.load(checkpoint, weights_only=True)
    return {key: saved[key] for key in ("state_dict", "current_model_state")}


def _equal(a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]) -> bool:
    return all(torch.equal(a[key][name], b[key][name]) for key in a for name in a[key])


@pytest.mark.parametrize("average", [ResumableEMA, EMAWeightAveraging])
def test_a_finished_fit_continued_to_more_steps_equals_one_trained_there_at_once(
    tmp_path: Path, average: type[EMAWeightAveraging]
) -> None:
    def checkpoint(name: str) -> RunCheckpoint:
        # saving at validations (none here) and where training ends, as with validation
        return RunCheckpoint(
            tmp_path / name, save_last=True, save_top_k=0, save_on_train_epoch_end=False
        )

    _fit(checkpoint("straight"), average(decay=0.5), max_steps=6)
    _fit(checkpoint("continued"), average(decay=0.5), max_steps=3)
    first = tmp_path / "continued" / "last.ckpt"
    trained, averaged = _weights(first)["current_model_state"], _weights(first)["state_dict"]
    # Lightning's own callback saved the average as the weights to train on from
    assert any(not torch.equal(trained[name], averaged[name]) for name in trained) == (
        average is ResumableEMA
    )
    _fit(checkpoint("continued"), average(decay=0.5), max_steps=6, ckpt_path=first)
    same = _equal(
        _weights(tmp_path / "continued" / "last.ckpt"),
        _weights(tmp_path / "straight" / "last.ckpt"),
    )
    assert same == (average is ResumableEMA)


def test_an_epoch_averaged_fit_resumed_from_an_epoch_end_checkpoint_averages_that_epoch_once(
    tmp_path: Path,
) -> None:
    # Lightning 2.6 ran the saved epoch's end again under max_steps; ExactResume does not
    def checkpoint(name: str) -> ModelCheckpoint:
        return ModelCheckpoint(tmp_path / name, "last", every_n_epochs=1)

    def epochs_only() -> ResumableEMA:
        return ResumableEMA(decay=0.5, update_every_n_steps=0, update_starting_at_epoch=0)

    steps = 3 * STEPS_PER_EPOCH
    _fit(checkpoint("straight"), epochs_only(), steps)
    _fit(checkpoint("stopped"), epochs_only(), steps, stop_at=STEPS_PER_EPOCH + 2)
    saved = tmp_path / "stopped" / "last.ckpt"
    assert torch.load(saved, weights_only=True)["averaging_state"]["n_averaged"] == 1
    _fit(checkpoint("stopped"), epochs_only(), steps, ckpt_path=saved)
    assert _equal(
        _weights(tmp_path / "stopped" / "last.ckpt"), _weights(tmp_path / "straight" / "last.ckpt")
    )
