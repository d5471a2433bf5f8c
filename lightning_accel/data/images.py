"""Image classification batches from an image folder, an ``.npz`` file or scikit-learn's
digits, converted, normalized and augmented on the device, a whole batch at a time."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset
from typing_extensions import override

from lightning_accel.config import require_held_out_fraction, require_positive
from lightning_accel.data.cache import cache_location
from lightning_accel.data.image_base import DeviceImageDataModule
from lightning_accel.data.image_sources import (
    DIGITS,
    INSTALL_IMAGES,
    LAYOUTS,
    SOURCES,
    STATS_IMAGES,
    ImageFiles,
    array_layout,
    inspect_images,
    npz_headers,
    scan_image_folder,
)
from lightning_accel.errors import ConfigError


class ImageDataModule(DeviceImageDataModule):
    """Image classification batches from an image folder, an ``.npz`` file, or the 1,797
    8x8 handwritten digits that scikit-learn ships (no download).

    Images are split into train and validation by a permutation seeded by ``split_seed``.
    Files are checked at construction (every image header read with Pillow, once per
    unchanged folder: the result is recorded in the cache directory) and decoded in the
    DataLoader's workers; arrays are kept in memory as uint8 or float32 tensors.
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
        cache_dir: where an image folder's verification is recorded; default
            ``$LIGHTNING_ACCEL_CACHE`` or ``~/.cache/lightning-accel``.
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
        cache_dir: str | None = None,
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
        require_held_out_fraction("data.val_fraction", val_fraction)
        if layout not in LAYOUTS:
            raise ConfigError("data.layout", layout, "is not a layout", LAYOUTS)
        self.source = str(source)
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.layout = layout
        self.cache_root = cache_location(cache_dir)[0]  # a read-only one serves
        self.image_size = self._size(image_size)
        self.height_width = (0, 0)  # of the images the training step receives
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
        self.height_width = (8, 8)

    def _check_folder(self, root: Path) -> None:
        self.files, self.file_labels, self.classes = scan_image_folder(root)
        modes, sizes = inspect_images(self.files, root, self.cache_root)
        if self.image_size is None and len(sizes) > 1:
            shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:3])
            raise ConfigError(
                "data.image_size",
                None,
                f"must be set: the images in {root} differ in size ({shown})",
            )
        self.channels = 1 if modes <= {"1", "L"} else 3
        width, height = next(iter(sizes))
        self.height_width = self.image_size or (height, width)
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
        self.height_width = (shape[self.layout.index("H")], shape[self.layout.index("W")])
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

    def example_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One training batch as the training step receives it (float images, converted on
        the device, and their labels), on the meta device: no image read."""
        images = torch.empty(self.batch_size, self.channels, *self.height_width, device="meta")
        return images, torch.empty(self.batch_size, dtype=torch.long, device="meta")

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

    @override
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
