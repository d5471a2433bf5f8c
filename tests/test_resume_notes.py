"""What a resumed fit says it cannot carry on: an epoch whose training loader kept no
position in the checkpoint (Lightning then reads the epoch's first batches again)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import InterruptAt, TinyRegression, quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_accel.checkpoints import saved_progress
from lightning_accel.cli.runner import resume_notes
from lightning_accel.cli.schema import RunConfig
from lightning_accel.data.loading import ResumableDataLoader, ResumableSampler


def _checkpoint_after(steps: int, loader: DataLoader, directory: Path) -> Path:
    """The checkpoint saved after ``steps`` steps of a fit interrupted before the next."""
    checkpoint = ModelCheckpoint(directory, "last", every_n_train_steps=steps)
    trainer = quiet_trainer(
        max_steps=100, callbacks=[checkpoint, InterruptAt(steps + 1)], enable_checkpointing=True
    )
    with pytest.raises(SystemExit):  # Lightning's exit after an interrupted fit
        trainer.fit(TinyRegression(), loader)
    return directory / "last.ckpt"


@pytest.mark.parametrize("resumable", [True, False])
def test_a_checkpoint_inside_an_epoch_tells_whether_its_loader_kept_its_position(
    tmp_path: Path, resumable: bool
) -> None:
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    data = TensorDataset(x, x.sum(1, keepdim=True))
    sampler = ResumableSampler(data, "shuffled", seed=0)
    loader = (
        ResumableDataLoader(data, sampler, batch_size=8)
        if resumable
        else DataLoader(data, batch_size=8, shuffle=True)
    )
    saved = _checkpoint_after(3, loader, tmp_path)
    assert saved_progress(saved).batches_without_position == (0 if resumable else 3)
    run = RunConfig(data={"_target_": "my_project.Data"})
    notes = resume_notes(run, quiet_trainer(), saved)
    lost = [note for note in notes if "keeps no position" in note]
    assert len(lost) == (0 if resumable else 1)
    assert resumable or "data._target_=my_project.Data's training loader" in lost[0]
