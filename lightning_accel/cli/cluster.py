"""Which launcher started this process, and what it says about the world of ranks.

Three outside launchers can start a run's processes: torchrun (torch elastic sets
``TORCHELASTIC_RUN_ID``, ``RANK``, ``WORLD_SIZE``), SLURM's ``srun`` (``SLURM_NTASKS``,
``SLURM_PROCID``) and submitit's local executor (``SUBMITIT_LOCAL_*``, no SLURM variables).
Lightning recognises the first two by itself; the third gets a cluster environment here.
This module imports no torch at import time: the CLI checks configs before torch loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lightning_accel.errors import ConfigError


@dataclass(frozen=True)
class ExternalWorld:
    """The ranks an outside launcher started: how many, this one's rank, and which launcher
    said so (named in error messages)."""

    size: int
    rank: int
    source: str


def _in_slurm_step() -> bool:
    # Lightning's rule: SLURM_NTASKS is set and the job is not an interactive shell
    return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in (
        "bash",
        "interactive",
    )


def external_world() -> ExternalWorld | None:
    """The world this process belongs to when an outside launcher started it as one rank
    (torchrun, srun, a submitit job's task); ``None`` when it was started by hand."""
    if "TORCHELASTIC_RUN_ID" in os.environ and "WORLD_SIZE" in os.environ:
        return ExternalWorld(
            int(os.environ["WORLD_SIZE"]), int(os.environ.get("RANK", 0)), "WORLD_SIZE (torchrun)"
        )
    if _in_slurm_step() and "SLURM_PROCID" in os.environ:
        return ExternalWorld(
            int(os.environ["SLURM_NTASKS"]),
            int(os.environ["SLURM_PROCID"]),
            "SLURM_NTASKS (SLURM)",
        )
    if "SUBMITIT_LOCAL_NTASKS" in os.environ and "SUBMITIT_LOCAL_GLOBALID" in os.environ:
        return ExternalWorld(
            int(os.environ["SUBMITIT_LOCAL_NTASKS"]),
            int(os.environ["SUBMITIT_LOCAL_GLOBALID"]),
            "SUBMITIT_LOCAL_NTASKS (submitit)",
        )
    return None


def process_rank() -> int:
    """This process's global rank as its launcher set it (0 when it is the only one)."""
    world = external_world()
    return 0 if world is None else world.rank


# the variables Lightning reads its rank from before a strategy sets it
LIGHTNING_RANK_VARIABLES = ("RANK", "LOCAL_RANK")


def check_no_stray_rank() -> None:
    """Fail when the environment names a rank other than 0 but no launcher started this
    process: Lightning would take it for that rank and leave out, without a word, what only
    rank 0 writes (the summary, the hyper-parameters, the console's results)."""
    if external_world() is not None:
        return
    for name in LIGHTNING_RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.strip() not in ("", "0"):
            raise ConfigError(
                name,
                value,
                "is set in the environment without the world of a launcher the runner knows "
                "(torchrun, srun or submitit); Lightning would run this command as a rank "
                "other than 0 and write no results: start the ranks with launcher=torchrun, "
                "or unset it",
            )


def check_world_size(nnodes: int, processes: int, world: ExternalWorld) -> None:
    """Fail unless the outside launcher started as many ranks as the config asks for."""
    expected = nnodes * processes
    if world.size != expected:
        raise ConfigError(
            "launcher.nnodes x hardware.devices",
            f"{nnodes} x {processes} = {expected}",
            f"disagrees with the {world.size} ranks the environment's {world.source} says "
            "were started; make them equal",
        )


def default_run_id() -> str:
    """The run's id when the config gives none: the id an outside launcher shares with every
    rank (torchrun's rendezvous id, SLURM's job id, so that a requeued job finds its own
    directory again), else the start time."""
    elastic = os.environ.get("TORCHELASTIC_RUN_ID")
    if elastic and elastic != "none":
        return elastic
    if _in_slurm_step() and "SLURM_JOB_ID" in os.environ:
        return f"slurm-{os.environ['SLURM_JOB_ID']}"
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def cluster_plugins() -> list[Any]:
    """Cluster environments Lightning cannot detect by itself, as Trainer plugins.

    Under SLURM, Lightning's ``SLURMEnvironment`` is used with its own requeue handler off:
    submitit (or the user's batch script) requeues, and the run resumes from its last
    checkpoint. A submitit local job's tasks get :class:`SubmititLocalEnvironment`.
    """
    from lightning_accel.environments import SubmititLocalEnvironment

    if SubmititLocalEnvironment.detect():
        return [SubmititLocalEnvironment()]
    if _in_slurm_step() and os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        from lightning.pytorch.plugins.environments import SLURMEnvironment

        return [SLURMEnvironment(auto_requeue=False)]
    return []
