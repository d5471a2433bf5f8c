"""Checking checkpoints before a run uses them, and turning sharded ones into one file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lightning_accel.errors import ConfigError

SHARDED_META = "meta.pt"  # Lightning's loop and callback state beside the shards
DCP_METADATA = ".metadata"  # torch.distributed.checkpoint's index of the shards


def verify_checkpoint(path: Path, key: str = "ckpt_path") -> None:
    """Fail with a clear sentence unless ``path`` is a complete checkpoint.

    A file must exist; a sharded directory must hold its metadata, its loop state and
    every shard the metadata names, each long enough for the data it should hold. Nothing
    is loaded partially.
    """
    if path.is_file():
        return
    if not path.is_dir():
        raise ConfigError(
            key, str(path), "is not a checkpoint file or sharded checkpoint directory"
        )
    for required in (SHARDED_META, DCP_METADATA):
        if not (path / required).is_file():
            raise ConfigError(
                key, str(path), f"is not a complete sharded checkpoint: {required} is missing"
            )
    try:
        metadata = _read_metadata(path)
    except Exception as error:  # noqa: BLE001 - any failure to parse means a corrupt index
        raise ConfigError(key, str(path), f"has an unreadable {DCP_METADATA} ({error})") from error
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        needed[info.relative_path] = max(
            needed.get(info.relative_path, 0), info.offset + info.length
        )
    for name, size in sorted(needed.items()):
        shard = path / name
        if not shard.is_file():
            raise ConfigError(key, str(path), f"is incomplete: shard {name} is missing")
        if shard.stat().st_size < size:
            raise ConfigError(
                key,
                str(path),
                f"is corrupt: shard {name} holds {shard.stat().st_size} of {size} bytes",
            )


def _read_metadata(path: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemReader

    return FileSystemReader(str(path)).read_metadata()


def sharded_metadata(path: Path) -> dict[str, Any]:
    """What a sharded checkpoint holds: each saved value's flattened name (``state_dict.<key>``,
    ``optimizer_<i>.state.<parameter>.<key>``, ...) and its size and dtype."""
    return dict(_read_metadata(path).state_dict_metadata)


def optimizer_by_index(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state keyed by parameter name (torch.distributed.checkpoint's layout)
    re-keyed by parameter position, the layout ``Optimizer.load_state_dict`` takes."""
    index: dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        names = group["params"]
        for name in names:
            index.setdefault(name, len(index))
        groups.append({**group, "params": [index[name] for name in names]})
    return {
        "state": {index[name]: value for name, value in state["state"].items() if name in index},
        "param_groups": groups,
    }


def consolidate_checkpoint(sharded: Path, output: Path) -> Path:
    """Write a sharded checkpoint as one ordinary Lightning checkpoint file.

    The result loads with ``torch.load`` without any process group and resumes with
    ``Trainer.fit(ckpt_path=...)`` on any single-process strategy. It is written to a
    temporary file first and renamed, so ``output`` is never half-written.
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    verify_checkpoint(sharded)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        dcp_to_torch_save(str(sharded), str(staging))
        flat = torch.load(staging, map_location="cpu", weights_only=False)
        checkpoint = torch.load(sharded / SHARDED_META, map_location="cpu", weights_only=False)
        checkpoint["state_dict"] = flat["state_dict"]
        optimizers = sorted(k for k in flat if k.startswith("optimizer_"))
        checkpoint["optimizer_states"] = [optimizer_by_index(flat[k]) for k in optimizers]
        torch.save(checkpoint, staging)
        staging.replace(output)
    finally:
        staging.unlink(missing_ok=True)
    return output
