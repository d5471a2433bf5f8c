"""Hyper-parameter search through Hydra's Optuna sweeper: a real study, and its search space
checked before any trial starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import REPO, TINY, TinyRegression, quiet_trainer, run_cli

from lightning_accel.cli.preflight import preflight
from lightning_accel.cli.search import required_objective, trial_samples
from lightning_accel.cli.trial_check import (
    TrialValidates,
    first_validation_batch,
    last_training_batch,
)
from lightning_accel.errors import ConfigError


def test_a_study_of_6_trials_chooses_the_learning_rate_with_the_lowest_loss(
    tmp_path: Path, small_corpus: Path
) -> None:
    args = ["train", "--multirun", "search=lr", *TINY, f"data.source={small_corpus}"]
    args += ["callbacks=minimal", "logger=none"]
    result = run_cli(args, cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    (study,) = (tmp_path / "multirun" / "gpt").iterdir()
    trials = sorted((p for p in study.iterdir() if p.is_dir()), key=lambda p: int(p.name))
    assert [t.name for t in trials] == [str(n) for n in range(6)]
    rates, losses = [], []
    for trial in trials:
        rates.append(yaml.safe_load((trial / "config.yaml").read_text())["model"]["learning_rate"])
        losses.append(
            json.loads((trial / "summary.json").read_text())["validation"][-1]["val/loss"]
        )
    assert len(set(rates)) == 6 and all(1e-4 <= r <= 3e-2 for r in rates)
    best = yaml.safe_load((study / "optimization_results.yaml").read_text())
    lowest = losses.index(min(losses))
    assert best["best_value"] == pytest.approx(losses[lowest])
    assert best["best_params"]["model.learning_rate"] == pytest.approx(rates[lowest])
    assert f"best trial: model.learning_rate={best['best_params']['model.learning_rate']}" in (
        result.stderr
    )


def test_each_value_a_trial_can_be_given_is_checked_before_launch() -> None:
    samples = trial_samples(["search=lr", "model.n_head=choice(2,4)", "model.d_model=32"])
    assert samples == [
        ["search=lr", "model.d_model=32", f"model.learning_rate={rate}", f"model.n_head={heads}"]
        for rate, heads in (("0.0001", 2), ("0.03", 2), ("0.0001", 4))
    ]
    assert trial_samples(["seed=1,2"]) is None, "Hydra's basic sweeper expands sweeps itself"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.learning_rate=tag(log, interval(0, 1))"],
            "model.learning_rate='tag(log, interval(0, 1))' samples on a log scale, which "
            "needs LOW > 0.",
        ),
        (
            ["model.learning_rate=interval(1e-2, 1e-4)"],
            "model.learning_rate='interval(1e-2, 1e-4)' is an empty interval; give "
            "interval(LOW, HIGH) with LOW < HIGH.",
        ),
        (
            ["model.d_model=32", "model.n_head=choice(2,3)"],
            "model.n_head=3 does not divide model.d_model=32.",
        ),
        (
            ["trainer.max_steps=choice(4,abc)", "trainer.val_check_interval=2"],
            "trainer.max_steps='abc' is not a valid integer.",
        ),
        (
            ["trainer.max_steps=10"],
            "trainer.val_check_interval=100 comes after the last of the 10 training batches of "
            "trainer.max_steps=10, so a search's trials never validate and "
            "objective='val/loss' is never logged; give at most 10.",
        ),
        (
            ["trainer.limit_val_batches=0"],
            "trainer.limit_val_batches=0 leaves a search's trials without validation, so "
            "objective='val/loss' is never logged.",
        ),
        (
            ["hydra.sweeper.n_trials=0"],
            "hydra.sweeper.n_trials=0 must be a whole number of 1 or more.",
        ),
        (
            ["hydra.sweeper.n_jobs=0"],
            "hydra.sweeper.n_jobs=0 must be a whole number of 1 or more.",
        ),
        (
            ["hydra.sweeper.direction=sideways"],
            "hydra.sweeper.direction='sideways' is not supported; valid choices: minimize, "
            "maximize.",
        ),
        (
            ["callbacks=early_stopping"],
            "callbacks='early_stopping' has no RunSummary, whose summary.json gives a search "
            "its objective='val/loss'; keep the default set beside yours, as in "
            "'callbacks=[default,early_stopping]'.",
        ),
        (  # the callbacks' classes are read only once they import
            ["+callbacks.mine._target_=no_such_pkg.Callback"],
            "callbacks.mine._target_='no_such_pkg.Callback' cannot be imported "
            "(ModuleNotFoundError: No module named 'no_such_pkg').",
        ),
        (  # the params are keyed by whole dotted names, which an override cannot address
            ["hydra.sweeper.params.model.dropout=interval(0.0,0.2)"],
            "hydra.sweeper.params.model.dropout='interval(0.0,0.2)' cannot name a dotted key "
            "(the search's params are keyed by whole names such as 'model.learning_rate'); "
            "give its search space as an override: model.dropout=interval(0.0,0.2).",
        ),
        (
            ["hydra.sweeper.params.seed=1"],
            "hydra.sweeper.params.seed='1' is new under 'hydra.sweeper.params'; add it as "
            "+hydra.sweeper.params.seed=VALUE.",
        ),
        (  # a search preset of the user's own (conf/search/mine.yaml below)
            ["search=mine"],
            "hydra.sweeper.params.model.learning_rate='tag(log, interval(1e-3))' cannot be parsed.",
        ),
    ],
)
def test_a_bad_search_space_is_refused_before_any_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: list[str], message: str
) -> None:
    own = tmp_path / "conf" / "search"
    own.mkdir(parents=True)
    preset = (REPO / "conf" / "search" / "lr.yaml").read_text()
    (own / "mine.yaml").write_text(preset.replace("interval(1e-4, 3e-2)", "interval(1e-3)"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    with pytest.raises(ConfigError) as error:
        preflight(["search=lr", searchpath, *overrides], multirun=True)
    assert str(error.value) == message
    assert list(work.iterdir()) == [], "nothing written"


@pytest.mark.parametrize(
    ("override", "group", "option", "extra"),
    [
        ("search=lr", "hydra/sweeper", "optuna", "search"),
        ("launcher=slurm_local", "hydra/launcher", "submitit_local", "slurm"),
        ("launcher=slurm", "hydra/launcher", "submitit_slurm", "slurm"),
    ],
)
def test_a_missing_hydra_plugin_names_its_extra(
    override: str, group: str, option: str, extra: str
) -> None:
    """What Hydra raises when the plugin a group selects is not installed, and what the
    pack makes of it."""
    from hydra.errors import MissingConfigException

    from lightning_accel.cli.compose import _unknown_option

    missing = MissingConfigException(
        "not found", missing_cfg_file=f"{group}/{option}", options=["basic"]
    )
    assert str(_unknown_option(missing, [override])) == (
        f"{group}='{option}' is a Hydra plugin that is not installed: "
        f"pip install 'lightning-accel[{extra}]'."
    )


def test_only_a_search_needs_the_objective_logged(tmp_path: Path) -> None:
    summary = {"validation": [{"step": 5, "val/loss": 2.5}, {"step": 10, "val/loss": 2.0}]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert required_objective(tmp_path, "val/loss", required=True) == 2.0
    assert required_objective(tmp_path, "val/acc", required=False) is None
    with pytest.raises(ConfigError) as error:
        required_objective(tmp_path, "val/acc", required=True)
    assert str(error.value) == (
        "objective='val/acc' was never logged in validation; valid choices: val/loss."
    )
    (tmp_path / "summary.json").write_text(json.dumps({"validation": []}))
    with pytest.raises(ConfigError, match="the trial ended before its first validation"):
        required_objective(tmp_path, "val/loss", required=True)
    (tmp_path / "summary.json").unlink()  # a callback set without RunSummary
    assert required_objective(tmp_path, "val/loss", required=False) is None


class _CountedValidation(TinyRegression):
    """Counts the validation batches it sees."""

    validated = 0

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.validated += 1


@pytest.mark.parametrize(
    ("trainer_options", "first", "last", "bound"),
    [
        ({"val_check_interval": 0.5, "max_steps": 4}, 4, 4, None),
        ({"val_check_interval": 0.5, "max_steps": 3}, 4, 3, "max_steps=3"),
        ({"val_check_interval": 0.5, "max_steps": 2, "accumulate_grad_batches": 2}, 4, 4, None),
        ({"check_val_every_n_epoch": 2, "max_epochs": 1}, 16, 8, "max_epochs=1"),
        ({"check_val_every_n_epoch": 2, "max_epochs": 2}, 16, 16, None),
        (
            {"val_check_interval": 3, "check_val_every_n_epoch": None, "max_steps": 2},
            3,
            2,
            "max_steps=2",
        ),
    ],
)
def test_a_trial_that_would_end_before_its_first_validation_fails_as_it_starts(
    tmp_path: Path, trainer_options: dict[str, Any], first: int, last: int, bound: str | None
) -> None:
    """Against Lightning's own loop: where the check lets a trial run, it validates."""
    data = torch.utils.data.TensorDataset(torch.randn(16, 8), torch.randn(16, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=2)  # 8 batches an epoch
    model = _CountedValidation()
    trainer = quiet_trainer(
        **{"max_epochs": None, **trainer_options},
        callbacks=[TrialValidates("val/loss")],
        default_root_dir=tmp_path,
    )
    if bound is None:
        trainer.fit(model, loader, loader)
        assert model.validated > 0, "the trial validated"
        assert (first_validation_batch(trainer), last_training_batch(trainer)) == (first, last)
        return
    with pytest.raises(ConfigError) as refused:
        trainer.fit(model, loader, loader)
    assert f"first validates after training batch {first} (an epoch has 8), but the " in str(
        refused.value
    )
    assert f"ends after batch {last} (trainer.{bound}), so objective='val/loss' is never" in str(
        refused.value
    )
    assert trainer.global_step == 0 and model.validated == 0


def test_a_search_whose_trials_would_never_validate_stops_as_the_first_one_starts(
    tmp_path: Path, small_corpus: Path
) -> None:
    """Half an epoch of the corpus is hundreds of batches: the 4 steps of trainer=smoke end
    long before, which only the running trial can tell."""
    args = ["train", "--multirun", "search=lr", *TINY, f"data.source={small_corpus}"]
    args += ["trainer.val_check_interval=0.5", "hydra.sweeper.n_trials=2", "logger=none"]
    result = run_cli(args, cwd=tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(
        "lightning-accel: error: trainer.val_check_interval=0.5 first validates after training "
        "batch "
    ), error
    assert "ends after batch 4 (trainer.max_steps=4), so objective='val/loss' is never" in error
    (study,) = (tmp_path / "multirun" / "gpt").iterdir()
    assert sorted(p.name for p in study.iterdir() if p.is_dir()) == ["0"], "one trial started"
    assert not (study / "0" / "checkpoints").exists(), "it stopped before its first step"
