"""Starting this node's ranks of a run with torch's elastic launcher.

The job's resolved config is already in its run directory; every rank reads that file
(:func:`lightning_accel.cli.rank.run_rank`) instead of re-running Hydra, so ranks never
parse Hydra arguments and all of them write into the one run directory. Ranks are forked
from a server process that imported torch, Lightning and the pack once
(:mod:`~lightning_accel.cli.rank_server`). ``launcher=local``
is one node meeting on a free local port; ``launcher=torchrun`` is one node of several,
meeting at the configured rendezvous endpoint, and restarts every rank after a failure
(``max_restarts``), each restart resuming from the run's last checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import socket
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning_accel.cli.console import rank_environment, say
from lightning_accel.cli.rank import recorded_config_error, run_rank
from lightning_accel.cli.rank_server import (
    START_METHOD,
    changed_environment,
    launcher_environment,
    start_rank_server,
)
from lightning_accel.cli.schema import LauncherConfig, RunConfig
from lightning_accel.collectives import (
    FLIGHT_RECORDER_ENTRIES,
    TRACE_DIRECTORY,
    diagnose,
    read_traces,
)
from lightning_accel.errors import STOPPED_EXIT_CODE, ConfigError, RunStopped
from lightning_accel.machine import usable_cores


class _StoppingRecords(logging.Filter):
    """Drops torch elastic's records of ending ranks: the error (with the agent's own
    traceback) of a rank that exited, however it exited (one that stopped on SIGTERM says so
    itself; the launcher reports a user error, and any other failure with the rank's exit
    code, its first sentence and its log), and the agent's notes that it signals its ranks
    (the run's own message says that it stopped, or which rank failed and that the others
    were stopped)."""

    LOGGERS = (
        "torch.distributed.elastic.multiprocessing.api",
        "torch.distributed.elastic.agent.server.api",
        "torch.multiprocessing.spawn",  # "Terminating process N via signal SIGTERM"
    )
    NOTES = (
        "failed (exitcode: ",  # a rank that exited: reported once by the launcher
        "death signal, shutting down workers",
        "via signal SIG",  # SIGTERM, SIGINT (Ctrl-C) or SIGKILL
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(note in message for note in self.NOTES)

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Filter elastic's loggers within the block."""
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)
        try:
            yield
        finally:
            for name in self.LOGGERS:
                logging.getLogger(name).removeFilter(self)


class RanksFailed(RuntimeError):
    """One or more ranks of a run exited with an error; the message says which and where
    their output is. The CLI exits 1: the input was checked, the run failed."""

    exit_code = 1


def _rendezvous(launcher: LauncherConfig | None) -> dict[str, Any]:
    """LaunchConfig's rendezvous arguments: a free local port for one node, the configured
    endpoint, run id and bounded timeouts for several."""
    if launcher is None or launcher.name != "torchrun":
        return {
            "min_nodes": 1,
            "max_nodes": 1,
            "run_id": uuid.uuid4().hex[:12],
            "rdzv_backend": "c10d",
            "rdzv_endpoint": "127.0.0.1:0",
            "max_restarts": 0 if launcher is None else launcher.max_restarts,
        }
    timeout = max(1, round(launcher.rdzv_timeout_s))
    # join: waiting for the other nodes; read: each request to the rendezvous store
    options: dict[str, Any] = {"timeout": timeout, "join_timeout": timeout}
    options["read_timeout"] = timeout
    if launcher.node_rank is not None:
        options["rank"] = launcher.node_rank  # static rendezvous
        if launcher.rdzv_backend == "c10d":
            options["is_host"] = launcher.node_rank == 0
    return {
        "min_nodes": launcher.nnodes,
        "max_nodes": launcher.nnodes,
        "run_id": launcher.run_id,
        "rdzv_backend": launcher.rdzv_backend,
        "rdzv_endpoint": launcher.rdzv_endpoint,
        "rdzv_configs": options,
        "max_restarts": launcher.max_restarts,
    }


def launches_ranks(run: RunConfig) -> bool:
    """Whether this process starts ranks for ``run`` (several processes, or one node of a
    torchrun world) rather than fitting in itself or being a rank an outside launcher
    started."""
    from lightning_accel.cli.cluster import external_world
    from lightning_accel.hardware import resolve_hardware

    if run.launcher.name not in ("local", "torchrun") or external_world() is not None:
        return False
    # the run plan's count (plan_run takes it from here), without importing Lightning
    processes = resolve_hardware(run.hardware).processes
    return processes > 1 or run.launcher.name == "torchrun"


