"""The Ray cluster of a ``launcher=ray`` job: reaching it and checking that it can hold
the run (Ray installed, the address answering, CPUs and GPUs for every worker). Every
problem is a :class:`ConfigError` naming the key and what would work.

The command's preflight checks what it can without starting Ray (the package, a ``ray://``
endpoint answering, this machine's CPUs and GPUs for ``address=local``); each job of the
command connects (one Ray job per job) and checks the cluster it found before any rank
starts.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lightning_accel.cli.schema import LauncherConfig, ray_client_endpoint
from lightning_accel.errors import ConfigError

if TYPE_CHECKING:
    from lightning_accel.plan.run import RunPlan

INSTALL_HINT = "pip install 'lightning-accel[ray]'"


@dataclass(frozen=True)
class Workers:
    """The Ray workers a run needs: how many, on how many nodes, and what each holds."""

    count: int
    nodes: int
    cpus: float
    gpus: float

    @property
    def per_node(self) -> int:
        """Workers (ranks) on each node."""
        return self.count // self.nodes


def run_workers(launcher: LauncherConfig, plan: RunPlan) -> Workers:
    """The workers of a run planned as ``plan``: one per rank, each with the configured
    CPUs and GPUs (one GPU per rank under a CUDA profile unless configured)."""
    world = launcher.nnodes * plan.processes
    if launcher.num_workers is not None and launcher.num_workers != world:
        raise ConfigError(
            "launcher.num_workers",
            launcher.num_workers,
            f"disagrees with launcher.nnodes x hardware.devices = {launcher.nnodes} x "
            f"{plan.processes} = {world} ranks, one Ray worker each; set it to {world} or null, "
            "or change hardware.devices (ranks per node)",
        )
    gpus = launcher.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if plan.accelerator == "cuda" else 0.0
    return Workers(world, launcher.nnodes, launcher.cpus_per_worker, gpus)


def require_ray() -> None:
    """Fail unless the ``ray`` package can be imported."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError(
            "launcher",
            "ray",
            f"needs the ray package, which is not installed; {INSTALL_HINT}, or use "
            "launcher=local or launcher=torchrun",
        ) from None


def check_before_start(launcher: LauncherConfig, plan: RunPlan) -> None:
    """The preflight's checks of ``launcher=ray``, starting nothing: Ray installed, the
    workers' count, a ``ray://`` endpoint answering within ``timeout_s``, and for
    ``address=local`` this machine's CPUs and GPUs."""
    from lightning_accel.machine import cuda_device_count, usable_cores

    require_ray()
    workers = run_workers(launcher, plan)
    endpoint = ray_client_endpoint(launcher.address)
    if endpoint is not None:
        _check_answers(launcher, endpoint)
    if launcher.address == "local":
        nodes = [{"CPU": float(usable_cores()), "GPU": float(cuda_device_count())}]
        check_resources(launcher, workers, nodes)


def _check_answers(launcher: LauncherConfig, endpoint: tuple[str, int]) -> None:
    """Fail unless a TCP connection to the client server opens within ``timeout_s``."""
    try:
        socket.create_connection(endpoint, timeout=launcher.timeout_s).close()
    except OSError as error:
        raise ConfigError(
            "launcher.address",
            launcher.address,
            f"did not answer within launcher.timeout_s={launcher.timeout_s:g} "
            f"({error.strerror or type(error).__name__}); check the head's host and its Ray "
            "client port (10001 unless changed), or use launcher.address=local to start Ray "
            "on this machine",
        ) from None


def check_resources(
    launcher: LauncherConfig, workers: Workers, nodes: list[dict[str, float]]
) -> None:
    """Fail unless ``workers.nodes`` of the cluster's ``nodes`` (each its total resources)
    can each hold ``workers.per_node`` workers."""
    need = {"CPU": workers.cpus * workers.per_node, "GPU": workers.gpus * workers.per_node}
    fitting = [n for n in nodes if all(n.get(k, 0.0) >= v for k, v in need.items())]
    if len(fitting) >= workers.nodes:
        return
    kind, key = ("GPU", "gpus_per_worker") if need["GPU"] > 0 else ("CPU", "cpus_per_worker")
    for other in ("CPU", "GPU"):  # name the resource that is short
        if need[other] > 0 and not any(n.get(other, 0.0) >= need[other] for n in nodes):
            kind, key = other, f"{other.lower()}s_per_worker"
    most = max((n.get(kind, 0.0) for n in nodes), default=0.0)
    where = f"the Ray cluster at {launcher.address!r}"
    if workers.nodes > 1:
        problem = (
            f"x {workers.per_node} workers per node needs {need[kind]:g} {kind}s on each of "
            f"{workers.nodes} nodes, and {where} has {len(fitting)} such nodes (at most "
            f"{most:g} {kind}s on one)"
        )
    else:
        problem = (
            f"x {workers.count} workers needs {need[kind]:g} {kind}s on one node, and the "
            f"largest node of {where} has {most:g}"
        )
    hint = f"; lower launcher.{key} or hardware.devices (ranks per node)"
    raise ConfigError(f"launcher.{key}", getattr(workers, kind.lower() + "s"), problem + hint)


# Ray's module that tells, on ray.init, how the cluster it starts authenticates
RAY_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"


class _TokenAuthNotice(logging.Filter):
    """Drops Ray's notice that a cluster it starts has token authentication on (its safe
    default, said on every command); its warning that authentication is off still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


def quiet_token_auth_notice() -> None:
    """Filter Ray's token authentication notice (once per process)."""
    logger = logging.getLogger(RAY_TOKEN_LOGGER)
    if not any(isinstance(f, _TokenAuthNotice) for f in logger.filters):
        logger.addFilter(_TokenAuthNotice())


@contextmanager
def connected(launcher: LauncherConfig) -> Iterator[None]:
    """This process connected to the launcher's Ray cluster (a Ray job) while inside; a
    ``local`` cluster is started with this machine's CPUs and GPUs, without its dashboard,
    and stopped at the end. Only workers that print themselves reach this console."""
    import ray

    from lightning_accel.machine import cuda_device_count, usable_cores

    options: dict = {"log_to_driver": True, "logging_level": logging.WARNING}
    quiet_token_auth_notice()
    if not sys.stdout.isatty():  # Ray colours the prefix of forwarded lines, even in a file
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if launcher.address == "local":
        options.update(num_cpus=usable_cores(), num_gpus=cuda_device_count())
        options.update(include_dashboard=False)
    try:
        ray.init(address=launcher.address, **options)
    except (ConnectionError, TimeoutError, RuntimeError) as error:
        raise ConfigError(
            "launcher.address",
            launcher.address,
            f"could not be connected to ({str(error).split('. ')[0]}); start a cluster with "
            "`ray start --head` and use auto, give its ray://HOST:10001, or use "
            "launcher.address=local",
        ) from None
    try:
        yield
    finally:
        ray.shutdown()


def check_cluster(launcher: LauncherConfig, workers: Workers) -> None:
    """Fail unless the connected cluster's live nodes can hold the workers."""
    import ray

    alive = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    check_resources(launcher, workers, alive)
