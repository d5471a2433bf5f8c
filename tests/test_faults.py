"""A rank that dies or hangs must not leave the others waiting: the run ends, non-zero,
with a message naming the rank, within a bounded time."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from helpers import (
    TEST_IMPORTS,
    TINY_LONG_RUN,
    rank_process,
    run_cli,
    start_long_run,
    wait_for_training,
    wait_until_exited,
)

from lightning_accel.collectives import FROZEN_AFTER_SECONDS

pytestmark = pytest.mark.slow


def _wait_for_failed_trace(directory: Path, rank: int, timeout: float = 120) -> dict:
    """The trace rank ``rank`` writes when its collective fails, once it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in directory.rglob(f"traces/rank-{rank}.json"):
            trace = json.loads(path.read_text())
            if trace["error"]:
                return trace
        time.sleep(0.2)
    raise AssertionError(f"rank {rank} wrote no trace of a failed collective")


def test_killed_rank_stops_the_others_quickly(tmp_path: Path, small_corpus: Path) -> None:
    process = start_long_run(tmp_path, f"data.source={small_corpus}")
    try:
        wait_for_training(tmp_path)
        victim = rank_process(tmp_path, rank=1)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
        elapsed = time.monotonic() - killed_at
    finally:
        process.kill()
    assert process.returncode == 1
    assert "rank 1 (exit code -9)" in stderr and "the other ranks were stopped" in stderr
    # torch elastic's own records of it (the agent's traceback, its signals) are left out
    for noise in ("Traceback", "exitcode", "via signal"):
        assert noise not in stderr, stderr[-3000:]
    assert elapsed < 30


def test_stuck_rank_ends_the_run_after_the_configured_timeout(
    tmp_path: Path, small_corpus: Path
) -> None:
    process = start_long_run(
        tmp_path, f"data.source={small_corpus}", "hardware.strategy_options.timeout_s=5"
    )
    try:
        wait_for_training(tmp_path)
        stuck = rank_process(tmp_path, rank=1)
        waiting = rank_process(tmp_path, rank=0)
        stopped_at = time.monotonic()
        os.kill(stuck, signal.SIGSTOP)  # alive but silent: only the timeout can end the wait
        failed = _wait_for_failed_trace(tmp_path, rank=0)
        elapsed = time.monotonic() - stopped_at
        # a hung rank that is not stopped takes the launcher's SIGTERM; a stopped one would
        # hold it for the agent's 30 s before SIGKILL. Resumed only once rank 0 has exited,
        # so that rank 0's timeout stays the failure the launcher sees first.
        wait_until_exited(waiting)
        # a frozen rank stays frozen well past the others' timeout: resumed at once, its own
        # timeout would fire within a second of rank 0's and read as waiting alongside it
        time.sleep(3 * FROZEN_AFTER_SECONDS)
        os.kill(stuck, signal.SIGCONT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 1
    assert "rank 0 (exit code 1)" in stderr, stderr[-2000:]
    assert 4 < elapsed < 60
    # gloo words it "Timed out waiting ..." or "Application timeout caused pair closure"
    assert re.search(r"(?i)timed out|timeout", failed["error"]), failed["error"]
    assert failed["collective"] is not None
    # the final message says where rank 0 waited, and that rank 1 never came
    assert re.search(r"Rank 0 waited in \w+ #\d+.* at step \d+", stderr), stderr[-2000:]
    # stopped in its computation, or inside the collective (then it fails once resumed)
    stuck = r"rank 1 (never arrived|was stopped by the launcher while in|was in .* did not finish)"
    assert re.search(stuck, stderr), stderr[-2000:]


def test_a_collective_one_rank_skips_is_named_with_its_hook_and_the_rank_that_skipped(
    tmp_path: Path, small_corpus: Path
) -> None:
    """Rank 0 alone logs a value with sync_dist at step 3 (RankZeroLogsOnce): Lightning's
    barrier before the reduction meets rank 1's gradient all-reduce, and both wait."""
    args = [
        *TINY_LONG_RUN,
        "hardware=ddp_cpu",
        "model._target_=helpers.RankZeroLogsOnce",
        "trainer.max_steps=10",
    ]
    args += [f"data.source={small_corpus}", "hardware.strategy_options.timeout_s=8"]
    started = time.monotonic()
    result = run_cli([*args, "hydra.run.dir=run"], cwd=tmp_path, timeout=180, env=TEST_IMPORTS)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr[-2000:]
    final = result.stderr.strip().splitlines()[-1]
    skipped = re.search(
        r"Rank 1 did not make the barrier #(\d+) that rank 0 made in "
        r"RankZeroLogsOnce\.training_step at step 3 \(helpers\.py:\d+\); rank 1 made "
        r"all_reduce #(\d+) of [\d,]+ elements in RankZeroLogsOnce\.backward at step 3",
        final,
    )
    assert skipped and skipped.group(1) == skipped.group(2), final
    assert elapsed < 8 + 60, "the configured timeout ends the wait"
    # the console's messages, rank 0's among them, are in the job's log (and not on stdout)
    job_log = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert job_log[0].endswith(f"[INFO] - starting 2 ranks; logs in {tmp_path / 'run' / 'ranks'}")
    assert "[INFO] - training recipe=gpt on CPU x2" in job_log[1]
    assert job_log[-1].endswith("[ERROR] - " + final.removeprefix("lightning-accel: error: "))
    assert "lightning_accel.console" not in result.stdout
    report = run_cli(["doctor", "--trace", str(tmp_path / "run")], cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "Rank 1 did not make the barrier" in " ".join(report.stdout.split())


def test_a_second_command_in_a_run_directory_in_use_is_refused_and_the_first_goes_on(
    tmp_path: Path, small_corpus: Path
) -> None:
    run_dir = tmp_path / "run"
    args = [f"data.source={small_corpus}", f"hydra.run.dir={run_dir}"]
    first = start_long_run(tmp_path, *args, hardware="cpu")
    try:
        wait_for_training(tmp_path, ranks=1)
        second = run_cli([*TINY_LONG_RUN, "hardware=cpu", *args], cwd=tmp_path, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        assert second.stderr.strip().splitlines()[-1] == (
            f"lightning-accel: error: run directory='{run_dir}' is in use by another "
            f"lightning-accel command (process {first.pid} on {os.uname().nodename}); wait for "
            "it to end, or give this one another hydra.run.dir."
        )
        assert first.poll() is None, "the first command trains on"
        assert not (run_dir / "checkpoints").exists(), "the second one saved nothing"
    finally:
        first.kill()
        first.communicate(timeout=60)
