"""One command at a time in a run directory: two commands training into one directory
would resume from each other's checkpoints and overwrite each other's files."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning_accel.errors import ConfigError

LOCK_FILE = ".lightning-accel.lock"


@contextmanager
def run_directory_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` while the block runs. The lock is the kernel's
    (``flock`` on a file in the directory), so it ends with the process however it ends: a
    killed command leaves nothing stale behind.

    Raises:
        ConfigError: another command holds the directory (naming its process and host).
    """
    with (run_dir / LOCK_FILE).open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process"
            raise ConfigError(
                "run directory",
                str(run_dir),
                f"is in use by another lightning-accel command ({holder}); wait for it to "
                "end, or give this one another hydra.run.dir",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield
