"""Which file of a project's ``--config-dir`` set a config key: a value that a project's
file got wrong is refused naming that file, since the command line shows no such value."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from lightning_accel.errors import ConfigError

SEARCHPATH_OVERRIDE = "hydra.searchpath="
_PACKAGE_HEADER = re.compile(r"^#\s*@package\s+(\S+)", re.MULTILINE)
_ABSENT = object()


@dataclass(frozen=True)
class Setting:
    """A key as a project's config file writes it: the file and the value written there."""

    file: Path
    value: Any


def project_directories(searchpath: Iterable[str]) -> list[Path]:
    """The project config directories among Hydra's search path entries (``file://DIR``)."""
    return [
        Path(entry.removeprefix("file://")) for entry in searchpath if entry.startswith("file://")
    ]


def project_setting(
    key: str, options: Mapping[str, str | None], directories: Iterable[Path]
) -> Setting | None:
    """Where a project's file of the chosen ``options`` (group to option name) sets ``key``
    (a dotted config key), following the file's defaults list within its own group."""
    for directory in directories:
        for group, option in options.items():
            if option is not None and not group.startswith("hydra/"):
                setting = _setting_in(directory, group, option, key, set())
                if setting is not None:
                    return setting
    return None


def _setting_in(
    directory: Path, group: str, option: str, key: str, seen: set[Path]
) -> Setting | None:
    file = directory / group / f"{option}.yaml"
    if file in seen or not file.is_file():
        return None
    seen.add(file)
    text = file.read_text()
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError:  # reported by composition in its own words
        return None
    if not isinstance(content, dict):
        return None
    value = _written(content, _package(text, group), key)
    if value is not _ABSENT:
        return Setting(file, value)
    for entry in content.get("defaults") or []:  # a file it extends in the same group
        if isinstance(entry, str) and entry != "_self_" and not entry.startswith("/"):
            setting = _setting_in(directory, group, entry, key, seen)
            if setting is not None:
                return setting
    return None


def choosing_file(group: str, directories: Iterable[Path]) -> Setting | None:
    """A project's config file whose defaults list chooses an option of ``group`` (``-
    /hardware: NAME``, ``- override /hardware: NAME``), with that option."""
    names = {f"/{group}", f"override /{group}", f"override {group}"}
    for directory in directories:
        for file in sorted(directory.glob("*/*.yaml")):
            try:
                content = yaml.safe_load(file.read_text())
            except yaml.YAMLError:  # reported by composition in its own words
                continue
            defaults = content.get("defaults") if isinstance(content, dict) else None
            for entry in defaults if isinstance(defaults, list) else []:
                if isinstance(entry, dict) and len(entry) == 1:
                    ((name, option),) = entry.items()
                    if str(name).strip() in names:
                        return Setting(file, option)
    return None


def _package(text: str, group: str) -> str:
    """The dotted key under which a group's file places its content (Hydra's ``@package``
    header; by default the group's path); ``""`` for the top level."""
    header = _PACKAGE_HEADER.search(text)
    package = header.group(1) if header else "_group_"
    package = package.replace("_group_", group.replace("/", "."))
    return package.removeprefix("_global_").lstrip(".")


def _written(content: dict[str, Any], package: str, key: str) -> Any:
    if package and not key.startswith(package + "."):
        return _ABSENT
    node: Any = content
    for part in key.removeprefix(package + "." if package else "").split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def searchpath(overrides: Iterable[str]) -> list[str]:
    """The search path entries a command line's ``hydra.searchpath=[...]`` adds."""
    entries: list[str] = []
    for override in overrides:
        if override.startswith(SEARCHPATH_OVERRIDE):
            listed = override.removeprefix(SEARCHPATH_OVERRIDE).strip("[]")
            entries += [entry.strip() for entry in listed.split(",")]
    return entries


def given_keys(overrides: Iterable[str]) -> set[str]:
    """The config keys a command line sets itself (``key=``, ``+key=``, ``++key=``)."""
    return {override.partition("=")[0].lstrip("+~") for override in overrides}


def set_in_file(
    error: ConfigError,
    overrides: Iterable[str],
    options: Mapping[str, str | None],
    searchpath: Iterable[str],
) -> ConfigError:
    """``error`` naming the project file that set its key, where a project's file of the
    chosen ``options`` wrote it and the command line (``overrides``) did not."""
    if error.key in given_keys(overrides):
        return error
    setting = project_setting(error.key, options, project_directories(searchpath))
    if setting is None:
        return error
    value = setting.value if error.value is None else error.value
    problem = f"(set in {shown(setting.file)}) {error.problem}"
    return type(error)(error.key, value, problem, error.choices)  # its kind kept


def set_in_job_file(error: ConfigError, cfg: DictConfig) -> ConfigError:
    """:func:`set_in_file` for an error found in the composed job ``cfg``."""
    hydra: Any = OmegaConf.to_container(cfg.hydra, resolve=False)  # as written: may not resolve
    return set_in_file(
        error, hydra["overrides"]["task"], hydra["runtime"]["choices"], hydra["searchpath"]
    )


def shown(file: Path) -> str:
    """``file`` relative to the working directory where it lies below it."""
    try:
        return str(file.relative_to(Path.cwd()))
    except ValueError:
        return str(file)
