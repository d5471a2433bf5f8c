"""Checking checkpoints before a run uses them, and turning sharded ones into one file."""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch.distributed.tensor import DTensor
from typing_extensions import override

from lightning_accel.config import TrainerConfig, duration_seconds
from lightning_accel.errors import ConfigError
from lightning_accel.files import check_room, replaced_whole, room_checked
from lightning_accel.safe_load import (
    DCP_METADATA,
    UnsafeCheckpointError,
    check_data_file,
    load_data_file,
    read_dcp_metadata,
    unsafe_checkpoint_error,
)

SHARDED_META = "meta.pt"  # Lightning's loop and callback state beside the shards
RUN_CHECKPOINTS = "checkpoints"  # a run directory's checkpoints (conf/callbacks/default.yaml)


def verify_checkpoint(path: Path, key: str = "ckpt_path") -> None:
    """Fail with a clear sentence unless ``path`` is a complete checkpoint that is data only.

    A file must exist and load with ``weights_only=True`` (its tensors are mapped, not
    read); a sharded directory must hold its index (checked with an allow-list before torch
    unpickles it), its loop state (loaded as data) and every shard the index names, each
    long enough for the data it should hold. Nothing is loaded partially.
    """
    if path.is_file():
        check_data_file(path, key)
        return
    if not path.is_dir():
        raise ConfigError(
            key, str(path), "is not a checkpoint file or sharded checkpoint directory"
        )
    held = sorted(entry.name for entry in path.glob("*.ckpt"))
    if held and not (path / SHARDED_META).exists():  # such as a run's checkpoints/
        example = path / ("last.ckpt" if "last.ckpt" in held else held[-1])
        raise ConfigError(
            key, str(path), f"is a directory of checkpoints; give one of them, such as {example}"
        )
    for required in (SHARDED_META, DCP_METADATA):
        if not (path / required).is_file():
            raise ConfigError(
                key, str(path), f"is not a complete sharded checkpoint: {required} is missing"
            )
    metadata = read_dcp_metadata(path, key)
    check_data_file(path / SHARDED_META, key)
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


def is_sharded(path: Path) -> bool:
    """Whether ``path`` is a sharded checkpoint directory (torch.distributed.checkpoint's)."""
    return path.is_dir() and (path / DCP_METADATA).is_file()


def sharded_metadata(path: Path) -> dict[str, Any]:
    """What a sharded checkpoint holds: each saved value's flattened name (``state_dict.<key>``,
    ``optimizer_<i>.state.<parameter>.<key>``, ...) and its size and dtype."""
    return dict(read_dcp_metadata(path).state_dict_metadata)


def saved_model_shapes(path: Path, key: str = "ckpt_path") -> dict[str, tuple[int, ...]]:
    """The shape of each tensor of the model state a checkpoint holds, by ``state_dict``
    key, read from a sharded checkpoint's index or a mapped file (no tensor is read)."""
    if is_sharded(path):
        prefix = "state_dict."
        return {
            name.removeprefix(prefix): tuple(entry.size)
            for name, entry in sharded_metadata(path).items()
            if name.startswith(prefix) and hasattr(entry, "size")
        }
    state = load_data_file(path, key, mmap=True).get("state_dict") or {}
    return {name: tuple(t.shape) for name, t in state.items() if isinstance(t, torch.Tensor)}


def saved_hyper_parameters(path: Path, key: str = "ckpt_path") -> dict[str, Any]:
    """The model's hyper-parameters a checkpoint holds (what ``save_hyperparameters``
    recorded; empty for a model that recorded none)."""
    source = path / SHARDED_META if is_sharded(path) else path
    saved = load_data_file(source, key, mmap=True).get("hyper_parameters")
    return dict(saved) if isinstance(saved, dict) else {}


@dataclass(frozen=True)
class SavedProgress:
    """How far a run had trained when a checkpoint was saved, in each of the units a
    ``Trainer`` limit counts: optimizer steps (``max_steps``), epochs whose batches all ran
    (``max_epochs``, as Lightning's fit loop counts them) and seconds of training counted by
    Lightning's ``Timer`` (``max_time``; 0 for a run without a time limit), the callbacks'
    states (what early stopping had decided), and the batches of an unfinished epoch
    trained from a loader that kept no position in the checkpoint (0 where the epoch had
    not begun or the loader kept one: a resumed epoch then reads its batches again)."""

    step: int
    epochs: int
    training_seconds: float
    callback_states: dict[str, Any]
    batches_without_position: int = 0


