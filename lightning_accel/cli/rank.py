"""Entry point of one rank: ``python -m lightning_accel.cli.rank <run_dir>/config.yaml``.

Reads the resolved config the launcher wrote and fits it; the cluster environment
(torch elastic's variables) tells Lightning the rank and world size.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch.distributed
from omegaconf import OmegaConf

from lightning_accel.cli.console import fail, quiet_upstream
from lightning_accel.cli.schema import RunConfig
from lightning_accel.errors import ConfigError


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
    leave_process_group()


def leave_process_group() -> None:
    """Leave together and close the process group: a rank that exits while its gloo threads
    still run aborts (SIGABRT) and fails the whole run after the work is done."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
