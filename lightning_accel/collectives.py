"""What each rank was doing with its collectives when a distributed run failed: the trace
file every rank writes (``<run_dir>/traces/rank-<N>.json``), and the diagnosis read from
all of them — which collective, at which step, in which Lightning hook, and which ranks
did not arrive.

A rank's collectives come from torch's flight recorder, which records gloo and NCCL
collectives alike once ``TORCH_FR_BUFFER_SIZE`` is set before the process group is
created (the runner sets it for every rank). Collectives are numbered per process group
in the order each rank makes them, so ranks whose collective of one number differs (a
barrier on one rank, a gradient all-reduce on another) disagree about what comes next:
one of them made a collective the others skipped.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lightning_accel.files import write_text_whole

TRACE_DIRECTORY = "traces"
# how many collectives the flight recorder keeps per process
FLIGHT_RECORDER_ENTRIES = 2000
RECENT_SHOWN = 20
# the error of a rank the launcher stopped (SIGTERM) after another rank failed
STOPPED = "stopped by the launcher"
_TIMEOUT = re.compile(r"timed out|timeout", re.IGNORECASE)
_PEER_GONE = re.compile(r"(closed|reset) by peer|broken pipe", re.IGNORECASE)
# ranks in one collective time out within moments of each other unless one was frozen in it
FROZEN_AFTER_SECONDS = 1.0


def is_collective_error(error: str) -> bool:
    """Whether ``error`` is what a collective raises when it cannot finish: a timeout, or a
    peer that closed its connection."""
    return bool(_TIMEOUT.search(error) or _PEER_GONE.search(error))


@dataclass(frozen=True)
class Collective:
    """One collective of a rank.

    Args:
        op: its name (``all_reduce``, ``barrier``, ...).
        sequence: its number within its process group (None when not known).
        sizes: the shape of each input tensor (``[]`` for a scalar).
        completed: whether it finished on this rank.
        group: the flight recorder's process group id.
    """

    op: str
    sequence: int | None = None
    sizes: tuple[tuple[int, ...], ...] = ()
    completed: bool = False
    group: int = 0

    def signature(self) -> tuple[str, tuple[tuple[int, ...], ...]]:
        """What ranks must agree on to make this collective together: its name and sizes."""
        return self.op, self.sizes

    def describe(self) -> str:
        """``all_reduce #57 of a scalar``, ``all_reduce #58 of 1,234 elements``."""
        number = f" #{self.sequence}" if self.sequence is not None else ""
        if not self.sizes:
            return f"{self.op}{number}"
        elements = [math.prod(shape) for shape in self.sizes]
        if len(elements) == 1 and not self.sizes[0]:
            return f"{self.op}{number} of a scalar"
        return f"{self.op}{number} of {sum(elements):,} element{'s' * (sum(elements) != 1)}"


def _flight_recorder(include_collectives: bool = True) -> dict[str, Any]:
    import torch

    # private API (pinned by tests/test_collective_trace.py): torch's own dump, as JSON
    dump = torch._C._distributed_c10d._dump_fr_trace_json  # noqa: SLF001
    try:
        return json.loads(dump(includeCollectives=include_collectives))
    except RuntimeError:  # the recorder is off
        return {}


def recent_collectives(limit: int = RECENT_SHOWN) -> list[Collective]:
    """This process's last ``limit`` collectives, oldest first (empty when the flight
    recorder is off)."""
    recorder = _flight_recorder()
    entries = sorted(recorder.get("entries", []), key=lambda e: e.get("time_created_ns", 0))
    # gloo marks an entry retired a moment after its group counts it completed, so an entry
    # is completed when either says so
    last_completed = {
        int(group): int(s["last_completed_collective"])
        for group, s in recorder.get("pg_status", {}).items()
    }

    def completed(entry: dict[str, Any]) -> bool:
        sequence = entry.get("collective_seq_id")
        done = last_completed.get(int(entry.get("pg_id", 0)), -1)
        return bool(entry.get("retired")) or (sequence is not None and sequence <= done)

    return [
        Collective(
            op=e.get("profiling_name", "?").split(":")[-1],
            sequence=e.get("collective_seq_id"),
            sizes=tuple(tuple(s) for s in e.get("input_sizes", [])),
            completed=completed(e),
            group=int(e.get("pg_id", 0)),
        )
        for e in entries[-limit:]
    ]


