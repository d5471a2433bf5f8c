"""Entry point of one rank: :func:`run_rank` in a process forked by the launcher, or
``python -m lightning_accel.cli.rank <run_dir>/config.yaml``.

Reads the resolved config the launcher wrote and fits it; the cluster environment
(torch elastic's variables) tells Lightning the rank and world size.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.distributed
from omegaconf import OmegaConf

from lightning_accel.cli.console import end_stopped, fail, quiet_upstream
from lightning_accel.cli.rank_server import take_launcher_environment
from lightning_accel.cli.schema import RunConfig
from lightning_accel.errors import STOPPED_EXIT_CODE, ConfigError, RunStopped

# how long a failed rank waits before exiting: several polls of the launcher (every 0.2 s)
FAILED_RANK_GRACE_SECONDS = 2.0


def load_run(config_path: Path) -> RunConfig:
    """The :class:`RunConfig` saved in a run directory."""
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.load(config_path))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def main(argv: list[str]) -> None:
    """Run (fit, or validate, test, predict) the run whose config path is the only
    argument."""
    from lightning_accel.cli.runner import run_stage

    quiet_upstream()
    try:
        run_stage(load_run(Path(argv[0])))
    except ConfigError as error:
        fail(error)
    except RunStopped as stopped:
        end_stopped(stopped)
    leave_process_group()


def run_rank(config_path: str, environment_changes: dict[str, str | None]) -> None:
    """One rank forked from the launcher's rank server: its environment becomes the
    launcher's (``environment_changes`` from the server's; torch elastic has set the rank's
    own variables), with its thread count and SIGTERM
    (:func:`~lightning_accel.cli.rank_server.take_launcher_environment`), then
    :func:`main`."""
    take_launcher_environment(environment_changes)
    try:
        main([config_path])
    except BaseException as error:
        # torch elastic's multiprocessing context reports only the first failed rank its poll
        # finds, in rank order: a rank that fails because a peer died (or was killed) leaves
        # the launcher's poll time to find that peer first, so the message names the cause.
        if not (isinstance(error, SystemExit) and error.code == STOPPED_EXIT_CODE):
            time.sleep(FAILED_RANK_GRACE_SECONDS)
        raise


def leave_process_group() -> None:
    """Leave together and close the process group: a rank that exits while its gloo threads
    still run aborts (SIGABRT) and fails the whole run after the work is done."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