def saved_progress(path: Path, key: str = "ckpt_path") -> SavedProgress:
    """The :class:`SavedProgress` of a checkpoint file or sharded directory."""
    source = path / SHARDED_META if is_sharded(path) else path
    saved = load_data_file(source, key, mmap=True)
    loop = saved.get("loops", {}).get("fit_loop", {})
    epochs = int(loop.get("epoch_progress", {}).get("current", {}).get("processed", 0))
    if saved_at_epoch_end(loop) and not loop["epoch_loop.batch_progress"]["is_last_batch"]:
        epochs -= 1  # a limit ended it before its batches ran out: resumed, it goes on
    callback_states = saved.get("callbacks") or {}
    elapsed = (callback_states.get("Timer") or {}).get("time_elapsed") or {}
    seconds = float(elapsed.get("train", 0.0))
    step = int(saved.get("global_step", 0))
    lost = _batches_without_position(loop)
    return SavedProgress(step, epochs, seconds, callback_states, lost)


def _batches_without_position(fit_loop: dict[str, Any]) -> int:
    """The batches of the checkpoint's unfinished epoch where its training loader kept no
    position (Lightning saves a stateful loader's under ``combined_loader``)."""
    batches = fit_loop.get("epoch_loop.batch_progress") or {}
    done = int((batches.get("current") or {}).get("processed", 0))
    if done == 0 or saved_between_epochs(fit_loop):
        return 0
    return 0 if "combined_loader" in (fit_loop.get("state_dict") or {}) else done


def saved_at_epoch_end(fit_loop: dict[str, Any]) -> bool:
    """Whether a checkpoint's fit-loop state was saved in ``on_train_epoch_end``, where
    Lightning's ModelCheckpoint saves when validation runs once an epoch or not at all:
    the epoch counted processed but not yet completed, after a whole batch. Private
    Lightning API: the loop's progress counters (pinned by the resume parity tests)."""
    epochs = (fit_loop.get("epoch_progress") or {}).get("current") or {}
    batches = (fit_loop.get("epoch_loop.batch_progress") or {}).get("current") or {}
    if not epochs or not batches:
        return False
    epoch_counts = (epochs["ready"], epochs["started"], epochs["processed"])
    batch_counts = (batches["ready"], batches["started"], batches["processed"])
    return (
        set(epoch_counts) == {epochs["completed"] + 1}
        and set(batch_counts) == {batches["completed"]}
        and batches["completed"] > 0
    )


def saved_between_epochs(fit_loop: dict[str, Any]) -> bool:
    """Whether a checkpoint's fit-loop state was saved after its epoch's last batch (at
    that batch's end, or in ``on_train_epoch_end``): what resumes next is a new epoch, whose
    loader iterator has not started."""
    batches = fit_loop.get("epoch_loop.batch_progress") or {}
    return bool(batches.get("is_last_batch")) or saved_at_epoch_end(fit_loop)


@dataclass(frozen=True)
class ReachedLimit:
    """A ``Trainer`` limit that a checkpoint's run has reached: resumed from it, the fit
    loop stops before a step (Lightning restores the steps, epochs and training time).

    Attributes:
        key: the config key (``trainer.max_steps``).
        value: the limit as given.
        shown: the limit as a message names it (``trainer.max_steps=500``).
        progress: how far the checkpoint's run had trained (``step 500``).
    """

    key: str
    value: Any
    shown: str
    progress: str


def reached_limit(saved: SavedProgress, limits: TrainerConfig) -> ReachedLimit | None:
    """The first of ``max_steps``, ``max_epochs`` and ``max_time`` that ``saved`` reaches,
    compared as Lightning's fit loop compares them; None where steps are left to train."""
    if 0 < limits.max_steps <= saved.step:
        shown = f"trainer.max_steps={limits.max_steps}"
        return ReachedLimit("trainer.max_steps", limits.max_steps, shown, f"step {saved.step}")
    if limits.max_epochs is not None and 0 <= limits.max_epochs <= saved.epochs:
        shown = f"trainer.max_epochs={limits.max_epochs}"
        progress = f"{saved.epochs} epochs"
        return ReachedLimit("trainer.max_epochs", limits.max_epochs, shown, progress)
    seconds = duration_seconds(limits.max_time)
    if 0 < seconds <= saved.training_seconds:
        shown = f"trainer.max_time ({seconds:.0f} s)"
        progress = f"{saved.training_seconds:.0f} s of training"
        return ReachedLimit("trainer.max_time", limits.max_time, shown, progress)
    return None


def saved_step(path: Path, key: str = "ckpt_path") -> int:
    """The optimizer step a checkpoint (a file, or a sharded directory's loop state) was
    saved at: Lightning's ``global_step``."""
    return saved_progress(path, key).step


SAME_MODEL_REMEDY = "give the model.* settings of the run that wrote it"


