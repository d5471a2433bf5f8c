"""The run's model summary: Lightning's table, without the FLOPs it shows as 0 for a model
it did not run, and with them for one it ran."""

from __future__ import annotations

import io

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities.model_summary import summarize
from rich.console import Console
from torch import nn

from lightning_accel.callbacks import RunModelSummary
from lightning_accel.callbacks import model_summary as model_summary_module


class Classifier(pl.LightningModule):
    def __init__(self, example: bool) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        self.example_input_array = torch.zeros(2, 64) if example else None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)


def printed_summary(model: pl.LightningModule, monkeypatch: pytest.MonkeyPatch) -> str:
    out = io.StringIO()
    monkeypatch.setattr(model_summary_module, "get_console", lambda: Console(file=out, width=160))
    summary = summarize(model, max_depth=1)
    RunModelSummary.summarize(
        summary._get_summary_data(),
        summary.total_parameters,
        summary.trainable_parameters,
        summary.model_size,
        summary.total_training_modes,
        summary.total_flops,
    )
    return out.getvalue()


def test_a_model_lightning_did_not_run_shows_no_flops(monkeypatch: pytest.MonkeyPatch) -> None:
    printed = printed_summary(Classifier(example=False), monkeypatch)
    assert "FLOPs" not in printed
    assert "net" in printed and "Sequential" in printed and "9.6 K" in printed
    assert "Total params: 9.6 K" in printed and "Modules in train mode: 4" in printed


def test_a_model_with_an_example_input_shows_its_flops(monkeypatch: pytest.MonkeyPatch) -> None:
    printed = printed_summary(Classifier(example=True), monkeypatch)
    # 2 FLOPs per multiply-add: 2 · 2 · (64·128 + 128·10) = 37.9 K
    assert "FLOPs" in printed and "Total FLOPs: 37.9 K" in printed
    assert "In sizes" in printed and "[2, 64]" in printed
