"""Builds and fits (or validates, tests, predicts with) one validated run: the code every
rank of a job executes."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, ModelSummary, ProgressBar
from lightning.pytorch.profilers import (
    AdvancedProfiler,
    Profiler,
    PyTorchProfiler,
    SimpleProfiler,
    XLAProfiler,
)
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from omegaconf import OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lightning_accel.callbacks.collective_trace import CollectiveTrace
from lightning_accel.callbacks.exact_resume import ExactResume
from lightning_accel.callbacks.preemption import PreemptionCheckpoint
from lightning_accel.callbacks.speed import DrivesSeveralDevices
from lightning_accel.checkpoints import (
    RUN_CHECKPOINTS,
    SavedProgress,
    consolidate_checkpoint,
    furthest_checkpoint,
    is_sharded,
    last_checkpoint,
    reached_limit,
    saved_progress,
    verify_checkpoint,
)
from lightning_accel.cli.cluster import cluster_plugins
from lightning_accel.cli.compose import path_override
from lightning_accel.cli.console import print_table, quiet_checkpointed_block_views, say
from lightning_accel.cli.schema import RunConfig
from lightning_accel.cli.sweep_resume import sweep_resume_command
from lightning_accel.cli.trackers import (
    config_parameters,
    continued_tracker_runs,
    finish_wandb_run,
    record_tracker_runs,
)
from lightning_accel.collectives import TRACE_DIRECTORY
from lightning_accel.data.loading import data_parallel_share
from lightning_accel.early_stopping import saved_early_stop
from lightning_accel.errors import SIGINT_EXIT_CODE, ConfigError, RunStopped
from lightning_accel.files import replaced_whole, write_text_whole
from lightning_accel.models import GPTLanguageModel
from lightning_accel.optimize.transforms import FSDP2
from lightning_accel.trainer_factory import build_trainer


def save_resolved_config(run: RunConfig) -> Path:
    """Write the run's fully resolved config to ``<run_dir>/config.yaml`` (through a
    temporary file: on several nodes sharing the directory, a rank may read it while another
    node's launcher writes the same content)."""
    path = Path(run.run_dir) / "config.yaml"
    return write_text_whole(path, OmegaConf.to_yaml(OmegaConf.structured(run)))


def build_object(node: dict[str, Any], key: str) -> Any:
    """Instantiate a ``_target_`` node, its lists and mappings passed as plain ones (an
    OmegaConf container among a module's hyper-parameters would make its checkpoints
    unloadable as data); a ConfigError or ImportError raised inside comes out unwrapped, and
    a ValueError (Python's error for an argument of the wrong value) as a ConfigError naming
    the target (:func:`refused_arguments`), so callers can report it as the user's
    error."""
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, (ConfigError, ImportError)):
            raise cause from None
        if isinstance(cause, ValueError):
            raise refused_arguments(key, node, cause) from cause
        raise


def refused_arguments(key: str, node: dict[str, Any], cause: BaseException) -> ConfigError:
    """The ConfigError for a ``_target_`` whose constructor refused the arguments the config
    gave it, with the first line of its own message."""
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return ConfigError(
        key, node.get("_target_"), f"refuses its arguments ({type(cause).__name__}: {first})"
    )


def build_run(run: RunConfig) -> tuple[pl.Trainer, pl.LightningModule, pl.LightningDataModule]:
    """Instantiate the trainer, model and data of a run (seeded first)."""
    pl.seed_everything(run.seed, workers=True, verbose=False)
    datamodule = build_object(run.data, "data")
    model = build_object(run.model, "model")
    if isinstance(model, GPTLanguageModel):
        quiet_checkpointed_block_views()
    callbacks = [build_object(node, key) for key, node in run.callback_nodes().items()]
    callbacks += [CollectiveTrace(Path(run.run_dir) / TRACE_DIRECTORY), ExactResume()]
    parameters = config_parameters(run)
    logger_nodes = run.logger_nodes()
    if resumes_in_own_directory(run):  # its tracker runs go on where the run does
        logger_nodes = continued_tracker_runs(Path(run.run_dir), logger_nodes, parameters)
    loggers = {key: build_object(node, key) for key, node in logger_nodes.items()}
    trainer = build_trainer(
        run.hardware,
        run.optimization,
        callbacks=callbacks,
        logger=list(loggers.values()) or False,
        default_root_dir=run.run_dir,
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
        enable_model_summary=any(isinstance(c, ModelSummary) for c in callbacks),
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        plugins=cluster_plugins(),
        **{**asdict(run.trainer), "profiler": profiler_for(run)},
    )
    for logger in trainer.loggers:  # each logs on rank 0 only
        logger.log_hyperparams(parameters)
    if run.stage == "fit" and trainer.is_global_zero:
        record_tracker_runs(Path(run.run_dir), loggers, parameters)
    return trainer, model, datamodule