def pending_collectives() -> dict[str, int]:
    """For each process group with a collective not yet completed on this rank, the last
    one enqueued (by flight recorder group id); cheap enough to poll."""
    status = _flight_recorder(include_collectives=False).get("pg_status", {})
    return {
        group: int(s["last_enqueued_collective"])
        for group, s in status.items()
        if int(s["last_enqueued_collective"]) > int(s["last_completed_collective"])
    }


@dataclass
class RankTrace:
    """One rank's account of where it was when its run failed or a collective hung.

    Args:
        rank, world: the rank and world size.
        attempt: the launcher's restart count (0 for the first attempt).
        step: the optimizer step it was in.
        hook: the Lightning hook it was running (``MyModule.training_step``), None outside
            any hook.
        where: ``file:line`` in that hook.
        collective: the collective it waited in or failed in, when known.
        error: the error that ended it (at most 4,000 characters), :data:`STOPPED` when
            the launcher stopped it, None while it was still waiting.
        recent: its last collectives, oldest first.
        waited_seconds: how long the collective had been pending when written.
        written_at: when it was written (seconds since the epoch).
    """

    rank: int
    world: int
    attempt: int = 0
    step: int | None = None
    hook: str | None = None
    where: str | None = None
    collective: Collective | None = None
    error: str | None = None
    recent: list[Collective] = field(default_factory=list)
    waited_seconds: float | None = None
    written_at: float | None = None

    def context(self) -> str:
        """``in MyModule.training_step at step 3 (model.py:42)``."""
        hook = f"in {self.hook}" if self.hook else "outside any Lightning hook"
        step = f" at step {self.step}" if self.step is not None else ""
        where = f" ({self.where})" if self.where else ""
        return f"{hook}{step}{where}"


def write_trace(directory: Path, trace: RankTrace) -> Path:
    """Write ``trace`` to ``directory/rank-<N>.json`` whole (written aside, then renamed)."""
    return write_text_whole(directory / f"rank-{trace.rank}.json", json.dumps(asdict(trace)))


def _collective(data: dict[str, Any] | None) -> Collective | None:
    if data is None:
        return None
    sizes = tuple(tuple(s) for s in data.get("sizes", ()))
    return Collective(**{**data, "sizes": sizes})


def _read_trace(path: Path) -> RankTrace | None:
    """The trace in ``path``; None for a file that is not one (not JSON, other fields)."""
    try:
        data = json.loads(path.read_text())
        data["collective"] = _collective(data.get("collective"))
        data["recent"] = [_collective(c) for c in data.get("recent", [])]
        return RankTrace(**data)
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def load_traces(run_dir: Path) -> tuple[list[RankTrace], list[Path]]:
    """The traces of a run's latest attempt, by rank (none when no rank wrote one), and the
    files of its trace directory that hold no trace (a trace is written whole, so these
    are files the ranks did not write: they are left out, not a failure)."""
    traces, damaged = [], []
    for path in sorted((run_dir / TRACE_DIRECTORY).glob("rank-*.json")):
        trace = _read_trace(path)
        if trace is None:
            damaged.append(path)
        else:
            traces.append(trace)
    latest = max((t.attempt for t in traces), default=0)
    return sorted((t for t in traces if t.attempt == latest), key=lambda t: t.rank), damaged


def read_traces(run_dir: Path) -> list[RankTrace]:
    """The traces of a run's latest attempt, by rank; files that hold none are left out."""
    return load_traces(run_dir)[0]


def _ranks(ranks: list[int]) -> str:
    return f"rank{'s' * (len(ranks) > 1)} {', '.join(map(str, ranks))}"


