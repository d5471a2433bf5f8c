"""The command that goes on with a stopped ``--multirun`` sweep as a whole."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from lightning_accel.cli.compose import path_override
from lightning_accel.cli.hydra_private import BASIC_SWEEPER

# Hydra's record of a sweep, in its sweep directory
SWEEP_RECORD = "multirun.yaml"
# how far above a job's directory its sweep's record is looked for (hydra.sweep.subdir
# may nest the jobs' directories)
SWEEP_DEPTH = 3


def sweep_resume_command(run_dir: Path) -> str | None:
    """For a job of a sweep through Hydra's basic sweeper, the command that goes on with the
    whole sweep in its directory: finished jobs say so and are kept, the stopped one
    resumes from its checkpoint, and the jobs after it run. None for a run of its own, and
    for a search, whose sampler would not give its trials again."""
    for sweep_dir in list(run_dir.resolve().parents)[:SWEEP_DEPTH]:
        record = sweep_dir / SWEEP_RECORD
        if record.is_file():
            break
    else:
        return None
    hydra = (yaml.safe_load(record.read_text()) or {}).get("hydra", {})
    if hydra.get("sweeper", {}).get("_target_") != BASIC_SWEEPER:
        return None
    overrides = hydra.get("overrides", {})
    own = ("hydra.mode=", "hydra.sweep.dir=")  # the command sets them itself
    kept = [o for o in overrides.get("hydra", []) if not o.startswith(own)]
    command = ["lightning-accel", "train", "--multirun", *overrides.get("task", []), *kept]
    return shlex.join([*command, path_override("hydra.sweep.dir", sweep_dir)])
