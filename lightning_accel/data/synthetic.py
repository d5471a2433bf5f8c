"""Seeded random data generated once in memory, for benchmarks and tests: no files, no
decoding, so a run measures the model and the hardware."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import TensorDataset
from typing_extensions import override

from lightning_accel.config import require_positive
from lightning_accel.data.image_base import DeviceImageDataModule
from lightning_accel.data.loading import SplitDataModule
from lightning_accel.data.tokens import token_batch_example


class SyntheticTokenDataModule(SplitDataModule):
    """Language-model batches of uniformly random tokens, as (inputs, next-token targets)
    pairs shaped [batch_size, seq_len], from the same resumable loaders as
    :class:`TokenDataModule`.

    Args:
        vocab_size: tokens are drawn from 0..vocab_size-1.
        seq_len: tokens per sample.
        batch_size: samples per batch (per process).
        samples: training samples (one epoch).
        val_samples: validation samples.
        num_workers, pin_memory, persistent_workers, prefetch_factor: DataLoader settings.
        seed: seed of the data and of the training order.
    """

    def __init__(
        self,
        vocab_size: int = 256,
        seq_len: int = 128,
        batch_size: int = 32,
        samples: int = 1024,
        val_samples: int = 128,
        num_workers: int | str = "auto",
        pin_memory: bool | str = "auto",
        persistent_workers: bool | str = "auto",
        prefetch_factor: int | None = None,
        seed: int = 0,
    ) -> None:
        for key in ("vocab_size", "seq_len", "batch_size", "samples", "val_samples"):
            require_positive(f"data.{key}", locals()[key])
        super().__init__(
            batch_size, num_workers, pin_memory, persistent_workers, prefetch_factor, seed
        )
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.samples = samples
        self.val_samples = val_samples

    def example_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One training batch's shapes, on the meta device (no data made)."""
        return token_batch_example(self.batch_size, self.seq_len)

    @override
    def setup(self, stage: str) -> None:
        if self.train_set is not None:
            return
        generator = torch.Generator().manual_seed(self.seed)
        shape = (self.samples + self.val_samples, self.seq_len + 1)
        tokens = torch.randint(self.vocab_size, shape, generator=generator)
        train, val = tokens[: self.samples], tokens[self.samples :]
        self.train_set = TensorDataset(train[:, :-1], train[:, 1:])
        self.val_set = TensorDataset(val[:, :-1], val[:, 1:])


class SyntheticImageDataModule(DeviceImageDataModule):
    """Image classification batches of uniformly random uint8 pixels and random labels,
    normalized (and, if asked, augmented) on the device exactly as
    :class:`ImageDataModule`'s are.

    Args:
        channels, image_size, num_classes: shape of the images [channels, image_size,
            image_size] and labels 0..num_classes-1.
        samples: training images (one epoch).
        val_samples: validation images.
        Other arguments: see :class:`DeviceImageDataModule`.
    """

    def __init__(
        self,
        channels: int = 3,
        image_size: int = 32,
        num_classes: int = 10,
        batch_size: int = 64,
        samples: int = 1024,
        val_samples: int = 256,
        crop_padding: int = 0,
        horizontal_flip: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channels_last: bool = False,
        num_workers: int | str = "auto",
        pin_memory: bool | str = "auto",
        persistent_workers: bool | str = "auto",
        prefetch_factor: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            crop_padding=crop_padding,
            horizontal_flip=horizontal_flip,
            mean=mean,
            std=std,
            channels_last=channels_last,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            prefetch_factor=prefetch_factor,
            seed=seed,
        )
        for key in ("channels", "image_size", "num_classes", "samples", "val_samples"):
            require_positive(f"data.{key}", locals()[key])
        self.channels = channels
        self.image_size = image_size
        self.num_classes = num_classes
        self.samples = samples
        self.val_samples = val_samples
        self.check_statistics()

    def example_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One training batch as the model receives it (normalized float images and labels),
        on the meta device (no data made)."""
        shape = (self.batch_size, self.channels, self.image_size, self.image_size)
        images = torch.empty(shape, device="meta")
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, torch.empty(self.batch_size, dtype=torch.long, device="meta")

    @override
    def setup(self, stage: str) -> None:
        if self.train_set is not None:
            return
        generator = torch.Generator().manual_seed(self.seed)
        count = self.samples + self.val_samples
        shape = (count, self.channels, self.image_size, self.image_size)
        images = torch.randint(256, shape, generator=generator, dtype=torch.uint8)
        labels = torch.randint(self.num_classes, (count,), generator=generator)
        self.train_set = TensorDataset(images[: self.samples], labels[: self.samples])
        self.val_set = TensorDataset(images[self.samples :], labels[self.samples :])
        self.set_statistics(images[: self.samples].split(4096))