def diagnose(traces: list[RankTrace], world: int) -> str:
    """One paragraph: what the ranks were doing when the run failed, naming the collective,
    the step, the hook and the ranks that did not arrive."""
    by_rank = {t.rank: t for t in traces}
    numbered = {
        t.rank: t.collective
        for t in traces
        if t.collective is not None and t.collective.sequence is not None
    }
    parts = _mismatches(numbered, by_rank)
    stopped = [t for t in traces if t.error == STOPPED and t.collective is None]
    timed_out = [t for t in traces if t.error is not None and _TIMEOUT.search(t.error)]
    first_gave_up = min((t.written_at or math.inf for t in timed_out), default=math.inf)
    # a rank whose own timeout came well after the first was frozen inside the collective
    frozen = [t for t in timed_out if (t.written_at or 0) > first_gave_up + FROZEN_AFTER_SECONDS]
    gave_up = [t.rank for t in timed_out if t not in frozen]
    waiting = [t.rank for t in traces if t.error is None] + gave_up
    # ranks that did not finish the collective before others gave up: they failed only
    # because the waiting ones closed their connections, timed out themselves only once
    # resumed, or their last word is still "waiting" (then ended by the launcher)
    lost_peers = [t for t in traces if waiting and _PEER_GONE.search(t.error or "")]
    late = lost_peers + frozen + [t for t in traces if gave_up and t.error is None]
    if not parts:
        for trace in traces:
            if trace in stopped:
                continue
            collective = trace.collective.describe() if trace.collective else "a collective"
            if trace in late:
                lost = " (it then lost its peers)" if trace in lost_peers else ""
                parts.append(
                    f"rank {trace.rank} was in {collective} {trace.context()} but did not "
                    f"finish it before {_ranks(gave_up or waiting)} gave up{lost}"
                )
                continue
            verb = "waited" if trace.rank in waiting else "failed"
            if trace.error == STOPPED:
                verb = "was stopped by the launcher while"
            elif verb == "failed" and trace.collective is None:
                parts.append(f"rank {trace.rank} failed outside any collective {trace.context()}")
                continue
            waited = f" {trace.waited_seconds:.0f} s" if trace.waited_seconds else ""
            parts.append(f"rank {trace.rank} {verb}{waited} in {collective} {trace.context()}")
    for trace in stopped:
        parts.append(
            f"rank {trace.rank} never arrived: the launcher stopped it {trace.context()}, "
            "outside any collective"
        )
    silent = [r for r in range(world) if r not in by_rank]
    if silent:
        parts.append(
            f"{_ranks(silent)} never arrived (no trace: stopped, dead, or busy outside collectives)"
        )
    return "; ".join(parts) if parts else "no rank left a trace"


def _mismatches(numbered: dict[int, Collective], by_rank: dict[int, RankTrace]) -> list[str]:
    """For each collective number that ranks disagree about, the ranks that did not make
    the collective most ranks (or, on a tie, the lowest rank) made there, and what they
    made instead."""
    slots: dict[tuple[int, int], list[int]] = {}
    for rank, collective in numbered.items():
        assert collective.sequence is not None
        slots.setdefault((collective.group, collective.sequence), []).append(rank)
    found = []
    for ranks in slots.values():
        signatures = {r: numbered[r].signature() for r in ranks}
        if len(set(signatures.values())) < 2:
            continue
        counts = Counter(signatures.values())
        reference = min(ranks, key=lambda r: (-counts[signatures[r]], r))
        makers = sorted(r for r in ranks if signatures[r] == signatures[reference])
        others = sorted(r for r in ranks if r not in makers)
        sentence = (
            f"{_ranks(others)} did not make the {numbered[reference].describe()} that "
            f"{_ranks(makers)} made {by_rank[reference].context()}"
        )
        for rank in others:
            sentence += f"; rank {rank} made {numbered[rank].describe()} {by_rank[rank].context()}"
        found.append(sentence)
    return found
