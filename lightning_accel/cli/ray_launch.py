"""Starting the ranks of a run as Ray actors, one per rank (``launcher=ray``).

The driver (this process) connects to the cluster, reserves every worker's CPUs and GPUs at
once in a placement group (one bundle per node: ``launcher.nnodes`` x ``hardware.devices``,
the layout torchrun and SLURM give), and starts a
:class:`~lightning_accel.cli.ray_worker.RankHost` actor per rank. Each actor runs its rank
with the variables torch elastic would set (rank, local rank, node rank, world, the store on
rank 0's node, the attempt), so Lightning sees its ``TorchElasticEnvironment`` and every
strategy and layout runs as under ``launcher=local``. Every actor first checks that it sees
the run directory (a file the driver just wrote there): on several nodes it must be shared
storage. When a rank fails or its actor dies, every actor is stopped and, while
``launcher.max_failures`` allows, new ones start and resume from the run's last checkpoint,
as ``launcher=torchrun`` does with ``max_restarts``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_accel.cli.console import rank_environment, say
from lightning_accel.cli.launch import all_stopped, ranks_failed, ranks_stopped
from lightning_accel.cli.ray_cluster import Workers, check_cluster, connected, run_workers
from lightning_accel.cli.ray_worker import RankHost
from lightning_accel.cli.schema import LauncherConfig
from lightning_accel.collectives import FLIGHT_RECORDER_ENTRIES
from lightning_accel.errors import SIGINT_EXIT_CODE, ConfigError, RunStopped
from lightning_accel.plan.run import RunPlan

# how long the other ranks have to end after the first one fails: a peer's death makes them
# fail within a second, and every failure found is reported
FAILURE_GRACE_SECONDS = 3.0


@dataclass(frozen=True)
class Slot:
    """Where one rank's actor landed: its node, the node's address, its GPU ids, and whether
    it sees the run directory the driver writes into."""

    node: str
    address: str
    gpus: list[str]
    sees_run_dir: bool


def require_shared(launcher: LauncherConfig, run_dir: Path, slots: list[Slot]) -> None:
    """Fail unless every node of ``slots`` sees the run directory: its ranks read the config
    there and write checkpoints that the ranks of a restart read back."""
    nodes = {slot.node for slot in slots}
    blind = {slot.node for slot in slots if not slot.sees_run_dir}
    if blind:
        raise ConfigError(
            "launcher.storage_path",
            launcher.storage_path,
            f"is not shared: the run directory {run_dir} is not seen by {len(blind)} of the "
            f"{len(nodes)} nodes the workers run on; give a directory every node mounts at the "
            "same path (NFS, a shared volume)",
        )


def rank_variables(
    slots: list[Slot], master_port: int, run_id: str, attempt: int, max_failures: int
) -> list[dict[str, str]]:
    """torch elastic's variables for each rank of ``slots`` (in rank order): ranks on one node
    are its local ranks, nodes numbered in the order of their first rank, the store on rank
    0's node. A node's ranks see every GPU given to them, in local-rank order, so that local
    rank ``i`` uses ``cuda:i``, as under torchrun."""
    nodes = list(dict.fromkeys(slot.node for slot in slots))
    per_node = {node: [r for r, s in enumerate(slots) if s.node == node] for node in nodes}
    shared = {
        "WORLD_SIZE": str(len(slots)),
        "GROUP_WORLD_SIZE": str(len(nodes)),
        "ROLE_WORLD_SIZE": str(len(slots)),
        "ROLE_NAME": "default",
        "MASTER_ADDR": slots[0].address,
        "MASTER_PORT": str(master_port),
        "TORCHELASTIC_RUN_ID": run_id,
        "TORCHELASTIC_RESTART_COUNT": str(attempt),
        "TORCHELASTIC_MAX_RESTARTS": str(max_failures),
        "TORCH_FR_BUFFER_SIZE": str(FLIGHT_RECORDER_ENTRIES),
    }
    variables = []
    for rank, slot in enumerate(slots):
        local = per_node[slot.node]
        own = {
            "RANK": str(rank),
            "ROLE_RANK": str(rank),
            "LOCAL_RANK": str(local.index(rank)),
            "LOCAL_WORLD_SIZE": str(len(local)),
            "GROUP_RANK": str(nodes.index(slot.node)),
        }
        if slot.gpus:
            own["CUDA_VISIBLE_DEVICES"] = ",".join(slots[r].gpus[0] for r in local)
        variables.append({**shared, **own})
    return variables


def launch_on_ray(config_path: Path, plan: RunPlan, launcher: LauncherConfig) -> None:
    """Run every rank of the run described by ``config_path`` on the launcher's Ray cluster,
    restarting them all up to ``launcher.max_failures`` times after a failure.

    Rank 0 prints to this console (through Ray); the others write ``stdout.log`` and
    ``stderr.log`` under ``<run_dir>/ranks/attempt_<n>/<rank>/``.

    Raises:
        ConfigError: the cluster cannot be reached, cannot hold the workers, or does not
            see the run directory from every node.
        RanksFailed: a rank failed, or its actor died, and no restart was left.
        RunStopped: every rank stopped on SIGTERM (not restarted), or Ctrl-C stopped the
            command (the ranks are stopped): with the last checkpoint and the command that
            resumes from it.
    """
    workers = run_workers(launcher, plan)
    run_dir = config_path.parent
    try:
        _attempts(config_path, launcher, workers)
    except KeyboardInterrupt:
        from lightning_accel.cli.runner import resume_note

        note = resume_note(run_dir)
        raise RunStopped(
            f"stopped on SIGINT; the ranks were stopped; {note}", SIGINT_EXIT_CODE
        ) from None


def _attempts(config_path: Path, launcher: LauncherConfig, workers: Workers) -> None:
    """Run the ranks, restarting them all after a failure while restarts are left."""
    run_dir = config_path.parent
    with connected(launcher):
        check_cluster(launcher, workers)
        for attempt in range(launcher.max_failures + 1):
            log_dir = run_dir / "ranks" / f"attempt_{attempt}"
            say(
                f"starting {workers.count} ranks as Ray workers at {launcher.address!r}"
                f" (attempt {attempt + 1} of {launcher.max_failures + 1}); logs in {log_dir}"
            )
            failures = _attempt(config_path, launcher, workers, attempt, log_dir)
            if not failures:
                return
            if all_stopped(failures.values()):
                raise ranks_stopped(log_dir)
            if attempt < launcher.max_failures:
                say(f"{_describe(failures)} failed; restarting every rank")
        raise ranks_failed(_describe(failures), run_dir, log_dir, workers.count)


def _describe(failures: dict[int, int | None]) -> str:
    """``rank 1 (exit code -9), ...``; a rank whose actor died has no exit code."""
    return ", ".join(
        f"rank {rank} " + ("(its Ray worker died)" if code is None else f"(exit code {code})")
        for rank, code in sorted(failures.items())
    )


def _attempt(
    config_path: Path, launcher: LauncherConfig, workers: Workers, attempt: int, log_dir: Path
) -> dict[int, int | None]:
    """One attempt: reserve the workers' resources, start an actor per rank and run the
    ranks; return the failed ranks' exit codes (None: the actor died), empty on success.
    Every actor and the reservation are gone when it returns."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundle = {"CPU": workers.cpus * workers.per_node, "GPU": workers.gpus * workers.per_node}
    strategy = "STRICT_SPREAD" if workers.nodes > 1 else "PACK"
    group = placement_group([bundle] * workers.nodes, strategy=strategy)
    actors: list[Any] = []
    try:
        if not group.wait(timeout_seconds=launcher.timeout_s):
            raise ConfigError(
                "launcher.timeout_s",
                launcher.timeout_s,
                f"passed before the Ray cluster at {launcher.address!r} freed {workers.count} "
                "workers' resources (other jobs hold them); wait for them or raise it",
            )
        host = ray.remote(max_concurrency=2)(RankHost)
        for rank in range(workers.count):
            where = PlacementGroupSchedulingStrategy(group, rank // workers.per_node)
            options = {"num_cpus": workers.cpus, "num_gpus": workers.gpus}
            actors.append(host.options(scheduling_strategy=where, **options).remote(rank))
        marker = config_path.parent / f".shared-{uuid.uuid4().hex[:8]}"
        marker.touch()
        try:
            slots = [Slot(*p) for p in ray.get([a.place.remote(str(marker)) for a in actors])]
        finally:
            marker.unlink()
        require_shared(launcher, config_path.parent, slots)
        port = ray.get(actors[0].free_port.remote())
        run_id = config_path.parent.name  # the same for every attempt, as torch elastic's
        variables = rank_variables(slots, port, run_id, attempt, launcher.max_failures)
        changes = rank_environment()
        running = {
            actor.run.remote(
                str(config_path),
                {**changes, **variables[rank]},
                None if rank == 0 else str(log_dir / str(rank)),
            ): rank
            for rank, actor in enumerate(actors)
        }
        return _wait(running)
    finally:
        _stop(actors)
        remove_placement_group(group)


def _wait(running: dict[Any, int]) -> dict[int, int | None]:
    """Wait for every rank to end; once one fails, wait at most
    :data:`FAILURE_GRACE_SECONDS` more for the others, and return every failure found."""
    import ray
    from ray.exceptions import RayActorError

    failures: dict[int, int | None] = {}
    deadline = None
    while running:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        done, _ = ray.wait(list(running), num_returns=1, timeout=timeout)
        if not done:
            break
        rank = running.pop(done[0])
        try:
            code = ray.get(done[0])
        except RayActorError:
            code = None
        if code != 0:
            failures[rank] = code
            deadline = deadline or time.monotonic() + FAILURE_GRACE_SECONDS
    return failures


def _stop(actors: list[Any]) -> None:
    """Stop every actor's rank (SIGTERM, then SIGKILL) and the actors themselves."""
    import ray
    from ray.exceptions import RayError

    try:
        ray.get([actor.stop.remote() for actor in actors])
    except RayError:
        pass  # a dead actor's rank died with it
    for actor in actors:
        ray.kill(actor)
