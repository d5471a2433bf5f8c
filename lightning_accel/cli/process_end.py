"""Ending a command's process without tearing down its interpreter.

With torch and Lightning loaded, Python's own teardown (modules, C++ extensions) takes about
1.5 s of CPU after the command has finished, and a caller reading the command's output waits
for it (also for the rank server's, which holds the same pipe).
"""

from __future__ import annotations

import atexit
import os
import sys


class ProcessEnd:
    """Ends this process with ``status`` once every other exit handler has run.

    Registered as an exit handler when created: create it before anything else registers
    one (handlers run last-registered first), so that logging, multiprocessing, trackers and
    temporary files still close as usual. Non-daemon threads are joined before exit handlers
    run, as always.

    Args:
        status: the exit status, until the command sets its own (1: what an uncaught
            exception gives).
    """

    def __init__(self, status: int = 1) -> None:
        self.status = status
        atexit.register(self._end)

    def record(self, code: object) -> None:
        """Take the status that ``sys.exit(code)`` gives (Python prints a message itself)."""
        if code is None:
            self.status = 0
        elif isinstance(code, int):
            self.status = code
        else:
            self.status = 1

    def _end(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed, or its reader has gone
                pass
        os._exit(self.status)
