"""The exceptions the CLI reports in one sentence: mistakes a user can fix by changing their
input, runs stopped by a signal, and results the disk could not hold."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A user error in a config value, data path or checkpoint.

    The CLI prints ``str(error)`` (one sentence) and exits with code 2; library users get a
    ``ValueError`` subclass they can catch.

    Args:
        key: the dotted config key, file or option at fault.
        value: the value that was given.
        problem: what is wrong with it, e.g. ``"is not a hardware profile"``.
        choices: the valid choices, listed in the message when given.
    """

    def __init__(
        self, key: str, value: Any, problem: str, choices: Iterable[Any] | None = None
    ) -> None:
        self.key = key
        self.value = value
        self.problem = problem
        self.choices = list(choices) if choices is not None else None
        message = f"{key}={_show(value)} {problem}"
        if self.choices is not None:
            message += f"; valid choices: {', '.join(str(c) for c in self.choices)}"
        super().__init__(message + ".")

    def __reduce__(self) -> tuple[Any, ...]:
        # rebuilt from its parts when it crosses a process boundary (a trial process)
        return (type(self), (self.key, self.value, self.problem, self.choices))


# what a shell reports for a process ended by SIGTERM (128 + 15) and by SIGINT (Ctrl-C)
STOPPED_EXIT_CODE = 143
SIGINT_EXIT_CODE = 130


class RunStopped(Exception):
    """A run stopped on a signal before its end (a preempted or cancelled job: SIGTERM, every
    rank at the same step); the message says where and how it resumes.

    Args:
        message: what stopped and what was kept.
        exit_code: the CLI's exit code, 128 + the signal's number.
    """

    def __init__(self, message: str, exit_code: int = STOPPED_EXIT_CODE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StorageFull(Exception):
    """A file of the run could not be written because its file system is full or over
    quota; the message names the file, the space left and what was kept. The CLI exits 1:
    the input was right, the machine could not hold the result."""

    exit_code = 1


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def article(noun: str) -> str:
    """``a`` or ``an``, whichever reads right before ``noun``."""
    return "an" if noun[:1].lower() in "aeiou" else "a"
