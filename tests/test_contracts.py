"""The package's own classes meet the protocols its callbacks and models read them by, so a
renamed attribute fails here rather than leaving a summary figure or a check silently out."""

from __future__ import annotations

from lightning_accel.callbacks import DeviceReport, RunSummary, SpeedMonitor, XLARecompileGuard
from lightning_accel.callbacks.run_summary import CountsAllreduceBytes, ReportsSummaryFigures
from lightning_accel.data import SyntheticImageDataModule, SyntheticTokenDataModule
from lightning_accel.data.loading import CountsBatches, HasBatchSize
from lightning_accel.models.gpt import GPT, GPTConfig
from lightning_accel.models.image_classifier import ImageShapes
from lightning_accel.models.language_model import TokenShapes
from lightning_accel.strategies import AccelDDPStrategy, FSDP2Strategy
from lightning_accel.strategies.tensor_parallel import DeclaresTensorParallelPlan


def test_strategies_and_callbacks_report_to_the_run_summary() -> None:
    assert isinstance(AccelDDPStrategy(), CountsAllreduceBytes)
    assert isinstance(FSDP2Strategy(), ReportsSummaryFigures)
    assert isinstance(SpeedMonitor(), ReportsSummaryFigures)
    assert isinstance(XLARecompileGuard(), ReportsSummaryFigures)
    assert isinstance(DeviceReport(), ReportsSummaryFigures)
    assert not isinstance(RunSummary(), ReportsSummaryFigures)


def test_data_modules_and_loaders_state_what_models_and_monitors_read() -> None:
    tokens = SyntheticTokenDataModule(samples=8, val_samples=4, batch_size=4)
    images = SyntheticImageDataModule(samples=8, val_samples=4, batch_size=4)
    assert isinstance(tokens, TokenShapes) and isinstance(tokens, HasBatchSize)
    assert isinstance(images, ImageShapes) and isinstance(images, HasBatchSize)
    tokens.setup("fit")
    assert isinstance(tokens.train_dataloader(), CountsBatches)
    assert not isinstance(tokens.val_dataloader(), CountsBatches)


def test_the_gpt_declares_its_tensor_parallel_plan() -> None:
    gpt = GPT(GPTConfig(vocab_size=16, seq_len=8, n_layer=1, d_model=8, n_head=2, dropout=0.0))
    assert isinstance(gpt, DeclaresTensorParallelPlan)
    assert not isinstance(gpt.head, DeclaresTensorParallelPlan)
