"""The structured config of a whole run, registered in Hydra's ConfigStore as ``run_schema``.

``conf/config.yaml`` lists ``run_schema`` first in its defaults, so every key and type a run
uses is checked against these dataclasses while Hydra composes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from lightning_accel.config import (
    HardwareConfig,
    OptimizationConfig,
    TrainerConfig,
    require_choice,
    require_not_negative,
    require_positive,
)
from lightning_accel.errors import ConfigError

LAUNCHERS = ("local", "torchrun", "slurm", "slurm_local", "ray")
# what a run does: the verbs train, validate, test and predict
STAGES = ("fit", "validate", "test", "predict")
RENDEZVOUS_BACKENDS = ("c10d", "static")
# where launcher=ray finds its cluster: the one on this machine, a new one, a Ray client address
RAY_ADDRESSES = ("auto", "local", "ray://HOST:PORT")


@dataclass
class LauncherConfig:
    """How the ranks of a run are started.

    ``local`` starts this machine's ranks with torch elastic (one node). ``torchrun`` runs
    torch elastic's agent for one node of ``nnodes``: every node runs the same command.
    ``slurm`` and ``slurm_local`` submit each job through Hydra's submitit launcher
    (``hydra.launcher.*``: partition, time, GPUs), one SLURM task per rank. ``ray`` starts
    one Ray actor per rank on a Ray cluster, each running the rank as torch elastic would.

    Attributes:
        name: The launcher (the ``launcher`` config group's option).
        nnodes: Nodes taking part, each running the same command; one number with
            ``hardware.num_nodes`` (setting either sets both).
        node_rank: This node's rank: required by the ``static`` rendezvous; with ``c10d`` it
            only says which node hosts the rendezvous store (node 0).
        rdzv_endpoint: ``host:port`` of node 0, reachable from every node.
        rdzv_backend: ``c10d`` (nodes join in any order) or ``static`` (fixed ``node_rank``).
        rdzv_timeout_s: Seconds to wait for the other nodes before failing.
        max_restarts: Restarts of every rank after a failure, each resuming from the last
            checkpoint (0: none).
        run_id: The same on every node: it names the rendezvous and the run directory.
        address: The Ray cluster (``launcher=ray``): ``auto`` (the one this machine belongs
            to), ``local`` (a new one on this machine, stopped at the end) or
            ``ray://HOST:PORT`` (its client server).
        num_workers: Ray workers, one per rank: null for ``launcher.nnodes`` x the ranks per
            node of the hardware profile, which a count must equal.
        cpus_per_worker: CPUs Ray reserves for each worker.
        gpus_per_worker: GPUs Ray gives each worker: null for 1 under a CUDA hardware
            profile, 0 otherwise.
        max_failures: Restarts of every Ray worker after one fails, each resuming from the
            last checkpoint (0: none).
        storage_path: The directory run directories are written under (``runs/``,
            ``multirun/``) with ``launcher=ray``; on a cluster of several nodes, storage
            every node mounts at the same path.
        timeout_s: Seconds to wait for the Ray cluster to answer and to free the workers'
            resources.
    """

    name: str = "local"
    nnodes: int = 1
    node_rank: int | None = None
    rdzv_endpoint: str = "127.0.0.1:29400"
    rdzv_backend: str = "c10d"
    rdzv_timeout_s: float = 300.0
    max_restarts: int = 0
    run_id: str = MISSING
    address: str = "auto"
    num_workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None
    max_failures: int = 0
    storage_path: str = "."
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        require_choice("launcher.name", self.name, LAUNCHERS)
        require_choice("launcher.rdzv_backend", self.rdzv_backend, RENDEZVOUS_BACKENDS)
        require_positive("launcher.nnodes", self.nnodes)
        require_positive("launcher.rdzv_timeout_s", self.rdzv_timeout_s)
        for key in ("max_restarts", "max_failures"):
            if getattr(self, key) < 0:
                raise ConfigError(f"launcher.{key}", getattr(self, key), "must be 0 or more")
        if self.num_workers is not None:
            require_positive("launcher.num_workers", self.num_workers)
        require_positive("launcher.cpus_per_worker", self.cpus_per_worker)
        if self.gpus_per_worker is not None:
            require_not_negative("launcher.gpus_per_worker", self.gpus_per_worker)
        require_positive("launcher.timeout_s", self.timeout_s)
        if self.address not in RAY_ADDRESSES[:2] and ray_client_endpoint(self.address) is None:
            raise ConfigError(
                "launcher.address", self.address, "is not a Ray cluster address", RAY_ADDRESSES
            )
        if self.node_rank is not None and not 0 <= self.node_rank < self.nnodes:
            raise ConfigError(
                "launcher.node_rank",
                self.node_rank,
                f"is not a node of launcher.nnodes={self.nnodes}",
                list(range(self.nnodes)),
            )
        if self.rdzv_backend == "static" and self.node_rank is None and self.nnodes > 1:
            raise ConfigError(
                "launcher.node_rank", None, "must be set for launcher.rdzv_backend='static'"
            )
        host, _, port = self.rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                "launcher.rdzv_endpoint", self.rdzv_endpoint, "is not HOST:PORT (e.g. node0:29400)"
            )
        if self.run_id != MISSING and not RUN_ID.fullmatch(str(self.run_id)):
            # it names a directory (the run's, torch elastic's logs) and the rendezvous
            raise ConfigError(
                "launcher.run_id",
                self.run_id,
                "must be one name of letters, digits, '.', '_' or '-', starting with a letter or "
                "digit (no '/' or spaces)",
            )


def ray_client_endpoint(address: str) -> tuple[str, int] | None:
    """The host and port of a ``ray://HOST:PORT`` address; None for any other string."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not address.startswith("ray://") or not host or not port.isdigit():
        return None
    return (host, int(port)) if 0 < int(port) < 65536 else None


RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# the largest seed every generator Lightning seeds (numpy's among them) takes
MAX_SEED = 2**32 - 1


@dataclass
class RunConfig:
    """One run: three profiles (hardware, optimization, trainer), what to train (``model``
    and ``data``, each a ``_target_`` node), logging, callbacks and where outputs go.

    Attributes:
        recipe: Name of the preset that filled ``model`` and ``data``.
        stage: What the run does: ``fit``; the verbs ``validate``, ``test`` and ``predict``
            set it.
        seed: Seeds every random number generator of the run (and of its DataLoader
            workers).
        run_dir: Where the run writes its outputs: Hydra's output directory unless
            overridden.
        ckpt_path: A Lightning checkpoint to resume from; without it, a run whose directory
            already holds a complete ``checkpoints/last.ckpt`` resumes from that.
        force: Start even when the plan predicts the run will not fit in memory.
        objective: The validation metric whose last value is the job's result, which a
            hyper-parameter search optimizes.
        launcher: How the ranks are started.
        hardware: Where the run executes.
        optimization: How fast and how lean the run computes.
        trainer: The ``lightning.Trainer`` arguments the profiles do not set.
        model: The LightningModule: a ``_target_`` node (its class and arguments).
        data: The DataModule: a ``_target_`` node.
        logger: Metrics loggers, ``_target_`` nodes by name (``logger=[csv,mlflow]``
            selects two); null for none.
        callbacks: ``_target_`` nodes by name, or lists of them such as
            ``callbacks.extra``; a null entry switches one off.
    """

    recipe: str = "custom"
    stage: str = "fit"
    seed: int = 0
    run_dir: str = "${hydra:runtime.output_dir}"
    ckpt_path: str | None = None
    force: bool = False
    objective: str = "val/loss"
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    logger: dict[str, Any] | None = None
    callbacks: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require_choice("stage", self.stage, STAGES)
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError("seed", self.seed, f"must be from 0 to {MAX_SEED} (numpy's range)")
        nodes, hardware_nodes = self.launcher.nnodes, self.hardware.num_nodes
        if nodes != hardware_nodes and 1 not in (nodes, hardware_nodes):
            raise ConfigError(
                "launcher.nnodes",
                nodes,
                f"disagrees with hardware.num_nodes={hardware_nodes}; set one of them",
            )
        self.launcher.nnodes = self.hardware.num_nodes = max(nodes, hardware_nodes)
        if self.trainer.profiler == "xla" and self.hardware.accelerator != "pjrt":
            raise ConfigError(
                "trainer.profiler",
                "xla",
                "profiles XLA devices only (hardware=tpu, tpu_spmd, xla_cpu, ...); use "
                "simple, advanced or pytorch",
            )

    def logger_nodes(self) -> dict[str, dict[str, Any]]:
        """Each logger's ``_target_`` node by its key (``logger.csv``); switched-off (null)
        ones left out."""
        return {f"logger.{name}": node for name, node in (self.logger or {}).items() if node}

    def callback_nodes(self) -> dict[str, dict[str, Any]]:
        """Each callback's ``_target_`` node by its key (``callbacks.extra[0]`` for the
        entries of a list such as ``callbacks.extra``); switched-off (null) ones left out."""
        nodes: dict[str, dict[str, Any]] = {}
        for name, node in self.callbacks.items():
            if isinstance(node, list):
                listed = enumerate(node)
                nodes.update({f"callbacks.{name}[{i}]": item for i, item in listed if item})
            elif node:
                nodes[f"callbacks.{name}"] = node
        return nodes

    def callback_nodes_of(self, base: type) -> dict[str, dict[str, Any]]:
        """The callback nodes (as :meth:`callback_nodes`) whose ``_target_`` is ``base`` or
        a subclass of it (importing each target's module)."""
        from lightning_accel.cli.hydra_private import locate

        found = {}
        for key, node in self.callback_nodes().items():
            target = node.get("_target_")
            cls = locate(target) if isinstance(target, str) else None
            if isinstance(cls, type) and issubclass(cls, base):
                found[key] = node
        return found


def register_schemas() -> None:
    """Register :class:`RunConfig` with Hydra, the ``accel_run_id`` resolver the default
    run directory uses and ``accel_wandb_offline`` (``logger=wandb``) (idempotent)."""
    from lightning_accel.cli.cluster import default_run_id
    from lightning_accel.cli.trackers import wandb_offline

    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    if not OmegaConf.has_resolver("accel_run_id"):
        OmegaConf.register_new_resolver("accel_run_id", default_run_id, use_cache=True)
    if not OmegaConf.has_resolver("accel_wandb_offline"):
        OmegaConf.register_new_resolver("accel_wandb_offline", wandb_offline, use_cache=True)
