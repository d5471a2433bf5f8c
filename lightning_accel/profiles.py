"""Named profiles (the YAML files under ``conf/``), loaded without Hydra."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_accel.config import HardwareConfig, OptimizationConfig
from lightning_accel.errors import ConfigError, article

ProfileT = TypeVar("ProfileT", HardwareConfig, OptimizationConfig)


def config_dir() -> Path:
    """The Hydra config directory: inside the installed package, or the checkout's ``conf/``."""
    packaged = Path(__file__).resolve().parent / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "conf"


def profile_names(group: str) -> list[str]:
    """The options of a config group, e.g. ``profile_names("hardware")``."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def load_profile(group: str, name: str, schema: type[ProfileT]) -> ProfileT:
    """Load ``conf/<group>/<name>.yaml`` checked against ``schema``."""
    path = config_dir() / group / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            group, name, f"is not {article(group)} {group} profile", profile_names(group)
        )
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.load(path))
    except OmegaConfBaseException as error:
        raise ConfigError(
            f"{group}.{error.full_key}", error.value, f"is invalid in {path}"
        ) from error
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def as_hardware(profile: HardwareConfig | str) -> HardwareConfig:
    """A hardware profile given by object or by name."""
    return (
        profile
        if isinstance(profile, HardwareConfig)
        else load_profile("hardware", profile, HardwareConfig)
    )


def as_optimization(profile: OptimizationConfig | str) -> OptimizationConfig:
    """An optimization profile given by object or by name."""
    if isinstance(profile, OptimizationConfig):
        return profile
    return load_profile("optimization", profile, OptimizationConfig)
