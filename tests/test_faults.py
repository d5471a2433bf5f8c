"""A rank that dies or hangs must not leave the others waiting: the run ends, non-zero,
with a message naming the rank, within a bounded time."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import cli_command

pytestmark = pytest.mark.slow

TINY_LONG_RUN = [
    "train",
    "hardware=ddp_cpu",
    "model.n_layer=1",
    "model.d_model=32",
    "model.n_head=2",
    "data.seq_len=32",
    "data.batch_size=4",
    "trainer.max_steps=100000",
    "trainer.val_check_interval=1000",
    "callbacks=minimal",
    "logger=none",
]


def _rank_process(parent: int, local_rank: int, timeout: float = 60) -> int:
    """The pid of the child of ``parent`` that runs ``local_rank``, once it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                environ = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue
            if ppid == parent and f"LOCAL_RANK={local_rank}".encode() in environ:
                return int(entry.name)
        time.sleep(0.2)
    raise AssertionError(f"rank {local_rank} never started")


def _start(tmp_path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*cli_command(), *TINY_LONG_RUN, *extra],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def _wait_for_training(run_dir: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not list(run_dir.rglob("config.yaml")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(4)  # model built, steps running


def test_killed_rank_stops_the_others_quickly(tmp_path: Path, small_corpus: Path) -> None:
    process = _start(tmp_path, f"data.source={small_corpus}")
    try:
        victim = _rank_process(process.pid, local_rank=1)
        _wait_for_training(tmp_path)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
        elapsed = time.monotonic() - killed_at
    finally:
        process.kill()
    assert process.returncode == 1
    assert "rank 1 (exit code -9)" in stderr and "the other ranks were stopped" in stderr
    assert elapsed < 30


def test_stuck_rank_ends_the_run_after_the_configured_timeout(
    tmp_path: Path, small_corpus: Path
) -> None:
    process = _start(
        tmp_path, f"data.source={small_corpus}", "hardware.strategy_options.timeout_s=5"
    )
    try:
        stuck = _rank_process(process.pid, local_rank=1)
        _wait_for_training(tmp_path)
        stopped_at = time.monotonic()
        os.kill(stuck, signal.SIGSTOP)  # alive but silent: only the timeout can end the wait
        _, stderr = process.communicate(timeout=120)
        elapsed = time.monotonic() - stopped_at
    finally:
        process.kill()
    assert process.returncode == 1
    assert "rank 0 (exit code 1)" in stderr, stderr[-2000:]
    assert 4 < elapsed < 60
