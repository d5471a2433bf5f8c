"""What a DataLoader worker of the pack does as it starts (its ``worker_init_fn``)."""

from __future__ import annotations

import os
import select
import signal
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class LoaderWorkerStart:
    """A loader worker's start, given as the DataLoader's ``worker_init_fn``.

    The worker ignores SIGTERM: a SIGTERM to the whole process group (``scancel``, a
    preempted job) would otherwise end the workers at once, and their rank's next batch
    would fail before the rank reached the step where every rank stops together
    (:class:`~lightning_accel.strategies.agreed_stop.AgreedStop`).

    It ends when its rank ends. torch's own watchdog takes the worker's parent only after
    this function, so a rank killed while its workers start left them watching ``init``,
    running for good; and the parent is not the rank where a fork server starts the
    workers (torch_xla). So the worker watches the rank itself, by a pidfd.

    Attributes:
        rank_pid: the process that made the loader (the rank).
    """

    rank_pid: int

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            rank = os.pidfd_open(self.rank_pid)
        except ProcessLookupError:
            os._exit(0)
        threading.Thread(target=_exit_when_ended, args=(rank,), daemon=True).start()


def _exit_when_ended(pidfd: int) -> None:
    """Wait for the process behind ``pidfd`` to end (the fd turns readable), then exit."""
    ended = select.poll()
    ended.register(pidfd, select.POLLIN)
    ended.poll()
    os._exit(0)
