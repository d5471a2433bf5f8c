"""Hyper-parameter search through a Hydra sweeper plugin (Optuna's): the values each search
parameter can take, checked before any trial starts; a job's objective; and the table of a
sweep's jobs printed when it ends."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override
from hydra.errors import OverrideParseException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.markup import escape
from rich.table import Table
from typing_extensions import override

from lightning_accel.cli.compose import compose_job, parse_overrides
from lightning_accel.cli.console import print_table, say
from lightning_accel.cli.hydra_private import BASIC_SWEEPER
from lightning_accel.config import batch_count, require_choice
from lightning_accel.errors import ConfigError

if TYPE_CHECKING:
    from lightning_accel.cli.schema import RunConfig

OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
SUMMARY_FILE = "summary.json"


def search_parameters(parsed: list[Override]) -> dict[str, Override] | None:
    """The search space of a ``--multirun`` whose sweeper is Optuna's: each parameter's
    override (``hydra.sweeper.params`` of the config, then the command line's sweeps); None
    when the sweeper is Hydra's basic one, which expands sweeps itself."""
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    sweeper = compose_job(fixed).hydra.sweeper
    if sweeper.get("_target_") != OPTUNA_SWEEPER:
        return None
    check_sweeper(sweeper)
    parser = OverridesParser.create()
    parameters: dict[str, Override] = {}
    for key, value in (sweeper.get("params") or {}).items():
        line = f"{key}={value}"
        try:
            (parameters[key],) = parser.parse_overrides([line])
        except OverrideParseException as error:
            raise ConfigError(f"hydra.sweeper.params.{key}", value, "cannot be parsed") from error
    parameters.update({o.get_key_element(): o for o in parsed if o.is_sweep_override()})
    return parameters


# the study's directions for its one objective (optuna.study.StudyDirection's names)
DIRECTIONS = ("minimize", "maximize")


def check_sweeper(sweeper: DictConfig) -> None:
    """Fail unless the Optuna sweeper's settings can run a study of the one objective: a
    direction, and positive counts of trials and of trials at once."""
    require_choice("hydra.sweeper.direction", sweeper.get("direction"), DIRECTIONS)
    for key in ("n_trials", "n_jobs"):
        value = sweeper.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"hydra.sweeper.{key}", value, "must be a whole number of 1 or more")


def trial_values(key: str, parameter: Override) -> list[str]:
    """The values of ``parameter`` that a trial can be given and that stand for all of them
    in the checks before launch: every choice, a range's ends, an interval's bounds."""
    if not parameter.is_sweep_override():
        return [parameter.get_value_element_as_str()]
    sweep = parameter.value()
    written = parameter.input_line.partition("=")[2]
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if not low < high:
            empty = "is an empty interval; give interval(LOW, HIGH) with LOW < HIGH"
            raise ConfigError(key, written, empty)
        if "log" in sweep.tags and low <= 0:
            raise ConfigError(key, written, "samples on a log scale, which needs LOW > 0")
        return [str(low), str(high)]
    values = list(parameter.sweep_string_iterator())
    if not values:
        raise ConfigError(key, written, "gives no values to try")
    return values if parameter.is_choice_sweep() else [values[0], values[-1]]


def trial_samples(overrides: list[str]) -> list[list[str]] | None:
    """For an Optuna search, the override lists that together give every search parameter
    each of its :func:`trial_values` (the others at their first): checking these jobs checks
    every value a trial can be given. None for Hydra's basic sweeper."""
    parsed = parse_overrides(overrides)
    parameters = search_parameters(parsed)
    if parameters is None:
        return None
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    values = {key: trial_values(key, parameter) for key, parameter in parameters.items()}
    first = {key: candidates[0] for key, candidates in values.items()}
    samples: list[list[str]] = []
    for key, candidates in values.items():
        for value in candidates:
            sample = [*fixed, *(f"{k}={v}" for k, v in {**first, key: value}.items())]
            if sample not in samples:
                samples.append(sample)
    return samples or [fixed]


def _validations(run_dir: Path) -> list[dict[str, float]]:
    """The validations ``summary.json`` records; none where no summary was written (a
    callback set without ``RunSummary``)."""
    summary = run_dir / SUMMARY_FILE
    if not summary.is_file():
        return []
    return json.loads(summary.read_text()).get("validation") or []


def _last_value(validations: list[dict[str, float]], metric: str) -> float | None:
    values = [v[metric] for v in validations if metric in v]
    return float(values[-1]) if values else None


