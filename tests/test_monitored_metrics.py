"""Callbacks that monitor a metric (ModelCheckpoint, EarlyStopping): a run that ends before
its first validation trains quietly, and a monitor naming a metric the model never logs
ends the run with exit 2 and one sentence naming the callback's key and the logged metrics.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from helpers import composed_run

from lightning_accel.cli.console import quiet_upstream
from lightning_accel.cli.runner import fit_run
from lightning_accel.errors import ConfigError

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
