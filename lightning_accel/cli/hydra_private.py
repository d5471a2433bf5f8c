"""The private Hydra APIs the runner uses, each because Hydra has no public one that behaves
the same; kept in this one module and pinned by tests/test_upstream_pins.py."""

from __future__ import annotations

import argparse
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra._internal.utils import _locate, get_args_parser
from hydra.core.override_parser.types import Override

BASIC_SWEEPER: str = BasicSweeperConf._target_  # hydra.sweeper._target_ of a basic sweep


def locate(path: str) -> Any:
    """The object a dotted path names, imported as ``hydra.utils.instantiate`` imports a
    ``_target_``. (``hydra.utils.get_object`` does the same but logs an error line when the
    import fails, which would be printed beside the runner's own one-sentence message.)"""
    return _locate(path)


def command_line_parser() -> argparse.ArgumentParser:
    """Hydra's own command-line parser (``--help``, ``--cfg``, ``--multirun``, overrides),
    so the runner reads a command line exactly as ``hydra.main`` will."""
    return get_args_parser()


def sweep_jobs(overrides: list[Override]) -> list[list[str]]:
    """The override list of each job of a sweep, in the order Hydra's basic sweeper runs
    them (the last value given for a key wins)."""
    return BasicSweeper.split_arguments(overrides, None)[0]
