"""Entry point of one rank: :func:`run_rank` in a process forked by the launcher, or
``python -m lightning_accel.cli.rank <run_dir>/config.yaml``.

Reads the resolved config the launcher wrote and fits it; the cluster environment
(torch elastic's variables) tells Lightning the rank and world size.
"""

from __future__ import annotations

import json
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


# where a rank started by the launcher leaves the user error it found, in its run directory,
# for the launcher to report once (a hidden file: not among the run's results)
RANK_CONFIG_ERROR = ".rank-config-error.json"


def main(argv: list[str], launched: bool = False) -> None:
    """Run (fit, or validate, test, predict) the run whose config path is the only
    argument; ``launched`` (a rank the launcher started): a user error is left in
    :data:`RANK_CONFIG_ERROR` for the launcher to report, not printed by every rank."""
    from lightning_accel.cli.runner import run_stage

    quiet_upstream()
    config_path = Path(argv[0])
    try:
        run_stage(load_run(config_path))
    except ConfigError as error:
        if not launched:
            fail(error)
        record_config_error(error, config_path.parent / RANK_CONFIG_ERROR)
        sys.exit(2)
    except RunStopped as stopped:
        end_stopped(stopped)
    leave_process_group()


def record_config_error(error: ConfigError, path: Path) -> None:
    """Write ``error`` to ``path`` unless another rank wrote its own first."""
    parts = {"key": error.key, "value": error.value, "problem": error.problem}
    parts["choices"] = error.choices
    try:
        with path.open("x") as handle:
            json.dump(parts, handle, default=str)
    except FileExistsError:
        pass


def recorded_config_error(run_dir: Path) -> ConfigError | None:
    """The user error a rank of the run in ``run_dir`` recorded, if any (and removed)."""
    path = run_dir / RANK_CONFIG_ERROR
    try:
        parts = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    path.unlink(missing_ok=True)
    return ConfigError(**parts)


def run_rank(config_path: str, environment_changes: dict[str, str | None]) -> None:
    """One rank forked from the launcher's rank server: its environment becomes the
    launcher's (``environment_changes`` from the server's; torch elastic has set the rank's
    own variables), with its thread count and SIGTERM
    (:func:`~lightning_accel.cli.rank_server.take_launcher_environment`), then
    :func:`main`."""
    take_launcher_environment(environment_changes)
    try:
        main([config_path], launched=True)
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
