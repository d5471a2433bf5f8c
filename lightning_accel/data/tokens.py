"""Token streams from text on disk, tokenized once into memory-mapped caches."""

from __future__ import annotations

import json
import logging
import os
import shutil
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from torch.utils.data import Dataset
from typing_extensions import override

from lightning_accel.config import require_held_out_fraction, require_positive
from lightning_accel.data.cache import cache_location, files_key
from lightning_accel.data.corpus import STDLIB, corpus_files
from lightning_accel.data.loading import Sampling, SplitDataModule, check_sampling
from lightning_accel.data.tokenizer import BYTES, Tokenizer, load_tokenizer, token_dtype
from lightning_accel.errors import ConfigError
from lightning_accel.files import check_room, check_writable

CACHE_FORMAT = 3
log = logging.getLogger(__name__)


def corpus_key(files: Sequence[Path], tokenizer: str = BYTES) -> str:
    """A digest of the corpus' file names, sizes and modification times, the tokenizer and
    the cache format."""
    return files_key(files, f"{tokenizer}-v{CACHE_FORMAT}")


def _split(files: Sequence[Path], val_fraction: float) -> tuple[list[Path], list[Path]]:
    """Assign whole files to validation by a hash of their path inside the corpus, so the
    split is the same wherever the corpus lies."""
    root = Path(os.path.commonpath(files)) if len(files) > 1 else files[0].parent
    threshold = val_fraction * 2**32

    def held_out(path: Path) -> bool:
        return zlib.crc32(path.relative_to(root).as_posix().encode()) < threshold

    return [p for p in files if not held_out(p)], [p for p in files if held_out(p)]


