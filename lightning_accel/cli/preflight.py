"""Checks every job of a command before Hydra starts it: composition, schema, values, paths.

Each problem becomes a :class:`ConfigError` (one sentence naming the key, the value and the
valid choices). Nothing is written and no process is started while checking.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import (
    InterpolationToMissingValueError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

from lightning_accel.argument_types import parameter_types, require_fits
from lightning_accel.cli.compose import compose_job, job_overrides, unknown_key, value_error
from lightning_accel.cli.config_sources import set_in_job_file
from lightning_accel.cli.console import say
from lightning_accel.cli.hydra_private import locate
from lightning_accel.cli.schema import LAUNCHERS, RunConfig
from lightning_accel.errors import ConfigError
from lightning_accel.files import check_writable, required_path

if TYPE_CHECKING:
    from lightning_accel.optimize.memory_format import ChannelsLastChoice
    from lightning_accel.plan.footprint import ModelFootprint
    from lightning_accel.plan.layouts import Placement
    from lightning_accel.plan.run import RunPlan


def run_directory(cfg: DictConfig, multirun: bool, job_number: int = 0) -> Path:
    """The directory Hydra will create for this job."""
    HydraConfig.instance().set_config(cfg)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        directory = str(OmegaConf.select(cfg, key, throw_on_missing=True))
    except (MissingMandatoryValue, InterpolationToMissingValueError) as error:
        raise _missing(error, cfg) from error
    if not directory.strip():  # Hydra would write the run's files among the current ones
        raise ConfigError(key, directory, "is empty; give a directory (. for this one)")
    if not multirun:
        return Path(directory)
    numbered = copy.deepcopy(cfg)
    with read_write(numbered.hydra.job):
        numbered.hydra.job.num = job_number  # as Hydra's launcher sets it for each job
    return Path(directory) / str(OmegaConf.select(numbered, "hydra.sweep.subdir"))


def check_job_stays_in_place(cfg: DictConfig) -> None:
    """Refuse ``hydra.job.chdir=true``: the preflight, every rank and a resume read the
    command's relative paths (``data.source``, ``ckpt_path``) from the directory it runs in,
    so a job moved into its run directory would read other files than those checked."""
    if OmegaConf.select(cfg, "hydra.job.chdir"):
        raise ConfigError(
            "hydra.job.chdir",
            True,
            "is not supported: the command's relative paths (data.source, ckpt_path) are "
            "read from the directory it runs in, and a callback of yours writes into the "
            "run directory through ${hydra:runtime.output_dir}",
            [False],
        )


def check_sweeper_needs_multirun(cfg: DictConfig, multirun: bool) -> None:
    """Refuse a search (a sweeper other than Hydra's basic one) without ``--multirun``:
    Hydra runs the one job as it is, the search ignored."""
    choices = cfg.hydra.runtime.choices
    sweeper = choices.get("hydra/sweeper")
    if multirun or sweeper in (None, "basic"):
        return
    search = choices.get("search")  # the pack's presets name the sweeper for the user
    raise ConfigError(
        "search" if search else "hydra/sweeper",
        search or sweeper,
        "is a search, a sweep of trials, which runs only with --multirun (-m); without it the "
        "one job would run with the search left out",
    )


def _missing(
    error: MissingMandatoryValue | InterpolationToMissingValueError, cfg: DictConfig
) -> ConfigError:
    key = str(error.full_key)
    if key.startswith("hydra."):  # the run directory names the run by launcher.run_id
        key = "launcher.run_id"
    if key == "launcher.run_id":
        return ConfigError(
            key,
            "???",
            f"must be set for launcher={cfg.launcher.name}: give every node the same id "
            "(it names the rendezvous and the run directory)",
        )
    return ConfigError(key, "???", f"must be set for recipe={cfg.recipe}")


def validated_run(cfg: DictConfig, run_dir: Path) -> RunConfig:
    """The job's :class:`RunConfig`, with every value check of the schema applied, and
    ``optimization.channels_last: auto`` decided (in the composed config, so that what
    interpolates it, such as the image recipe's batches, follows the choice)."""
    job = copy.deepcopy(cfg)
    with open_dict(job):
        job.pop("hydra", None)
    job.run_dir = str(run_dir)
    _check_known_keys(job, "")
    run = _schema_checked(job, cfg)
    if run.optimization.channels_last != "auto":
        return run
    choice = _channels_last_choice(run)
    job.optimization.channels_last = choice.enabled
    job.optimization.channels_last_reason = choice.reason
    return _schema_checked(job, cfg)


def _channels_last_choice(run: RunConfig) -> ChannelsLastChoice:
    """The run's channels-last choice; off where this machine cannot plan the run's
    hardware: the checks that follow say why, or (``launcher=slurm``, submitted from a
    login node) the job decides again on the node it runs on."""
    from lightning_accel.optimize.memory_format import ChannelsLastChoice, channels_last_choice
    from lightning_accel.plan import meta_model
    from lightning_accel.plan.run import plan_run

    try:
        plan = plan_run(run.hardware, run.optimization)
    except ConfigError as error:
        return ChannelsLastChoice(False, f"this machine cannot plan the run ({error.key})")
    try:
        model = meta_model(run.model)
    except ConfigError:
        model = None
    return channels_last_choice(model, plan.accelerator, plan.layout, plan.strategy)


def _schema_checked(job: DictConfig, cfg: DictConfig) -> RunConfig:
    """``job`` as its :class:`RunConfig` (``cfg``: the composed config, for its messages)."""
    try:
        return OmegaConf.to_object(job)  # type: ignore[return-value]
    except MissingMandatoryValue as error:
        raise _missing(error, cfg) from error
    except ConfigError:
        raise
    except OmegaConfBaseException as error:
        # the value as written (an interpolation that failed to resolve has none yet)
        key = str(error.full_key)
        written: Any = OmegaConf.to_container(job, resolve=False)
        for part in key.split("."):
            written = written.get(part) if isinstance(written, dict) else None
        given = [f"{key}={written}"] if isinstance(written, str) else []
        raise value_error(error, given) from error


def _check_known_keys(node: DictConfig, prefix: str) -> None:
    """Fail on a key added (``+key=...``) to a section the schema fixes: converting the
    config to its dataclasses would drop it silently, and a misspelt option would be
    ignored."""
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return
    fields = [field.name for field in dataclasses.fields(schema)]
    given = OmegaConf.to_container(node, resolve=False)
    assert isinstance(given, dict)
    for key, value in given.items():
        if key not in fields:
            raise unknown_key(f"{prefix}{key}", value, fields)
        if isinstance(value, dict):
            _check_known_keys(node.get(key), f"{prefix}{key}.")


def _check_arguments(key: str, node: dict[str, Any]) -> None:
    """Fail unless the node's ``_target_`` imports and accepts the node's arguments."""
    target = node.get("_target_")
    try:
        factory = locate(str(target))
    except Exception as error:
        cause = error.__cause__ or error
        raise ConfigError(
            f"{key}._target_", target, f"cannot be imported ({type(cause).__name__}: {cause})"
        ) from error
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    arguments = {k: v for k, v in node.items() if not k.startswith("_")}
    types = parameter_types(factory)
    for name, value in arguments.items():
        if name not in parameters:
            raise ConfigError(
                f"{key}.{name}", value, f"is not an argument of {target}", sorted(parameters)
            )
        if name in types:
            require_fits(f"{key}.{name}", value, types[name], str(target))
    for name, parameter in parameters.items():
        required = parameter.default is inspect.Parameter.empty and parameter.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        )
        if required and name not in arguments:
            raise ConfigError(
                f"{key}.{name}", None, f"is required by {target}; add +{key}.{name}=VALUE"
            )


def check_targets(run: RunConfig) -> None:
    """Fail unless each ``_target_`` of model, data, logger and callbacks can be imported and
    takes the arguments the config gives it."""
    nodes = {"model": run.model, "data": run.data}
    for key, node in nodes.items():
        if not isinstance(node, dict) or "_target_" not in node:
            kind = "LightningModule" if key == "model" else "LightningDataModule"
            raise ConfigError(
                f"{key}._target_",
                None,
                f"is missing, and a run needs its {kind}: give {key}._target_=CLASS, or keep "
                "the recipe's",
            )
    nodes.update(run.logger_nodes())
    nodes.update(run.callback_nodes())
    for key, node in nodes.items():
        if not isinstance(node, dict) or "_target_" not in node:
            raise ConfigError(
                key, node, "is not a _target_ node; give {_target_: CLASS, ...}, or null for none"
            )
        _check_arguments(key, node)


# the arguments by which Lightning's callbacks and loggers (and the pack's) name the
# directory they write to
OUTPUT_DIRECTORY_ARGUMENTS = ("dirpath", "save_dir", "output_dir")


def check_output_directories(run: RunConfig) -> None:
    """Fail for a callback or logger whose output directory cannot be created (a path
    through a file, a read-only mount), before anything runs; found at its first write
    otherwise, a traceback after the run had started."""
    for key, node in {**run.callback_nodes(), **run.logger_nodes()}.items():
        for argument in OUTPUT_DIRECTORY_ARGUMENTS:
            if isinstance(node.get(argument), str):
                check_writable(Path(node[argument]), f"{key}.{argument}")


def check_callbacks(run: RunConfig) -> None:
    """Build each callback, so that its own argument checks run before any process starts
    (callbacks write nothing when constructed), and fail for one that needs a logger the
    run does not have."""
    from lightning.pytorch.callbacks import Callback, DeviceStatsMonitor, LearningRateMonitor

    from lightning_accel.cli.runner import build_object, refused_arguments

    # Lightning's callbacks that write to the run's loggers and refuse to start without one
    need_a_logger = (LearningRateMonitor, DeviceStatsMonitor)
    for key, node in run.callback_nodes().items():
        try:
            callback = build_object(node, key)
        except ConfigError:
            raise
        except Exception as error:  # noqa: BLE001 - the callback's own refusal of its arguments
            raise refused_arguments(key, node, error.__cause__ or error) from None
        check_built_type(key, node, callback, Callback)
        if isinstance(callback, need_a_logger) and not run.logger_nodes():
            raise ConfigError(
                "logger",
                "none",
                f"leaves {key} ({type(callback).__name__}) nothing to write to; choose a "
                "logger such as logger=csv, or drop the callback",
            )


def check_model_and_data(run: RunConfig) -> tuple[Any, Any]:
    """Build the DataModule and the logger, and the model on the meta device (no memory
    used), so that their own argument checks run before any process starts. None of them
    writes anything when constructed. Returns the model (None when it cannot be built on
    the meta device) and the DataModule."""
    import lightning.pytorch as pl
    import torch

    from lightning_accel.cli.runner import build_object
    from lightning_accel.optimize import check_model_optimizations
    from lightning_accel.optimize.memory_format import has_convolution_weights
    from lightning_accel.strategies import FSDP2Strategy
    from lightning_accel.strategies.sharding import shard_units

    datamodule = build_object(run.data, "data")
    check_built_type("data", run.data, datamodule, pl.LightningDataModule)
    for key, node in run.logger_nodes().items():
        try:
            _check_logger(key, node)
        except ImportError as error:
            raise ConfigError(
                f"{key}._target_",
                node["_target_"],
                f"needs a package that is not installed ({str(error).splitlines()[0]}); "
                "pip install 'lightning-accel[tracking]' adds TensorBoard, MLflow and W&B",
            ) from error
    with torch.device("meta"):
        try:
            model = build_object(run.model, "model")
        except ConfigError:
            raise
        except Exception:  # noqa: BLE001 - some models cannot be built on meta; the run will tell
            return None, datamodule
    check_built_type("model", run.model, model, pl.LightningModule)
    check_model_optimizations(model, run.optimization)
    if run.hardware.strategy == FSDP2Strategy.strategy_name:
        shard_units(model, run.hardware.strategy_options.get("shard_classes") or ())
        if run.optimization.channels_last is True and has_convolution_weights(model):
            raise ConfigError(
                "optimization.channels_last",
                True,
                f"cannot run under hardware={run.hardware.name}: FSDP2 shards only contiguous "
                "parameters, and channels-last convolution weights are not; set it to false, "
                "or use DDP (hardware=ddp, ddp_cpu)",
            )
    return model, datamodule


def check_built_type(key: str, node: dict[str, Any], built: object, expected: type) -> None:
    """Fail unless the object ``node`` built is an ``expected`` (a LightningModule, a
    LightningDataModule, a Lightning Callback or Logger), naming its ``_target_``."""
    if not isinstance(built, expected):
        lightning = "" if expected.__name__.startswith("Lightning") else "Lightning "
        raise ConfigError(
            f"{key}._target_",
            node["_target_"],
            f"builds a {type(built).__name__}, not a {lightning}{expected.__name__}",
        )


def check_data_fits_model(model: Any, datamodule: Any) -> None:
    """Fail where the data does not fit the model (token windows longer than its context,
    more classes than its head), for a model that says so in a ``check_data(datamodule)``
    method, as the pack's models do and yours may; found in ``setup`` otherwise, after the
    run had started."""
    check_data = getattr(model, "check_data", None)
    if callable(check_data):
        check_data(datamodule)


def check_monitored_metrics(run: RunConfig, model: Any, searching: bool = False) -> None:
    """Fail where a callback's ``monitor`` (and a search's ``objective``) names a metric in
    the model's own namespaces (``val/``, ``train/``) that the model does not log, for a
    model that declares what it logs (``logged_metrics``, as the pack's models do), or a
    speed monitor figure (``speed/``: written to the loggers only). Other names and models
    that declare nothing are left to the run, which reports an unlogged monitor at its
    first validation."""
    from lightning_accel.callbacks.speed import SPEED_NAMESPACE

    declared = getattr(model, "logged_metrics", None)
    named = {key + ".monitor": node.get("monitor") for key, node in run.callback_nodes().items()}
    if searching:
        named["objective"] = run.objective
    named = {key: metric for key, metric in named.items() if isinstance(metric, str)}
    for key, metric in named.items():
        if metric.startswith(SPEED_NAMESPACE):
            raise ConfigError(
                key,
                metric,
                "is a speed monitor figure, which goes to the loggers and summary.json, not to "
                "what callbacks and searches read; compare speeds with lightning-accel bench",
                sorted(declared) if declared else None,
            )
    if not declared:
        return
    namespaces = {name.split("/")[0] for name in declared}
    for key, metric in named.items():
        if metric.split("/")[0] in namespaces and metric not in declared:
            raise ConfigError(
                key, metric, f"is not a metric {type(model).__name__} logs", sorted(declared)
            )


def _check_logger(key: str, node: dict[str, Any]) -> None:
    """Build the logger of ``node`` (its constructor checks its arguments and its package),
    except MLflow's: its client creates the store when constructed, so only its package
    is looked for."""
    from importlib.util import find_spec

    from lightning.pytorch.loggers import Logger, MLFlowLogger

    from lightning_accel.cli.runner import build_object

    logger_class = locate(str(node["_target_"]))
    if isinstance(logger_class, type) and issubclass(logger_class, MLFlowLogger):
        if find_spec("mlflow") is None:
            raise ModuleNotFoundError("No module named 'mlflow'", name="mlflow")
        return
    check_built_type(key, node, build_object(node, key), Logger)


def check_memory(run: RunConfig, plan: RunPlan | None, model: Any, datamodule: Any) -> None:
    """Refuse a run the plan predicts will not fit in memory: host memory shared by the
    local ranks on CPUs, the device's memory on CUDA (with ``micro_batch: auto``, not even
    at one sample per micro-batch). Skipped with ``force=true``, for runs planned where they
    run (SLURM), for layouts the planner does not model (XLA), and for models and data that
    cannot be measured without memory."""
    from lightning_accel.data.loading import HasBatchSize
    from lightning_accel.plan.fit import available_per_rank, check_fits, largest_micro_batch

    if run.force or plan is None:
        return
    available = available_per_rank(plan)
    if available is None:
        return
    measured = measure_run(run, plan, model, datamodule)
    if measured is None:
        _say_memory_unchecked(run, plan, model, datamodule)
        return
    footprint, placement = measured
    if run.optimization.micro_batch == "auto":
        if largest_micro_batch(footprint, placement, available[0]) is not None:
            return
        footprint = footprint.with_samples(1)
    batch_size = datamodule.batch_size if isinstance(datamodule, HasBatchSize) else None
    check_fits(footprint, placement, *available, batch_size, run.hardware.name)


def _say_memory_unchecked(run: RunConfig, plan: RunPlan, model: Any, datamodule: Any) -> None:
    """Say that the memory check was left out where only the data kept it from measuring a
    run it models: reading a batch here would run the DataModule's setup once more."""
    from lightning_accel.plan.model import DESCRIBE_A_BATCH, example_batch

    if plan.layout is not None and model is not None and example_batch(datamodule, model) is None:
        say(
            f"memory not checked before launch: data._target_={run.data['_target_']} "
            f"describes no batch without reading data ({DESCRIBE_A_BATCH})"
        )


def planned_precision(run: RunConfig, plan: RunPlan) -> str:
    """The precision the memory model assumes: the plan's; for ``fastest``, fp32, which it
    may keep and which needs the most memory."""
    return "32-true" if run.optimization.precision == "fastest" else plan.precision.precision


def measure_run(
    run: RunConfig, plan: RunPlan, model: Any, datamodule: Any, count_flops: bool = False
) -> tuple[ModelFootprint, Placement] | None:
    """The run's model (built on the meta device; made fake in place) measured on one
    example batch, and how the run sits on its ranks; None where the planner cannot
    measure it (an unmodelled layout, a model not built on meta, no example batch)."""
    from lightning_accel.plan import attach_trainer, example_batch, measure_footprint

    example = example_batch(datamodule, model) if model is not None else None
    if plan.layout is None or example is None:
        return None
    precision = planned_precision(run, plan)
    attach_trainer(model, run.trainer.max_steps)
    configured = run.hardware.strategy_options.get("tensor_parallel_plan")
    footprint = measure_footprint(
        model, example[0], (precision,), example[1], count_flops, configured
    )
    return footprint, run_placement(run, plan, precision)


def run_placement(run: RunConfig, plan: RunPlan, precision: str) -> Placement:
    """How the run sits on its ranks, for the memory model."""
    from lightning_accel.plan.layouts import Placement
    from lightning_accel.strategies.mesh import MeshShape

    checkpointing = run.optimization.activation_checkpointing
    return Placement(
        plan.layout or "single",
        plan.world_size,
        precision,
        checkpointing.every_k_blocks if checkpointing.enabled else None,
        run.optimization.accumulate_grad_batches,
        plan.mesh or MeshShape(),
    )


# what Trainer.fit/validate take as ckpt_path besides a path
LIGHTNING_CHECKPOINT_NAMES = ("last", "best", "hpc", "registry")


def check_checkpoint(run: RunConfig) -> Path | None:
    """Fail unless ``ckpt_path``, when given, is a complete checkpoint file or directory that
    holds data only, saved before the step a fit ends at; without it, fail when the
    ``last`` checkpoint the run would resume from by itself would run code when loaded.
    Returns the checkpoint the run will resume from."""
    from lightning_accel.checkpoints import reached_limit, saved_progress, verify_checkpoint
    from lightning_accel.cli.runner import own_last_checkpoint

    if run.ckpt_path is None:
        return own_last_checkpoint(run)
    own = ", or null to resume from the run directory's last one" if run.stage == "fit" else ""
    path = required_path("ckpt_path", run.ckpt_path, f"a checkpoint file{own}")
    if run.ckpt_path in LIGHTNING_CHECKPOINT_NAMES and not path.exists():
        raise ConfigError(
            "ckpt_path",
            run.ckpt_path,
            "is Lightning's name for a checkpoint its trainer's callback knows, which the "
            "runner does not take: give the file (RUN_DIR/checkpoints/last.ckpt); a fit "
            "resumes from its run directory's last checkpoint without ckpt_path "
            "(hydra.run.dir=RUN_DIR)",
        )
    verify_checkpoint(path)
    reached = reached_limit(saved_progress(path), run.trainer) if run.stage == "fit" else None
    if reached is not None:
        raise ConfigError(
            reached.key,
            reached.value,
            f"is reached by ckpt_path={run.ckpt_path} (saved after {reached.progress}), so "
            "nothing would train; raise it to train further (lightning-accel validate "
            "evaluates the checkpoint)",
        )
    return path


# the LightningModule method each evaluation stage needs
STAGE_STEPS = {"validate": "validation_step", "test": "test_step", "predict": "predict_step"}
STAGE_LIMITS = {
    "validate": "limit_val_batches",
    "test": "limit_test_batches",
    "predict": "limit_predict_batches",
}


def check_stage(run: RunConfig, model: Any) -> None:
    """Fail unless an evaluation stage has a checkpoint to evaluate, batches to evaluate it
    on and a model that defines the stage's step (checked on the model built on the meta
    device, when it builds)."""
    from lightning.pytorch.utilities.model_helpers import is_overridden

    if run.stage == "fit":
        return
    if run.ckpt_path is None:
        raise ConfigError(
            "ckpt_path", None, f"is required by {run.stage}: give the checkpoint to evaluate"
        )
    limit = STAGE_LIMITS[run.stage]
    if getattr(run.trainer, limit) == 0:  # Lightning would write empty results
        raise ConfigError(
            f"trainer.{limit}", getattr(run.trainer, limit), f"leaves {run.stage} no batch to run"
        )
    step = STAGE_STEPS[run.stage]
    if model is not None and not is_overridden(step, model):
        raise ConfigError(
            "model._target_",
            run.model.get("_target_"),
            f"defines no {step}, which {run.stage} runs; add one to the LightningModule",
        )


def check_checkpoint_model(
    checkpoint: Path | None, model: Any, model_node: dict[str, Any], own: bool = False
) -> None:
    """Fail unless the checkpoint the run resumes from (``own``: the run directory's last
    one, found without ``ckpt_path``) was written by a model of the same parameter names and
    shapes (the model built on the meta device; skipped without one). The message names
    the ``model.*`` settings the checkpoint was saved with where they differ from
    ``model_node``'s, or, where it was saved with arguments the model does not take, says
    it is another kind of model."""
    from lightning_accel.checkpoints import (
        SAME_MODEL_REMEDY,
        check_same_model,
        saved_hyper_parameters,
    )

    if checkpoint is None or model is None:
        return
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    strict = getattr(model, "strict_loading", True)

    def remedy() -> str:  # read only for a checkpoint of another model
        saved = saved_hyper_parameters(checkpoint)
        foreign = sorted(set(saved) - set(model_node) - set(getattr(model, "hparams", {})))
        if foreign:  # its settings could not make this model match
            named = (
                f"it was saved by another kind of model, with arguments ({', '.join(foreign)}) "
                f"that {type(model).__name__} does not take; give that model's recipe or "
                "model._target_"
            )
        else:
            settings = [
                f"model.{name}={override_value(value)}"
                for name, value in saved.items()
                if name in model_node and override_value(model_node[name]) != override_value(value)
            ]
            named = SAME_MODEL_REMEDY + (f": {' '.join(settings)}" if settings else "")
        # the user named no checkpoint: say where it came from and how to start afresh
        return named + "; or give a new hydra.run.dir to start afresh" if own else named

    key = "the run directory's last checkpoint" if own else "ckpt_path"
    check_same_model(checkpoint, expected, strict, key, remedy)


def override_value(value: Any) -> str:
    """``value`` as a command-line override writes it (``[16,32]``, ``true``, ``null``)."""
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(item) for item in value) + "]"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)


