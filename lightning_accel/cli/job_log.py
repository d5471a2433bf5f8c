"""The console's messages in the job's log file: Hydra's job logging writes
``<run dir>/<job name>.log`` (``train.log``), and what the CLI says about a run (where it
trains, where its results went, why it failed or stopped) belongs there beside the
messages of a user's own loggers. The ranks a job starts add theirs to the same file."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

# the job's log file while a job runs; the ranks it starts inherit it with the environment
JOB_LOG_VARIABLE = "LIGHTNING_ACCEL_JOB_LOG"
# Hydra's default job log format, so that the file reads as one log
_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
# not propagated: the console prints these messages already, and Hydra's root logger
# would print them again on stdout
_messages = logging.getLogger("lightning_accel.console")
_messages.propagate = False
_messages.setLevel(logging.INFO)


@contextmanager
def job_log() -> Iterator[None]:
    """While inside, the console's messages also go to the log file of the Hydra job that
    runs (the root logger's file handler, which Hydra configures per job); nothing where
    the job logs to no file (``hydra/job_logging`` without one)."""
    from lightning_accel.cli.rank_server import changed_environment

    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    with changed_environment({JOB_LOG_VARIABLE: files[0].baseFilename if files else None}):
        yield


def record(level: int, message: str) -> None:
    """Append ``message`` to the job's log file, if a job runs."""
    path = os.environ.get(JOB_LOG_VARIABLE)
    if not path:
        return
    if not any(getattr(h, "baseFilename", None) == path for h in _messages.handlers):  # new job
        for previous in list(_messages.handlers):
            _messages.removeHandler(previous)
            previous.close()
        handler = logging.FileHandler(path, delay=True)
        handler.setFormatter(logging.Formatter(_FORMAT))
        _messages.addHandler(handler)
    _messages.log(level, message)
