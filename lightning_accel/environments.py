"""Cluster environments Lightning does not detect by itself."""

from __future__ import annotations

import os

from lightning.fabric.plugins.environments import ClusterEnvironment
from typing_extensions import override


class SubmititLocalEnvironment(ClusterEnvironment):
    """The tasks of one job of submitit's local executor, as Lightning ranks.

    submitit's local executor (``hydra/launcher=submitit_local``, the runner's
    ``launcher=slurm_local``) starts one process per task on this machine and sets only
    ``SUBMITIT_LOCAL_*`` variables, which no Lightning environment reads. Ranks and world
    size come from those; the tasks meet on 127.0.0.1 at a port derived from the job id,
    which they share. Pass it as ``Trainer(plugins=[SubmititLocalEnvironment()])``.
    """

    @property
    @override
    def creates_processes_externally(self) -> bool:
        return True

    @property
    @override
    def main_address(self) -> str:
        return "127.0.0.1"

    @property
    @override
    def main_port(self) -> int:
        return 20000 + int(os.environ["SUBMITIT_LOCAL_JOB_ID"]) % 20000

    @staticmethod
    @override
    def detect() -> bool:
        return "SUBMITIT_LOCAL_NTASKS" in os.environ and "SUBMITIT_LOCAL_GLOBALID" in os.environ

    @override
    def world_size(self) -> int:
        return int(os.environ["SUBMITIT_LOCAL_NTASKS"])

    @override
    def set_world_size(self, size: int) -> None:
        pass  # fixed by the executor

    @override
    def global_rank(self) -> int:
        return int(os.environ["SUBMITIT_LOCAL_GLOBALID"])

    @override
    def set_global_rank(self, rank: int) -> None:
        pass  # fixed by the executor

    @override
    def local_rank(self) -> int:
        return int(os.environ["SUBMITIT_LOCAL_LOCALID"])

    @override
    def node_rank(self) -> int:
        return int(os.environ.get("SUBMITIT_LOCAL_NODEID", "0"))
