"""Image classification batches from an image folder, an ``.npz`` file or scikit-learn's
digits, converted, normalized and augmented on the device, a whole batch at a time."""

from __future__ import annotations

import importlib.util
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_accel.config import require_positive
from lightning_accel.data.loading import (
    ResumableDataLoader,
    ResumableSampler,
    data_parallel_share,
    loader_options,
)
from lightning_accel.errors import ConfigError

DIGITS = "digits"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LAYOUTS = ("auto", "NHW", "NHWC", "NCHW")
CHANNEL_COUNTS = (1, 3, 4)
# Normalization statistics of an image folder come from this many of its training images.
STATS_IMAGES = 1000
SOURCES = [DIGITS, "an .npz file", "a directory with one sub-directory of images per class"]
INSTALL_IMAGES = "pip install 'lightning-accel[images]'"


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


class DeviceImageDataModule(pl.LightningDataModule):
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

    decodes = False  # whether the workers decode files (more workers pay off on CPUs)

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
        super().__init__()
        require_positive("data.batch_size", batch_size)
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
            raise ConfigError("data.crop_padding", crop_padding, "must be a count of 0 or more")
        self.batch_size = batch_size
        self.crop_padding = crop_padding
        self.horizontal_flip = horizontal_flip
        self.given_mean = list(mean) if mean is not None else None
        self.given_std = list(std) if std is not None else None
        self.channels_last = channels_last
        self.loader_settings = {
            "num_workers": num_workers,
            "pin_memory": pin_memory,
            "persistent_workers": persistent_workers,
            "prefetch_factor": prefetch_factor,
        }
        loader_options(None, **self.loader_settings)  # checks the values
        self.seed = seed
        self.channels = 0
        self.num_classes = 0
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
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
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        return images.contiguous(memory_format=memory_format)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.prepare_batch(images, train=training), labels

    def state_dict(self) -> dict[str, Any]:
        # saved in checkpoints, so a resumed run augments as an uninterrupted one does
        return {"augmented_batches": self.augmented_batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.augmented_batches = int(state_dict.get("augmented_batches", 0))

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "setup() must run first"
        sampler = ResumableSampler(
            self.train_set, "shuffled", seed=self.seed, **data_parallel_share(self.trainer)
        )
        options = loader_options(self.trainer, **self.loader_settings, decodes=self.decodes)
        return ResumableDataLoader(self.train_set, sampler, batch_size=self.batch_size, **options)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "setup() must run first"
        sampler = ResumableSampler(self.val_set, "sequential", **data_parallel_share(self.trainer))
        return DataLoader(
            self.val_set,
            batch_size=self.batch_size,
            sampler=sampler,
            **loader_options(self.trainer, **self.loader_settings, decodes=self.decodes),
        )


def _pillow(source: str) -> Any:
    try:
        from PIL import Image
    except ImportError as error:
        raise ConfigError(
            "data.source", source, f"holds image files, which need Pillow: {INSTALL_IMAGES}"
        ) from error
    return Image


def scan_image_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """The image files under ``root`` (one sub-directory per class, searched recursively,
    files in sorted order), their labels and the class names (sorted sub-directory names)."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ConfigError(
            "data.source",
            str(root),
            "holds no class sub-directory; put each class's PNG or JPEG files in a "
            "sub-directory named after the class",
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(
            path
            for path in (root / name).rglob("*")
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
        )
        if not found:
            raise ConfigError(
                "data.source",
                str(root / name),
                "holds no PNG or JPEG file; every class directory needs images",
            )
        files += found
        labels += [label] * len(found)
    return files, labels, classes


def inspect_images(files: Sequence[Path]) -> tuple[set[str], set[tuple[int, int]]]:
    """The modes and (width, height) sizes of image files, read from their headers (PNG
    chunks are also checked against their CRCs); an unreadable file is named in a
    :class:`ConfigError`."""
    image_module = _pillow(str(files[0]))
    modes: set[str] = set()
    sizes: set[tuple[int, int]] = set()
    for path in files:
        try:
            with image_module.open(path) as image:
                modes.add(image.mode)
                sizes.add(image.size)
                image.verify()
        except Exception as error:  # noqa: BLE001 - Pillow raises many types for bad files
            raise ConfigError(
                "data.source",
                str(path),
                "is not a readable PNG or JPEG image; replace or delete it",
            ) from error
    return modes, sizes


class ImageFiles(Dataset):
    """Image files decoded with Pillow (in the DataLoader's workers) into uint8 [C, H, W]
    tensors of ``channels`` channels (1: grayscale, 3: RGB), resized to ``size`` (height,
    width) when given, with their labels."""

    def __init__(
        self,
        files: Sequence[Path],
        labels: Sequence[int],
        channels: int,
        size: tuple[int, int] | None = None,
    ) -> None:
        self.files = list(files)
        self.labels = list(labels)
        self.mode = "L" if channels == 1 else "RGB"
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def decode(self, index: int) -> torch.Tensor:
        """The image at ``index`` as a uint8 [C, H, W] tensor."""
        from PIL import Image

        path = self.files[index]
        try:
            with Image.open(path) as image:
                image = image.convert(self.mode)
                if self.size is not None and image.size != self.size[::-1]:
                    image = image.resize(self.size[::-1], Image.Resampling.BILINEAR)
                pixels = np.asarray(image)
        except OSError as error:
            raise OSError(f"cannot decode {path}: {error}") from error
        tensor = torch.from_numpy(pixels.copy())
        return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.decode(index), self.labels[index]


def npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Name, shape and dtype of each array in an ``.npz`` file, read from the headers of its
    members without loading them."""
    headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as handle:
                    version = np.lib.format.read_magic(handle)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
                headers[member.removesuffix(".npy")] = (shape, dtype)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ConfigError(
            "data.source", str(path), "is not a readable .npz file (as numpy.savez writes)"
        ) from error
    return headers


def array_layout(path: Path, shape: tuple[int, ...], layout: str) -> str:
    """The layout of an images array: ``NHW`` for [N, H, W]; for 4-D arrays ``NHWC`` or
    ``NCHW``, told apart by which of dimensions 1 and 3 has 1, 3 or 4 entries."""
    if layout == "auto":
        if len(shape) == 3:
            return "NHW"
        if len(shape) == 4:
            first, last = shape[1] in CHANNEL_COUNTS, shape[3] in CHANNEL_COUNTS
            if first != last:
                return "NCHW" if first else "NHWC"
            raise ConfigError(
                "data.layout",
                layout,
                f"cannot tell the channel dimension of the images in {path} (shape "
                f"{list(shape)}); set it",
                ["NHWC", "NCHW"],
            )
    if len(shape) != len(layout):
        raise ConfigError(
            "data.source",
            str(path),
            f"holds images of shape {list(shape)}, which is not {layout}; accepted: "
            "[N, H, W], [N, H, W, C] or [N, C, H, W]",
        )
    return layout


class ImageDataModule(DeviceImageDataModule):
    """Image classification batches from an image folder, an ``.npz`` file, or the 1,797
    8x8 handwritten digits that scikit-learn ships (no download).

    Images are split into train and validation by a permutation seeded by ``split_seed``.
    Files are checked at construction (every image header read with Pillow) and decoded in
    the DataLoader's workers; arrays are kept in memory as uint8 or float32 tensors.
    Conversion to float, normalization and augmentation (seeded random crop, optional
    horizontal flip, training batches only) run per batch on the device (see
    :class:`DeviceImageDataModule`). Training batches resume exactly mid-epoch.

    Args:
        source: ``"digits"`` (needs scikit-learn: the ``images`` extra; pixels 0..16 scaled
            to [0, 1]); an ``.npz`` file with arrays ``images`` and ``labels`` (integers
            0..K-1, one per image), where ``images`` is uint8 (0..255) or float (used as
            given) and shaped [N, H, W] (grayscale), [N, H, W, C] or [N, C, H, W] with C of
            1, 3 or 4; or a directory with one sub-directory of PNG/JPEG files per class
            (class names: the sorted sub-directory names; needs Pillow).
        layout: the images array's layout, ``auto`` (told from its shape), ``NHW``,
            ``NHWC`` or ``NCHW``; only for ``.npz`` sources.
        image_size: size (one number, or height and width) image files are resized to; needed
            when a folder's images differ in size. Arrays keep their size.
        val_fraction: share of the images held out for validation.
        split_seed: seed of the train/validation split (``seed`` does not move it, so runs
            with different seeds are validated on the same images).
        Other arguments: see :class:`DeviceImageDataModule`.
    """

    def __init__(
        self,
        source: str = DIGITS,
        layout: str = "auto",
        image_size: int | Sequence[int] | None = None,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        split_seed: int = 0,
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
        if not 0 < val_fraction < 1:
            raise ConfigError("data.val_fraction", val_fraction, "must lie between 0 and 1")
        if layout not in LAYOUTS:
            raise ConfigError("data.layout", layout, "is not a layout", LAYOUTS)
        self.source = str(source)
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.layout = layout
        self.image_size = self._size(image_size)
        self.samples = 0
        self.files: list[Path] = []
        self.file_labels: list[int] = []
        self.classes: list[str] = []
        if self.source == DIGITS:
            self._check_digits()
        else:
            path = Path(self.source).expanduser()
            if not path.exists():
                raise ConfigError("data.source", self.source, "does not exist", SOURCES)
            if path.is_dir():
                self._check_folder(path)
            elif path.suffix == ".npz":
                self._check_arrays(path, layout)
            else:
                raise ConfigError("data.source", self.source, "is not a usable source", SOURCES)
        self.path = None if self.source == DIGITS else Path(self.source).expanduser()
        if self.image_size is not None and not self.files:
            raise ConfigError(
                "data.image_size", list(self.image_size), "applies to image files only"
            )
        self.check_statistics()
        self.val_size = max(1, round(self.samples * val_fraction))
        if self.samples - self.val_size < self.batch_size:
            raise ConfigError(
                "data.batch_size",
                batch_size,
                f"is more than the {self.samples - self.val_size} training images of {self.source}",
            )

    @staticmethod
    def _size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
        if image_size is None:
            return None
        size = [image_size] * 2 if isinstance(image_size, int) else list(image_size)
        if len(size) != 2:
            raise ConfigError("data.image_size", image_size, "must be one size or two (H, W)")
        for value in size:
            require_positive("data.image_size", value)
        return size[0], size[1]

    def _check_digits(self) -> None:
        if importlib.util.find_spec("sklearn") is None:
            raise ConfigError(
                "data.source", DIGITS, f"needs scikit-learn, not installed: {INSTALL_IMAGES}"
            )
        self.channels, self.num_classes, self.samples = 1, 10, 1797

    def _check_folder(self, root: Path) -> None:
        self.files, self.file_labels, self.classes = scan_image_folder(root)
        modes, sizes = inspect_images(self.files)
        if self.image_size is None and len(sizes) > 1:
            shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:3])
            raise ConfigError(
                "data.image_size",
                None,
                f"must be set: the images in {root} differ in size ({shown})",
            )
        self.channels = 1 if modes <= {"1", "L"} else 3
        self.num_classes = len(self.classes)
        self.samples = len(self.files)
        self.decodes = True

    def _check_arrays(self, path: Path, layout: str) -> None:
        headers = npz_headers(path)
        missing = [name for name in ("images", "labels") if name not in headers]
        if missing:
            raise ConfigError(
                "data.source",
                str(path),
                f"lacks the array(s) {', '.join(missing)} (it holds: "
                f"{', '.join(sorted(headers)) or 'nothing'}); save it with "
                "numpy.savez(path, images=..., labels=...)",
            )
        shape, dtype = headers["images"]
        label_shape, label_dtype = headers["labels"]
        if dtype != np.uint8 and dtype.kind != "f":
            raise ConfigError(
                "data.source", str(path), f"holds images of dtype {dtype}; use uint8 or float"
            )
        self.layout = array_layout(path, shape, layout)
        self.channels = 1 if self.layout == "NHW" else shape[self.layout.index("C")]
        if len(label_shape) != 1 or label_dtype.kind not in "iu":
            raise ConfigError(
                "data.source",
                str(path),
                f"holds labels of shape {list(label_shape)} and dtype {label_dtype}; "
                "use one integer per image",
            )
        if label_shape[0] != shape[0]:
            raise ConfigError(
                "data.source",
                str(path),
                f"holds {shape[0]} images but {label_shape[0]} labels; save one label per image",
            )
        labels = np.load(path)["labels"]
        if len(labels) == 0 or labels.min() < 0:
            raise ConfigError(
                "data.source", str(path), "needs labels numbered from 0 and at least one image"
            )
        self.num_classes = int(labels.max()) + 1
        self.samples = shape[0]

    def _split(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training and validation indices: a permutation seeded by ``split_seed``."""
        order = torch.randperm(size, generator=torch.Generator().manual_seed(self.split_seed))
        return order[self.val_size :], order[: self.val_size]

    def _load_arrays(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.path is None:
            from sklearn.datasets import load_digits

            digits = load_digits()
            images = torch.from_numpy(digits.images).float().div_(16)[:, None]
            return images, torch.from_numpy(digits.target).long()
        with np.load(self.path) as arrays:
            images = torch.from_numpy(arrays["images"])
            labels = torch.from_numpy(arrays["labels"]).long()
        if images.is_floating_point():
            images = images.float()
        if self.layout == "NHW":
            images = images[:, None]
        elif self.layout == "NHWC":
            images = images.permute(0, 3, 1, 2)
        return images.contiguous(), labels

    def setup(self, stage: str) -> None:
        if self.train_set is not None:
            return
        if self.files:
            train, val = self._split(len(self.files))
            files = ImageFiles(self.files, self.file_labels, self.channels, self.image_size)
            self.train_set = torch.utils.data.Subset(files, train.tolist())
            self.val_set = torch.utils.data.Subset(files, val.tolist())
            sample = train[:STATS_IMAGES].tolist()
            self.set_statistics(files.decode(i)[None] for i in sample)
            return
        images, labels = self._load_arrays()
        train, val = self._split(len(images))
        self.train_set = TensorDataset(images[train], labels[train])
        self.val_set = TensorDataset(images[val], labels[val])
        self.set_statistics(images[train].split(4096))
