"""Asynchronous sharded checkpoint saves on CPU (gloo) through the CLI: training goes on
while shards are written, resuming from them is exact, and a process killed while one is
being written leaves the previous checkpoint whole."""

from __future__ import annotations

import pytest
import torch
from helpers import LOOP, TEST_IMPORTS, Runs, max_difference, run_cli

from lightning_accel.checkpoints import SHARDED_META, verify_checkpoint

pytestmark = pytest.mark.slow

ASYNC = "hardware.strategy_options.async_save=true"


def test_asynchronous_saves_resume_exactly_and_record_their_cost(runs: Runs) -> None:
    uninterrupted = runs.losses(runs.train("fsdp2", "fsdp2_cpu", 2))
    first_half = runs.train("async_half", "fsdp2_cpu", 2, ASYNC, "trainer.max_steps=10")
    losses = runs.losses(first_half)
    # saving in the background changes nothing
    assert losses == {step: uninterrupted[step] for step in losses}
    summary = runs.summary(first_half)
    assert summary["checkpoint_async"] is True and summary["checkpoint_blocked_seconds"] > 0
    checkpoint = first_half / "checkpoints" / "last.ckpt"
    verify_checkpoint(checkpoint)  # published whole at the end of training
    meta = torch.load(checkpoint / SHARDED_META, map_location="cpu", weights_only=True)
    assert meta["global_step"] == 10
    resumed = runs.losses(
        runs.train("async_resume", "fsdp2_cpu", 2, ASYNC, f"ckpt_path={checkpoint}")
    )
    assert min(resumed) == 10 and len(resumed) == 10
    assert max_difference(uninterrupted, resumed) < 1e-5


def test_a_rank_killed_while_a_checkpoint_is_written_leaves_the_previous_one_whole(
    runs: Runs,
) -> None:
    run_dir = runs.root / "killed"
    # checkpoints after steps 5 and 10; rank 1 dies after step 11, before the one of step
    # 10 is published (that happens at the next save)
    args = [*runs.base, *LOOP, "hardware=fsdp2_cpu", "hardware.devices=2", "data.batch_size=4"]
    args += [ASYNC, "+callbacks.kill._target_=helpers.KillOnce", "+callbacks.kill.step=11"]
    result = run_cli(
        [*args, f"hydra.run.dir={run_dir}"], cwd=runs.root, timeout=300, env=TEST_IMPORTS
    )
    assert result.returncode == 1, result.stderr[-3000:]
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    verify_checkpoint(checkpoint)
    meta = torch.load(checkpoint / SHARDED_META, map_location="cpu", weights_only=True)
    assert meta["global_step"] == 5, "the previous checkpoint, whole"
    assert (checkpoint.parent / ".last.ckpt.tmp").is_dir(), "the unpublished one stays aside"