@contextmanager
def _rank_environment(processes: int) -> Iterator[None]:
    """The environment of the elastic agent and the ranks it starts: the cores shared
    between the ranks (unless the user set ``OMP_NUM_THREADS``), torch's C++ log level as
    the user left it, a rendezvous store per attempt, torch's flight recorder on (it keeps
    each rank's recent collectives for the traces of a failed run)."""
    changes = rank_environment()
    # torch elastic shares its rendezvous store with the ranks by default, across restarts:
    # restarted ranks then read the previous attempt's addresses and fail to connect. Own
    # stores, new at every attempt, avoid that (the agent reads this when it re-rendezvous).
    defaults = {
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        "OMP_NUM_THREADS": str(max(1, usable_cores() // processes)),
        "TORCH_FR_BUFFER_SIZE": str(FLIGHT_RECORDER_ENTRIES),
    }
    changes.update({k: v for k, v in defaults.items() if k not in os.environ})
    with changed_environment(changes):
        yield


def launch_ranks(
    config_path: Path,
    processes: int,
    launcher: LauncherConfig | None = None,
    monitor_interval: float = 0.2,
) -> None:
    """Run this node's ``processes`` ranks of the run described by ``config_path``.

    Local rank 0 of node 0 prints to this console; the others write
    ``stdout.log``/``stderr.log`` under ``<run_dir>/ranks/`` (per node with several). If any
    rank fails, the launcher stops the others at once, then restarts them all while
    ``launcher.max_restarts`` allows; the final error then says what the ranks' traces
    (:mod:`~lightning_accel.collectives`) tell about the failure.

    Raises:
        RanksFailed: a rank exited non-zero or was killed, and no restart was left.
        ConfigError: the rendezvous endpoint did not answer within ``rdzv_timeout_s``.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    rendezvous = _rendezvous(launcher)
    log_dir = config_path.parent / "ranks"
    quiet = range(1, processes)
    if rendezvous["max_nodes"] > 1:
        node = launcher.node_rank if launcher.node_rank is not None else socket.gethostname()
        log_dir = log_dir / f"node-{node}"
        quiet = range(1 if launcher.node_rank == 0 else 0, processes)
    options: dict[str, Any] = {}
    if "shutdown_timeout" in {f.name for f in dataclasses.fields(LaunchConfig)}:  # not in torch 2.9
        options["shutdown_timeout"] = 10  # a stopped rank ignores SIGTERM; SIGKILL follows
    config = LaunchConfig(
        nproc_per_node=processes,
        monitor_interval=monitor_interval,
        start_method=START_METHOD,
        logs_specs=DefaultLogsSpecs(log_dir=str(log_dir), redirects={r: Std.ALL for r in quiet}),
        **rendezvous,
        **options,
    )
    nodes = rendezvous["max_nodes"]
    where = f" on this node (1 of {nodes}, meeting at {rendezvous['rdzv_endpoint']})" * (nodes > 1)
    say(f"starting {processes} rank{'s' * (processes > 1)}{where}; logs in {log_dir}")
    start_rank_server()
    try:
        with _rank_environment(processes), _StoppingRecords().installed():
            elastic_launch(config, run_rank)(str(config_path), launcher_environment())
    except RendezvousError as error:
        assert launcher is not None
        raise ConfigError(
            "launcher.rdzv_endpoint",
            launcher.rdzv_endpoint,
            f"did not form a rendezvous of {launcher.nnodes} nodes within "
            f"launcher.rdzv_timeout_s={launcher.rdzv_timeout_s:g} ({type(error).__name__}); "
            "check the address and port, and that every node was started with the same "
            "launcher.run_id",
        ) from None
    except ChildFailedError as error:
        if all_stopped(failure.exitcode for failure in error.failures.values()):
            raise ranks_stopped(log_dir) from None
        if user_error := recorded_config_error(config_path.parent):
            raise user_error from None
        failed = sorted(error.failures.items())
        failures = ", ".join(f"rank {rank} (exit code {f.exitcode})" for rank, f in failed)
        world_size = processes * rendezvous["max_nodes"]
        raised = first_sentence(failed[0][1].message)
        raise ranks_failed(failures, config_path.parent, log_dir, world_size, raised) from None
    except SignalException as error:
        from lightning_accel.cli.runner import resume_note

        stopped = signal.Signals(error.sigval)
        note = resume_note(config_path.parent)
        raise RunStopped(
            f"stopped on {stopped.name}; {note}; logs in {log_dir}", 128 + stopped.value
        ) from None


def all_stopped(exit_codes: Iterable[int | None]) -> bool:
    """Whether every rank that ended early exited with :data:`STOPPED_EXIT_CODE`: stopped
    on SIGTERM together, its checkpoint saved, not failed (nothing to restart)."""
    return set(exit_codes) == {STOPPED_EXIT_CODE}


def ranks_stopped(log_dir: Path) -> RunStopped:
    """The end of a run whose ranks all stopped on SIGTERM (rank 0 has said at which step
    and where it saved)."""
    return RunStopped(f"the ranks stopped on SIGTERM; logs in {log_dir}")


# the first sentence of a message's first line (an exception's, as a rank's error file has it)
_FIRST_SENTENCE = re.compile(r"^(.+?[.!?])(?:\s|$)")


def first_sentence(message: str | dict[str, Any]) -> str | None:
    """The first sentence of what a failed rank raised (``RuntimeError: ...``), from torch
    elastic's record of it (a string, or a mapping holding one); None where there is none
    (a rank killed by a signal writes no record)."""
    text = message.get("message", "") if isinstance(message, dict) else message
    line = next((line.strip() for line in str(text).splitlines() if line.strip()), "")
    found = _FIRST_SENTENCE.match(line)
    return (found[1].rstrip(".") if found else line) or None


def ranks_failed(
    failures: str, run_dir: Path, log_dir: Path, world_size: int, raised: str | None = None
) -> RanksFailed:
    """The error of a run of ``world_size`` ranks whose ``failures`` (``rank 1 (exit code
    -9)``) failed with no restart left: what the first of them ``raised``, where their logs
    are and, when the ranks left traces (:mod:`~lightning_accel.collectives`), what those
    tell about the failure."""
    traces = read_traces(run_dir)
    cause = f" ({raised})" if raised else ""
    message = f"{failures} failed{cause}; the other ranks were stopped; logs in {log_dir}"
    if traces:
        diagnosis = diagnose(traces, world_size)
        message += f". {diagnosis[0].upper()}{diagnosis[1:]}; traces in "
        message += f"{run_dir / TRACE_DIRECTORY} (lightning-accel doctor --trace {run_dir})"
    return RanksFailed(message)
