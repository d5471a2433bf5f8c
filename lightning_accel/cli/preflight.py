"""Checks every job of a command before Hydra starts it: composition, schema, values, paths.

Each problem becomes a :class:`ConfigError` (one sentence naming the key, the value and the
valid choices). Nothing is written and no process is started while checking.
"""

from __future__ import annotations

import copy
import inspect
import os
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import _locate
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from lightning_accel.checkpoints import verify_checkpoint
from lightning_accel.cli.schema import RunConfig, register_schemas
from lightning_accel.errors import ConfigError
from lightning_accel.profiles import config_dir


def job_overrides(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of each job the command line stands for (one unless ``--multirun``)."""
    parser = OverridesParser.create()
    parsed = []
    for override in overrides:
        try:
            parsed += parser.parse_overrides([override])
            if not parsed[-1].key_or_group:
                raise OverrideParseException(override, "empty key")
        except OverrideParseException as error:
            raise ConfigError(
                "override", override, "cannot be parsed; write KEY=VALUE or GROUP=OPTION"
            ) from error
    sweeps = [o for o in parsed if o.is_sweep_override()]
    if sweeps and not multirun:
        raise ConfigError(
            sweeps[0].get_key_element(),
            sweeps[0].input_line.partition("=")[2],
            "lists several values; add --multirun to run one job per value",
        )
    return BasicSweeper.split_arguments(parsed, None)[0] if parsed else [[]]


def compose_job(overrides: list[str]) -> DictConfig:
    """Compose one job's config as Hydra will, translating Hydra's errors into ConfigErrors."""
    register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
    except MissingConfigException as error:
        raise _unknown_option(error, overrides) from error
    except ConfigCompositionException as error:
        raise _composition_error(error, overrides) from error
    except (HydraException, ValueError) as error:
        first_line = str(error).splitlines()[0]
        raise ConfigError("override", " ".join(overrides), f"is invalid ({first_line})") from error
    finally:
        GlobalHydra.instance().clear()
    return cfg


def _unknown_option(error: MissingConfigException, overrides: list[str]) -> ConfigError:
    group = (error.missing_cfg_file or "").rsplit("/", 1)[0]
    given = _given(overrides, group) or (error.missing_cfg_file or "").rsplit("/", 1)[-1]
    if error.options is not None and group:
        return ConfigError(group, given, f"is not a {group} option", sorted(error.options))
    return ConfigError("config", error.missing_cfg_file, "cannot be found")


def _composition_error(error: ConfigCompositionException, overrides: list[str]) -> ConfigError:
    cause = error.__cause__
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:
        return _value_error(cause, overrides)
    message = str(error)
    if message.startswith("Could not override '"):
        key = message.split("'")[1]
        groups = [p.name for p in config_dir().iterdir() if p.is_dir()]
        return ConfigError(
            key, _given(overrides, key), "is not a config key or group", sorted(groups + _keys(""))
        )
    if "Could not append to config. An item is already at" in message:
        key = message.split("'")[1]
        return ConfigError(
            f"+{key}", _given(overrides, f"+{key}"), "adds a key that exists; drop the '+'"
        )
    return ConfigError("override", " ".join(overrides), f"is invalid ({message.splitlines()[0]})")


def _value_error(cause: OmegaConfBaseException, overrides: list[str]) -> ConfigError:
    key = str(cause.full_key)
    given = _given(overrides, key) if _given(overrides, key) is not None else cause.value
    message = (cause.msg or str(cause)).splitlines()[0]
    if "not in struct" in message or "Key '" in message and "not" in message:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        where = f"under '{parent}'" if parent else "at the top level"
        if parent in ("model", "data"):
            return ConfigError(key, given, f"is new under '{parent}'; add it as +{key}=VALUE")
        return ConfigError(key, given, f"is not a known key {where}", _keys(parent))
    if "could not be converted to" in message:
        expected = message.split("could not be converted to")[-1].strip().lower()
        return ConfigError(key, given, f"is not a valid {expected}")
    return ConfigError(key, given, f"is invalid ({message})")


def _keys(parent: str) -> list[str]:
    node = OmegaConf.structured(RunConfig)
    selected = OmegaConf.select(node, parent) if parent else node
    return sorted(selected.keys()) if isinstance(selected, DictConfig) else []


def _given(overrides: list[str], key: str) -> str | None:
    for override in overrides:
        name, _, value = override.partition("=")
        if name.lstrip("+~") == key.lstrip("+~"):
            return value
    return None


def run_directory(cfg: DictConfig, multirun: bool, job_number: int = 0) -> Path:
    """The directory Hydra will create for this job."""
    HydraConfig.instance().set_config(cfg)
    if multirun:
        return Path(str(cfg.hydra.sweep.dir)) / str(job_number)
    return Path(str(cfg.hydra.run.dir))


def check_writable(directory: Path) -> None:
    """Fail unless ``directory`` exists writable, or could be created, without writing now."""
    existing = directory.resolve()
    while not existing.exists():
        existing = existing.parent
    read_only = hasattr(os, "statvfs") and os.statvfs(existing).f_flag & os.ST_RDONLY
    if not existing.is_dir() or read_only or not os.access(existing, os.W_OK | os.X_OK):
        reason = "is not a directory" if not existing.is_dir() else "is not writable"
        raise ConfigError(
            "hydra.run.dir",
            str(directory),
            f"cannot be created because {existing} {reason}; choose a writable directory",
        )


def validated_run(cfg: DictConfig, run_dir: Path) -> RunConfig:
    """The job's :class:`RunConfig`, with every value check of the schema applied."""
    job = copy.deepcopy(cfg)
    with open_dict(job):
        job.pop("hydra", None)
    job.run_dir = str(run_dir)
    try:
        return OmegaConf.to_object(job)  # type: ignore[return-value]
    except MissingMandatoryValue as error:
        raise ConfigError(
            str(error.full_key), "???", f"must be set for recipe={cfg.recipe}"
        ) from error
    except OmegaConfBaseException as error:
        raise _value_error(error, []) from error


def _check_arguments(key: str, node: dict[str, Any]) -> None:
    """Fail unless the node's ``_target_`` imports and accepts the node's arguments."""
    target = node.get("_target_")
    try:
        factory = _locate(str(target))
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
    for name, value in arguments.items():
        if name not in parameters:
            raise ConfigError(
                f"{key}.{name}", value, f"is not an argument of {target}", sorted(parameters)
            )
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
    nodes = {"model": run.model, "data": run.data, "logger": run.logger}
    nodes.update({f"callbacks.{name}": node for name, node in run.callbacks.items()})
    for key, node in nodes.items():
        if node:
            _check_arguments(key, node)


def check_model_and_data(run: RunConfig) -> None:
    """Build the DataModule and the logger, and the model on the meta device (no memory
    used), so that their own argument checks run before any process starts. None of them
    writes anything when constructed."""
    import torch

    from lightning_accel.cli.runner import build_object
    from lightning_accel.strategies import FSDP2Strategy
    from lightning_accel.strategies.sharding import shard_units

    build_object(run.data, "data")
    if run.logger:
        try:
            build_object(run.logger, "logger")
        except ImportError as error:
            raise ConfigError(
                "logger._target_",
                run.logger["_target_"],
                f"needs a package that is not installed ({str(error).splitlines()[0]}); "
                "pip install 'lightning-accel[tracking]' adds TensorBoard and MLflow",
            ) from error
    with torch.device("meta"):
        try:
            model = build_object(run.model, "model")
        except ConfigError:
            raise
        except Exception:  # noqa: BLE001 - some models cannot be built on meta; the run will tell
            return
    if run.hardware.strategy == FSDP2Strategy.strategy_name:
        shard_units(model, run.hardware.strategy_options.get("shard_classes") or ())


def check_checkpoint(run: RunConfig) -> None:
    """Fail unless ``ckpt_path``, when given, is a complete checkpoint file or directory."""
    if run.ckpt_path is not None:
        verify_checkpoint(Path(run.ckpt_path))


def check_hardware(run: RunConfig) -> None:
    """Fail unless this machine has the devices and the strategy can be built as configured."""
    from lightning_accel.build import trainer_arguments

    if run.hardware.num_nodes > 1:
        raise ConfigError(
            "hardware.num_nodes", run.hardware.num_nodes, "needs a multi-node launcher; use 1"
        )
    trainer_arguments(run.hardware, run.optimization)


def preflight(overrides: list[str], multirun: bool) -> list[RunConfig]:
    """Check every job of the command; return their validated configs."""
    runs = []
    for number, job in enumerate(job_overrides(overrides, multirun)):
        cfg = compose_job(job)
        run_dir = run_directory(cfg, multirun, number)
        run = validated_run(cfg, run_dir)
        check_targets(run)
        check_checkpoint(run)
        check_model_and_data(run)
        check_hardware(run)
        check_writable(run_dir)
        runs.append(run)
    return runs
