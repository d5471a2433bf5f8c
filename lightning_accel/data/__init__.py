"""DataModules: token streams from text on disk, image classification data, and seeded
synthetic data for benchmarks and tests."""

from lightning_accel.data.images import ImageDataModule
from lightning_accel.data.synthetic import SyntheticImageDataModule, SyntheticTokenDataModule
from lightning_accel.data.tokens import TokenDataModule

__all__ = [
    "ImageDataModule",
    "SyntheticImageDataModule",
    "SyntheticTokenDataModule",
    "TokenDataModule",
]