def run_plan(run: RunConfig) -> RunPlan | None:
    """The run's plan on this machine, which fails unless the machine has the devices and
    precision the profiles ask for; None for ``launcher=slurm``: jobs run on the cluster's
    nodes, not where they are submitted (a login node has no GPUs)."""
    from lightning_accel.plan.run import plan_run

    return None if run.launcher.name == "slurm" else plan_run(run.hardware, run.optimization)


def check_strategy(plan: RunPlan | None, model: Any) -> None:
    """Fail unless the plan's strategy can be built with its options, and, where it runs
    several ranks or shards, the model has every weight before its first batch (DDP
    broadcasts them, FSDP2 shards them: neither takes a ``Lazy*`` module's)."""
    from lightning_accel.optimize.memory_format import lazy_module_name
    from lightning_accel.strategies import FSDP2Strategy
    from lightning_accel.trainer_factory import plan_arguments

    if plan is None:
        return
    plan_arguments(plan)
    several = plan.world_size > 1 or plan.strategy == FSDP2Strategy.strategy_name
    if several and model is not None and (lazy := lazy_module_name(model)):
        raise ConfigError(
            "hardware",
            plan.hardware.name,
            f"runs {plan.strategy} on {plan.world_size} device{'s' * (plan.world_size > 1)}, "
            f"which needs every weight before the first step, but {type(model).__name__}'s "
            f"{lazy} has none until its first batch; give it its input size (nn.Conv2d, "
            "nn.Linear), or train it in one process without FSDP2",
        )


