"""Shared fixtures: an isolated token cache, a small real-text corpus, and parallel runs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Runs

from lightning_accel.data.corpus import stdlib_dir


@pytest.fixture(autouse=True, scope="session")
def token_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep token caches out of the user's home directory."""
    cache = tmp_path_factory.mktemp("token-cache")
    previous = os.environ.get("LIGHTNING_ACCEL_CACHE")
    os.environ["LIGHTNING_ACCEL_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("LIGHTNING_ACCEL_CACHE", None)
    else:
        os.environ["LIGHTNING_ACCEL_CACHE"] = previous


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of a dozen real Python source files (~300 KB)."""
    corpus = tmp_path_factory.mktemp("corpus")
    names = ["argparse.py", "ast.py", "calendar.py", "csv.py", "difflib.py", "enum.py"]
    names += ["fractions.py", "heapq.py", "json/decoder.py", "json/encoder.py", "shlex.py"]
    for name in names:
        target = corpus / name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(stdlib_dir() / name, target)
    return corpus


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory, small_corpus: Path) -> Runs:
    """Parallel CLI runs of the small GPT, shared by every test: a run's name stands for
    its configuration, and each configuration trains once per session. Sessions given the
    same ``LIGHTNING_ACCEL_TEST_RUNS`` directory (``scripts/test.sh``'s workers) share it."""
    shared = os.environ.get("LIGHTNING_ACCEL_TEST_RUNS")
    return Runs(Path(shared) if shared else tmp_path_factory.mktemp("runs"), small_corpus)