def job_objective(run_dir: Path, metric: str) -> float | None:
    """The last validation value of ``metric`` a job logged (its ``summary.json``): what a
    hyper-parameter search optimizes; None when the job never logged it."""
    return _last_value(_validations(run_dir), metric)


def searching(hydra: DictConfig) -> bool:
    """Whether this job is a trial of a sweeper that optimizes its objective (a
    ``--multirun`` through any sweeper but Hydra's basic one)."""
    return hydra.mode == RunMode.MULTIRUN and hydra.sweeper.get("_target_") != BASIC_SWEEPER


def required_objective(run_dir: Path, metric: str, required: bool) -> float | None:
    """The job's objective; when ``required`` (a search's trial), a metric never logged is a
    ConfigError naming those that were."""
    validations = _validations(run_dir)
    value = _last_value(validations, metric)
    if value is not None or not required:
        return value
    logged = sorted({k for v in validations for k in v if k != "step"})
    if not logged:
        raise ConfigError(
            "objective",
            metric,
            "was never logged: the trial ended before its first validation; validate sooner "
            "(trainer.val_check_interval) or train longer (trainer.max_steps)",
        )
    raise ConfigError("objective", metric, "was never logged in validation", logged)


def check_trials_validate(run: RunConfig) -> None:
    """Fail unless a search's trial validates before it ends, as far as the config tells
    (the objective is a validation metric), and records it in the ``summary.json`` that a
    ``RunSummary`` callback writes, where the search reads it."""
    from lightning_accel.callbacks import RunSummary

    if not run.callback_nodes_of(RunSummary):
        raise ConfigError(
            "callbacks",
            ", ".join(key.removeprefix("callbacks.") for key in run.callback_nodes()),
            f"has no RunSummary, whose summary.json gives a search its objective="
            f"{run.objective!r}; keep the default set beside yours, as in "
            "'callbacks=[default,early_stopping]'",
        )
    trainer = run.trainer
    if trainer.limit_val_batches == 0:
        raise ConfigError(
            "trainer.limit_val_batches",
            0,
            f"leaves a search's trials without validation, so objective={run.objective!r} is "
            "never logged",
        )
    interval = batch_count(trainer.val_check_interval)  # in training batches
    batches = trainer.max_steps * run.optimization.accumulate_grad_batches
    if interval is not None and 0 < batches < interval:
        raise ConfigError(
            "trainer.val_check_interval",
            interval,
            f"comes after the last of the {batches} training batches of trainer.max_steps="
            f"{trainer.max_steps}, so a search's trials never validate and objective="
            f"{run.objective!r} is never logged; give at most {batches}",
        )


class SweepReport(Callback):
    """A Hydra callback that prints a table of a ``--multirun``'s jobs when it ends: each
    job's swept values and its objective (the run config's ``objective`` metric), and for an
    Optuna search the best trial the study chose. Registered in ``conf/config.yaml``."""

    @override
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.sweeper.get("_target_") == OPTUNA_SWEEPER:
            import optuna

            # its study announcements; the table says what each trial gave
            optuna.logging.set_verbosity(optuna.logging.WARNING)

    @override
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = sorted(
            (p for p in sweep_dir.iterdir() if (p / SUMMARY_FILE).exists()),
            key=lambda p: int(p.name) if p.name.isdigit() else math.inf,
        )
        if not jobs:
            return
        metric = str(config.get("objective", "val/loss"))
        table = Table(title=escape(f"Jobs of {sweep_dir}"), title_justify="left")
        for column in ("job", "swept values", metric):
            table.add_column(column, justify="left" if column == "swept values" else "right")
        overrides = {
            job: yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
            for job in jobs
        }
        shared = set.intersection(*(set(o) for o in overrides.values()))
        for job in jobs:
            objective = job_objective(job, metric)
            value = "-" if objective is None else f"{objective:.4f}"
            swept = " ".join(o for o in overrides[job] if o not in shared or len(jobs) == 1)
            table.add_row(job.name, escape(swept), value)
        print_table(table)
        results = sweep_dir / "optimization_results.yaml"
        if results.exists():
            best = yaml.safe_load(results.read_text())
            chosen = " ".join(f"{k}={v}" for k, v in best["best_params"].items())
            say(f"best trial: {chosen} ({metric} {best['best_value']:.4f}); study in {results}")
