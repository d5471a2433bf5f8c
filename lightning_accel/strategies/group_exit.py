"""Closing the default process group when a process that trained with it exits."""

from __future__ import annotations

import atexit
import functools
import sys

import torch.distributed as dist
from typing_extensions import override


def _close_default_group() -> None:
    # a process ending on an uncaught exception is failing anyway, and its peers may be
    # gone: closing could wait on them, so it is left to the exit
    if getattr(sys, "last_value", None) is None and dist.is_initialized():
        dist.destroy_process_group()


@functools.cache
def close_default_group_at_exit() -> None:
    """Close the default process group at the process's exit (once, however often asked),
    unless it ends on an uncaught exception."""
    atexit.register(_close_default_group)


class GroupClosedAtExit:
    """Strategy mixin: the default process group that ``setup_environment`` opened is closed
    when the process exits, while the interpreter still runs.

    Lightning leaves it open after ``fit`` (a later ``validate`` or ``test`` uses it again).
    A gloo group's worker threads still running at the interpreter's teardown abort the
    process (``SIGABRT``, "terminate called without an active exception"): a user's own
    script of several ranks, whose work was done, then failed under its launcher. Put it
    before the Lightning strategy among the bases.
    """

    @override
    def setup_environment(self) -> None:
        super().setup_environment()  # type: ignore[misc]
        if dist.is_available() and dist.is_initialized():
            close_default_group_at_exit()