def profiler_for(run: RunConfig) -> Profiler | None:
    """The profiler ``trainer.profiler`` names, its report written into the run directory
    (``<stage>-profile.txt``): Lightning's, built from the name alone, reports through a
    logger the console quiets, so the report was lost."""
    name = run.trainer.profiler
    if name is None:
        return None
    if name == "xla":  # a server that tools connect to: it writes no report
        return XLAProfiler()
    kinds = {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}
    return kinds[name](dirpath=run.run_dir, filename="profile")


def resume_checkpoint(run: RunConfig) -> str | None:
    """The checkpoint the run starts from: ``ckpt_path`` when given, else the complete
    ``last`` checkpoint its own checkpoint directory already holds (a restarted, requeued
    or repeated run continues where it stopped), else none."""
    if run.ckpt_path is not None:
        return run.ckpt_path
    found = own_last_checkpoint(run)
    return None if found is None else str(found)


def resume_notes(run: RunConfig, trainer: pl.Trainer, checkpoint: Path | None) -> list[str]:
    """What a fit resumed from ``checkpoint`` cannot carry on as the run that saved it
    would have: callback states none of the trainer's callbacks restores, and an epoch
    whose training loader kept no position (Lightning's own warning on it is filtered)."""
    if checkpoint is None or not trainer.is_global_zero:  # said by rank 0 only
        return []
    saved = saved_progress(checkpoint)
    notes = []
    if unused := unused_callback_states(saved, trainer):
        notes.append(
            f"the checkpoint's state of {', '.join(unused)} is left unused: no such callback"
        )
    if batches := saved.batches_without_position:
        notes.append(
            f"{checkpoint} was saved after batch {batches} of its epoch, and "
            f"data._target_={run.data.get('_target_')}'s training loader keeps no position in "
            f"checkpoints: the resumed epoch reads its first batches again and ends {batches} "
            "batches early, unlike a run without a stop (give the loader state_dict and "
            "load_state_dict, as lightning_accel.data's loaders and torchdata's "
            "StatefulDataLoader have)"
        )
    return notes


def unused_callback_states(saved: SavedProgress, trainer: pl.Trainer) -> list[str]:
    """The callbacks whose state a checkpoint holds but none of the trainer's restores (by
    ``state_key``: class and settings), as a resumed fit leaves them."""
    states = saved.callback_states
    return sorted(set(states) - {callback.state_key for callback in trainer.callbacks})


def resumes_in_own_directory(run: RunConfig) -> bool:
    """Whether a fit resumes from the checkpoint its own run directory holds (a repeated,
    restarted or requeued attempt), not from a given ``ckpt_path``."""
    return run.stage == "fit" and run.ckpt_path is None and own_last_checkpoint(run) is not None


def already_trained(run: RunConfig) -> str | None:
    """Why a fit has nothing left to do, where its own run directory's ``last`` checkpoint
    (what a repeated or requeued run resumes from) has reached ``trainer.max_steps``,
    ``max_epochs`` or ``max_time``, or was saved where the run's early stopping ended it:
    resumed from it, Lightning's loop would stop before a step, or (early stopping checks
    at validations only) train on to the next validation and stop there; None where it has
    steps to train."""
    if run.stage != "fit" or run.ckpt_path is not None:
        return None
    found = own_last_checkpoint(run)
    if found is None:
        return None
    saved = saved_progress(found)
    if reached := reached_limit(saved, run.trainer):
        return (
            f"{run.run_dir} already reached {reached.shown} ({found}, saved after "
            f"{reached.progress}); nothing to do: raise {reached.key} to train further"
        )
    return stopped_early(run, saved, found)


def stopped_early(run: RunConfig, saved: SavedProgress, found: Path) -> str | None:
    """Why the run's own checkpoint ``found`` ends it, where the run's early stopping had
    stopped it there (past ``min_steps`` and ``min_epochs``, which hold a stop back)."""
    if saved.step < max(run.trainer.min_steps or 0, 0):
        return None
    if saved.epochs < max(run.trainer.min_epochs or 0, 0):
        return None
    stoppers = {
        key: build_object(node, key) for key, node in run.callback_nodes_of(EarlyStopping).items()
    }
    reason = saved_early_stop(saved.callback_states, stoppers.values())
    if reason is None:
        return None
    return (
        f"{run.run_dir} already stopped early at step {saved.step} ({found}): {reason}; "
        f"nothing to do: drop {' and '.join(k.removeprefix('callbacks.') for k in stoppers)} "
        "from the callbacks to train on"
    )


