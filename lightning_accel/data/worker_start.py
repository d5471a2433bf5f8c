"""What a DataLoader worker of the pack does as it starts (its ``worker_init_fn``)."""

from __future__ import annotations

import os
import select
import signal
import threading
import time
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
    workers (torch_xla). So the worker watches the rank itself: by a pidfd on Linux, by
    asking every few seconds where there are none (macOS).

    Attributes:
        rank_pid: the process that made the loader (the rank).
    """

    rank_pid: int

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if os.name == "posix":  # elsewhere os.kill(pid, 0) is no question but a kill
            threading.Thread(target=_exit_when_ended, args=(self.rank_pid,), daemon=True).start()


# how often a worker without pidfds (macOS, Linux before 5.3) asks whether its rank runs
RANK_POLL_SECONDS = 2.0


def _exit_when_ended(pid: int) -> None:
    """Wait for process ``pid`` to end, then exit this worker: by a pidfd, which turns
    readable when the process ends (no pid reuse can fool it), else by asking every
    :data:`RANK_POLL_SECONDS`."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(0)
    except (AttributeError, OSError):
        while _runs(pid):
            time.sleep(RANK_POLL_SECONDS)
        os._exit(0)
    ended = select.poll()
    ended.register(pidfd, select.POLLIN)
    ended.poll()
    os._exit(0)


def _runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # there, but another user's (the pid was reused)
        return False
    return True