def check_weight_averaging(run: RunConfig, plan: RunPlan | None) -> None:
    """Fail for Lightning's weight averaging (``callbacks=[default,ema]``) under FSDP2, TP
    or 2D: it keeps an unsharded copy of the model, whose update then meets the split
    weights ("mixed torch.Tensor and DTensor") at the first step."""
    from lightning.pytorch.callbacks import WeightAveraging

    from lightning_accel.strategies import FSDP2Strategy

    if plan is None or plan.strategy != FSDP2Strategy.strategy_name:
        return
    for key, node in run.callback_nodes_of(WeightAveraging).items():  # the first refused
        raise ConfigError(
            key,
            node["_target_"],
            f"cannot run under hardware={plan.hardware.name}: Lightning's weight averaging "
            "keeps a whole copy of the model, which FSDP2 and tensor parallelism split "
            "across ranks; use DDP (hardware=ddp, ddp_cpu) or drop the callback",
        )


def check_batch_norm_sync(run: RunConfig, plan: RunPlan | None) -> None:
    """Fail for ``trainer.sync_batchnorm=true`` where it cannot act on several ranks: torch's
    ``SyncBatchNorm`` runs on CUDA only (on the CPU the ranks failed at the first step), and
    Lightning's ``ModelParallelStrategy``, which FSDP2 extends, never converts the layers
    (FSDP2 runs trained with it silently unsynchronized)."""
    from lightning_accel.strategies import FSDP2Strategy

    if plan is None or not run.trainer.sync_batchnorm or plan.world_size == 1:
        return
    if plan.strategy == FSDP2Strategy.strategy_name:
        problem = (
            f"does nothing under hardware={plan.hardware.name}: FSDP2 leaves BatchNorm layers "
            "as they are; synchronize them under DDP (hardware=ddp), or set it false"
        )
        raise ConfigError("trainer.sync_batchnorm", True, problem)
    if plan.accelerator != "cuda":
        problem = (
            f"needs CUDA devices, and hardware={plan.hardware.name} runs on "
            f"{plan.accelerator}: torch's SyncBatchNorm runs on GPUs only; set it false "
            "(each rank then normalizes over its own batch)"
        )
        raise ConfigError("trainer.sync_batchnorm", True, problem)