def check_same_model(
    path: Path,
    expected: dict[str, tuple[int, ...]],
    strict: bool = True,
    key: str = "ckpt_path",
    remedy: Callable[[], str] = lambda: SAME_MODEL_REMEDY,
) -> None:
    """Fail with a sentence (ending in what ``remedy`` returns, asked only then) unless the
    checkpoint at ``path`` holds the model state of a model with these tensor shapes
    (``expected``: ``state_dict`` key -> shape); with ``strict`` (Lightning's
    ``strict_loading``) the keys must match too."""
    saved = saved_model_shapes(path, key)
    for name, shape in expected.items():
        if name in saved and saved[name] != shape:
            raise ConfigError(
                key,
                str(path),
                f"was saved from a different model: {name} is {list(saved[name])} there and "
                f"{list(shape)} in this run's model; {remedy()}",
            )
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if strict and (missing or unexpected):
        shown = ", ".join(
            [f"{name} is not in the checkpoint" for name in missing[:2]]
            + [f"{name} is not in this run's model" for name in unexpected[:2]]
        )
        raise ConfigError(
            key,
            str(path),
            f"was saved from a different model ({shown}); {remedy()}",
        )


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
    # a stateless optimizer (SGD without momentum) leaves no "state" among the shards
    saved = state.get("state", {})
    return {
        "state": {index[name]: value for name, value in saved.items() if name in index},
        "param_groups": groups,
    }


def optimizer_by_name(
    state: dict[str, Any], optimizer: Any, names: dict[int, str]
) -> dict[str, Any]:
    """An optimizer's ``state_dict`` keyed by parameter name instead of position (the
    layout of torch.distributed.checkpoint's optimizer states), with host learning rates."""
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    groups = []
    for group in state["param_groups"]:
        values = {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in group.items()}
        groups.append({**values, "params": [order[i] for i in group["params"]]})
    return {
        "state": {order[i]: value for i, value in state["state"].items()},
        "param_groups": groups,
    }


def local_bytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint as this process holds them: of a
    DTensor, its local shard. What a save of it writes, less a little metadata."""

    if isinstance(state, DTensor):
        state = state.to_local()
    if isinstance(state, torch.Tensor):
        return state.nelement() * state.element_size()
    if isinstance(state, dict):
        return sum(local_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(local_bytes(value) for value in state)
    return 0


def sharded_entries(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The parts of a Lightning ``checkpoint`` saved as shards, taken out of it: the model's
    state (``state_dict``) and each optimizer's (``optimizer_<i>``), the layout of
    Lightning's ModelParallelStrategy; what is left is saved whole beside them."""
    shards = {"state_dict": checkpoint.pop("state_dict")}
    optimizers = checkpoint.pop("optimizer_states", [])
    shards.update({f"optimizer_{index}": state for index, state in enumerate(optimizers)})
    return shards


