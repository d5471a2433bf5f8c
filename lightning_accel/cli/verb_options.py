"""The option parser of a verb that takes ``--options`` besides Hydra overrides (``bench``,
``plan``, ``verify``)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, NoReturn

from typing_extensions import override

from lightning_accel.cli.console import fail
from lightning_accel.errors import ConfigError


class _StoreOnce(argparse.Action):
    """Stores an option's value, refusing a second one: argparse would keep the last and
    drop the first without a word."""

    @override
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        given = parser.given if isinstance(parser, VerbOptions) else {}
        if self.dest in given:
            raise ConfigError(
                option_string or self.dest,
                values,
                f"repeats {max(self.option_strings, key=len)} (given {given[self.dest]!r} "
                "first); give it once",
            )
        given[self.dest] = values
        setattr(namespace, self.dest, values)


class VerbOptions(argparse.ArgumentParser):
    """argparse for one verb, whose mistakes end as every user error does: one sentence and
    exit 2, not argparse's usage block.

    Args:
        verb: the verb's name, as typed after ``lightning-accel``.
    """

    def __init__(self, verb: str) -> None:
        super().__init__(prog=f"lightning-accel {verb}", add_help=False)
        self.verb = verb
        self.options: list[str] = []  # what a mistake lists, in the order added
        self.given: dict[str, Any] = {}  # the values of the options given, by destination
        super().add_argument("-h", "--help", action="store_true")

    @override
    def add_argument(self, *names: Any, **settings: Any) -> argparse.Action:
        if names and str(names[0]).startswith("-"):
            self.options.append(max(names, key=len))
            if settings.get("action", "store") == "store":
                settings["action"] = _StoreOnce
        return super().add_argument(*names, **settings)

    @override
    def error(self, message: str) -> NoReturn:
        fail(f"{self.verb}: {message}; {self.prog} --help lists its options.")

    def parse_options(self, args: list[str]) -> argparse.Namespace:
        """The parsed ``args``; an option the verb does not take is a ConfigError that
        lists the ones it does."""
        self.given = {}
        options, unknown = self.parse_known_intermixed_args(args)
        if unknown:
            raise ConfigError(f"{self.verb} option", unknown[0], "is unknown", self.options)
        return options


def directory_path(value: str) -> Path:
    """argparse ``type`` of a directory option: an empty value, which would be the current
    directory, is a mistake."""
    if not value.strip():
        raise argparse.ArgumentTypeError("an empty path names no directory")
    return Path(value)


def require_seconds(option: str, value: float | None) -> None:
    """Fail unless an option's number of seconds, when given, is finite and above 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(option, value, "must be a finite number of seconds above 0")
