"""Writing files: whole (readers see the previous version or the new one, never a part),
and only where they can be written (checked before any work starts)."""

from __future__ import annotations

import os
import tempfile
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


def required_path(key: str, value: str, needed: str) -> Path:
    """``value`` as a path; a ConfigError naming ``key`` and asking for ``needed`` where it
    is empty, which would stand for the current directory."""
    if not value.strip():
        raise ConfigError(key, value, f"is empty; give {needed}")
    return Path(value)


def check_writable(path: Path, key: str, is_file: bool = False) -> None:
    """Fail with a :class:`ConfigError` naming ``key`` unless the directory ``path`` (with
    ``is_file``, the directory of the file ``path``) exists writable, or could be created,
    leaving nothing behind."""
    directory = (path.parent if is_file else path).resolve()
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not _can_create_in(existing):
        reason = "is not a directory" if not existing.is_dir() else "is not writable"
        verb = "written" if existing == directory else "created"
        raise ConfigError(
            key,
            str(path),
            f"cannot be {verb} because {existing} {reason}; choose a writable directory",
        )


def _can_create_in(directory: Path) -> bool:
    # os.access and the mount's read-only flag say yes to root for a pseudo file system's
    # directories (/proc, /sys) and miss an NFS server's refusal: creating an empty
    # directory there, removed at once, is the sure test
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".lightning-accel-", dir=directory))
    except OSError:
        return False
    return True
