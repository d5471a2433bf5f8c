"""What the experiment-tracker presets (``logger=mlflow``, ``logger=wandb``) decide before
launch, and the resolved config they record as a run's parameters."""

from __future__ import annotations

import netrc
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import OmegaConf


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
