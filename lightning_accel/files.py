"""Writing files: whole (readers see the previous version or the new one, never a part),
and only where they can be written (checked before any work starts)."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning_accel.errors import ConfigError, StorageFull

# the errors of a write that found no room: the disk is full, or the user's quota is
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


def existing_ancestor(path: Path) -> Path:
    """``path`` if it exists, else the nearest of its parents that does."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def free_bytes(path: Path) -> int:
    """Bytes free for this user on the file system that holds (or would hold) ``path``."""
    return shutil.disk_usage(existing_ancestor(path)).free


def _kept(path: Path) -> str:
    """What a write of ``path`` that did not happen left: its previous version, or none."""
    return "the previous version is kept" if path.exists() else "nothing was written"


def check_room(path: Path, needed: int, elsewhere: str | None = None) -> None:
    """Raise :class:`StorageFull` before anything is written where ``path`` needs more
    bytes than its file system has free; the previous version, if any, is kept.
    ``elsewhere``: the setting that puts ``path`` on another disk, named in the message."""
    free = free_bytes(path)
    if needed > free:
        remedy = f" ({elsewhere} puts it on another disk)" if elsewhere else ""
        raise StorageFull(
            f"{path} needs about {needed / 2**20:.1f} MiB, more than the "
            f"{free / 2**20:.1f} MiB free on its file system; {_kept(path)}{remedy}."
        )


@contextmanager
def room_checked(path: Path) -> Iterator[None]:
    """Turn a write of ``path`` that found no room (ENOSPC, EDQUOT, also where a library
    such as torch's serializer raised its own error while handling it) into
    :class:`StorageFull` naming the file, the space left and what was kept."""
    try:
        yield
    except Exception as error:
        cause: BaseException | None = error
        while cause is not None and not (isinstance(cause, OSError) and cause.errno in _NO_ROOM):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise StorageFull(
            f"{path} could not be written: {os.strerror(cause.errno).lower()} "
            f"({free_bytes(path) / 2**20:.1f} MiB free on its file system); {_kept(path)}."
        ) from None


@contextmanager
def replaced_whole(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; renamed onto ``path`` when the block ends
    without an error, removed otherwise. The parent directory is created. A write that
    finds no room raises :class:`StorageFull`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with room_checked(path):  # outside: the space left is measured without the part written
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
    existing = existing_ancestor(directory)
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