def own_last_checkpoint(run: RunConfig) -> Path | None:
    """The checkpoint a run without ``ckpt_path`` resumes from, if its own checkpoint
    callback wrote one: its complete ``last`` checkpoint; with ``save_last`` off, the
    furthest complete one in its directory (a stop on SIGTERM saves ``last`` there all the
    same, and resuming from it was promised)."""
    for node in run.callback_nodes().values():
        if "save_last" not in node or not node.get("dirpath"):
            continue
        directory = Path(node["dirpath"])
        if node["save_last"]:
            found = last_checkpoint(directory)
            if found is None:
                refuse_damaged_last(directory / "last.ckpt")
        else:
            found = furthest_checkpoint(directory)
        if found is not None:
            return found
    return None


def refuse_damaged_last(target: Path) -> None:
    """Fail where a run directory's ``last`` checkpoint, which the run would resume from by
    itself, is there but damaged or incomplete. The pack writes checkpoints aside and
    renames them into place, so it was damaged after its save (a copy cut short, a failing
    disk); starting afresh instead would overwrite the run's checkpoints, ``metrics.csv``
    and ``summary.json``."""
    key = "the run directory's last checkpoint"
    if not target.exists():
        return
    try:
        verify_checkpoint(target, key)
    except ConfigError as error:
        damage = error.problem.partition("; use a checkpoint")[0]
        intact = furthest_checkpoint(target.parent)
        instead = f"resume from the furthest intact one with ckpt_path={intact}, " if intact else ""
        raise ConfigError(
            key,
            str(target),
            f"{damage}, so the run cannot go on from it; {instead}or give a new "
            "hydra.run.dir to start afresh (starting afresh here would overwrite the run's "
            "files)",
        ) from None


# Strategies that load a sharded (torch.distributed.checkpoint) directory themselves.
SHARD_LOADING_STRATEGIES = (FSDP2, "xla_spmd")


def whole_checkpoint_for(run: RunConfig, strategy: str) -> RunConfig:
    """The run resuming from a checkpoint its strategy can load: a sharded FSDP2 directory
    given to a strategy that loads whole files (DDP, one process) is consolidated into the
    run directory first, once, before any rank starts."""
    source = Path(run.ckpt_path) if run.ckpt_path else None
    if strategy in SHARD_LOADING_STRATEGIES or source is None or not is_sharded(source):
        return run
    output = consolidate_checkpoint(source, Path(run.run_dir) / f"consolidated-{source.name}")
    say(f"{strategy} loads whole checkpoints: consolidated {source} into {output}")
    return replace(run, ckpt_path=str(output))


@contextmanager
def stopped_on_sigint(where: Callable[[], str]) -> Iterator[None]:
    """Turn the exit with code 1 by which Lightning ends a stage that Ctrl-C interrupted
    into :class:`RunStopped` (exit 130), saying ``where()`` it stopped and what it kept."""
    try:
        yield
    except SystemExit as exit_:
        if not isinstance(exit_.__context__, KeyboardInterrupt):
            raise
        raise RunStopped(f"stopped on SIGINT {where()}", SIGINT_EXIT_CODE) from None


def devices_used(trainer: pl.Trainer) -> str:
    """The accelerator and the devices a run uses: ``CUDA x8``, or for XLA SPMD, whose one
    process drives a mesh of devices (Lightning counts one), ``PJRT x4 in SPMD``."""
    kind = type(trainer.accelerator).__name__.removesuffix("Accelerator")
    strategy = trainer.strategy
    if isinstance(strategy, DrivesSeveralDevices):
        return f"{kind} x{strategy.devices_per_process} in SPMD"
    return f"{kind} x{trainer.num_devices}"


