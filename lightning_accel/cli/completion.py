"""Shell completion of ``lightning-accel``: verbs, options, config groups and their options,
and every key of the run's config (composed with the overrides already typed).

``lightning-accel --completion bash`` prints a bash function to ``eval`` (zsh: through
``bashcompinit``); the function asks ``lightning-accel --complete LINE`` for candidates.
"""

from __future__ import annotations

from typing import Any

from lightning_accel.errors import ConfigError
from lightning_accel.profiles import config_dir, profile_names

SHELLS = ("bash", "zsh")
VERB_OPTIONS = {
    "train": ["--multirun", "--cfg", "--help"],
    "validate": ["--cfg", "--help"],
    "test": ["--cfg", "--help"],
    "predict": ["--cfg", "--help"],
    "bench": ["--out", "--repeats", "--cell-timeout", "--help"],
    "plan": ["--world", "--device", "--json", "--help"],
    "doctor": ["--json", "--trace", "--help"],
    "consolidate": [],
    "verify": ["--dry-run", "--out", "--work", "--cell-timeout", "--help"],
}
TOP_LEVEL = ["--help", "--version", "--completion"]
_OVERRIDE_VERBS = ("train", "validate", "test", "predict", "bench", "plan")

BASH = r"""_lightning_accel()
{
    local line="${COMP_LINE:0:$COMP_POINT}"
    local current="${line##* }"
    local IFS=$'\n'
    local candidates=($(lightning-accel --complete "$line" 2>/dev/null))
    if [[ "$current" == *=* ]]; then
        # bash completes the text after the last '=': drop what comes before it
        candidates=("${candidates[@]#${current%=*}=}")
    fi
    COMPREPLY=("${candidates[@]}")
}
complete -o nospace -o default -F _lightning_accel lightning-accel
"""


def completion_script(shell: str) -> str:
    """The script that installs completion in ``shell`` (``eval "$(...)"`` it).

    Raises:
        ConfigError: a shell other than bash or zsh.
    """
    if shell not in SHELLS:
        raise ConfigError("--completion", shell, "is not a supported shell", SHELLS)
    if shell == "zsh":
        return "autoload -U +X bashcompinit && bashcompinit\n" + BASH
    return BASH


def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return [prefix.rstrip(".")]
    keys = []
    for name, value in node.items():
        keys += _leaf_keys(value, f"{prefix}{name}.")
    return keys


def config_keys(overrides: list[str]) -> list[str]:
    """Every leaf key of the run's config composed with ``overrides`` (the defaults where
    they do not compose)."""
    from omegaconf import OmegaConf

    from lightning_accel.cli.compose import compose_job

    try:
        cfg = compose_job(overrides)
    except ConfigError:
        cfg = compose_job([])
    tree = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(tree, dict)
    tree.pop("hydra", None)
    return _leaf_keys(tree)


def _groups() -> list[str]:
    return sorted(p.name for p in config_dir().iterdir() if p.is_dir())


def override_candidates(current: str, previous: list[str]) -> list[str]:
    """Completions of ``current`` as a Hydra override, after the overrides ``previous``."""
    key, equals, partial = current.partition("=")
    name = key.lstrip("+~")
    if equals:
        if name in _groups():
            return [f"{key}={option}" for option in profile_names(name)]
        return [f"{key}={value}" for value in ("true", "false") if value.startswith(partial)]
    overrides = [word for word in previous if "=" in word and not word.startswith("-")]
    keys = [f"{group}=" for group in _groups()]
    keys += [f"{k}=" for k in config_keys(overrides)]
    return keys


def candidates(line: str) -> list[str]:
    """What completes the last word of the command ``line`` (everything typed up to the
    cursor, starting with the program's name).

    Raises:
        ConfigError: the line names a verb that does not exist.
    """
    words = line.split()
    current = "" if line.endswith(" ") or len(words) < 2 else words[-1]
    previous = words[1:] if current == "" else words[1:-1]
    if not previous:
        found = [*VERB_OPTIONS, *TOP_LEVEL]
    else:
        verb = previous[0]
        if verb not in VERB_OPTIONS:
            if verb.startswith("-"):
                return []
            raise ConfigError("verb", verb, "is not a lightning-accel verb", list(VERB_OPTIONS))
        found = list(VERB_OPTIONS[verb])
        if verb in _OVERRIDE_VERBS and not current.startswith("-"):
            found += override_candidates(current, previous[1:])
        elif verb == "doctor":
            found += [f"hardware={name}" for name in profile_names("hardware")]
    return sorted({c for c in found if c.startswith(current)})
