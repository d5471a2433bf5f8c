"""Every ``lightning.Trainer`` argument through the runner: the schema holds each one that
the profiles do not set, with Lightning's defaults except the documented ones; extra
callbacks by ``_target_`` list; ``--version``."""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import TINY
from lightning.pytorch.callbacks import LearningRateMonitor
from torch.utils.data import DataLoader, TensorDataset

from lightning_accel.cli.compose import compose_job
from lightning_accel.cli.preflight import validated_run
from lightning_accel.cli.runner import build_run
from lightning_accel.config import TRAINER_ARGUMENTS_SET_ELSEWHERE, TrainerConfig
from lightning_accel.models.optimizers import adamw_with_warmup_cosine

# the pack's defaults that differ from Lightning's (None there means "all" or "unset")
OWN_DEFAULTS = {
    "max_steps": 500,
    "val_check_interval": 100,
    "limit_train_batches": 1.0,
    "limit_val_batches": 1.0,
    "log_every_n_steps": 50,
    "num_sanity_val_steps": 0,
    "deterministic": False,
}


def test_the_schema_holds_every_trainer_argument_the_profiles_do_not_set() -> None:
    lightning = {
        name: parameter.default
        for name, parameter in inspect.signature(pl.Trainer.__init__).parameters.items()
        if name != "self"
    }
    ours = {field.name: field.default for field in dataclasses.fields(TrainerConfig)}
    assert set(ours) | set(TRAINER_ARGUMENTS_SET_ELSEWHERE) == set(lightning)
    assert not set(ours) & set(TRAINER_ARGUMENTS_SET_ELSEWHERE)
    differing = {name: value for name, value in ours.items() if value != lightning[name]}
    assert differing == OWN_DEFAULTS


def test_trainer_arguments_and_extra_callbacks_reach_the_trainer(
    tmp_path: Path, small_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    job = [*TINY, f"data.source={small_corpus}", "callbacks=minimal", "logger=none"]
    job += ["trainer.max_steps=-1", "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=2"]
    job += ["trainer.val_check_interval=1.0", "trainer.reload_dataloaders_every_n_epochs=1"]
    # a null entry is switched off, as a null callback of the set is
    job += ["callbacks.extra=[null, {_target_: lightning.pytorch.callbacks.LearningRateMonitor}]"]
    run = validated_run(compose_job(job), tmp_path / "run")
    trainer, _, _ = build_run(run)
    assert (trainer.max_steps, trainer.max_epochs, trainer.check_val_every_n_epoch) == (-1, 2, 2)
    assert trainer.reload_dataloaders_every_n_epochs == 1
    assert "callbacks.extra[1]" in run.callback_nodes()
    assert "callbacks.extra[0]" not in run.callback_nodes()
    assert sum(isinstance(c, LearningRateMonitor) for c in trainer.callbacks) == 1
    assert all(isinstance(c, pl.Callback) for c in trainer.callbacks)


def test_a_profiler_by_name_reports_into_the_run_directory(
    tmp_path: Path, small_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built from its name by Lightning, a profiler reported through a logger the console
    quiets: the report of trainer.profiler=simple was lost."""
    monkeypatch.chdir(tmp_path)
    job = [*TINY, f"data.source={small_corpus}", "callbacks=minimal", "logger=none"]
    run = validated_run(compose_job([*job, "trainer.profiler=simple"]), tmp_path / "run")
    trainer, model, datamodule = build_run(run)
    trainer.fit(model, datamodule)
    report = (tmp_path / "run" / "fit-profile.txt").read_text()
    assert report.startswith("FIT Profiler Report")
    steps = next(line for line in report.splitlines() if "run_training_batch" in line)
    assert steps.split("|")[3].strip() == str(trainer.global_step), "one call per step"


def test_version_is_the_installed_packages(capsys: pytest.CaptureFixture) -> None:
    from importlib.metadata import version

    from lightning_accel.cli.main import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"lightning-accel {version('lightning-accel')}\n"
    assert version("lightning-accel") == __import__("lightning_accel").__version__


class _Regression(pl.LightningModule):
    """One linear layer on 40 random samples: 5 batches of 8 per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.rates: list[float] = []

    def training_step(self, batch: list[torch.Tensor], batch_index: int) -> torch.Tensor:
        self.rates.append(self.lr_schedulers().get_last_lr()[0])
        features, targets = batch
        return torch.nn.functional.mse_loss(self.layer(features), targets)

    def configure_optimizers(self):  # noqa: ANN201 - Lightning's own return convention
        return adamw_with_warmup_cosine(self, self.named_parameters(), 1e-2, 0.0, warmup_steps=2)

    def train_dataloader(self) -> DataLoader:
        data = TensorDataset(torch.randn(40, 4), torch.randn(40, 1))
        return DataLoader(data, batch_size=8)


def test_with_max_steps_minus_one_the_schedule_decays_over_the_epochs(tmp_path: Path) -> None:
    module = _Regression()
    trainer = pl.Trainer(
        max_steps=-1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module)
    rates = module.rates
    assert len(rates) == 10
    assert rates[:2] == pytest.approx([5e-3, 1e-2])  # warm-up
    after = rates[2:]
    assert all(a > b for a, b in zip(after, after[1:], strict=False)), "decays every step"
    # the cosine reaches its floor (10%) at step 10, the run's last: 7 of its 8 steps done
    assert rates[-1] == pytest.approx(1e-2 * (0.1 + 0.45 * (1 + math.cos(math.pi * 7 / 8))))


@pytest.mark.parametrize(
    ("key", "value", "lightning_reads"),
    [
        ("val_check_interval", "00:00:01:30", None),
        ("val_check_interval", {"minutes": 1, "seconds": 30}, None),
        ("max_time", "00:00:01:30", None),
        ("max_time", {"hours": 1}, None),
        ("val_check_interval", 20.0, 20),
        ("limit_test_batches", 3.0, 3),
        ("limit_val_batches", 0.25, 0.25),
    ],
)
def test_durations_and_whole_counts_are_taken_as_lightning_takes_them(
    key: str, value: object, lightning_reads: float | None
) -> None:
    TrainerConfig(**{key: value}, max_steps=-1, max_epochs=1)
    trainer = pl.Trainer(**{key: value}, logger=False, enable_checkpointing=False)
    if lightning_reads is not None:
        assert getattr(trainer, key) == lightning_reads


def test_ddp_options_reach_distributed_data_parallel() -> None:
    from lightning_accel.trainer_factory import build_strategy

    strategy = build_strategy("accel_ddp", {"broadcast_buffers": False, "comm_hook": "fp16"})
    assert strategy._ddp_kwargs["broadcast_buffers"] is False  # Lightning's private store
    assert strategy._ddp_kwargs["bucket_cap_mb"] == 25.0