def read_text(path: Path, skip_undecodable: bool) -> str | None:
    """The file's UTF-8 text; ``None`` for an undecodable file when skipping those."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        if skip_undecodable:
            return None
        raise ConfigError(
            "data.source",
            str(path),
            f"is not UTF-8 text (byte {error.start})",
            ["convert it to UTF-8", "data.skip_undecodable=true"],
        ) from error


def _tokenize(
    files: Sequence[Path],
    tokenizer: Tokenizer,
    skip_undecodable: bool,
    progress: Progress,
    split: str,
) -> np.ndarray:
    dtype = token_dtype(tokenizer.vocab_size)
    task = progress.add_task(split, total=sum(p.stat().st_size for p in files))
    parts = []
    for path in files:
        if text := read_text(path, skip_undecodable):
            parts.append(tokenizer.encode(text))
        progress.advance(task, path.stat().st_size)
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def _cache_progress(files: int, directory: Path) -> Progress:
    """A progress bar (on stderr, gone when done) for building the cache of ``files``."""
    return Progress(
        TextColumn(
            f"building the token cache of {files:,} files in {directory}: " + "{task.description}"
        ),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def build_token_cache(
    files: Sequence[Path],
    val_fraction: float,
    cache_root: Path,
    tokenizer: Tokenizer | None = None,
    skip_undecodable: bool = False,
    cache_setting: str = "data.cache_dir",
) -> Path:
    """Build (or find) the token cache of ``files`` and return its directory.

    The cache is written into a temporary folder and renamed into place, so a reader never
    sees a half-written cache. A cache built by another tokenizer, of another format, or
    whose files disagree with its ``meta.json`` is rebuilt, with a warning naming it. A
    ``cache_root`` that cannot be written is a ConfigError naming ``cache_setting`` (only
    when a cache must be built: a read-only directory of built caches serves).
    """
    tokenizer = tokenizer or load_tokenizer(BYTES)
    directory = cache_root / corpus_key(files, tokenizer.identity)
    problem = cache_problem(directory, tokenizer)
    if problem is None:
        return directory
    if directory.exists():
        log.warning("rebuilding the token cache %s: %s", directory, problem)
    check_writable(cache_root, cache_setting)
    cache_root.mkdir(parents=True, exist_ok=True)
    train, val = _split(files, val_fraction)
    with _cache_progress(len(files), directory) as progress:
        if not train or not val:  # a single file or a tiny corpus: hold out its tail instead
            tokens = _tokenize(files, tokenizer, skip_undecodable, progress, "all")
            cut = int(len(tokens) * (1 - val_fraction))
            splits = {"train": tokens[:cut], "val": tokens[cut:]}
        else:
            splits = {
                "train": _tokenize(train, tokenizer, skip_undecodable, progress, "train"),
                "val": _tokenize(val, tokenizer, skip_undecodable, progress, "val"),
            }
    check_room(directory, sum(tokens.nbytes for tokens in splits.values()), cache_setting)
    staging = cache_root / f".{directory.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for name, tokens in splits.items():
        tokens.tofile(staging / f"{name}.bin")
    meta = {
        "format": CACHE_FORMAT,
        "tokenizer": tokenizer.identity,
        "vocab_size": tokenizer.vocab_size,
        "dtype": np.dtype(token_dtype(tokenizer.vocab_size)).name,
        "files": len(files),
        "train_tokens": len(splits["train"]),
        "val_tokens": len(splits["val"]),
    }
    (staging / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(directory, ignore_errors=True)
    try:
        staging.rename(directory)
    except OSError:  # another process finished the same cache first
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def cache_problem(directory: Path, tokenizer: Tokenizer) -> str | None:
    """Why the cache in ``directory`` cannot be used as it is, or ``None`` if it can: its
    ``meta.json`` must say what ``tokenizer`` writes, and its files must hold the tokens
    it counts."""
    meta_file = directory / "meta.json"
    try:
        meta = json.loads(meta_file.read_text())
    except OSError:
        return f"{meta_file} is missing"
    except ValueError:
        return f"{meta_file} is damaged"
    if not isinstance(meta, dict):
        return f"{meta_file} is damaged"
    if meta.get("format") != CACHE_FORMAT:
        return f"it has format {meta.get('format')}, not {CACHE_FORMAT}"
    if meta.get("tokenizer") != tokenizer.identity:
        return f"it was built by tokenizer {meta.get('tokenizer')}, not {tokenizer.identity}"
    # what open_tokens maps the files as; anything else is another vocabulary's cache
    dtype = np.dtype(token_dtype(tokenizer.vocab_size))
    if meta.get("vocab_size") != tokenizer.vocab_size or meta.get("dtype") != dtype.name:
        return (
            f"{meta_file} gives a vocabulary of {meta.get('vocab_size')} as "
            f"{meta.get('dtype')}, not {tokenizer.vocab_size} as {dtype.name}"
        )
    for split in ("train", "val"):
        path = directory / f"{split}.bin"
        counted = meta.get(f"{split}_tokens")
        expected = counted * dtype.itemsize if isinstance(counted, int) else None
        actual = path.stat().st_size if path.exists() else None
        if actual != expected:
            return f"{path} holds {actual} bytes, not {expected}"
    return None


def open_tokens(directory: Path, split: str) -> np.ndarray:
    """The ``split`` tokens of a cache as a read-only memory map (an empty array for a split
    of no tokens, which cannot be mapped)."""
    dtype = np.dtype(json.loads((directory / "meta.json").read_text())["dtype"])
    path = directory / f"{split}.bin"
    if path.stat().st_size == 0:
        return np.empty(0, dtype)
    return np.memmap(path, dtype, mode="r")


def token_batch_example(batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An (inputs, targets) batch of token ids on the meta device: shapes only."""
    shape = (batch_size, seq_len)
    return torch.empty(shape, dtype=torch.long, device="meta"), torch.empty(
        shape, dtype=torch.long, device="meta"
    )


class TokenWindows(Dataset):
    """Windows of ``seq_len + 1`` tokens starting every ``stride`` tokens, returned as
    (inputs, targets); a stride of ``seq_len`` gives non-overlapping windows."""

    def __init__(self, tokens: np.ndarray, seq_len: int, stride: int | None = None) -> None:
        self.tokens = tokens
        self.seq_len = seq_len
        self.stride = stride or seq_len

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - self.seq_len - 1) // self.stride + 1)

    def __getstate__(self) -> dict[str, Any]:
        # A worker started by spawn or a fork server gets the memory map's file, not a
        # pickled copy of every token.
        state = dict(self.__dict__)
        if isinstance(self.tokens, np.memmap) and self.tokens.filename is not None:
            state["tokens"] = (self.tokens.filename, self.tokens.dtype.str, self.tokens.offset)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["tokens"], tuple):
            filename, dtype, offset = state["tokens"]
            state["tokens"] = np.memmap(filename, np.dtype(dtype), mode="r", offset=offset)
        self.__dict__.update(state)

    @override
    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = index * self.stride
        window = torch.from_numpy(self.tokens[start : start + self.seq_len + 1].astype(np.int64))
        return window[:-1], window[1:]