def consolidate_checkpoint(sharded: Path, output: Path) -> Path:
    """Write a sharded checkpoint as one ordinary Lightning checkpoint file.

    The result loads with ``torch.load`` without any process group and resumes with
    ``Trainer.fit(ckpt_path=...)`` on any single-process strategy. It is written to a
    temporary file first and renamed, so ``output`` is never half-written.
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    verify_checkpoint(sharded, "SHARDED")
    if sharded.is_file():
        raise ConfigError(
            "SHARDED",
            str(sharded),
            "is one checkpoint file already; it loads and resumes without consolidating",
        )
    check_room(output, sum(shard.stat().st_size for shard in sharded.glob("*.distcp")))
    with replaced_whole(output) as staging:
        dcp_to_torch_save(str(sharded), str(staging))
        flat = load_data_file(staging, "OUT")
        checkpoint = load_data_file(sharded / SHARDED_META, "SHARDED")
        checkpoint["state_dict"] = flat["state_dict"]
        optimizers = sorted(k for k in flat if k.startswith("optimizer_"))
        checkpoint["optimizer_states"] = [optimizer_by_index(flat[k]) for k in optimizers]
        torch.save(checkpoint, staging)
    return output


def furthest_checkpoint(directory: Path) -> Path | None:
    """The complete checkpoint in ``directory`` saved at the latest step (files and sharded
    directories named ``*.ckpt``), or None; a checkpoint that would run code when loaded is
    refused (:class:`ConfigError`), as in :func:`last_checkpoint`."""
    if not directory.is_dir():
        return None
    names = {p.name for p in directory.glob("*.ckpt") if not p.name.startswith(".")}
    # a sharded one a kill left aside, which last_checkpoint puts back
    names |= {p.name[1 : -len(".old")] for p in directory.glob(".*.ckpt.old")}
    complete = [found for name in sorted(names) if (found := last_checkpoint(directory, name))]
    return max(complete, key=saved_step, default=None)


def run_weights(run_dir: Path, name: str = "last.ckpt") -> dict[str, torch.Tensor]:
    """The model weights (``state_dict``) of a run directory's checkpoint ``name``, a sharded
    one consolidated on the way (in a temporary directory; nothing is written to the run)."""
    checkpoint = run_dir / RUN_CHECKPOINTS / name
    if not checkpoint.is_dir():
        return load_data_file(checkpoint)["state_dict"]
    with tempfile.TemporaryDirectory() as scratch:
        whole = consolidate_checkpoint(checkpoint, Path(scratch) / name)
        return load_data_file(whole)["state_dict"]


def _fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (a crash after it keeps the new name)."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` checkpoint I/O, made crash-safe on local file systems.

    A checkpoint is written to a hidden temporary file in its own directory, flushed to
    disk (``fsync``), then renamed over the target with ``os.replace``: a process killed
    while saving leaves the previous checkpoint intact and loadable, never a truncated
    file. Remote paths (``s3://``, ...) keep Lightning's own transactional write. Loading
    refuses a file that would import code (``weights_only``) with a :class:`ConfigError`
    naming it. ``build_trainer`` installs it for every non-XLA profile.
    """

    @override
    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        location = {} if map_location is None else {"map_location": map_location}
        try:
            return super().load_checkpoint(path, weights_only=weights_only, **location)
        except pickle.UnpicklingError as error:
            raise unsafe_checkpoint_error("ckpt_path", path, error) from None

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        target = Path(path) if "://" not in str(path) else None
        if target is None or storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        check_room(target, local_bytes(checkpoint))
        for stale in target.parent.glob(f".{target.name}.*.tmp"):  # left by a killed save
            stale.unlink(missing_ok=True)
        with replaced_whole(target) as staging:
            with staging.open("wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
        _fsync_directory(target.parent)


def _staging_directory(target: Path) -> Path:
    # The same name on every rank: each one writes its shard into it.
    return target.with_name(f".{target.name}.tmp")


def _previous_directory(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def stage_directory(target: Path, is_writer: bool, barrier: Any) -> Path:
    """An empty staging directory beside ``target`` (the same on every rank), made by the
    writer before any rank writes its shard into it."""
    staging = _staging_directory(target)
    if is_writer:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier()
    return staging


def publish_directory(target: Path, staging: Path, is_writer: bool, barrier: Any) -> None:
    """Once every rank has written its shard into ``staging`` (``barrier``), the writer
    renames the old ``target`` aside, ``staging`` into place, and deletes the old one."""
    barrier()
    if is_writer:
        previous = _previous_directory(target)
        shutil.rmtree(previous, ignore_errors=True)
        if target.is_file():
            target.unlink()
        elif target.exists():
            target.rename(previous)
        staging.rename(target)
        _fsync_directory(target.parent)
        shutil.rmtree(previous, ignore_errors=True)
    barrier()


@contextmanager
def atomic_directory(target: Path, is_writer: bool, barrier: Any) -> Iterator[Path]:
    """Write a checkpoint directory (one shard per rank) so that it appears whole or not at
    all: every rank writes into a staging directory beside ``target``
    (:func:`stage_directory`); after all of them are done, it is renamed into place
    (:func:`publish_directory`). A process killed at any point leaves either the previous
    checkpoint under ``target`` or, between the two renames, under a name that
    :func:`recover_checkpoint` restores.
    """
    staging = stage_directory(target, is_writer, barrier)
    with room_checked(target):  # the space left is measured without the shards written
        try:
            yield staging
        except BaseException:
            # a part of a checkpoint is of no use, and on a full disk it took the room the
            # ranks' error records need
            shutil.rmtree(staging, ignore_errors=True)
            raise
    publish_directory(target, staging, is_writer, barrier)


def recover_checkpoint(target: Path) -> None:
    """Restore a sharded checkpoint that a process killed between the two renames of
    :func:`atomic_directory` left under its temporary name."""
    previous = _previous_directory(target)
    if not target.exists() and previous.is_dir():
        try:
            previous.rename(target)
        except FileNotFoundError:
            pass  # another rank of the same job restored it first


def last_checkpoint(directory: Path, name: str = "last.ckpt") -> Path | None:
    """``directory/name`` when it holds a complete checkpoint (a file, or a sharded
    directory whose every shard is present); ``None`` otherwise. A checkpoint there that
    would run code when loaded is refused (:class:`ConfigError`), never skipped silently."""
    target = directory / name
    recover_checkpoint(target)
    if not target.exists():
        return None
    try:
        verify_checkpoint(target)
    except UnsafeCheckpointError:
        raise
    except ConfigError:
        return None
    return target
