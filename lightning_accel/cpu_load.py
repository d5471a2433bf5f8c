"""How busy other processes kept this machine's processors while something ran: a timing
taken beside them measures the contention as much as the code."""

from __future__ import annotations

import os
import time
from collections.abc import Collection
from pathlib import Path
from types import TracebackType

PROC_STAT = Path("/proc/stat")
# the busy fields of a processor's line ("cpuN") of /proc/stat, of:
# user nice system idle iowait irq softirq steal
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)
MIN_SECONDS = 0.5


def busy_seconds(stat: Path = PROC_STAT, cpus: Collection[int] | None = None) -> float | None:
    """Processor seconds every process has used on processors ``cpus`` (default: those
    this process may run on) since the machine started; None where ``stat`` cannot be read
    (not Linux)."""
    if cpus is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else ()
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split() or [""]
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks += sum(int(fields[i]) for i in _BUSY_FIELDS if i < len(fields))
    return ticks / os.sysconf("SC_CLK_TCK")


PROC = Path("/proc")


def own_seconds(proc: Path = PROC) -> float:
    """Processor seconds this process (all its threads) and the processes it started have
    used, those still running (read from ``proc``) and those that ended: torch.compile's
    worker processes, for one, are a trial's own work, not other load."""
    times = os.times()
    seconds = times.user + times.system + times.children_user + times.children_system
    return seconds + _descendant_ticks(os.getpid(), proc) / os.sysconf("SC_CLK_TCK")


def _descendant_ticks(root: int, proc: Path) -> int:
    """Clock ticks the running descendants of process ``root`` have used, with those of
    the processes they started and waited for."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in proc.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # it ended while the others were read
            continue
        # after the command name, which may hold spaces and parentheses: state, ppid, ...,
        # utime, stime, cutime, cstime (fields 14-17 of proc(5))
        fields = text.rpartition(")")[2].split()
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        ticks[pid] = sum(int(value) for value in fields[11:15])
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    total, stack = 0, list(children.get(root, []))
    while stack:
        pid = stack.pop()
        total += ticks[pid]
        stack += children.get(pid, [])
    return total


class OtherLoad:
    """A ``with`` block's measure of the other processes' load: ``cores`` is how many of
    the processors this process may run on they kept busy, on average, while it ran (None
    where the machine's counters cannot be read, or the block took under
    :data:`MIN_SECONDS`, too short for the counters' hundredths of a second).

    Args:
        stat: the kernel's processor counters (``/proc/stat``).
    """

    def __init__(self, stat: Path = PROC_STAT) -> None:
        self.stat = stat
        self.cores: float | None = None
        self._start: tuple[float, float | None, float] = (0.0, None, 0.0)

    def __enter__(self) -> OtherLoad:
        self._start = (time.monotonic(), busy_seconds(self.stat), own_seconds())
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        started, busy_before, own_before = self._start
        busy_after = busy_seconds(self.stat)
        elapsed = time.monotonic() - started
        if busy_before is None or busy_after is None or elapsed < MIN_SECONDS:
            return
        others = (busy_after - busy_before) - (own_seconds() - own_before)
        self.cores = max(0.0, others) / elapsed
