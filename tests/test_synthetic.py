"""Synthetic DataModules: the stated shapes, set by their seed, through the resumable loaders."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.accelerators import CPUAccelerator, XLAAccelerator

from lightning_accel.data import SyntheticImageDataModule, SyntheticTokenDataModule, loading
from lightning_accel.data.loading import ResumableDataLoader, needs_equal_batches


def _tokens(seed: int) -> SyntheticTokenDataModule:
    data = SyntheticTokenDataModule(
        vocab_size=50, seq_len=12, batch_size=4, samples=40, val_samples=8, seed=seed
    )
    data.setup("fit")
    return data


def test_synthetic_tokens_have_the_stated_shapes_and_follow_the_seed() -> None:
    data = _tokens(0)
    loader = data.train_dataloader()
    assert isinstance(loader, ResumableDataLoader) and len(loader) == 10
    inputs, targets = next(iter(loader))
    assert inputs.shape == targets.shape == (4, 12) and inputs.dtype == torch.int64
    assert 0 <= inputs.min() and inputs.max() < 50
    full = data.train_set.tensors
    assert torch.equal(full[0][:, 1:], full[1][:, :-1]), "targets are the next tokens"
    assert len(data.val_set) == 8
    assert torch.equal(next(iter(_tokens(0).train_dataloader()))[0], inputs)
    assert not torch.equal(next(iter(_tokens(1).train_dataloader()))[0], inputs)


def _images(seed: int) -> SyntheticImageDataModule:
    data = SyntheticImageDataModule(
        channels=2, image_size=5, num_classes=3, batch_size=4, samples=16, val_samples=8, seed=seed
    )
    data.setup("fit")
    return data


def test_synthetic_images_have_the_stated_shapes_and_follow_the_seed() -> None:
    data = _images(0)
    loader = data.train_dataloader()
    assert isinstance(loader, ResumableDataLoader) and len(loader) == 4
    images, labels = next(iter(loader))
    assert images.shape == (4, 2, 5, 5) and images.dtype == torch.uint8
    assert labels.shape == (4,) and 0 <= labels.min() and labels.max() < 3
    assert len(data.val_set) == 8
    prepared = data.prepare_batch(images, train=False)
    assert prepared.dtype == torch.float32 and abs(float(prepared.mean())) < 1
    assert torch.equal(next(iter(_images(0).train_dataloader()))[0], images)
    assert not torch.equal(next(iter(_images(1).train_dataloader()))[0], images)


def test_validation_reads_every_sample_unless_batches_must_be_equal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = _tokens(0)
    data.batch_size = 3
    assert [len(inputs) for inputs, _ in data.val_dataloader()] == [3, 3, 2]
    monkeypatch.setattr(loading, "needs_equal_batches", lambda trainer: True)
    assert [len(inputs) for inputs, _ in data.val_dataloader()] == [3, 3]
    data.batch_size = 10  # a split smaller than a batch is still validated
    assert [len(inputs) for inputs, _ in data.val_dataloader()] == [8]


def test_only_xla_needs_equal_batches() -> None:
    xla = SimpleNamespace(accelerator=XLAAccelerator.__new__(XLAAccelerator))
    assert needs_equal_batches(xla)
    assert not needs_equal_batches(SimpleNamespace(accelerator=CPUAccelerator()))
    assert not needs_equal_batches(None)
