"""DataModules: token streams from text on disk."""

from lightning_accel.data.tokens import TokenDataModule

__all__ = ["TokenDataModule"]
