"""Byte-level token streams from text on disk, cached once as memory-mapped files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_accel.config import require_positive
from lightning_accel.data.corpus import STDLIB, corpus_files
from lightning_accel.errors import ConfigError

CACHE_FORMAT = 2
BYTE_VOCAB_SIZE = 256


def default_cache_dir() -> Path:
    """``$LIGHTNING_ACCEL_CACHE``, else ``~/.cache/lightning-accel``."""
    return Path(os.environ.get("LIGHTNING_ACCEL_CACHE", Path.home() / ".cache" / "lightning-accel"))


def corpus_key(files: Sequence[Path]) -> str:
    """A digest of the corpus' file names, sizes and modification times, and the format."""
    digest = hashlib.sha256(f"bytes-v{CACHE_FORMAT}".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _split(files: Sequence[Path], val_fraction: float) -> tuple[list[Path], list[Path]]:
    """Assign whole files to validation by a hash of their path inside the corpus, so the
    split is the same wherever the corpus lies."""
    root = Path(os.path.commonpath(files)) if len(files) > 1 else files[0].parent
    threshold = val_fraction * 2**32

    def held_out(path: Path) -> bool:
        return zlib.crc32(path.relative_to(root).as_posix().encode()) < threshold

    return [p for p in files if not held_out(p)], [p for p in files if held_out(p)]


def _write_tokens(files: Sequence[Path], target: Path) -> int:
    with target.open("wb") as out:
        for path in files:
            out.write(path.read_bytes())
    return target.stat().st_size


def build_byte_cache(files: Sequence[Path], val_fraction: float, cache_root: Path) -> Path:
    """Build (or find) the cache of ``files`` and return its directory.

    The cache is written into a temporary folder and renamed into place, so a reader never
    sees a half-written cache. A cache whose sizes disagree with its ``meta.json`` is rebuilt.
    """
    directory = cache_root / corpus_key(files)
    if _cache_is_complete(directory):
        return directory
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = cache_root / f".{directory.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    train, val = _split(files, val_fraction)
    if not train or not val:  # a single file or a tiny corpus: hold out its tail instead
        _write_tokens(files, staging / "all.bin")
        data = (staging / "all.bin").read_bytes()
        cut = int(len(data) * (1 - val_fraction))
        (staging / "train.bin").write_bytes(data[:cut])
        (staging / "val.bin").write_bytes(data[cut:])
        (staging / "all.bin").unlink()
    else:
        _write_tokens(train, staging / "train.bin")
        _write_tokens(val, staging / "val.bin")
    meta = {
        "format": CACHE_FORMAT,
        "tokenizer": "bytes",
        "files": len(files),
        "train_tokens": (staging / "train.bin").stat().st_size,
        "val_tokens": (staging / "val.bin").stat().st_size,
    }
    (staging / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(directory, ignore_errors=True)
    try:
        staging.rename(directory)
    except OSError:  # another process finished the same cache first
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _cache_is_complete(directory: Path) -> bool:
    try:
        meta = json.loads((directory / "meta.json").read_text())
        return (
            meta["format"] == CACHE_FORMAT
            and (directory / "train.bin").stat().st_size == meta["train_tokens"]
            and (directory / "val.bin").stat().st_size == meta["val_tokens"]
        )
    except (OSError, ValueError, KeyError):
        return False


class TokenWindows(Dataset):
    """Non-overlapping windows of ``seq_len + 1`` tokens, returned as (inputs, targets)."""

    def __init__(self, tokens: np.ndarray, seq_len: int) -> None:
        self.tokens = tokens
        self.seq_len = seq_len

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.seq_len

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = index * self.seq_len
        window = torch.from_numpy(self.tokens[start : start + self.seq_len + 1].astype(np.int64))
        return window[:-1], window[1:]


class TokenDataModule(pl.LightningDataModule):
    """Byte-level language-model batches from text files, tokenized once into a cache.

    The corpus is read in sorted path order, split into train and validation by whole files,
    and stored as two uint8 memory-mapped files keyed by the files' names, sizes and times.

    Args:
        source: ``"stdlib"`` (the Python standard library's sources, present offline on
            every machine), a text file, or a directory of text files.
        suffixes: file endings kept from a directory.
        seq_len: tokens per sample.
        batch_size: samples per batch (per process).
        val_fraction: share of files held out for validation.
        num_workers: DataLoader worker processes.
        cache_dir: where caches live; default ``$LIGHTNING_ACCEL_CACHE`` or
            ``~/.cache/lightning-accel``.
        seed: seed of the training order.
    """

    vocab_size = BYTE_VOCAB_SIZE

    def __init__(
        self,
        source: str = STDLIB,
        suffixes: Sequence[str] = (".py",),
        seq_len: int = 128,
        batch_size: int = 32,
        val_fraction: float = 0.05,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        require_positive("data.seq_len", seq_len)
        require_positive("data.batch_size", batch_size)
        if not 0 < val_fraction < 1:
            raise ConfigError("data.val_fraction", val_fraction, "must lie between 0 and 1")
        if num_workers < 0:
            raise ConfigError("data.num_workers", num_workers, "must be 0 or more")
        self.files = corpus_files(str(source), tuple(suffixes))
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.cache_root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.seed = seed
        self.cache: Path | None = None

    def prepare_data(self) -> None:
        self.cache = build_byte_cache(self.files, self.val_fraction, self.cache_root)

    def setup(self, stage: str) -> None:
        if self.cache is None:
            self.prepare_data()
        assert self.cache is not None
        self.train_set = TokenWindows(
            np.memmap(self.cache / "train.bin", np.uint8, mode="r"), self.seq_len
        )
        self.val_set = TokenWindows(
            np.memmap(self.cache / "val.bin", np.uint8, mode="r"), self.seq_len
        )
        if len(self.train_set) < self.batch_size or len(self.val_set) == 0:
            raise ConfigError(
                "data.seq_len",
                self.seq_len,
                f"leaves too few samples in {len(self.files)} file(s); "
                "use a smaller seq_len or more text",
            )

    def _sampler(self, dataset: Dataset, shuffle: bool) -> DistributedSampler:
        """This rank's share of ``dataset``, also in one process (one replica): N ranks
        with batch b then see exactly the samples one process sees with batch N*b."""
        strategy = self.trainer.strategy if self.trainer is not None else None
        replicas = getattr(strategy, "distributed_sampler_kwargs", None) or {
            "num_replicas": 1,
            "rank": 0,
        }
        return DistributedSampler(
            dataset, shuffle=shuffle, seed=self.seed, drop_last=True, **replicas
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=self._sampler(self.train_set, shuffle=True),
            drop_last=True,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set,
            batch_size=self.batch_size,
            sampler=self._sampler(self.val_set, shuffle=False),
            drop_last=len(self.val_set) >= self.batch_size,
            num_workers=self.num_workers,
        )
