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
    """Keep token caches out of the user's home directory; one cache for all of a run's
    test workers (caches are written whole, so workers building the same one at once is
    safe)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    cache = root / "token-cache"
    cache.mkdir(exist_ok=True)
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
    its configuration, and each configuration trains once per session."""
    return Runs(tmp_path_factory.mktemp("runs"), small_corpus)


# test files whose parallel runs are mostly their own: a group of their own, so the two
# largest sets of multi-process runs can go to different test workers
OWN_RUNS = ("tests/test_tensor_parallel.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Groups for pytest-xdist's ``--dist loadgroup``: the tests that share the session's
    parallel runs go to one test worker, so that each of those runs still trains once
    (:data:`OWN_RUNS` files apart), and every other test file's tests go to one worker
    together, so that its module-scoped fixtures (a trained run, a dry run of every check)
    are made once."""
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        if "runs" in getattr(item, "fixturenames", ()):
            group = f"runs {path}" if path in OWN_RUNS else "runs"
        else:
            group = path
        item.add_marker(pytest.mark.xdist_group(group))
