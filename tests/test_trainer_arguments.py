"""Every ``lightning.Trainer`` argument through the runner: the schema holds each one that
the profiles do not set, with Lightning's defaults except the documented ones; extra
callbacks by ``_target_`` list; ``--version``."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import lightning.pytorch as pl
import pytest
from helpers import TINY
from lightning.pytorch.callbacks import LearningRateMonitor

from lightning_accel.cli.compose import compose_job
from lightning_accel.cli.preflight import validated_run
from lightning_accel.cli.runner import build_run
from lightning_accel.config import TRAINER_ARGUMENTS_SET_ELSEWHERE, TrainerConfig

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
    job += ["callbacks.extra=[{_target_: lightning.pytorch.callbacks.LearningRateMonitor}]"]
    run = validated_run(compose_job(job), tmp_path / "run")
    trainer, _, _ = build_run(run)
    assert (trainer.max_steps, trainer.max_epochs, trainer.check_val_every_n_epoch) == (-1, 2, 2)
    assert trainer.reload_dataloaders_every_n_epochs == 1
    assert "callbacks.extra[0]" in run.callback_nodes()
    assert sum(isinstance(c, LearningRateMonitor) for c in trainer.callbacks) == 1


def test_version_is_the_installed_packages(capsys: pytest.CaptureFixture) -> None:
    from importlib.metadata import version

    from lightning_accel.cli.main import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"lightning-accel {version('lightning-accel')}\n"
    assert version("lightning-accel") == __import__("lightning_accel").__version__
