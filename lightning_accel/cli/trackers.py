"""What the experiment-tracker presets (``logger=mlflow``, ``logger=wandb``) decide before
launch, the resolved config they record as a run's parameters, and the tracker runs a
resumed run goes on logging into."""

from __future__ import annotations

import hashlib
import json
import netrc
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from omegaconf import OmegaConf

from lightning_accel.files import write_text_whole

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger


def wandb_offline() -> bool:
    """Whether W&B runs offline: yes unless ``WANDB_MODE`` says how to run (W&B follows it)
    or an API key is configured (``WANDB_API_KEY``, or ``wandb login``'s entry in
    ``~/.netrc`` for ``WANDB_BASE_URL``'s host)."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return False
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host or "") is None
    except (FileNotFoundError, netrc.NetrcParseError):
        return True


def config_parameters(run: Any) -> dict[str, Any]:
    """The run's resolved config as a loggers' hyper-parameters (nested; each logger
    flattens it its own way, MLflow as ``hardware/strategy``)."""
    return OmegaConf.to_container(OmegaConf.structured(run), resolve=True)


def finish_wandb_run() -> str | None:
    """Close this process's W&B run, if it has one; returns where its files are and, when
    offline, how to upload them."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None)
    if wandb is None or run is None:
        return None
    directory = Path(run.dir).parent  # run.dir is the run's files/ folder
    offline = run.offline
    wandb.finish()
    upload = f"; upload it with: wandb sync {directory}" if offline else ""
    return f"W&B run in {directory}{upload}"


# the experiment-tracker runs a run directory's attempts log into, beside its checkpoints
TRACKER_RUNS = "trackers.json"


def _config_digest(parameters: dict[str, Any]) -> str:
    """A digest of the run's parameters, ``launcher.run_id`` among them: MLflow refuses a
    logged parameter's new value, and an attempt given only ``hydra.run.dir`` draws a new
    run id from the time."""
    text = json.dumps(parameters, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def continued_tracker_runs(
    run_dir: Path, nodes: dict[str, dict[str, Any]], parameters: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The logger ``nodes`` of an attempt resuming in ``run_dir``, each MLflow and W&B one
    given the tracker run its earlier attempts logged into (``run_id``, ``id``), where those
    ran the same config (a restart, a requeue, ``launcher.run_id`` given again): a changed
    one (a raised ``max_steps``) starts new tracker runs."""
    path = run_dir / TRACKER_RUNS
    try:
        recorded = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        recorded = {}
    if not isinstance(recorded, dict) or recorded.get("config") != _config_digest(parameters):
        return nodes
    runs = recorded.get("runs")
    if not isinstance(runs, dict):
        return nodes
    continued = dict(nodes)
    for key, node in nodes.items():
        ids = runs.get(key)
        if not isinstance(ids, dict) or not all(isinstance(v, str) for v in ids.values()):
            continue
        run_id = ids.get("run_id")
        if run_id is not None and not _mlflow_run_exists(node.get("tracking_uri"), run_id):
            continue  # its store was deleted or moved: a new run (W&B creates a missing one)
        continued[key] = {**node, **{k: v for k, v in ids.items() if k in _RUN_ID_KEYS}}
    return continued


def _mlflow_run_exists(tracking_uri: Any, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=tracking_uri if isinstance(tracking_uri, str) else None).get_run(
            run_id
        )
    except MlflowException:
        return False
    return True


# what names a tracker's run among a logger's arguments
_RUN_ID_KEYS = ("run_id", "id")


def record_tracker_runs(
    run_dir: Path, loggers: dict[str, Logger], parameters: dict[str, Any]
) -> None:
    """Write which MLflow and W&B runs ``loggers`` (by their config keys) log into, for a
    later attempt in ``run_dir`` to continue them (rank 0, once their runs exist)."""
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    runs: dict[str, dict[str, str]] = {}
    for key, logger in loggers.items():
        if isinstance(logger, MLFlowLogger) and logger.run_id:
            runs[key] = {"run_id": logger.run_id}
        elif isinstance(logger, WandbLogger) and logger.version:
            runs[key] = {"id": str(logger.version)}
    if runs:
        record = {"config": _config_digest(parameters), "runs": runs}
        write_text_whole(run_dir / TRACKER_RUNS, json.dumps(record, indent=2) + "\n")
