"""The run summary's throughput covers training steps only: validation and checkpoint
saving (which grows with the model and dominated GPU step times before) are left out."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_accel.callbacks import RunSummary, throughput

SLOW_SAVE_SECONDS = 1000.0


class FakeClock:
    """``time`` for the throughput clock: real time plus whatever slow work has added."""

    def __init__(self) -> None:
        self.offset = 0.0

    def perf_counter(self) -> float:
        return time.perf_counter() + self.offset


class SlowCheckpoint(ModelCheckpoint):
    """A checkpoint callback whose every save takes SLOW_SAVE_SECONDS on the fake clock."""

    def __init__(self, clock: FakeClock, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.clock = clock

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        self.clock.offset += SLOW_SAVE_SECONDS
        super()._save_checkpoint(trainer, filepath)


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return nn.functional.mse_loss(self.net(batch[0]), batch[1])

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", nn.functional.mse_loss(self.net(batch[0]), batch[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("validate_every", [4, None], ids=["after-validation", "epoch-end"])
def test_checkpoint_saving_is_not_training_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, validate_every: int | None
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(throughput, "time", clock)
    data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    loader = DataLoader(data, batch_size=4)
    checkpoint = SlowCheckpoint(clock, dirpath=tmp_path / "checkpoints", save_last=True)
    summary = RunSummary(output_dir=str(tmp_path), warmup_steps=2, print_table=False)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        val_check_interval=validate_every,
        limit_val_batches=2,
        callbacks=[checkpoint, summary],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Regressor(), loader, loader)

    assert clock.offset >= 2 * SLOW_SAVE_SECONDS, "the checkpoint callback saved"
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["measured_steps"] == 2 * len(loader) - 2
    assert written["step_seconds"] * written["measured_steps"] < SLOW_SAVE_SECONDS / 10


def test_data_wait_share_counts_the_time_spent_fetching_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning_accel.data import loading
    from lightning_accel.data.loading import ResumableDataLoader, ResumableSampler

    clock = FakeClock()
    monkeypatch.setattr(throughput, "time", clock)
    monkeypatch.setattr(loading, "time", clock)

    class SlowData(TensorDataset):
        def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
            clock.offset += 1.0  # each sample takes a (fake) second to load
            return super().__getitem__(index)

    data = SlowData(torch.randn(64, 4), torch.randn(64, 1))
    loader = ResumableDataLoader(data, ResumableSampler(data), batch_size=4)
    summary = RunSummary(output_dir=str(tmp_path), warmup_steps=2, print_table=False)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=12,
        callbacks=[summary],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(Regressor(), loader)
    written = json.loads((tmp_path / "summary.json").read_text())
    # 4 fake seconds of loading per step against well under a real second of compute
    assert 0.9 < written["data_wait_share"] <= 1.0