def fit_run(run: RunConfig) -> None:
    """Train a run to its end, in this process (one rank of it when launched)."""
    trainer, model, datamodule = build_run(run)
    say(
        f"training recipe={run.recipe} on {devices_used(trainer)}"
        f" ({trainer.precision}); outputs in {run.run_dir}"
    )
    run_dir = Path(run.run_dir)
    ckpt_path = resume_checkpoint(run)
    if ckpt_path is not None and run.ckpt_path is None:
        say(f"resuming from {ckpt_path}, the last checkpoint this run directory holds")
    for note in resume_notes(run, trainer, None if ckpt_path is None else Path(ckpt_path)):
        say(note)
    try:
        with stopped_on_sigint(lambda: f"at step {trainer.global_step}; {resume_note(run_dir)}"):
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        raise RunStopped(stop_message(trainer, run_dir)) from None
    except (MisconfigurationException, RuntimeError) as error:
        user_error = unlogged_monitor(run, trainer, error) or unused_parameters(run, model, error)
        if user_error is None:
            raise
        raise user_error from None
    except ValueError as error:
        # The epoch's length is known only once the loaders exist, inside fit.
        if "`val_check_interval`" not in str(error):
            raise
        raise ConfigError(
            "trainer.val_check_interval",
            run.trainer.val_check_interval,
            f"is more than the {trainer.num_training_batches} training batches of an epoch;"
            " give at most that many, or trainer.limit_val_batches=0 for no validation",
        ) from None


# What ModelCheckpoint and EarlyStopping raise for a monitored metric no step logged, once
# validation has run (before it, ModelCheckpoint only warns, and the console filters that)
_UNLOGGED_MONITOR = ("could not find the monitored key", "which is not available")
# what Lightning raises for a ReduceLROnPlateau scheduler whose monitor was never logged
_PLATEAU_MONITOR = re.compile(r"ReduceLROnPlateau conditioned on metric (\S+) which is not")


def unlogged_monitor(run: RunConfig, trainer: pl.Trainer, error: Exception) -> ConfigError | None:
    """The config error for ``error`` where it is a callback's complaint that the metric its
    ``monitor`` names was never logged (found only when validation first runs), naming the
    callback's key and the metrics the model logs, or Lightning's for the model's own
    ReduceLROnPlateau scheduler; None for any other error."""
    if not any(phrase in str(error) for phrase in _UNLOGGED_MONITOR):
        return None
    for key, node in run.callback_nodes().items():
        monitor = node.get("monitor")
        named = monitor and (repr(monitor) in str(error) or f"`{monitor}`" in str(error))
        if named and monitor not in trainer.callback_metrics:
            return ConfigError(
                f"{key}.monitor",
                monitor,
                "is not a metric the model logs (found at the validation after step "
                f"{trainer.global_step})",
                sorted(trainer.callback_metrics),
            )
    scheduler = _PLATEAU_MONITOR.search(str(error))
    if scheduler is not None:
        return ConfigError(
            "model._target_",
            run.model.get("_target_"),
            f"conditions its ReduceLROnPlateau scheduler (configure_optimizers' monitor) on "
            f"{scheduler[1]!r}, which is not a metric it logs (found at step "
            f"{trainer.global_step})",
            sorted(trainer.callback_metrics),
        )
    return None


# what Lightning raises where DDP waited for the gradients of parameters the loss never used
_UNUSED_PARAMETERS = "parameters that were not used in producing the loss"


def unused_parameters(
    run: RunConfig, model: pl.LightningModule, error: Exception
) -> ConfigError | None:
    """The config error for ``error`` where it is DDP's complaint that the model has
    parameters its training loss did not use (found at the first step's backward); None
    for any other error."""
    if _UNUSED_PARAMETERS not in str(error):
        return None
    key = "hardware.strategy_options.find_unused_parameters"
    return ConfigError(
        key,
        run.hardware.strategy_options.get("find_unused_parameters", False),
        f"leaves DDP waiting for the gradients of parameters of {type(model).__name__} that "
        f"its training_step's loss does not use; give +{key}=true (DDP then walks the "
        "autograd graph every step), or leave those parameters out of the model",
    )


def resume_clause(run_dir: Path, saved: bool = True) -> str:
    """What goes on with the stopped run of ``run_dir`` (``saved``: from a checkpoint
    there): for a job of a sweep, the sweep's command (:func:`sweep_resume_command`), else
    the run's (:func:`resume_command`)."""
    sweep = sweep_resume_command(run_dir)
    if sweep is None:
        return f"`{resume_command(run_dir)}` resumes from it" if saved else ""
    this_job = "resumes this job from it" if saved else "starts this job again"
    return f"`{sweep}` goes on with the sweep: it keeps the finished jobs, {this_job}"


