"""Reading image sources: class-per-folder PNG/JPEG files (checked and decoded with Pillow)
and the headers and layouts of ``.npz`` arrays."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text
from torch.utils.data import Dataset
from typing_extensions import override

from lightning_accel.data.cache import files_key
from lightning_accel.errors import ConfigError
from lightning_accel.files import write_text_whole

DIGITS = "digits"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LAYOUTS = ("auto", "NHW", "NHWC", "NCHW")
CHANNEL_COUNTS = (1, 3, 4)
# Normalization statistics of an image folder come from this many of its training images.
STATS_IMAGES = 1000
SOURCES = [DIGITS, "an .npz file", "a directory with one sub-directory of images per class"]
INSTALL_IMAGES = "pip install 'lightning-accel[images]'"


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


# bumped when what a verification record holds changes
VERIFIED_FORMAT = 1


class _FilesPerSecond(ProgressColumn):
    @override
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.0f} files/s")


def _verify_images(files: Sequence[Path], root: Path) -> tuple[set[str], set[tuple[int, int]]]:
    image_module = _pillow(str(files[0]))
    modes: set[str] = set()
    sizes: set[tuple[int, int]] = set()
    progress = Progress(
        TextColumn(f"verifying the images in {root}"),
        BarColumn(),
        MofNCompleteColumn(),
        _FilesPerSecond(),
        console=Console(stderr=True),
        transient=True,
    )
    with progress:
        for path in progress.track(files, description="images"):
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


def inspect_images(
    files: Sequence[Path], root: Path, cache_root: Path
) -> tuple[set[str], set[tuple[int, int]]]:
    """The modes and (width, height) sizes of image files, read from their headers (PNG
    chunks are also checked against their CRCs, with a progress bar); an unreadable file
    is named in a :class:`ConfigError`. The result is recorded in ``cache_root`` (JSON) by
    the files' names, sizes and modification times, so that the launcher verifies a folder
    once and its ranks, and later runs, read the record while no file changes."""
    record = cache_root / "image-folders" / f"{files_key(files, f'images-v{VERIFIED_FORMAT}')}.json"
    try:
        found = json.loads(record.read_text())
        return set(found["modes"]), {(w, h) for w, h in found["sizes"]}
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none yet, or unreadable: verify
    modes, sizes = _verify_images(files, root)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        write_text_whole(record, json.dumps({"modes": sorted(modes), "sizes": sorted(sizes)}))
    except OSError:
        pass  # a read-only cache: the next construction verifies again
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

    @override
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
