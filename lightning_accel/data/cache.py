"""Where the data caches live and how a cache entry names the files it was made from."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path


def default_cache_dir() -> Path:
    """``$LIGHTNING_ACCEL_CACHE``, else ``~/.cache/lightning-accel``."""
    return Path(os.environ.get("LIGHTNING_ACCEL_CACHE", Path.home() / ".cache" / "lightning-accel"))


def files_key(files: Sequence[Path], salt: str) -> str:
    """A digest of the files' names, sizes and modification times and ``salt`` (what the
    entry holds and its format): it changes when any file does."""
    digest = hashlib.sha256(salt.encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]
