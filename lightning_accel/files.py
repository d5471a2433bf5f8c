"""Writing a file whole: readers see the previous version or the new one, never a part."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