def resume_command(run_dir: Path) -> str:
    """The command that goes on with the run of ``run_dir`` from the last checkpoint there:
    the job's overrides as Hydra recorded them, without ``ckpt_path`` (the run's own
    checkpoint is newer), with ``hydra.run.dir`` set to that directory (a new command would
    otherwise start a new run directory, named by the time)."""
    recorded = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(recorded.read_text()) if recorded.is_file() else []
    kept = [o for o in overrides or [] if not o.startswith(("ckpt_path=", "hydra.run.dir="))]
    directory = path_override("hydra.run.dir", run_dir)
    return shlex.join(["lightning-accel", "train", *kept, directory])


def resume_note(run_dir: Path) -> str:
    """How a stopped run of ``run_dir`` goes on: the last checkpoint its directory holds and
    the command that resumes from it, or that it saved none."""
    found = last_checkpoint(run_dir / RUN_CHECKPOINTS)
    if found is None:
        again = resume_clause(run_dir, saved=False)
        return "it saved no checkpoint" + f"; {again}" * bool(again)
    return f"its last checkpoint is {found}; {resume_clause(run_dir)}"


def stop_message(trainer: pl.Trainer, run_dir: Path) -> str:
    """What a run stopped on SIGTERM left, and how it goes on."""
    ranks = " (every rank)" if trainer.world_size > 1 else ""
    message = f"stopped on SIGTERM after step {trainer.global_step}{ranks}"
    saver = next((c for c in trainer.callbacks if isinstance(c, PreemptionCheckpoint)), None)
    if saver is None or saver.saved is None:
        return message + "; no checkpoint saved there"
    return f"{message}; saved {saver.saved}; {resume_clause(run_dir)}"


def run_stage(run: RunConfig) -> None:
    """Fit the run, or run its ``stage`` (validate, test, predict) on its ``ckpt_path``."""
    try:
        if run.stage == "fit":
            fit_run(run)
        else:
            evaluate_run(run)
    finally:
        wandb_run = finish_wandb_run()  # now, not at exit: its upload hint comes before "done"
        if wandb_run is not None:
            say(wandb_run)


def evaluate_run(run: RunConfig) -> None:
    """Validate, test or predict with the model of ``run.ckpt_path``: metrics into
    ``<run_dir>/<stage>.json`` and a table (rank 0); predictions into
    ``<run_dir>/predictions-rank<N>.pt`` (each data-parallel rank's share of the batches,
    see :func:`prediction_file`)."""
    trainer, model, datamodule = build_run(run)
    say(f"{run.stage} with {run.ckpt_path} on {devices_used(trainer)}")
    run_dir = Path(run.run_dir)
    interrupted = stopped_on_sigint(lambda: f"during {run.stage}, before its results were written")
    if run.stage == "predict":
        with interrupted:
            batches = trainer.predict(model, datamodule=datamodule, ckpt_path=run.ckpt_path)
        path = prediction_file(trainer, run_dir)
        if path is not None:
            with replaced_whole(path) as staging:
                torch.save(batches, staging)
        say(f"{len(batches or [])} batches of predictions in {run_dir}/predictions-rank*.pt")
        return
    evaluate = trainer.validate if run.stage == "validate" else trainer.test
    with interrupted:
        results = evaluate(model, datamodule=datamodule, ckpt_path=run.ckpt_path, verbose=False)
    if trainer.is_global_zero:
        metrics = {k: float(v) for result in results for k, v in result.items()}
        path = write_text_whole(run_dir / f"{run.stage}.json", json.dumps(metrics, indent=2))
        print_metrics(f"{run.stage}: {run.ckpt_path}", metrics)
        say(f"metrics in {path}")


def prediction_file(trainer: pl.Trainer, run_dir: Path) -> Path | None:
    """Where this rank writes its predictions: ``predictions-rank<d>.pt`` for its
    data-parallel rank d, written by the first rank of its tensor-parallel group only (the
    group predicts the same samples); None for the group's other ranks."""
    mesh = getattr(trainer.strategy, "device_mesh", None)
    names = getattr(mesh, "mesh_dim_names", None) or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].get_local_rank() > 0:
        return None
    return run_dir / f"predictions-rank{data_parallel_share(trainer)['rank']}.pt"


def print_metrics(title: str, metrics: dict[str, float]) -> None:
    """A table of ``metrics`` for people (stdout)."""
    # as wide as its title, which names the checkpoint: rich wraps a title at the table's width
    table = Table(title=escape(title), title_justify="left", min_width=len(title))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in sorted(metrics.items()):
        table.add_row(escape(name), f"{value:.4f}")
    print_table(table, Console())