class TokenDataModule(SplitDataModule):
    """Language-model batches from text files, tokenized once into a memory-mapped cache.

    The corpus is read in sorted path order, split into train and validation by whole files,
    tokenized (bytes, or a ``tokenizers`` file) and stored as two memory-mapped files keyed
    by the files' names, sizes and times and the tokenizer. The cache is built once per
    node (``prepare_data``); a stale or damaged one is rebuilt. Training batches resume
    exactly mid-epoch from a checkpoint.

    Args:
        source: ``"stdlib"`` (the Python standard library's sources, present offline on
            every machine), a text file, or a directory of text files.
        suffixes: file endings kept from a directory.
        tokenizer: ``"bytes"`` or the path of a ``tokenizers`` ``tokenizer.json``.
        seq_len: tokens per sample.
        batch_size: samples per batch (per process).
        val_fraction: share of files held out for validation.
        sampling: ``shuffled`` non-overlapping windows, ``sequential`` ones in order, or
            ``random`` windows starting anywhere (as many per epoch as shuffled gives).
        skip_undecodable: leave out files that are not UTF-8 instead of stopping (always
            on for ``stdlib``, which holds deliberately mis-encoded test files).
        num_workers, pin_memory, persistent_workers, prefetch_factor: DataLoader settings;
            ``auto`` picks them for the hardware (see :func:`loader_options`).
        cache_dir: where caches live; default ``$LIGHTNING_ACCEL_CACHE`` or
            ``~/.cache/lightning-accel``.
        seed: seed of the training order.
    """

    def __init__(
        self,
        source: str = STDLIB,
        suffixes: Sequence[str] = (".py",),
        tokenizer: str = BYTES,
        seq_len: int = 128,
        batch_size: int = 32,
        val_fraction: float = 0.05,
        sampling: Sampling = "shuffled",
        skip_undecodable: bool = False,
        num_workers: int | str = "auto",
        pin_memory: bool | str = "auto",
        persistent_workers: bool | str = "auto",
        prefetch_factor: int | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        require_positive("data.seq_len", seq_len)
        super().__init__(
            batch_size, num_workers, pin_memory, persistent_workers, prefetch_factor, seed
        )
        require_held_out_fraction("data.val_fraction", val_fraction)
        check_sampling(sampling)
        self.source = str(source)
        self.files = corpus_files(self.source, tuple(suffixes))
        self.tokenizer = load_tokenizer(tokenizer)
        self.vocab_size = self.tokenizer.vocab_size
        self.seq_len = seq_len
        self.val_fraction = val_fraction
        self.sampling = sampling
        self.skip_undecodable = skip_undecodable or source == STDLIB
        self.cache_root, self.cache_setting = cache_location(cache_dir)
        self.cache: Path | None = None

    @override
    def prepare_data(self) -> None:
        cache = build_token_cache(
            self.files,
            self.val_fraction,
            self.cache_root,
            self.tokenizer,
            self.skip_undecodable,
            self.cache_setting,
        )
        # here, not in setup: the runner prepares data before a run directory exists
        train, val = open_tokens(cache, "train"), open_tokens(cache, "val")
        if len(train) + len(val) == 0:
            raise ConfigError(
                "data.source",
                self.source,
                f"holds no text: its {len(self.files)} file(s) are empty",
            )
        train_samples = len(TokenWindows(train, self.seq_len))
        val_samples = len(TokenWindows(val, self.seq_len))
        if train_samples < self.batch_size or val_samples == 0:
            raise ConfigError(
                "data.seq_len",
                self.seq_len,
                f"leaves too few samples in {len(self.files)} file(s) ({train_samples} for "
                f"training, {val_samples} for validation, batches of {self.batch_size}); "
                "use a smaller seq_len or more text",
            )
        self.cache = cache

    def example_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One training batch's shapes, on the meta device (no data read)."""
        return token_batch_example(self.batch_size, self.seq_len)

    @override
    def setup(self, stage: str) -> None:
        if self.cache is None:
            self.prepare_data()
        assert self.cache is not None
        train_tokens = open_tokens(self.cache, "train")
        self.train_set = TokenWindows(
            train_tokens, self.seq_len, stride=1 if self.sampling == "random" else None
        )
        self.samples_per_epoch = len(TokenWindows(train_tokens, self.seq_len))
        self.val_set = TokenWindows(open_tokens(self.cache, "val"), self.seq_len)
