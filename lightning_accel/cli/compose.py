"""Composing a command's jobs as Hydra will, with Hydra's and OmegaConf's errors turned
into one-sentence :class:`ConfigError`s that name the key, the value and the valid choices."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.conf import HydraConf
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Glob, Override, Sweep
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_accel.cli.config_sources import (
    SEARCHPATH_OVERRIDE,
    choosing_file,
    project_directories,
    searchpath,
    set_in_file,
    shown,
)
from lightning_accel.cli.hydra_private import sweep_jobs
from lightning_accel.cli.schema import RunConfig, register_schemas
from lightning_accel.config import TRAINER_ARGUMENTS_SET_ELSEWHERE
from lightning_accel.errors import ConfigError, article
from lightning_accel.profiles import config_dir, profile_names


def parse_overrides(overrides: list[str]) -> list[Override]:
    """The command line's overrides as Hydra parses them; an unparseable one is a
    ConfigError."""
    parser = OverridesParser.create()
    parsed = []
    for override in overrides:
        refuse_dotted_search_parameter(override)
        try:
            parsed += parser.parse_overrides([override])
            if not parsed[-1].key_or_group:
                raise OverrideParseException(override, "empty key")
        except OverrideParseException as error:
            raise _unparseable(override, parser) from error
    return parsed


def _unparseable(override: str, parser: OverridesParser) -> ConfigError:
    """The ConfigError for an override Hydra cannot parse: where its key is fine, the
    value written so that it parses (a checkpoint path such as ``epoch=3-step=9.ckpt``
    holds ``=``, which Hydra's grammar reserves), else how to write an override."""

    def parses(line: str) -> bool:
        try:
            parser.parse_overrides([line])
        except OverrideParseException:
            return False
        return True

    key, equals, value = override.partition("=")
    if equals and key and parses(f"{key}=x"):
        if value.startswith("~") and parses(written := f"{key}={Path.home()}{value[1:]}"):
            return ConfigError(
                "override",
                override,
                f"cannot be parsed: Hydra's grammar does not take ~ in a value and nothing "
                f"expands it; write the home directory out: {written}",
            )
        if parses(quoted := f"{key}='{value}'"):
            return ConfigError(
                "override",
                override,
                "cannot be parsed: Hydra's grammar reserves a character of its value; quote "
                f'the value for Hydra, in the shell as "{quoted}"',
            )
    return ConfigError("override", override, "cannot be parsed; write KEY=VALUE or GROUP=OPTION")


SEARCH_PARAMETERS = "hydra.sweeper.params"  # an Optuna search's space, by whole key


def refuse_dotted_search_parameter(override: str) -> None:
    """Fail for ``hydra.sweeper.params.model.dropout=...``: the sweeper's params are keyed by
    whole dotted names, which an override's key cannot address (OmegaConf reads it as
    nested keys and fails on ``model``); the command line gives a search space directly."""
    key, _, value = override.partition("=")
    name = key.lstrip("+~").removeprefix(f"{SEARCH_PARAMETERS}.")
    if key.lstrip("+~").startswith(f"{SEARCH_PARAMETERS}.") and "." in name:
        raise ConfigError(
            key,
            value,
            "cannot name a dotted key (the search's params are keyed by whole names such as "
            f"'model.learning_rate'); give its search space as an override: {name}={value}",
        )


def job_overrides(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of each job the command line stands for (one unless ``--multirun``)."""
    parsed = parse_overrides(overrides)
    sweeps = [o for o in parsed if o.is_sweep_override()]
    if sweeps and not multirun:
        raise ConfigError(
            sweeps[0].get_key_element(),
            sweeps[0].input_line.partition("=")[2],
            "lists several values; add --multirun to run one job per value",
        )
    if not sweeps:  # as Hydra composes a single job: every override, in order
        return [[o.input_line for o in parsed]]
    if any(isinstance(sweep.value(), Glob) for sweep in sweeps):
        return job_overrides(_expand_globs(parsed, overrides), multirun)
    for sweep in sweeps:
        values = sweep.value()
        if isinstance(values, ChoiceSweep) and any(
            isinstance(v, Sweep | Glob) for v in values.list
        ):
            # Hydra's sweeper fails on these deep inside OmegaConf ("Unexpected type annotation")
            raise ConfigError(
                sweep.get_key_element(),
                sweep.input_line.partition("=")[2],
                "puts a sweep inside a list of values, which cannot be expanded; "
                "list the values one by one",
            )
    return sweep_jobs(parsed)


def _expand_globs(parsed: list[Override], overrides: list[str]) -> list[str]:
    """``overrides`` with each ``GROUP=glob(...)`` sweep written out as the list of the
    group's options it matches, as Hydra's sweeper expands it (the parser alone cannot: it
    needs the config loader, and the project's --config-dir, to know the options)."""
    searchpath = [o for o in overrides if o.startswith(SEARCHPATH_OVERRIDE)]
    expanded = []
    for override in parsed:
        pattern = override.value()
        if not isinstance(pattern, Glob):
            expanded.append(override.input_line)
            continue
        group = override.key_or_group
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
                options = (
                    GlobalHydra.instance()
                    .config_loader()
                    .get_group_options(group, config_name="config", overrides=searchpath)
                )
        finally:
            GlobalHydra.instance().clear()
        matched = pattern.filter(options)
        if not matched:
            raise ConfigError(
                group,
                override.input_line.partition("=")[2],
                "matches no option of the config group" if options else "is not a config group",
                sorted(options) or None,
            )
        expanded.append(f"{override.get_key_element()}={','.join(matched)}")
    return expanded


def path_override(key: str, path: Path | str) -> str:
    """``key=path`` as an override that Hydra reads back as that very path: quoted where it
    holds more than Hydra's plain characters (a comma would make a sweep, a space or a
    bracket a parse error), as it is elsewhere, for people to read and copy."""
    text = str(path)
    if re.fullmatch(r"[A-Za-z0-9_./:@%+~-]+", text):
        return f"{key}={text}"
    escaped = text.replace("'", "\\'")
    return f"{key}='{escaped}'"


def config_dir_override(directory: str) -> str:
    """The override that adds ``directory`` (``--config-dir``: a project's own config
    groups, such as ``conf/recipe/mine.yaml``) to Hydra's search path, once it is known to
    exist and to name none of its options as one of the pack's (Hydra would take the
    pack's and ignore the project's without a word)."""
    path = Path(directory).expanduser().resolve()
    if not directory.strip() or not path.is_dir():  # '' would be the current directory
        raise ConfigError(
            "--config-dir",
            directory,
            "is not a directory; give the one that holds your config groups, such as conf "
            "with conf/recipe/NAME.yaml",
        )
    pack = config_dir()
    if (path / "config.yaml").is_file():
        raise ConfigError(
            "--config-dir",
            directory,
            "holds config.yaml, named as the pack's primary config, which Hydra finds "
            "first, so yours would be ignored; put its settings in a recipe of your own "
            "(DIR/recipe/NAME.yaml, extending one of the pack's by its defaults list)",
        )
    shadowing = sorted(
        option.relative_to(path)
        for option in path.glob("*/*.yaml")
        if (pack / option.parent.name / option.name).is_file()
    )
    if shadowing:
        group, name = shadowing[0].parent.name, shadowing[0].stem
        raise ConfigError(
            "--config-dir",
            directory,
            f"holds {shadowing[0]}, named as the pack's own {group} option {name}, which "
            f"Hydra finds first, so yours would be ignored; give it a name of its own and "
            f"extend {name} by its defaults list",
        )
    return f"{SEARCHPATH_OVERRIDE}[file://{path}]"


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
        if (null_group := _null_group(overrides)) is not None:
            raise null_group from error
        first_line = str(error).splitlines()[0]
        raise ConfigError("override", " ".join(overrides), f"is invalid ({first_line})") from error
    except yaml.YAMLError as error:  # a config file of a project's --config-dir
        raise _yaml_error(error) from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


def _null_group(overrides: list[str]) -> ConfigError | None:
    """The error for ``GROUP=null`` on the command line, which Hydra refuses as "must be a
    string or a list. Got NoneType" (a defaults list may say null; a command line cannot)."""
    for override in overrides:
        key, _, value = override.partition("=")
        group = key.lstrip("+~")
        if value.strip() == "null" and (config_dir() / group).is_dir():
            return ConfigError(
                key,
                "null",
                f"cannot be given on the command line; choose one of the {group} options "
                f"(~{group} drops a group that may be left out)",
                profile_names(group),
            )
    return None


def _yaml_error(error: yaml.YAMLError) -> ConfigError:
    """The ConfigError for a config file that is not valid YAML: the file, line and problem."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f" at line {mark.line + 1}" if mark is not None else ""
    file = mark.name if mark is not None else "a config file"
    return ConfigError("config file", file, f"is not valid YAML ({problem}{where})")


# Hydra plugins the pack's config groups select, and the extra that installs each
PLUGIN_EXTRAS = {
    ("hydra/sweeper", "optuna"): "search",
    ("hydra/launcher", "submitit_slurm"): "slurm",
    ("hydra/launcher", "submitit_local"): "slurm",
}


def _unknown_option(error: MissingConfigException, overrides: list[str]) -> ConfigError:
    group = (error.missing_cfg_file or "").rsplit("/", 1)[0]
    given = _given(overrides, group) or (error.missing_cfg_file or "").rsplit("/", 1)[-1]
    extra = PLUGIN_EXTRAS.get((group, given))
    if extra is not None:
        return ConfigError(
            group,
            given,
            f"is a Hydra plugin that is not installed: pip install 'lightning-accel[{extra}]'",
        )
    if error.options and group:
        return ConfigError(
            group, given, f"is not {article(group)} {group} option", sorted(error.options)
        )
    if error.options is not None and group:  # no option at all: the group itself is unknown
        where = "" if _given(overrides, group) else " (named in a config file's defaults list)"
        groups = sorted(p.name for p in config_dir().iterdir() if p.is_dir())
        return ConfigError(group, given, f"is not a config group{where}", groups)
    return ConfigError("config", error.missing_cfg_file, "cannot be found")


def _composition_error(error: ConfigCompositionException, overrides: list[str]) -> ConfigError:
    cause = error.__cause__ or error.__context__  # Hydra raises some inside an except block
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:
        found = value_error(cause, overrides)
        source = re.match(r"In '([^']+)'", str(error))  # the config file that set the key
        if source is None:
            return found
        group, _, option = source.group(1).rpartition("/")
        return set_in_file(found, overrides, {group: option}, searchpath(overrides))
    message = str(error)
    if (chosen := _group_chosen_in_a_file(message, overrides)) is not None:
        return chosen
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


def _group_chosen_in_a_file(message: str, overrides: list[str]) -> ConfigError | None:
    """A project file choosing one of the run's groups in its defaults list (a recipe of
    its own choosing its hardware), which Hydra refuses in words that name no file:
    "Multiple values for hardware", or "Could not override 'hardware'" with ``override``."""
    found = re.match(
        r"Multiple values for (\S+?)\.|In '[^']+': Could not override '([^']+)'", message
    )
    if found is None:
        return None
    group = found.group(1) or found.group(2)
    if not (config_dir() / group).is_dir():  # one of the groups config.yaml chooses
        return None
    setting = choosing_file(group, project_directories(searchpath(overrides)))
    if setting is None:
        return None
    return ConfigError(
        group,
        setting.value,
        f"is chosen in the defaults list of {shown(setting.file)}, where Hydra cannot take "
        f"it: the pack's config.yaml chooses {group} for every run; drop it there and give "
        f"{group}={setting.value} on the command line",
    )


def value_error(cause: OmegaConfBaseException, overrides: list[str]) -> ConfigError:
    """The ConfigError for an unknown key, a wrong type or an invalid value."""
    key = str(cause.full_key)
    given = _given(overrides, key) if _given(overrides, key) is not None else cause.value
    message = (cause.msg or str(cause)).splitlines()[0]
    if "not in struct" in message or "Key '" in message and "not" in message:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        if parent in ("model", "data", SEARCH_PARAMETERS) or parent.startswith(
            ("callbacks.", "logger.")
        ):
            # a _target_ node (its class's arguments decide, not a schema) or a search's params
            return ConfigError(key, given, f"is new under '{parent}'; add it as +{key}=VALUE")
        return unknown_key(key, given, _keys(parent))
    if key in ("model", "data") and "Cannot assign" in message:
        recipes = sorted(p.stem for p in (config_dir() / "recipe").glob("*.yaml"))
        return ConfigError(
            key,
            given,
            f"is not a config group: {key} is a _target_ node that a recipe sets; choose "
            f"recipe=NAME ({', '.join(recipes)}) or give {key}._target_=CLASS",
        )
    if "could not be converted to" in message:
        expected = message.split("could not be converted to")[-1].strip().lower()
        return ConfigError(key, given, f"is not a valid {expected}")
    return ConfigError(key, given, f"is invalid ({message})")


def unknown_key(key: str, given: Any, keys: list[str]) -> ConfigError:
    """The ConfigError for ``key``, which its section (holding ``keys``) does not have: the
    key to use instead for a Trainer argument the profiles set, else the closest keys."""
    parent, _, name = key.rpartition(".")
    if parent == "trainer" and name in TRAINER_ARGUMENTS_SET_ELSEWHERE:
        instead = TRAINER_ARGUMENTS_SET_ELSEWHERE[name]
        return ConfigError(key, given, f"is set by the run's profiles; use {instead} instead")
    where = f"under '{parent}'" if parent else "at the top level"
    closest = difflib.get_close_matches(name, keys, n=3, cutoff=0.6)
    if closest:
        return ConfigError(key, given, f"is not a known key {where}; closest: {', '.join(closest)}")
    return ConfigError(key, given, f"is not a known key {where}", keys or None)


def _keys(parent: str) -> list[str]:
    node = OmegaConf.structured(RunConfig)
    if parent == "hydra" or parent.startswith("hydra."):  # Hydra's own schema
        node, parent = OmegaConf.structured(HydraConf), parent.removeprefix("hydra").lstrip(".")
    selected = OmegaConf.select(node, parent) if parent else node
    return sorted(selected.keys()) if isinstance(selected, DictConfig) else []


def _given(overrides: list[str], key: str) -> str | None:
    for override in overrides:
        name, _, value = override.partition("=")
        if name.lstrip("+~") == key.lstrip("+~"):
            return value
    return None
