"""A disk that cannot hold a checkpoint: the save is refused before a byte is written (or,
full midway, named in one sentence), the previous checkpoint is kept, exit 1."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest
import torch
from helpers import TEST_IMPORTS, TINY, refusal, run_cli

from lightning_accel import files
from lightning_accel.checkpoints import AtomicCheckpointIO, atomic_directory
from lightning_accel.errors import StorageFull
from lightning_accel.files import replaced_whole
from lightning_accel.strategies.mesh import MeshShape

STATE = {"state_dict": {"weight": torch.ones(256, 256)}, "global_step": 1}


def test_a_checkpoint_the_disk_cannot_hold_is_refused_before_writing_and_the_last_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(STATE, target)
    monkeypatch.setattr(files, "free_bytes", lambda path: 2**17)
    with pytest.raises(StorageFull) as refused:
        AtomicCheckpointIO().save_checkpoint({**STATE, "global_step": 2}, target)
    assert str(refused.value) == (
        f"{target} needs about 0.2 MiB, more than the 0.1 MiB free on its file system; the "
        "previous version is kept."
    )
    assert torch.load(target, weights_only=True)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def _no_room_midway(staging: Path) -> None:
    """Fail as torch.save does when the disk fills under it: its own error raised while
    handling the write's."""
    staging.write_bytes(b"part")
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos") from None


def test_a_disk_full_midway_is_named_with_the_file_and_nothing_half_written(
    tmp_path: Path,
) -> None:
    target = tmp_path / "summary.json"
    with pytest.raises(StorageFull, match=r"summary\.json could not be written: no space left"):
        with replaced_whole(target) as staging:
            _no_room_midway(staging)
    assert list(tmp_path.iterdir()) == [], "the part written is removed"
    with pytest.raises(RuntimeError, match="another failure"):  # other errors pass unchanged
        with replaced_whole(target):
            raise RuntimeError("another failure")


def test_a_sharded_save_that_fails_removes_its_staged_shards_and_keeps_the_last(
    tmp_path: Path,
) -> None:
    target = tmp_path / "last.ckpt"
    with atomic_directory(target, True, lambda: None) as staging:
        (staging / "shard").write_text("old")
    with pytest.raises(StorageFull, match="the previous version is kept"):
        with atomic_directory(target, True, lambda: None) as staging:
            _no_room_midway(staging / "shard")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert (target / "shard").read_text() == "old"


def test_a_token_cache_the_disk_cannot_hold_is_refused_before_anything_is_written(
    tmp_path: Path,
    small_corpus: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(files, "free_bytes", lambda path: 2**10)
    args = ["train", *TINY, f"data.source={small_corpus}", "data.cache_dir=cache"]
    said = refusal([*args, "hydra.run.dir=run"], capsys, code=1)
    assert re.fullmatch(
        r"lightning-accel: error: cache/\w+ needs about [\d.]+ "
        r"MiB, more than the 0\.0 MiB free on its file system; nothing was written "
        r"\(data\.cache_dir puts it on another disk\)\.",
        said,
    ), said
    assert [p.name for p in tmp_path.rglob("*")] == ["cache"], "an empty cache folder only"


@pytest.mark.slow
@pytest.mark.parametrize("hardware", ["cpu", "fsdp2_cpu"])
def test_a_run_whose_checkpoint_the_disk_cannot_hold_ends_in_one_sentence(
    tmp_path: Path, small_corpus: Path, hardware: str
) -> None:
    args = ["train", *TINY, f"hardware={hardware}", f"data.source={small_corpus}"]
    args += ["callbacks.extra=[{_target_: helpers.FullDisk}]", "hydra.run.dir=run"]
    result = run_cli(args, cwd=tmp_path, timeout=240, env=TEST_IMPORTS)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    checkpoints = tmp_path / "run" / "checkpoints"
    refused = re.search(
        rf"{re.escape(str(checkpoints))}/step-2\.ckpt needs about [\d.]+ MiB, more than the "
        r"0\.0 MiB free on its file system; nothing was written",
        last,
    )
    assert refused, last
    if hardware == "cpu":
        assert last == f"lightning-accel: error: {refused[0]}."  # one sentence, all of it
    else:  # the ranks' launcher names the first failed rank it finds: each one checks
        assert re.match(r"lightning-accel: error: rank [01] \(exit code 1\) failed \(", last)
        # the ranks' traces: each raised before writing, not in its last collective
        assert "Rank 0 failed outside any collective in RunCheckpoint.on_validation_end" in last
    assert list((tmp_path / "run").rglob("*ckpt*")) == [], "nothing written, not even a part"


@pytest.mark.parametrize(
    ("mesh", "needed"),
    [
        (MeshShape(replicate=1, shard=4), 4 * 2**18),  # four shards of the node, each its own
        (MeshShape(replicate=2, shard=2), 2 * 2**18),  # HSDP: each replica's shards once
    ],
)
def test_a_sharded_save_asks_room_for_the_shards_this_node_writes(
    monkeypatch: pytest.MonkeyPatch, mesh: MeshShape, needed: int
) -> None:
    """An estimate counting every replica's shards would refuse saves that fit."""
    from lightning_accel.strategies import fsdp2

    asked: list[int] = []

    def check_room(path: Path, bytes_needed: int) -> None:
        asked.append(bytes_needed)
        raise StorageFull("enough")

    strategy = fsdp2.FSDP2Strategy()
    strategy.mesh_shape = mesh
    monkeypatch.setattr(fsdp2, "check_room", check_room)
    monkeypatch.setattr(fsdp2.FSDP2Strategy, "num_processes", property(lambda self: 4))
    monkeypatch.setattr(strategy, "broadcast", lambda value: value)
    with pytest.raises(StorageFull):
        strategy.save_checkpoint(STATE, Path("last.ckpt"))  # STATE: this rank's 256 KiB
    assert asked == [needed]
