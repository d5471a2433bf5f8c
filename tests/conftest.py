"""Shared fixtures: an isolated token cache, a small real-text corpus, and parallel runs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Runs

from lightning_accel.data.corpus import stdlib_dir

# The files that take longest, in the order they start: scripts/test.sh splits the suite
# between two workers a file at a time, and a long file started last would leave one worker
# running on alone at the end.
LONGEST_FIRST = (
    "test_tensor_parallel.py",
    "test_launchers.py",
    "test_parallel.py",
    "test_device_check.py",
    "test_ray_launcher.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the files of :data:`LONGEST_FIRST` first, in that order, the others after them
    as collected."""
    order = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))


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
    its configuration, and each configuration trains once per session, in whichever of
    the session's workers (pytest-xdist) first needs it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # each worker's directory is in the session's
    (root / "runs").mkdir(exist_ok=True)
    return Runs(root / "runs", small_corpus)
