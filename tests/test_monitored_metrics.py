"""Callbacks that monitor a metric (ModelCheckpoint, EarlyStopping): a run that ends before
its first validation trains quietly; a monitor naming a metric the model never logs is
refused before launch where the model declares what it logs (the pack's models), and
otherwise ends the run at its first validation, in both cases with exit 2 and one sentence
naming the callback's key and the logged metrics."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from helpers import composed_run

from lightning_accel.cli.compose import compose_job
from lightning_accel.cli.console import quiet_upstream
from lightning_accel.cli.preflight import check_monitored_metrics, preflight, validated_run
from lightning_accel.cli.runner import fit_run
from lightning_accel.errors import ConfigError
from lightning_accel.models import GPTLanguageModel

LOGGED = "train/loss, val/bits_per_byte, val/loss, val/perplexity"


def test_a_run_shorter_than_its_validation_interval_warns_nothing_about_the_monitor(
    tmp_path: Path, small_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # validation once an epoch, as the image recipe does: the run ends before the first one
    short = ["trainer.max_steps=2", "trainer.val_check_interval=1.0", f"data.source={small_corpus}"]
    run = composed_run(tmp_path / "run", short)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_upstream()
        fit_run(run)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert not [w for w in caught if "monitor" in str(w.message)], [str(w.message) for w in caught]


@pytest.mark.parametrize(
    ("callbacks", "key"),
    [
        ([], "callbacks.checkpoint.monitor"),
        (["callbacks=[minimal,early_stopping]"], "callbacks.early_stopping.monitor"),
    ],
)
def test_a_monitor_the_model_never_logs_is_named_with_the_logged_metrics(
    tmp_path: Path,
    small_corpus: Path,
    monkeypatch: pytest.MonkeyPatch,
    callbacks: list[str],
    key: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    overrides = [*callbacks, f"{key}=val/losss", f"data.source={small_corpus}"]
    run = composed_run(tmp_path / "run", [*overrides, "trainer.val_check_interval=2"])
    with pytest.raises(ConfigError) as error:
        fit_run(run)
    assert str(error.value) == (
        f"{key}='val/losss' is not a metric the model logs (found at the validation after "
        f"step 2); valid choices: {LOGGED}."
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["callbacks.checkpoint.monitor=val/losss"],
            "callbacks.checkpoint.monitor='val/losss' is not a metric GPTLanguageModel logs; "
            f"valid choices: {LOGGED}.",
        ),
        (
            [
                "recipe=image",
                "callbacks=[minimal,early_stopping]",
                "callbacks.early_stopping.monitor=val/acc",
            ],
            "callbacks.early_stopping.monitor='val/acc' is not a metric ImageClassifier logs; "
            "valid choices: train/loss, val/accuracy, val/loss.",
        ),
    ],
)
def test_a_model_that_declares_its_metrics_has_its_monitors_checked_before_launch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        preflight(["logger=none", *overrides], multirun=False)
    assert str(error.value) == message
    assert list(tmp_path.iterdir()) == [], "nothing written"


def test_names_outside_the_models_namespaces_are_left_to_the_run(tmp_path: Path) -> None:
    run = composed_run(tmp_path / "run", ["callbacks.checkpoint.monitor=ema/val_loss"])
    check_monitored_metrics(run, GPTLanguageModel())  # a callback's metric: not refused here
    searched = composed_run(tmp_path / "run", ["objective=val/acc"])
    check_monitored_metrics(searched, GPTLanguageModel())  # not a search: objective unused
    with pytest.raises(ConfigError, match="objective='val/acc' is not a metric"):
        check_monitored_metrics(searched, GPTLanguageModel(), searching=True)


@pytest.mark.parametrize("model", [GPTLanguageModel(), None], ids=["declares", "declares nothing"])
@pytest.mark.parametrize(
    "override",
    ["callbacks.checkpoint.monitor=speed/samples_per_second", "objective=speed/mfu"],
)
def test_a_speed_figure_is_never_monitored(
    tmp_path: Path, model: GPTLanguageModel | None, override: str
) -> None:
    run = composed_run(tmp_path / "run", [override])
    with pytest.raises(ConfigError) as error:
        check_monitored_metrics(run, model, searching=True)
    assert "is a speed monitor figure, which goes to the loggers and summary.json" in str(
        error.value
    )
    assert ("valid choices: train/loss, val/bits_per_byte" in str(error.value)) is (
        model is not None
    )


def test_a_plateau_scheduler_on_a_metric_the_model_never_logs_names_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    job = ["recipe=custom", "model._target_=helpers.PlateauRegression", "logger=none"]
    job += ["data._target_=helpers.ForwardOnlyData", "callbacks=minimal", "trainer.max_steps=3"]
    run = validated_run(compose_job(job), tmp_path / "run")
    with pytest.raises(ConfigError) as error:
        fit_run(run)
    assert str(error.value) == (
        "model._target_='helpers.PlateauRegression' conditions its ReduceLROnPlateau scheduler "
        "(configure_optimizers' monitor) on 'train/losss', which is not a metric it logs "
        "(found at step 1); valid choices: train/loss."
    )
