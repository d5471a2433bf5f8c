"""Drop-in use: a LightningModule written here (not one of the pack's) trains through the
pack's Trainer construction helper exactly as through a hand-built Trainer."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_accel as la


class TinyRegressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        self.losses: list[float] = []

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=generator)
    y = x @ torch.randn(8, 1, generator=generator) + 0.5
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=False)


QUIET = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}


def _fit(trainer: pl.Trainer) -> TinyRegressor:
    torch.manual_seed(0)
    model = TinyRegressor()
    trainer.fit(model, train_dataloaders=_data())
    return model


def test_user_module_trains_through_build_trainer_like_plain_lightning() -> None:
    ours = _fit(
        la.build_trainer("cpu", "default", max_steps=30, enable_checkpointing=False, **QUIET)
    )
    plain = _fit(
        pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=30,
            gradient_clip_val=1.0,  # what the `default` optimization profile sets
            enable_checkpointing=False,
            **QUIET,
        )
    )
    assert ours.losses[-1] < 0.5 * ours.losses[0], "the model learns"
    assert ours.losses == plain.losses
    for a, b in zip(ours.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)


def test_profile_objects_and_overrides_reach_the_trainer() -> None:
    optimization = la.OptimizationConfig(precision="bf16-mixed", accumulate_grad_batches=2)
    trainer = la.build_trainer(
        la.HardwareConfig(accelerator="cpu"), optimization, max_steps=3, **QUIET
    )
    assert trainer.precision == "bf16-mixed"
    assert trainer.accumulate_grad_batches == 2
    assert trainer.max_steps == 3
    assert any(isinstance(c, la.ModelOptimizations) for c in trainer.callbacks)


def test_trainer_arguments_for_a_named_profile() -> None:
    arguments = la.trainer_arguments("cpu", "default")
    assert arguments["accelerator"] == "cpu" and arguments["devices"] == 1
    assert arguments["precision"] == "32-true"


def test_unknown_profile_name_lists_the_choices() -> None:
    with pytest.raises(la.ConfigError, match="valid choices: auto, cpu"):
        la.build_trainer("gpu9")
