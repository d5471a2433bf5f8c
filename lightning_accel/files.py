"""Writing files: whole (readers see the previous version or the new one, never a part),
and only where they can be written (checked before any work starts)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning_accel.errors import ConfigError


@contextmanager
def replaced_whole(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; renamed onto ``path`` when the block ends
    without an error, removed otherwise. The parent directory is created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield staging
        staging.replace(path)
    finally:
        staging.unlink(missing_ok=True)


def write_text_whole(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`replaced_whole`; returns ``path``."""
    with replaced_whole(path) as staging:
        staging.write_text(text)
    return path


def check_writable(path: Path, key: str, is_file: bool = False) -> None:
    """Fail with a :class:`ConfigError` naming ``key`` unless the directory ``path`` (with
    ``is_file``, the directory of the file ``path``) exists writable, or could be created,
    without writing now."""
    existing = (path.parent if is_file else path).resolve()
    while not existing.exists():
        existing = existing.parent
    read_only = hasattr(os, "statvfs") and os.statvfs(existing).f_flag & os.ST_RDONLY
    if not existing.is_dir() or read_only or not os.access(existing, os.W_OK | os.X_OK):
        reason = "is not a directory" if not existing.is_dir() else "is not writable"
        raise ConfigError(
            key,
            str(path),
            f"cannot be created because {existing} {reason}; choose a writable directory",
        )
