"""Choosing the text files a token corpus is built from."""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from lightning_accel.errors import ConfigError

STDLIB = "stdlib"


def stdlib_dir() -> Path:
    """The running interpreter's standard library: real text present on every machine."""
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def corpus_files(source: str, suffixes: Sequence[str], key: str = "data.source") -> list[Path]:
    """The files of a corpus in a stable order.

    Args:
        source: ``"stdlib"`` for the Python standard library's sources, a text file, or a
            directory searched recursively for files ending in ``suffixes``.
        suffixes: file endings to keep from a directory, e.g. ``[".py"]``.
        key: the config key named in errors.

    Raises:
        ConfigError: the path does not exist or holds no matching file.
    """
    root = stdlib_dir() if source == STDLIB else Path(source).expanduser()
    if not root.exists():
        raise ConfigError(
            key, source, "does not exist", [STDLIB, "a text file", "a directory of text files"]
        )
    if root.is_file():
        return [root.resolve()]
    # the standard library's folder also holds the base interpreter's installed packages,
    # often tens of thousands of files: their folders are never entered
    skipped = {"site-packages", "__pycache__"} if source == STDLIB else {"__pycache__"}
    files = []
    for directory, folders, names in os.walk(root):
        folders[:] = [name for name in folders if name not in skipped]
        for name in names:
            path = Path(directory, name)
            if os.path.splitext(name)[1] in suffixes and path.is_file():
                files.append(path)
    files.sort()
    if not files:
        endings = ", ".join(suffixes)
        raise ConfigError(
            key,
            source,
            f"holds no file ending in {endings}; give the endings to read as data.suffixes "
            "(e.g. data.suffixes='[.txt,.md]')",
        )
    return files
