"""Where the data caches live and how a cache entry names the files it was made from."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

CACHE_VARIABLE = "LIGHTNING_ACCEL_CACHE"


def cache_location(cache_dir: str | None) -> tuple[Path, str]:
    """Where a DataModule's caches live, and the setting that chose it (what a message
    names): ``cache_dir`` (``data.cache_dir``) when given, else ``$LIGHTNING_ACCEL_CACHE``
    (empty counts as unset: it would be the current directory), else
    ``~/.cache/lightning-accel``."""
    if cache_dir:
        return Path(cache_dir).expanduser(), "data.cache_dir"
    if variable := os.environ.get(CACHE_VARIABLE):
        return Path(variable).expanduser(), CACHE_VARIABLE
    return Path.home() / ".cache" / "lightning-accel", "the default cache directory"


def files_key(files: Sequence[Path], salt: str) -> str:
    """A digest of the files' names, sizes and modification times and ``salt`` (what the
    entry holds and its format): it changes when any file does."""
    digest = hashlib.sha256(salt.encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]