def check_tensor_parallel(run: RunConfig, plan: RunPlan | None, model: Any) -> None:
    """Fail unless the tensor parallel plan (given, declared by the model, or found by
    shape) names modules of the model and its size divides their widths and head counts
    and, where norms run sequence parallel, the data's ``seq_len``."""
    from lightning_accel.strategies.tensor_parallel import (
        SIZE_KEY,
        check_divisible,
        resolve_plan,
    )

    if plan is None or plan.mesh is None or plan.mesh.tensor == 1 or model is None:
        return
    configured = run.hardware.strategy_options.get("tensor_parallel_plan")
    tensor_plan = resolve_plan(model, configured)
    check_divisible(model, tensor_plan, plan.mesh.tensor)
    seq_len = run.data.get("seq_len")
    if tensor_plan.sequence_parallel and isinstance(seq_len, int) and seq_len % plan.mesh.tensor:
        raise ConfigError(
            "data.seq_len",
            seq_len,
            f"is not divisible by {SIZE_KEY}={plan.mesh.tensor}: sequence parallelism splits "
            "each sequence between the tensor-parallel ranks",
            [seq_len - seq_len % plan.mesh.tensor, seq_len + (-seq_len) % plan.mesh.tensor],
        )


SUBMITIT_LAUNCHERS = ("slurm", "slurm_local")


