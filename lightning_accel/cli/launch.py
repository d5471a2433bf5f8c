"""Starting the local ranks of a multi-process run with torch's elastic launcher.

The job's resolved config is already in its run directory; every rank reads that file
(``python -m lightning_accel.cli.rank CONFIG``) instead of re-running Hydra, so ranks never
parse Hydra arguments and all of them write into the one run directory. torchrun and SLURM
can start the same entry point.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning_accel.cli.console import say


class RanksFailed(RuntimeError):
    """One or more ranks of a run exited with an error; the message says which and where
    their output is."""


@contextmanager
def _threads_per_rank(processes: int) -> Iterator[None]:
    """Share the cores between the ranks (workers inherit the environment)."""
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous


def launch_local_ranks(config_path: Path, processes: int, monitor_interval: float = 0.2) -> None:
    """Run ``processes`` ranks of the run described by ``config_path`` on this machine.

    Rank 0 prints to this console; the others write ``stdout.log``/``stderr.log`` under
    ``<run_dir>/ranks/``. If any rank fails, the launcher stops the others at once.

    Raises:
        RanksFailed: a rank exited non-zero or was killed.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    log_dir = config_path.parent / "ranks"
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=uuid.uuid4().hex[:12],
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=monitor_interval,
        start_method="spawn",
        shutdown_timeout=10,  # a stopped rank ignores SIGTERM; SIGKILL follows after this
        logs_specs=DefaultLogsSpecs(
            log_dir=str(log_dir), redirects={r: Std.ALL for r in range(1, processes)}
        ),
    )
    others = "rank 1 logs" if processes == 2 else f"ranks 1-{processes - 1} log"
    say(f"starting {processes} ranks; {others} to {log_dir}")
    entry = ["-m", "lightning_accel.cli.rank", str(config_path)]
    try:
        with _threads_per_rank(processes):
            elastic_launch(config, sys.executable)(*entry)
    except ChildFailedError as error:
        failures = ", ".join(
            f"rank {rank} (exit code {failure.exitcode})"
            for rank, failure in sorted(error.failures.items())
        )
        raise RanksFailed(
            f"{failures} failed; the other ranks were stopped; logs in {log_dir}"
        ) from None
