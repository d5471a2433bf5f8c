"""A LightningDataModule base for images that are converted, normalized and augmented on
the device a whole batch at a time, not per sample in Python."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from typing_extensions import override

from lightning_accel.data.loading import SplitDataModule
from lightning_accel.errors import ConfigError


def channel_stats(
    chunks: Iterable[torch.Tensor], channels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of image chunks [n, C, H, W] on the [0, 1]
    scale (uint8 pixels divided by 255), accumulated in float64."""
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for chunk in chunks:
        values = chunk.double() / 255 if chunk.dtype == torch.uint8 else chunk.double()
        total += values.sum((0, 2, 3))
        squares += values.square().sum((0, 2, 3))
        count += values.numel() // channels
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    # a constant channel normalizes to zero whatever its divisor
    std = torch.where(std > 0, std, torch.ones_like(std))
    return mean.float(), std.float()


def _check_stats(key: str, values: Sequence[float] | None, channels: int) -> None:
    if values is not None and len(values) not in (1, channels):
        raise ConfigError(key, list(values), f"needs 1 or {channels} values (one per channel)")
    if key.endswith("std") and values is not None and any(v <= 0 for v in values):
        raise ConfigError(key, list(values), "must hold positive numbers")


def augmentation_seed(seed: int, rank: int, batch: int) -> int:
    """The seed of one training batch's augmentation: distinct per rank and per batch."""
    return int(np.random.SeedSequence([seed, rank, batch]).generate_state(1)[0])


def crop_and_flip(
    images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Random crops of ``images`` [B, C, H, W] padded by ``padding`` zeros on each side (the
    mean colour once normalized), each mirrored left-right with probability 1/2 when
    ``flip``: one gather over the whole batch, on the batch's device. The offsets and flips
    (3 numbers per image) are drawn on the CPU from ``generator`` so that they are the same
    on every device; the result comes out channels-last in memory."""
    batch, _, height, width = images.shape
    if padding:
        images = F.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator)
    rows = offsets[0, :, None] + torch.arange(height)
    cols = offsets[1, :, None] + torch.arange(width)
    if flip:
        flipped = torch.rand(batch, generator=generator) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    device = images.device
    rows = rows.to(device, non_blocking=True)
    cols = cols.to(device, non_blocking=True)
    index = torch.arange(batch, device=device)[:, None, None]
    # advanced indices around a slice put the indexed dimensions first: [B, H, W, C]
    return images[index, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def in_memory_format(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``images`` with exactly the strides of their memory format (channels-last or not).

    ``contiguous(memory_format=...)`` leaves a one-channel batch as it is, since one channel
    is both layouts at once; a batch that came out of :func:`crop_and_flip` channels-last
    then made every convolution compute in channels-last and return channels-last weight
    gradients, which DDP, whose buckets follow the weights' strides, copied and warned about
    ("Grad strides do not match bucket view strides")."""
    _, channels, height, width = images.shape
    if channels_last:
        layout = (channels * height * width, 1, width * channels, channels)
    else:
        layout = (channels * height * width, height * width, width, 1)
    if images.stride() == layout:
        return images
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return images.clone(memory_format=memory_format)


class DeviceImageDataModule(SplitDataModule):
    """Base of the image DataModules: images stay uint8 (or float) on the host and are
    converted, normalized and augmented on the device, per batch, in
    :meth:`on_after_batch_transfer`.

    Subclasses set ``channels``, ``num_classes``, ``train_set`` and ``val_set`` (datasets
    of (image [C, H, W], label) pairs) in ``setup`` and then call :meth:`set_statistics`.

    Args:
        batch_size: images per batch (per process).
        crop_padding: training batches are cropped at random from images padded by this many
            pixels on each side (0: no cropping).
        horizontal_flip: mirror half of the training images left-right.
        mean, std: per-channel normalization on the [0, 1] scale (uint8 pixels / 255); by
            default computed from the training split.
        channels_last: return batches in ``torch.channels_last`` memory format.
        num_workers, pin_memory, persistent_workers, prefetch_factor: DataLoader settings;
            ``auto`` picks them for the hardware (see :func:`loader_options`).
        seed: seed of the training order and of the augmentation.
    """

    def __init__(
        self,
        batch_size: int = 64,
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
            batch_size, num_workers, pin_memory, persistent_workers, prefetch_factor, seed
        )
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
            raise ConfigError("data.crop_padding", crop_padding, "must be a count of 0 or more")
        for key, switch in (("horizontal_flip", horizontal_flip), ("channels_last", channels_last)):
            if not isinstance(switch, bool):
                raise ConfigError(f"data.{key}", switch, "must be true or false")
        self.crop_padding = crop_padding
        self.horizontal_flip = horizontal_flip
        self.given_mean = list(mean) if mean is not None else None
        self.given_std = list(std) if std is not None else None
        self.channels_last = channels_last
        self.channels = 0
        self.num_classes = 0
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.augmented_batches = 0
        self._affine: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def check_statistics(self) -> None:
        """Fail unless the given mean and std fit ``self.channels``."""
        _check_stats("data.mean", self.given_mean, self.channels)
        _check_stats("data.std", self.given_std, self.channels)

    def set_statistics(self, training_chunks: Iterable[torch.Tensor]) -> None:
        """Set the normalization: the given mean and std, the rest computed from
        ``training_chunks`` (only read when something is missing)."""
        mean, std = self.given_mean, self.given_std
        if mean is None or std is None:
            computed = channel_stats(training_chunks, self.channels)
            mean = mean if mean is not None else computed[0].tolist()
            std = std if std is not None else computed[1].tolist()
        self.mean = torch.tensor(mean, dtype=torch.float32).expand(self.channels).clone()
        self.std = torch.tensor(std, dtype=torch.float32).expand(self.channels).clone()
        self._affine.clear()

    def _scale_and_shift(
        self, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x - mean) / std as x * scale + shift, with uint8's 1/255 folded into the scale;
        kept per device, so the statistics are copied there once."""
        key = (device, dtype)
        if key not in self._affine:
            if self.mean is None or self.std is None:
                raise RuntimeError("setup() must run before batches are prepared")
            scale = 1 / self.std / (255 if dtype == torch.uint8 else 1)
            shift = -self.mean / self.std
            self._affine[key] = (
                scale.view(1, -1, 1, 1).to(device),
                shift.view(1, -1, 1, 1).to(device),
            )
        return self._affine[key]

    def prepare_batch(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        """Float32 images, normalized, and (training batches only) randomly cropped and
        flipped, on the device ``images`` lie on."""
        scale, shift = self._scale_and_shift(images.device, images.dtype)
        images = torch.addcmul(shift, images.float(), scale)
        if train and (self.crop_padding or self.horizontal_flip):
            rank = self.trainer.global_rank if self.trainer is not None else 0
            seed = augmentation_seed(self.seed, rank, self.augmented_batches)
            generator = torch.Generator().manual_seed(seed)
            images = crop_and_flip(images, self.crop_padding, self.horizontal_flip, generator)
            self.augmented_batches += 1
        return in_memory_format(images, self.channels_last)

    @override
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.prepare_batch(images, train=training), labels

    @override
    def state_dict(self) -> dict[str, Any]:
        # saved in checkpoints, so a resumed run augments as an uninterrupted one does
        return {"augmented_batches": self.augmented_batches}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.augmented_batches = int(state_dict.get("augmented_batches", 0))