def check_launcher(run: RunConfig, cfg: DictConfig, plan: RunPlan | None) -> None:
    """Fail unless the launcher can start the world the config describes: a process no
    launcher started names no other rank in its environment, several nodes need a multi-node
    launcher or an outside one, an outside launcher must have started ``nnodes x devices``
    ranks, a SLURM job gets one task per rank, and a Ray cluster one worker per rank."""
    from lightning_accel.cli.cluster import check_no_stray_rank, check_world_size, external_world

    check_no_stray_rank()
    launcher, devices = run.launcher, run.hardware.devices
    if devices == "auto" and launcher.name in SUBMITIT_LAUNCHERS:
        raise ConfigError(
            "hardware.devices",
            "auto",
            f"must be a count under launcher={launcher.name}: it sets the SLURM tasks per node",
        )
    if plan is None:  # counted where the job runs, not on the submitting machine
        processes = 1 if run.hardware.accelerator == "pjrt" else devices
    else:
        processes = plan.processes
    world = external_world()
    if world is not None and launcher.name in ("local", "torchrun"):
        check_world_size(launcher.nnodes, processes, world)
    elif launcher.name == "local" and launcher.nnodes > 1:
        raise ConfigError(
            "launcher.nnodes",
            launcher.nnodes,
            "needs launcher=torchrun or launcher=slurm, or an outside torchrun or srun that "
            "starts every rank",
            list(LAUNCHERS),
        )
    if launcher.name == "ray" and plan is not None:
        from lightning_accel.cli.ray_cluster import check_before_start

        check_before_start(launcher, plan)
    if launcher.name == "slurm" and shutil.which("srun") is None:
        raise ConfigError(
            "launcher",
            "slurm",
            "submits jobs with SLURM's sbatch and srun, which this machine does not have on "
            "its PATH; submit from a login node of the cluster, or run the same jobs here with "
            "launcher=slurm_local",
        )
    if launcher.name in SUBMITIT_LAUNCHERS:
        tasks = cfg.hydra.launcher.nodes * cfg.hydra.launcher.tasks_per_node
        if tasks != launcher.nnodes * processes:
            raise ConfigError(
                "hydra.launcher.nodes x hydra.launcher.tasks_per_node",
                f"{cfg.hydra.launcher.nodes} x {cfg.hydra.launcher.tasks_per_node} = {tasks}",
                f"disagrees with launcher.nnodes x hardware.devices = "
                f"{launcher.nnodes} x {processes}; one SLURM task runs one rank",
            )


def preflight(
    overrides: list[str],
    multirun: bool,
    schema_valid: Callable[[RunConfig], None] | None = None,
) -> list[RunConfig]:
    """Check every job of the command; return their validated configs (for a search, of
    jobs that give each search parameter every value that stands for its range).
    ``schema_valid`` is called with each job's config once its schema checks pass, before
    the checks that import the model and Lightning (``train`` starts its rank server
    there)."""
    from lightning_accel.cli.search import check_trials_validate, trial_samples

    jobs = trial_samples(overrides) if multirun else None
    runs = []
    directories: dict[Path, int] = {}
    for number, job in enumerate(jobs or job_overrides(overrides, multirun)):
        cfg = compose_job(job)
        check_job_stays_in_place(cfg)
        check_sweeper_needs_multirun(cfg, multirun)
        run_dir = run_directory(cfg, multirun, number)
        if run_dir in directories:  # the later job would resume the earlier one's run
            raise ConfigError(
                "hydra.sweep.subdir",
                OmegaConf.to_container(cfg.hydra.sweep)["subdir"],  # as given, unresolved
                f"gives jobs {directories[run_dir]} and {number} one directory ({run_dir}), "
                "where the later would resume the earlier's run; give each job its own, such "
                "as ${hydra.job.num}",
            )
        directories[run_dir] = number
        try:
            run = validated_run(cfg, run_dir)
            if schema_valid is not None:
                schema_valid(run)
            check_targets(run)
            if jobs is not None:  # after the targets: it reads the callbacks' classes
                check_trials_validate(run)
            check_callbacks(run)
            checkpoint = check_checkpoint(run)
            model, datamodule = check_model_and_data(run)
            check_data_fits_model(model, datamodule)
            check_monitored_metrics(run, model, searching=jobs is not None)
            check_stage(run, model)
            check_checkpoint_model(checkpoint, model, run.model, own=run.ckpt_path is None)
            plan = run_plan(run)
            check_launcher(run, cfg, plan)
            check_strategy(plan, model)
            check_weight_averaging(run, plan)
            check_batch_norm_sync(run, plan)
            check_tensor_parallel(run, plan, model)
            check_memory(run, plan, model, datamodule)
            check_writable(run_dir, "hydra.sweep.dir" if multirun else "hydra.run.dir")
            check_output_directories(run)
        except ConfigError as error:
            raise set_in_job_file(error, cfg) from error
        runs.append(run)
    _check_one_world_per_sweep(runs)
    return runs


def _check_one_world_per_sweep(runs: list[RunConfig]) -> None:
    """submitit asks the scheduler for one set of resources for a whole sweep: its jobs must
    not differ in nodes or ranks."""
    worlds = {(r.launcher.nnodes, r.hardware.devices) for r in runs}
    if runs[0].launcher.name in SUBMITIT_LAUNCHERS and len(worlds) > 1:
        shown = ", ".join(f"{n} x {d}" for n, d in sorted(worlds, key=str))
        raise ConfigError(
            "launcher.nnodes x hardware.devices",
            shown,
            f"differ between the jobs of one launcher={runs[0].launcher.name} sweep, which "
            "share one resource request; sweep them in separate commands",
        )


def prepare_data(runs: list[RunConfig]) -> None:
    """Let each job's DataModule prepare its data (build its cache, check its files) once,
    in this process, before any job starts: bad data is reported before a run directory
    exists, and ranks later find the data ready."""
    from lightning_accel.cli.runner import build_object

    for run in runs:
        build_object(run.data, "data").prepare_data()
